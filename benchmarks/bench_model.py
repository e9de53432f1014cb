"""Model speed on CPU: training-step throughput and in-graph sampling vs a naive per-step loop.

Prints a table:
  * training steps (forward + backward + Adam) of the `paper` preset at batch 100, with sketches
    padded to T = 250 (N_max) and to T = 125 (aaron_sheep's mean length, what trimming or
    bucketing approach), recurrent dropout on as in the reference;
  * sampling: `SketchRNN.sample` (one tf.while_loop for the whole batch, inside a tf.function)
    vs a naive loop that calls the same decoder cell and head once per point from Python, for
    1 and 100 sketches. Both run all `--sample-len` steps (the untrained model's end-of-sketch
    logit is pinned low so neither stops early); the ratio is the figure to read.

    .venv/bin/python benchmarks/bench_model.py [--preset paper] [--steps 5] [--sample-len 250]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from model import losses  # noqa: E402
from model.hparams import HParams  # noqa: E402
from model.sketch_rnn import START_ROW, SketchRNN  # noqa: E402


def build(hps: HParams, max_len: int) -> SketchRNN:
    keras.utils.set_random_seed(0)
    model = SketchRNN(hps, max_len)
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])})
    return model


def batch(b: int, t: int) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(0)
    strokes = np.zeros([b, t, 5], np.float32)
    strokes[..., :2] = rng.normal(size=[b, t, 2])
    pen = rng.random([b, t]) < 0.1
    strokes[..., 2], strokes[..., 3] = ~pen, pen
    return {"strokes": tf.constant(strokes), "lengths": tf.fill([b], t)}


def time_training(model: SketchRNN, hps: HParams, t: int, steps: int) -> float:
    """Median sketches/s of `steps` timed training steps (after 2 warm-up steps)."""
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    x = batch(hps.batch_size, t)

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            l_s, l_p = losses.reconstruction_loss(x["strokes"], out["outputs"], hps.num_mixture)
            loss = l_s + l_p + 0.5 * losses.floored_kl(losses.kl_loss(out["mu"], out["sigma_hat"]), 0.2)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip([tf.clip_by_value(g, -1.0, 1.0) for g in grads],
                                      model.trainable_variables))
        return loss

    for _ in range(2):
        step(x).numpy()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step(x).numpy()
        times.append(time.perf_counter() - start)
    return hps.batch_size / float(np.median(times))


def naive_sample(model: SketchRNN, num: int, steps: int, temperature: float, seed: int) -> np.ndarray:
    """One Python iteration (eager TF calls + NumPy sampling) per point: the TF1-era pattern."""
    hps, rng = model.hps, np.random.default_rng(seed)
    z = rng.normal(size=[num, hps.z_size]).astype(np.float32)
    h, c = model.initial_decoder_state(tf.constant(z), num)
    prev = np.tile(np.array(START_ROW, np.float32), [num, 1])
    rows = []
    m = hps.num_mixture
    for _ in range(steps):
        x = tf.constant(np.concatenate([prev, z], axis=1))
        h, c = model.decoder.step(model.decoder.project(x), h, c)
        out = model.head(h).numpy().astype(np.float64)
        pen_logits, pi_logits = out[:, :3] / temperature, out[:, 3:3 + m] / temperature
        pi = np.exp(pi_logits - pi_logits.max(1, keepdims=True))
        pi /= pi.sum(1, keepdims=True)
        k = np.array([rng.choice(m, p=p) for p in pi])
        idx = np.arange(num)
        mx, my = out[idx, 3 + m + k], out[idx, 3 + 2 * m + k]
        sx = np.exp(out[idx, 3 + 3 * m + k]) * np.sqrt(temperature)
        sy = np.exp(out[idx, 3 + 4 * m + k]) * np.sqrt(temperature)
        rho = np.tanh(out[idx, 3 + 5 * m + k])
        e1, e2 = rng.normal(size=num), rng.normal(size=num)
        pen_p = np.exp(pen_logits - pen_logits.max(1, keepdims=True))
        pen_p /= pen_p.sum(1, keepdims=True)
        pen = np.array([rng.choice(3, p=p) for p in pen_p])
        row = np.zeros([num, 5], np.float32)
        row[:, 0] = mx + sx * e1
        row[:, 1] = my + sy * (rho * e1 + np.sqrt(1 - rho ** 2) * e2)
        row[idx, 2 + pen] = 1
        rows.append(row)
        prev = row
    return np.stack(rows, 1)


def time_call(fn, repeats: int) -> float:
    fn()  # Warm-up (tracing).
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per row (median)")
    parser.add_argument("--sample-len", type=int, default=250)
    parser.add_argument("--skip-train", action="store_true", help="only the sampling rows")
    args = parser.parse_args()
    hps = HParams.preset(args.preset)
    print(f"preset {args.preset}: enc {hps.enc_rnn_size}x2, dec {hps.dec_rnn_size}, z {hps.z_size}, "
          f"M {hps.num_mixture}, batch {hps.batch_size}, recurrent dropout {hps.use_recurrent_dropout}; "
          f"threads: {os.cpu_count()} cores", flush=True)
    rows = []
    for t in (() if args.skip_train else (250, 125)):
        model = build(hps, 250)
        rate = time_training(model, hps, t, args.steps)
        rows.append((f"train step, batch {hps.batch_size}, T={t}", f"{rate:.1f} sketches/s", ""))
        print(rows[-1], flush=True)

    model = build(hps.replace(use_recurrent_dropout=False), args.sample_len)
    bias = model.head.bias.numpy()
    bias[2] = -30.0  # Pin the end-of-sketch logit low: every sample runs all steps.
    model.head.bias.assign(bias)
    n = args.sample_len
    per_sketch = {}
    for num in (1, 100):
        for xla in (False, True):
            graph = time_call(lambda: model.sample(num, tf.constant(1.0), tf.constant(1), xla=xla)[0].numpy(), 3)
            per_sketch[(num, xla)] = graph / num
            rows.append((f"sample {num} x {n} points: in-graph{' + XLA' if xla else ''}",
                         f"{graph * 1000 / num:.2f} ms/sketch", f"{graph:.3f} s/call"))
            print(rows[-1], flush=True)
        naive = time_call(lambda: naive_sample(model, num, n, 1.0, 1), 1)
        per_sketch[(num, "naive")] = naive / num
        rows.append((f"sample {num} x {n} points: naive loop", f"{naive * 1000 / num:.2f} ms/sketch",
                     f"in-graph {naive / num / per_sketch[(num, False)]:.1f}x, "
                     f"+ XLA {naive / num / per_sketch[(num, True)]:.1f}x faster"))
        print(rows[-1], flush=True)
    rows.append(("batch of 100 in-graph vs naive loop one sketch at a time", "",
                 f"{per_sketch[(1, 'naive')] / per_sketch[(100, False)]:.1f}x sketches/s, "
                 f"+ XLA {per_sketch[(1, 'naive')] / per_sketch[(100, True)]:.1f}x"))
    width = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"{a:<{width}}  {b:>20}  {c}" for a, b, c in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
