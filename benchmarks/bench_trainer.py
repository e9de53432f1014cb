"""Training throughput (sketches/s) on CPU with batch trimming on and off, and peak RSS vs dataset size.

Data: Quick Draw-like lengths from `../shared/data/quickdraw_npz/pig.npz` (or sketchrnn_npz/aaron_sheep
when present; else the bundled raw sample, coarsely subsampled), written as the pipeline's TFRecords
padded to N_max = 250 (the pipeline's default --max-seq-len, the reference's limit). Each
configuration runs `trainer.train.train_and_evaluate` in a fresh process (`one_device`, no
augmentation change, no eval/export) for `--warmup + --steps` steps; sketches/s is measured between
the progress lines of the timed steps (tracing excluded); peak RSS is the process's ru_maxrss.
The "x10" row repeats the training set 10 times (distinct records) to show that memory does not
grow with the dataset (tf.data streams the files; nothing is cached).

    .venv/bin/python benchmarks/bench_trainer.py [--preset paper] [--steps 4] [--warmup 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
N_MAX = 250

CHILD = r'''
import json, resource, sys, time
from model.hparams import HParams
from trainer.train import train_and_evaluate
data, run, preset, trim, steps, warmup = sys.argv[1:7]
hps = HParams.preset(preset).replace(trim_batches=trim == "1")
stamps = []
def log(line):
    if line.startswith("step "):
        stamps.append((int(line.split()[1].split("/")[0]), time.perf_counter()))
n = int(steps) + int(warmup)
train_and_evaluate(data, run, hps, n, "one_device", checkpoint_every=10**9, eval_every=0, log_every=1,
                   export=False, test_at_end=False, log=log)
(s0, t0), (s1, t1) = stamps[int(warmup) - 1], stamps[-1]
print("RESULT " + json.dumps({"sketches_per_s": (s1 - s0) * hps.batch_size / (t1 - t0),
                              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def load_strokes3() -> tuple[list[np.ndarray], str]:
    shared = REPO.parent / "shared" / "data"
    for path in (shared / "quickdraw_npz" / "pig.npz", shared / "sketchrnn_npz" / "aaron_sheep.npz"):
        if path.exists():
            d = np.load(path, encoding="latin1", allow_pickle=True)
            return [np.asarray(s, np.float32) for s in d["train"] if 2 <= len(s) <= N_MAX], path.name
    sys.path.insert(0, str(REPO / "tests"))
    from test_input import sample_sketches
    return sample_sketches(REPO / "data" / "quickdraw_sample", limit=10**6, step=2), "bundled sample"


def write(out: pathlib.Path, sketches: list[np.ndarray], copies: int) -> None:
    import tensorflow as tf
    from model.strokes import stroke3_to_stroke5
    from pipeline import schema

    scale = float(np.std(np.concatenate([s[:, :2] for s in sketches])))
    out.mkdir(parents=True)
    for split, items in (("train", sketches), ("valid", sketches[:100]), ("test", sketches[:100])):
        reps = copies if split == "train" else 1
        with tf.io.TFRecordWriter(str(out / f"{split}-00000-of-00001.tfrecord.gz"), options="GZIP") as w:
            for c in range(reps):
                for i, s in enumerate(items):
                    n = s.copy()
                    n[:, :2] /= scale
                    w.write(schema.serialize_example(stroke3_to_stroke5(n, N_MAX), len(s), "x", f"{c}:{i}"))
    schema.write_metadata(str(out), {
        "format_version": schema.FORMAT_VERSION, "scale_factor": scale, "max_seq_len": N_MAX,
        "classes": ["x"], "counts": {"train": len(sketches) * copies, "valid": 100, "test": 100},
        "lines_read": len(sketches), "rejected": 0, "rdp_epsilon": 2.0, "sources": ["bench"]})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    sketches, source = load_strokes3()
    lengths = np.array([len(s) for s in sketches])
    print(f"data: {source}, {len(sketches)} train sketches, length median {np.median(lengths):.0f}, "
          f"p99 {np.percentile(lengths, 99):.0f}, max {lengths.max()}, padded to N_max={N_MAX}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        write(tmp / "x1", sketches, 1)
        write(tmp / "x10", sketches, 10)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        for name, data, trim in (("trim on", "x1", "1"), ("trim off (N_max)", "x1", "0"),
                                 ("trim on, data x10", "x10", "1")):
            proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp / data), str(tmp / f"run_{data}_{trim}"),
                                   args.preset, trim, str(args.steps), str(args.warmup)],
                                  capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            r = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
            rows.append((name, len(sketches) * (10 if data == "x10" else 1), r))
    print(f"\npreset {args.preset}, CPU, {args.steps} timed steps after {args.warmup} warm-up steps")
    print(f"{'configuration':<20} {'train sketches':>14} {'sketches/s':>11} {'peak RSS MB':>12}")
    for name, n, r in rows:
        print(f"{name:<20} {n:>14} {r['sketches_per_s']:>11.1f} {r['peak_rss_mb']:>12.0f}")
    print(f"trimming speed-up: {rows[0][2]['sketches_per_s'] / rows[1][2]['sketches_per_s']:.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
