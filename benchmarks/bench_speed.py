"""Training speed levers and SavedModel sampling latency on CPU, in one table.

Training: the `paper` preset (recurrent dropout on, batch 100) on aaron_sheep
(`../shared/data/sketchrnn_npz/aaron_sheep.npz`, run through our own Beam pipeline; the bundled
Quick Draw sample when ../shared is absent), through the real trainer
(`trainer.train.train_and_evaluate`, one device), one fresh process per configuration. Each lever
is added to the previous row and compared with the plain configuration of the same run:

  plain          full N_max = 250 padding, float32, no XLA (the reference's setting)
  + trim         each batch cut to its longest sketch
  + bucket       batches of similar lengths (then trimmed)
  + XLA          jit_compile of the training step (recompiles per batch length)
  + bf16         mixed_bfloat16 compute (mixture math stays float32)

Sketches/s is the median over the timed steps (after warm-up) of batch / step time.
Sampling: an exported SavedModel (`paper` preset, untrained, end-of-sketch pinned low so every
sketch runs all 250 points: the worst case) loaded with tf.saved_model.load; median wall time of
`sample` for 1 and 100 sketches, with and without the XLA-compiled signature.

    .venv/bin/python benchmarks/bench_speed.py [--steps 20] [--warmup 3] [--skip-train]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SHEEP = REPO.parent / "shared" / "data" / "sketchrnn_npz" / "aaron_sheep.npz"

CONFIGS = [
    ("plain (N_max padding)", ["trim_batches=false"]),
    ("+ trim", ["trim_batches=true"]),
    ("+ bucket", ["trim_batches=true", "bucket_batches=true"]),
    ("+ XLA", ["trim_batches=true", "bucket_batches=true", "jit_compile=true"]),
    ("+ bf16", ["trim_batches=true", "bucket_batches=true", "jit_compile=true", "precision=mixed_bfloat16"]),
    ("trim + bucket + bf16 (no XLA)", ["trim_batches=true", "bucket_batches=true", "precision=mixed_bfloat16"]),
]

TRAIN_CHILD = r'''
import json, sys, time
import numpy as np
from model.hparams import HParams
from trainer.train import train_and_evaluate
data, run, steps, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
hps = HParams.preset("paper").with_overrides(sys.argv[5:])
stamps = []
def log(line):
    if line.startswith("step "):
        stamps.append(time.perf_counter())
train_and_evaluate(data, run, hps, steps + warmup, "one_device", checkpoint_every=10**9, eval_every=0,
                   log_every=1, export=False, test_at_end=False, log=log)
dt = np.diff(stamps[warmup - 1:])
print("RESULT " + json.dumps({"median": hps.batch_size / float(np.median(dt)),
                              "mean": hps.batch_size * len(dt) / float(np.sum(dt))}))
'''

SAMPLE_CHILD = r'''
import json, sys, time
import numpy as np
import tensorflow as tf
from model.hparams import HParams
from model.sketch_rnn import SketchRNN
from trainer.export import export_saved_model
base = sys.argv[1]
hps = HParams.preset("paper")
model = SketchRNN(hps, 250)
model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])})
bias = model.head.bias.numpy(); bias[2] = -30.0; model.head.bias.assign(bias)
meta = {"scale_factor": 20.0, "max_seq_len": 250}
out = {}
for xla in (False, True):
    path = export_saved_model(model, hps, meta, base, version=2 if xla else 1, xla=xla)
    sample = tf.saved_model.load(path).signatures["sample"]
    for num in (1, 100):
        args = dict(num=tf.constant(num), temperature=tf.constant(0.5), seed=tf.constant(1))
        sample(**args)  # Tracing / XLA compilation.
        times = []
        for i in range(5 if num == 1 else 3):
            t0 = time.perf_counter()
            r = sample(**{**args, "seed": tf.constant(i)})
            r["strokes"].numpy()
            times.append(time.perf_counter() - t0)
        assert int(np.min(r["lengths"])) == 250
        out[f"{'xla' if xla else 'graph'}_{num}"] = float(np.median(times))
print("RESULT " + json.dumps(out))
'''


def child(code: str, *args: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])


def preprocess(out: pathlib.Path) -> str:
    """aaron_sheep (or the bundled sample) through `sketch-rnn preprocess`; returns a label."""
    from pipeline import cli as pipeline_cli
    if SHEEP.exists():
        inputs, label = [str(SHEEP)], "aaron_sheep.npz (7,400 train sketches, mean length 125)"
    else:
        inputs = [str(p) for p in sorted((REPO / "data" / "quickdraw_sample").glob("*.ndjson"))]
        label = "bundled Quick Draw sample (../shared absent)"
    argv = ["--output", str(out)]
    for path in inputs:
        argv += ["--input", path]
    if pipeline_cli.main(argv) != 0:
        sys.exit("preprocessing failed")
    return label


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true", help="only the sampling rows")
    parser.add_argument("--skip-sample", action="store_true", help="only the training rows")
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if not args.skip_train:
            label = preprocess(tmp / "data")
            print(f"training data: {label}; paper preset, batch 100, recurrent dropout on, "
                  f"{args.steps} timed steps after {args.warmup}", flush=True)
            base = None
            for i, (name, sets) in enumerate(CONFIGS):
                start = time.time()
                r = child(TRAIN_CHILD, str(tmp / "data"), str(tmp / f"run{i}"), str(args.steps),
                          str(args.warmup), *sets)
                base = base or r["median"]
                rows.append((f"train {name}", f"{r['median']:.1f} sketches/s", f"{r['median'] / base:.2f}x plain"))
                print(f"  {rows[-1][0]}: {rows[-1][1]} ({rows[-1][2]}; mean {r['mean']:.1f}; "
                      f"{time.time() - start:.0f} s)", flush=True)
        if not args.skip_sample:
            r = child(SAMPLE_CHILD, str(tmp / "export"))
            for num in (1, 100):
                target = "<= 30 ms" if num == 1 else "<= 0.5 s"
                rows.append((f"SavedModel sample {num} x 250 points, graph", f"{r[f'graph_{num}'] * 1000:.0f} ms",
                             ""))
                rows.append((f"SavedModel sample {num} x 250 points, XLA", f"{r[f'xla_{num}'] * 1000:.0f} ms",
                             f"{r[f'graph_{num}'] / r[f'xla_{num}']:.1f}x graph; target {target}"))
    width = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"{a:<{width}}  {b:>18}  {c}" for a, b, c in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
