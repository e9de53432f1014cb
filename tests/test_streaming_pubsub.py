"""The streaming job against a real Pub/Sub: the emulator that ships with the Cloud SDK.

Starts the emulator on a free loopback port, creates a topic and a subscription with the
google-cloud-pubsub clients, runs `sketch-rnn preprocess --streaming` as a subprocess, publishes real
Quick Draw lines (the bundled sample), malformed ones, one too long to keep and one redelivered copy,
waits until the windows holding them are written, and checks that every message became exactly one
record, dead letter or filtered count, and that each window's manifest adds up.

Skipped, with the reason, where java, the emulator or google-cloud-pubsub is absent. Bounded in
time (about 40 s here; at most DEADLINE_S of waiting); the emulator and the job are started in
their own process groups and always killed.
"""

from __future__ import annotations

import collections
import functools
import glob
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline import beam_job, schema
from pipeline import records as R

REPO = pathlib.Path(__file__).resolve().parents[1]
EMULATOR_SCRIPT = "platform/pubsub-emulator/bin/cloud-pubsub-emulator"
PROJECT, TOPIC, SUBSCRIPTION = "sketch-test", "drawings", "drawings-job"
WINDOW_S = 3.0
DEADLINE_S = 75.0  # waiting for the job's windows, from its start
MALFORMED = [
    b"{truncated json",
    b'{"word": "cat", "key_id": "m1", "drawing": [[[1, 2, 3], [4, 5]]]}',
    b'{"word": "cat", "key_id": "m2", "drawing": [[[1, NaN], [4, 5]]]}',
    b'{"word": "cat", "drawing": [[[1, 2], [4, 5]]]}',
    b'"just a string"',
    b'{"word": "cat", "key_id": "m3", "drawing": [[[1, 2], [\xff\xfe]]]}',  # not UTF-8
]


def _emulator_command(port: int) -> list[str]:
    if shutil.which("java") is None:
        pytest.skip("java not found: the Pub/Sub emulator needs a Java runtime")
    roots = [pathlib.Path("/usr/lib/google-cloud-sdk")]
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.insert(0, pathlib.Path(gcloud).resolve().parents[1])
    for root in roots:
        script = root / EMULATOR_SCRIPT
        if script.is_file():
            return [str(script), "--host=127.0.0.1", f"--port={port}"]
    pytest.skip("the Pub/Sub emulator is not installed (gcloud components install pubsub-emulator, "
                "or apt-get install google-cloud-cli-pubsub-emulator)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Kills a process started with start_new_session=True and everything it started."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    try:  # Children left in the group after the leader exited.
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture
def pubsub_emulator(tmp_path, monkeypatch):
    """host:port of a fresh emulator (its own process group, killed at the end)."""
    pytest.importorskip("google.cloud.pubsub_v1", reason="google-cloud-pubsub (apache-beam[gcp]) "
                        "is not installed")
    port = _free_port()
    command = _emulator_command(port)
    log = open(tmp_path / "emulator.log", "w")
    # A small, quickly started JVM: the emulator holds a few hundred messages here.
    env = {**os.environ, "JAVA_OPTS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xmx256m"}
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        deadline = time.time() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the emulator exited ({proc.returncode}): "
                            f"{(tmp_path / 'emulator.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail("the Pub/Sub emulator did not listen within 30 s")
                time.sleep(0.2)
        host = f"127.0.0.1:{port}"
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", host)
        yield host
    finally:
        _stop(proc)
        log.close()


def _sample_lines(sample_dir, per_category: int) -> list[bytes]:
    out = []
    for path in sorted(sample_dir.glob("*.ndjson")):
        out += path.read_bytes().splitlines()[:per_category]
    return out


def _too_long_line() -> bytes:
    """A valid drawing of 200 strokes: at least 400 points, more than max_seq_len (filtered)."""
    strokes = [[[i, i + 3], [0, 5]] for i in range(200)]
    return json.dumps({"word": "cat", "key_id": "long1", "drawing": strokes}).encode()


def _write_batch_metadata(directory: pathlib.Path, lines: list[bytes], config: R.Config) -> float:
    """metadata.json of a "batch run" over `lines` (scale factor: the std of their train offsets)."""
    drawings = [d for d in map(functools.partial(R.process_line, config=config), lines)
                if isinstance(d, R.Drawing)]
    moments = functools.reduce(R.merge_moments, (R.offset_moments(d.strokes3) for d in drawings
                                                 if d.split == "train"))
    scale = R.scale_factor_from_moments(moments)
    counts = collections.Counter({("read",): len(lines)})
    counts.update(("written", d.split, d.word) for d in drawings)
    beam_job.write_metadata_file(str(directory), beam_job.build_metadata(
        counts, moments, scale, "train_std", config, ["sample"]))
    return scale


def _manifests(out: pathlib.Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("manifest-*.json"))]


def test_streaming_job_on_the_pubsub_emulator(pubsub_emulator, sample_dir, tmp_path):
    from google.cloud import pubsub_v1

    config = R.Config()
    real = _sample_lines(sample_dir, 4)            # 40 real raw drawings, 10 categories
    batch = tmp_path / "batch"
    scale = _write_batch_metadata(batch, real, config)
    duplicate = real[25]                            # published twice, in one burst: a redelivery
    first_half = real[:20]
    data = first_half + real[20:] + MALFORMED + [_too_long_line(), duplicate]

    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(PROJECT, TOPIC)
    subscription = subscriber.subscription_path(PROJECT, SUBSCRIPTION)
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)

    out = tmp_path / "stream"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    log = open(tmp_path / "job.log", "w")
    job = subprocess.Popen(
        [sys.executable, "-m", "deploy.cli", "preprocess", "--streaming",
         "--pubsub-subscription", subscription, "--metadata-from", str(batch),
         "--output", str(out), "--window-seconds", str(WINDOW_S)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    ticks = 0
    deadline = time.time() + DEADLINE_S

    def publish_and_wait(lines: list[bytes], done_before: int) -> list[dict]:
        """Publishes `lines`, then waits until the windows holding them are written. A window is
        written once the job's watermark passes its end; the DirectRunner advances it when a pull
        returns, and an idle pull waits 30 s: blank lines (filtered as `blank_line`, told apart
        from the data) keep it moving."""
        nonlocal ticks
        for future in [publisher.publish(topic, line) for line in lines]:
            future.result(timeout=30)
        while True:
            manifests = _manifests(out)
            seen = sum(m["read"] - m["rejected"].get("blank_line", 0) for m in manifests)
            if seen >= done_before + len(lines):
                return manifests
            if job.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"{seen} of {done_before + len(lines)} messages in {len(manifests)} "
                            f"windows after {DEADLINE_S:.0f} s (job exit {job.poll()}):\n"
                            + (tmp_path / "job.log").read_text()[-3000:])
            publisher.publish(topic, b" ").result(timeout=30)  # Pub/Sub refuses empty data.
            ticks += 1
            time.sleep(0.5)

    try:
        # The subscription exists: the first half waits for the job to start; the second half is
        # published while it runs, once the first half's windows are written.
        half = len(first_half)
        first_windows = publish_and_wait(data[:half], 0)
        manifests = publish_and_wait(data[half:], half)
    finally:
        _stop(job)
        log.close()
    assert len(manifests) > len(first_windows) >= 1

    # Every window's manifest adds up and names exactly the files written for that window.
    assert manifests and all(m["accounted"] for m in manifests)
    for m in manifests:
        assert m["written"] + m["dead_lettered"] + m["filtered"] == m["read"], m
        assert m["written"] == sum(m["counts"].values())
        assert m["dead_lettered"] == sum(n for r, n in m["rejected"].items()
                                         if R.REASONS[r] == R.DEAD_LETTER)
        assert m["scale_factor"] == pytest.approx(scale)
        window = m["window_start"][:-1] + "-" + m["window_end"][:-1]
        assert m["files"] == sorted(
            p.name for p in out.glob(f"*{window}*") if not p.name.startswith("manifest-"))
    total = collections.Counter()
    for m in manifests:
        total.update({k: m[k] for k in ("read", "written", "dead_lettered", "filtered")})
        total.update({f"rejected/{r}": n for r, n in m["rejected"].items()})
    assert total["written"] + total["dead_lettered"] + total["filtered"] == total["read"]
    assert total["read"] == len(data) + total["rejected/blank_line"]
    assert total["rejected/blank_line"] <= ticks
    # The stream carries the batch run's drawings: its train offsets have the batch's std (the
    # drift check of the README), merged over the windows' manifests.
    offsets = functools.reduce(R.merge_moments, [
        (m["train_offsets"]["count"], m["train_offsets"]["mean"], m["train_offsets"]["std"] ** 2
         * m["train_offsets"]["count"]) for m in manifests if m["train_offsets"]["count"]])
    assert R.scale_factor_from_moments(offsets) == pytest.approx(scale, rel=1e-6)

    # Each message became exactly what the per-record function makes of it.
    expected = [R.process_line(line, config) for line in data]
    kept = collections.Counter(d.key_id for d in expected if isinstance(d, R.Drawing))
    rejected = collections.Counter(d.reason for d in expected if isinstance(d, R.Rejection))
    dead_expected = sorted((d.reason, d.line) for d in expected
                           if isinstance(d, R.Rejection) and d.kind == R.DEAD_LETTER)
    assert len(dead_expected) == len(MALFORMED) and rejected["too_long"] == 1

    import tensorflow as tf

    files = sorted(glob.glob(str(out / f"*{schema.TFRECORD_SUFFIX}")))
    records, per_window = [], collections.defaultdict(collections.Counter)
    for f in files:
        window = os.path.basename(f).split("-", 1)[1].rsplit("-", 3)[0]
        for r in tf.data.TFRecordDataset(f, compression_type=schema.COMPRESSION):
            records.append(schema.parse_example(r, config.max_seq_len))
            per_window[window][records[-1][schema.KEY_ID].numpy().decode()] += 1
    got = collections.Counter(r[schema.KEY_ID].numpy().decode() for r in records)
    # One record per key_id per window (over all splits: a key_id has one split).
    assert all(n == 1 for keys in per_window.values() for n in keys.values())
    dead = sorted((d["reason"], d["line"]) for f in sorted(out.glob("rejected-*.jsonl"))
                  for d in map(json.loads, f.read_text().splitlines()))
    assert dead == dead_expected
    # The redelivered copy: dropped as `duplicate` when both copies fell in one window (nearly
    # always), else one record in each of the two windows.
    dup_key = R.process_line(duplicate, config).key_id
    assert kept[dup_key] == 2
    assert got[dup_key] + total["rejected/duplicate"] == 2
    assert {k: 1 for k in got} == {k: 1 for k in kept}
    assert sum(got.values()) == total["written"]
    assert total["filtered"] == total["rejected/too_long"] + total["rejected/blank_line"] + \
        total["rejected/duplicate"]
    # records + dead letters + filtered (too long, duplicate) == the messages published
    assert sum(got.values()) + len(dead) + rejected["too_long"] + total["rejected/duplicate"] == len(data)
    # The records carry the batch run's scale factor: a stroke matches the local conversion.
    line = next(x for x in real if R.process_line(x, config).key_id == next(iter(got)))
    first = next(r for r in records if r[schema.KEY_ID].numpy().decode() == next(iter(got)))
    import numpy as np
    np.testing.assert_allclose(first[schema.STROKES].numpy(),
                               R.to_stroke5(R.process_line(line, config), scale, config.max_seq_len),
                               rtol=1e-5, atol=1e-6)
    assert schema.read_metadata(str(out))["streaming"] is True
