"""The design's one end-to-end test, every step as a user runs it, on the bundled Quick Draw sample:

`sketch-rnn preprocess` (Apache Beam, DirectRunner) -> train the `tiny` preset a few dozen steps
under MirroredStrategy over 2 logical CPU devices -> `sketch-rnn export` -> load the SavedModel in a
fresh TensorFlow-only process and call `sample` -> `sketch-rnn sample` to SVG + ndjson.

Each step runs in its own process: the 2 logical CPU devices must be configured before TensorFlow
initializes, and a separate process per step is what a user's shell does.
"""

from __future__ import annotations

import glob
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("model.sketch_rnn", reason="model/sketch_rnn.py not there yet")

REPO = pathlib.Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"
MAX_SEQ_LEN = 100  # Small N_max keeps the steps fast; the sample has a few longer drawings (filtered).
STEPS = 30

TRAIN_SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from model.hparams import HParams
    from trainer.train import select_strategy, train_and_evaluate
    data, model_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    strategy = select_strategy("mirrored")  # What `sketch-rnn train` picks: all local CPUs here.
    hps = HParams.preset("tiny").replace(batch_size=16)
    logs = []
    r = train_and_evaluate(data, model_dir, hps, steps, strategy, checkpoint_every=10, eval_every=15,
                           log_every=1, export=False, num_samples=2, log=logs.append)
    print("RESULT " + json.dumps({"step": r["step"], "train": r["train"], "valid": r["valid"],
                                  "replicas": strategy.num_replicas_in_sync,
                                  "devices": list(strategy.extended.worker_devices), "logs": logs}))
''')

LOAD_SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    m = tf.saved_model.load(sys.argv[1])
    s = m.signatures["sample"](num=tf.constant(5), temperature=tf.constant(0.5), seed=tf.constant(3))
    print("RESULT " + json.dumps({
        "signatures": sorted(m.signatures.keys()),
        "strokes": s["strokes"].numpy().tolist(), "lengths": s["lengths"].numpy().tolist(),
        "project_modules": sorted(k for k in sys.modules
                                  if k.split(".")[0] in ("model", "trainer", "pipeline", "deploy"))}))
''')


def _env(project: bool) -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    if project:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    else:
        env.pop("PYTHONPATH", None)
    return env


def sketch_rnn(*args, cwd) -> subprocess.CompletedProcess:
    """Runs `sketch-rnn ARGS` (the console command's module, with this interpreter)."""
    proc = subprocess.run([sys.executable, "-m", "deploy.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=_env(True), cwd=REPO)
    assert proc.returncode == 0, f"sketch-rnn {args[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def run_script(tmp_path, name, script, *args, project=True) -> dict:
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    # project=False: run outside the checkout without PYTHONPATH, as a TensorFlow-only consumer would.
    proc = subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=_env(project), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def assert_stroke3(strokes: np.ndarray, n_max: int) -> None:
    """One unpadded stroke-3 sketch `[n, 3]`: finite offsets, pen bit 0/1, last point lifts the pen."""
    assert strokes.ndim == 2 and strokes.shape[1] == 3
    assert 1 <= strokes.shape[0] <= n_max
    assert np.all(np.isfinite(strokes))
    assert set(np.unique(strokes[:, 2])) <= {0.0, 1.0}
    assert strokes[-1, 2] == 1.0


def count_records(paths: list[str]) -> int:
    import tensorflow as tf
    return sum(1 for _ in tf.data.TFRecordDataset(paths, compression_type="GZIP"))


def test_preprocess_train_export_load_sample(tmp_path, sample_dir):
    inputs = sorted(glob.glob(str(sample_dir / "*.ndjson")))
    lines = sum(1 for p in inputs for line in pathlib.Path(p).read_text().splitlines() if line.strip())
    assert lines > 200

    # 1. Beam preprocessing, exactly the README's command (plus a small N_max).
    data = tmp_path / "data"
    proc = sketch_rnn("preprocess", "--input", str(sample_dir / "*.ndjson"), "--output", data,
                      "--max-seq-len", MAX_SEQ_LEN, cwd=tmp_path)
    assert f"{lines} records read" in proc.stdout
    meta = json.loads((data / "metadata.json").read_text())
    assert meta["lines_read"] == lines
    rejected = sum(meta["rejected"].values())
    assert rejected == meta["dead_lettered"] + meta["filtered"]
    assert meta["written"] == lines - rejected == sum(meta["counts"].values())
    assert meta["accounted"] is True
    assert meta["max_seq_len"] == MAX_SEQ_LEN and meta["scale_factor"] > 0
    assert len(meta["classes"]) == len(inputs)  # One category per sample file.
    for split, n in meta["counts"].items():
        assert n > 0, split
        assert count_records(sorted(glob.glob(str(data / f"{split}-*.tfrecord.gz")))) == n
    dead = [json.loads(x) for p in glob.glob(str(data / "rejected-*.jsonl"))
            for x in pathlib.Path(p).read_text().splitlines() if x.strip()]
    assert len(dead) == meta["dead_lettered"]

    # 2. Train `tiny` under MirroredStrategy over 2 logical CPU devices.
    model_dir = tmp_path / "model"
    result = run_script(tmp_path, "train", TRAIN_SCRIPT, data, model_dir, STEPS)
    assert result["replicas"] == 2 and len(result["devices"]) == 2
    assert result["step"] == STEPS
    costs = [float(x.split(" cost ")[1].split()[0]) for x in result["logs"] if x.startswith("step ")]
    assert len(costs) == STEPS and all(math.isfinite(c) for c in costs)
    assert np.mean(costs[-10:]) < np.mean(costs[:5])  # It learns (catches gradients that never arrive).
    assert all(math.isfinite(v) for v in result["train"].values())
    assert math.isfinite(result["valid"]["cost"])
    assert any(x.startswith("valid step 15:") for x in result["logs"])
    assert (model_dir / "hparams.json").exists()
    assert any(c.startswith(f"ckpt-{STEPS}.") for c in os.listdir(model_dir / "checkpoints"))

    # 3. `sketch-rnn export` into a versioned directory.
    export_base = tmp_path / "export"
    proc = sketch_rnn("export", "--model-dir", model_dir, "--export-dir", export_base, "--version", 1,
                      cwd=tmp_path)
    version_dir = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    assert version_dir == export_base / "1"
    assert (version_dir / "saved_model.pb").exists()
    # The data's metadata plus the N_max the signatures sample to (the longest sketch).
    assert json.loads((version_dir / "assets.extra" / "metadata.json").read_text()) == {
        **meta, "n_max": meta["longest_sketch"]}

    # ... and with `--weights float16`: the kernels stored as float16, about half the bytes.
    proc = sketch_rnn("export", "--model-dir", model_dir, "--export-dir", export_base, "--version", 2,
                      "--weights", "float16", cwd=tmp_path)
    half_dir = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    import tensorflow as tf

    saved = {str(d.name) for d in tf.train.load_checkpoint(
        str(half_dir / "variables" / "variables")).get_variable_to_dtype_map().values()}
    assert saved == {"float16", "float32", "string"}  # The string: the object graph.
    size = {d: sum(f.stat().st_size for f in (d / "variables").glob("*.data-*")) for d in (version_dir, half_dir)}
    assert size[half_dir] < 0.6 * size[version_dir]
    # ... and written again from that export alone, its kernels as int8 (a quarter of their bytes; this
    # tiny model's biases and object graph weigh more than a real model's).
    proc = sketch_rnn("export", "--from-export", half_dir, "--export-dir", export_base, "--version", 3,
                      "--weights", "int8", cwd=tmp_path)
    int8_dir = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    saved = {str(d.name) for d in tf.train.load_checkpoint(
        str(int8_dir / "variables" / "variables")).get_variable_to_dtype_map().values()}
    assert saved == {"int8", "float32", "string"}
    size[int8_dir] = sum(f.stat().st_size for f in (int8_dir / "variables").glob("*.data-*"))
    assert size[int8_dir] < 0.8 * size[half_dir] and size[int8_dir] < 0.45 * size[version_dir]

    # 4. A fresh process with only TensorFlow loads it and samples.
    out = run_script(tmp_path, "load", LOAD_SCRIPT, version_dir, project=False)
    assert out["project_modules"] == []
    assert out["signatures"] == ["complete", "decode", "encode", "sample", "serving_default"]
    strokes, lengths = np.asarray(out["strokes"], np.float32), np.asarray(out["lengths"])
    n_max = meta["longest_sketch"]  # Sampling runs N_max steps, not the --max-seq-len cap.
    assert n_max <= MAX_SEQ_LEN and strokes.shape == (5, n_max, 3)
    for s, n in zip(strokes, lengths):
        assert_stroke3(s[:n], n_max)
        assert np.all(s[n:] == 0)  # Padding after the end.

    # 5. `sketch-rnn sample` writes an SVG grid and an ndjson that read back.
    prefix = tmp_path / "samples" / "s"
    sketch_rnn("sample", "--model", export_base, "--num", 4, "--output", prefix, cwd=tmp_path)
    root = ET.parse(f"{prefix}.svg").getroot()
    assert root.tag == SVG + "svg"
    paths = list(root.iter(SVG + "path"))
    assert len(paths) >= 4 and all(p.get("d", "").startswith("M") for p in paths)
    records = [json.loads(x) for x in pathlib.Path(f"{prefix}.ndjson").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    for r in records:
        assert r["mode"] == "sample"
        assert_stroke3(np.asarray(r["strokes"], np.float32), MAX_SEQ_LEN)
