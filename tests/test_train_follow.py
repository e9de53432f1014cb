"""`sketch-rnn train --follow`: the trainer re-lists a streaming output's shards and adds windows
written after it started, validates on the streamed valid split, checkpoints and exports."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import tensorflow as tf

from model.strokes import stroke3_to_stroke5
from pipeline import schema
from test_input import sample_sketches
from trainer import input as input_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_LEN = 60


def write_window(out: pathlib.Path, window: str, splits: dict[str, list[np.ndarray]],
                 scale: float) -> list[str]:
    """One streamed window's shards, named as `preprocess --streaming` names them (written to a
    hidden name and renamed, as Beam's fileio does)."""
    names = []
    for split, sketches in splits.items():
        name = out / f"{split}-{window}-00000-of-00001{schema.TFRECORD_SUFFIX}"
        temp = out / f".{name.name}.tmp"
        with tf.io.TFRecordWriter(str(temp), options="GZIP") as w:
            for i, s in enumerate(sketches):
                norm = s.copy()
                norm[:, :2] /= scale
                w.write(schema.serialize_example(stroke3_to_stroke5(norm, MAX_LEN), len(s), "x",
                                                 f"{window}:{split}:{i}"))
        temp.rename(name)
        names.append(name.name)
    return names


def streamed_dir(tmp_path, sample_dir):
    sketches = [s for s in sample_sketches(sample_dir, limit=60) if 2 <= len(s) <= MAX_LEN]
    scale = float(np.std(np.concatenate([s[:, :2] for s in sketches])))
    out = tmp_path / "stream"
    out.mkdir()
    # As `preprocess --streaming` writes it: the batch run's scale factor, counts 0, streaming.
    schema.write_metadata(str(out), {
        "format_version": schema.FORMAT_VERSION, "scale_factor": scale, "max_seq_len": MAX_LEN,
        "classes": ["x"], "counts": {s: 0 for s in schema.SPLITS}, "lines_read": 0, "rejected": {},
        "rdp_epsilon": 2.0, "sources": ["projects/p/subscriptions/s"], "streaming": True})
    return out, sketches, scale


def test_follower_hands_out_new_shards_first(tmp_path):
    pattern = str(tmp_path / "train-*.tfrecord.gz")
    (tmp_path / "train-a.tfrecord.gz").write_bytes(b"")
    logs = []
    follower = input_lib.ShardFollower(pattern, interval_s=0.2, log=logs.append)
    names = follower()
    first = [next(names) for _ in range(3)]
    assert {os.path.basename(n) for n in first} == {"train-a.tfrecord.gz"} and follower.shards == 1
    (tmp_path / "train-b.tfrecord.gz").write_bytes(b"")
    time.sleep(0.25)
    assert os.path.basename(next(names)) == "train-b.tfrecord.gz"  # New shards are read next,
    assert follower.shards == 2 and "1 new shard(s)" in logs[-1] and "train-b" in logs[-1]
    later = {os.path.basename(next(names)) for _ in range(6)}
    assert later == {"train-a.tfrecord.gz", "train-b.tfrecord.gz"}  # then join every pass.
    # Waiting for the first shard is a Python loop (Ctrl-C works), saying once what it waits for.
    empty = input_lib.ShardFollower(str(tmp_path / "valid-*"), 5.0, log=logs.append)
    sleeps = []
    empty.wait_for_first(sleep=lambda s: (sleeps.append(s),
                                          (tmp_path / "valid-x").write_bytes(b"")))
    assert sleeps == [5.0] and empty.known and "no shard matches" in logs[-1]


def test_following_trainer_picks_up_a_window_written_after_it_started(tmp_path, sample_dir):
    out, sketches, scale = streamed_dir(tmp_path, sample_dir)
    first = write_window(out, "2026-01-01T00:00:00-2026-01-01T00:01:00", {"train": sketches[:20]},
                         scale)  # no valid shard yet: validation waits for one
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONFAULTHANDLER": "1"}  # A crash prints every thread's Python stack in the output.
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "train", "--data", str(out), "--model-dir", str(run),
         "--preset", "tiny", "--set", "batch_size=4", "--steps", "1000000", "--strategy",
         "one_device", "--follow", "--follow-interval", "0.5", "--log-every", "5",
         "--eval-every", "10", "--checkpoint-every", "10", "--export-every", "20"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
        start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()

    def wait_for(condition, what: str, timeout: float = 60):
        deadline = time.time() + timeout
        while not condition():
            assert proc.poll() is None, f"train exited ({proc.returncode}):\n" + "".join(lines)[-3000:]
            assert time.time() < deadline, f"no {what} after {timeout} s:\n" + "".join(lines)[-3000:]
            time.sleep(0.2)

    second = []
    try:
        wait_for(lambda: any("first step took" in x for x in lines), "first step", 180)
        assert any("follow: training on the 1 train shard(s)" in x for x in lines)
        # A second window appears while it trains: its train shard joins the input, its valid
        # shard is what validation reads.
        second = write_window(out, "2026-01-01T00:01:00-2026-01-01T00:02:00",
                              {"train": sketches[20:40], "valid": sketches[40:50]}, scale)
        wait_for(lambda: any("follow: 1 new shard(s)" in x and second[0] in x for x in lines),
                 "pick-up of the new window")
        wait_for(lambda: any(x.startswith("valid step") for x in lines), "validation")
        wait_for(lambda: any("exported SavedModel" in x for x in lines), "export")
        wait_for(lambda: any(json.loads(x).get("train_shards") == 2
                             for x in (run / "metrics.jsonl").read_text().splitlines()),
                 "train_shards 2 in metrics.jsonl")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # Saves a checkpoint, as preemption does.
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        reader.join(10)
    assert proc.returncode == 130, "".join(lines)[-8000:]
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["split"] == "train"]
    assert train[0]["train_shards"] == 1 and train[-1]["train_shards"] == 2
    assert [m for m in metrics if m["split"] == "valid"]  # on the streamed valid split
    assert (run / "checkpoints" / "checkpoint").exists()
    versions = [p for p in (run / "export").iterdir() if (p / "saved_model.pb").exists()]
    assert versions and all(p.name.isdigit() for p in versions)
    assert first and second
