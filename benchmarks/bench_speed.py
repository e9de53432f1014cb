"""Training speed beside the reference, the levers one by one, and SavedModel sampling latency.

Training, all in one run on one machine, `paper` preset (batch 100, recurrent dropout on) on
aaron_sheep (`../shared/data/sketchrnn_npz/aaron_sheep.npz`; ours through our own Beam pipeline):

  reference       magenta's TF1 sketch_rnn (`../shared/reference/bench_reference.py`, its own
                  data loader, augmentation and loss), in its own virtualenv (`--ref-python`, default
                  $REF_PYTHON or /tmp/ref-venv/bin/python: `python3 -m venv /tmp/ref-venv &&
                  /tmp/ref-venv/bin/pip install tensorflow==2.21.0 tf-keras==2.21.0`); skipped with a
                  message when ../shared/reference or that interpreter is absent
  paper-exact     ours, every batch padded to N_max and every row run: the same work per step as the
                  reference (with the fused LSTM kernel where it builds, as by default)
  defaults        the project defaults: each batch trimmed to its longest sketch + 1 end row, the decoder
                  run to each sketch's end + 16 end rows (decoder_end_rows; the loss still / N_max),
                  precision auto, the fused CPU LSTM kernel (lstm_kernel auto)
  ... loop        the same with lstm_kernel=loop: TensorFlow's while loop (rnn_batch_splits auto: one
                  loop per CPU core over slices of the batch with single-threaded ops)
  + bucket        defaults with batches grouped by length (faster, but learns slower per step)
  + bf16          defaults with mixed_bfloat16 (the loop: the kernel is float32; faster only with AMX
                  bf16 units, where `auto` without the kernel would pick it)

Every row runs through the real trainer loop in a fresh process (ours: `train_and_evaluate`, one
device, input pipeline and host sync included; the reference: its own sess.run loop, NumPy batching
included) and reports sketches/s = timed steps x batch / their total wall time, after warm-up steps.
The CPU's relevant features (AVX2, AVX-512, AVX-512 bf16, AMX) are printed with the table.
Sampling: an exported SavedModel (`paper` preset, untrained, end-of-sketch pinned low so every
sketch runs all 250 points: the worst case) loaded with tf.saved_model.load; median wall time of
`sample` for 1 and 100 sketches, with and without the XLA-compiled signature.

    .venv/bin/python benchmarks/bench_speed.py [--steps 20] [--warmup 3] [--skip-sample] [--skip-train] [--quick]
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

REFERENCE = REPO.parent / "shared" / "reference" / "bench_reference.py"
PAPER_EXACT = ["trim_batches=false", "bucket_batches=false"]
CONFIGS = [
    ("paper-exact (N_max padding)", PAPER_EXACT),
    ("project defaults", []),
    ("paper-exact, TensorFlow loop", PAPER_EXACT + ["lstm_kernel=loop"]),
    ("defaults, TensorFlow loop", ["lstm_kernel=loop"]),
    ("defaults + bucket", ["bucket_batches=true"]),
    ("defaults + bf16 (TensorFlow loop)", ["precision=mixed_bfloat16"]),
]
QUICK = {"paper-exact (N_max padding)", "project defaults", "defaults, TensorFlow loop"}

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


def cpu_features() -> str:
    from trainer.train import cpu_flags

    flags = cpu_flags()
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")), "?")
    except OSError:
        model = "?"
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} cores, {' '.join(have) or 'no AVX2'}"


def run_reference(python: str, steps: int, warmup: int) -> float | None:
    """sketches/s of the reference on aaron_sheep, or None (with the reason printed)."""
    if not REFERENCE.exists():
        print(f"  reference: skipped ({REFERENCE} not present: only developers' checkouts have "
              "../shared)", flush=True)
        return None
    if not os.path.exists(python):
        print(f"  reference: skipped (no interpreter {python}; create its venv as the docstring says, "
              "or pass --ref-python)", flush=True)
        return None
    proc = subprocess.run([python, str(REFERENCE), "--warmup", str(warmup), "--steps", str(steps)],
                          capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    line = [x for x in proc.stdout.splitlines() if x.startswith("reference sketches_per_s=")]
    if proc.returncode or not line:
        print(f"  reference: failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", flush=True)
        return None
    return float(line[-1].split()[1].split("=")[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true", help="only the sampling rows")
    parser.add_argument("--skip-sample", action="store_true", help="only the training rows")
    parser.add_argument("--quick", action="store_true",
                        help="only the reference, paper-exact, defaults and defaults with the loop")
    parser.add_argument("--ref-python", default=os.environ.get("REF_PYTHON", "/tmp/ref-venv/bin/python"),
                        help="interpreter with tensorflow==2.21.0 and tf-keras for the reference")
    args = parser.parse_args()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        if not args.skip_train:
            label = preprocess(tmp / "data")
            print(f"CPU: {cpu_features()}", flush=True)
            print(f"training data: {label}; paper preset, batch 100, recurrent dropout on, "
                  f"{args.steps} timed steps after {args.warmup}", flush=True)
            start = time.time()
            ref = run_reference(args.ref_python, args.steps, args.warmup)
            if ref:
                rows.append(("train reference (magenta TF1)", f"{ref:.1f} sketches/s", "1.00x reference"))
                print(f"  {rows[-1][0]}: {rows[-1][1]} ({time.time() - start:.0f} s)", flush=True)
            base = None
            for i, (name, sets) in enumerate(CONFIGS):
                if args.quick and name not in QUICK:
                    continue
                start = time.time()
                r = child(TRAIN_CHILD, str(tmp / "data"), str(tmp / f"run{i}"), str(args.steps),
                          str(args.warmup), *sets)
                base = base or r["mean"]
                vs = f"{r['mean'] / ref:.2f}x reference, " if ref else ""
                rows.append((f"train {name}", f"{r['mean']:.1f} sketches/s",
                             f"{vs}{r['mean'] / base:.2f}x paper-exact"))
                print(f"  {rows[-1][0]}: {rows[-1][1]} ({rows[-1][2]}; median step {r['median']:.1f}; "
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
