"""Where one training step's time goes: timed pieces of the `paper` preset step on this machine.

Pieces (each its own tf.function, median of `--reps` calls after one warm-up call), batch B = 100
of T = 250 steps (the paper-exact shape on aaron_sheep; `--T` to change), recurrent dropout on:

  encoder fwd+bwd       the bidirectional 256-unit LSTM, masked by length, and its gradient
  decoder fwd           the 512-unit LSTM over T steps
  decoder fwd+bwd       ... and its gradient
  head + loss fwd+bwd   the mixture head over [B, T, 512] and the exact log-space losses
  model fwd+bwd         everything above in one function (the gradient of the whole loss)
  optimizer             clipping + Adam on the model's gradients
  whole step            model fwd+bwd + clipping + Adam in one function (no input pipeline)
  input pipeline        pulling one batch from trainer.input.make_dataset (parse, augment, batch)

Also the cost of small elementwise ops inside a while loop (what the LSTM step is made of) with one
and two intra-op threads, which explains most of the gap between the step and its matmul FLOPs.

    .venv/bin/python benchmarks/profile_step.py [--T 250] [--reps 5] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OPS_CHILD = r'''
import time, tensorflow as tf
a = tf.random.normal([100, 512]); W = tf.random.normal([512, 2048]) * 0.01
def per_iter_us(body):
    @tf.function
    def f():
        return tf.while_loop(lambda t, x: t < 250, lambda t, x: (t + 1, body(x)), (0, a))[1]
    f().numpy(); t = time.perf_counter(); f().numpy(); return (time.perf_counter() - t) / 250 * 1e6
print("RESULT", per_iter_us(lambda x: x * 1.0001), per_iter_us(tf.sigmoid), per_iter_us(tf.tanh),
      per_iter_us(lambda x: tf.tanh(tf.matmul(x, W)[:, :512])))
'''


def _timeit(fn, reps: int) -> float:
    import numpy as np
    import tensorflow as tf

    tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, fn())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def random_sketches(n: int, max_len: int) -> list:
    """n random stroke-3 sketches of lengths in [max_len / 3, max_len] (the speed does not depend
    on the values; the records are written with the tests' `write_dataset`, as bench_trainer does)."""
    import numpy as np

    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        length = int(rng.integers(max_len // 3, max_len + 1))
        s3 = np.zeros([length, 3], np.float32)
        s3[:, :2] = rng.normal(0, 1, [length, 2])
        s3[rng.random(length) < 0.1, 2] = 1
        s3[-1, 2] = 1
        out.append(s3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--T", type=int, default=250, help="steps per sketch (N_max)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    from model import losses
    from model.hparams import HParams
    from model.sketch_rnn import SketchRNN
    from trainer import input as input_lib
    from trainer.train import resolve_lstm_kernel, resolve_precision

    hps = HParams.preset("paper").with_overrides(args.set)
    rnn_ops, kernel_why = resolve_lstm_kernel(hps, print)
    keras.mixed_precision.set_global_policy(resolve_precision(hps.precision, rnn_ops is not None)[0])
    b, t = hps.batch_size, args.T
    rng = np.random.default_rng(0)
    lengths = rng.integers(t // 3, t + 1, b).astype(np.int32)
    lengths[0] = t
    strokes = np.zeros([b, t, 5], np.float32)
    for i, n in enumerate(lengths):
        strokes[i, :n, :2] = rng.normal(0, 1, [n, 2])
        strokes[i, :n, 2] = 1
        strokes[i, n:, 4] = 1
    batch = {"strokes": tf.constant(strokes), "lengths": tf.constant(lengths)}
    model = SketchRNN(hps, t, rnn_ops=rnn_ops)
    model(batch, training=False)
    opt = keras.optimizers.Adam(1e-3, epsilon=1e-8)
    variables = model.trainable_variables
    opt.build(variables)
    enc, dec = model.encoder, model.decoder
    x_dec = tf.random.normal([b, t, 5])
    z_dec = tf.random.normal([b, hps.z_size])
    h_dec = tf.random.normal([b, t, hps.dec_rnn_size])

    def grads_of(loss_fn, var_list):
        @tf.function
        def f():
            with tf.GradientTape() as tape:
                loss = loss_fn()
            return tape.gradient(loss, var_list)
        return f

    def full_loss():
        out = model(batch, training=True)
        l_s, l_p = losses.reconstruction_loss(batch["strokes"], out["outputs"], hps.num_mixture, max_seq_len=t)
        return l_s + l_p + 0.5 * losses.floored_kl(losses.kl_loss(out["mu"], out["sigma_hat"]), 0.2)

    def head_loss():
        out = model.head(h_dec)
        l_s, l_p = losses.reconstruction_loss(batch["strokes"], out, hps.num_mixture, max_seq_len=t)
        return l_s + l_p

    full_grads = grads_of(full_loss, variables)
    fixed = full_grads()

    @tf.function
    def apply_only():
        opt.apply_gradients(zip([tf.clip_by_value(g, -1.0, 1.0) for g in fixed], variables))
        return tf.constant(0)

    @tf.function
    def whole_step():
        g = full_grads()
        opt.apply_gradients(zip([tf.clip_by_value(x, -1.0, 1.0) for x in g], variables))
        return g[0]

    pieces = [
        ("encoder fwd+bwd", grads_of(lambda: tf.add_n([tf.reduce_sum(v) for v in enc(
            batch["strokes"], batch["lengths"], training=True)]), enc.trainable_variables)),
        ("decoder fwd", tf.function(lambda: dec(x_dec, training=True, static_inputs=z_dec)[0])),
        ("decoder fwd+bwd", grads_of(lambda: tf.reduce_sum(tf.cast(
            dec(x_dec, training=True, static_inputs=z_dec)[0], tf.float32)), dec.trainable_variables)),
        ("head + loss fwd+bwd", grads_of(head_loss, model.head.trainable_variables)),
        ("model fwd+bwd (whole loss)", full_grads),
        ("optimizer (clip + Adam)", apply_only),
        ("whole step (no input pipeline)", whole_step),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(REPO / "tests"))
        from test_input import write_dataset

        meta = write_dataset(pathlib.Path(tmp), random_sketches(500, t), max_len=t, shards=1)
        it = iter(input_lib.make_dataset(tmp, "train", hps, meta, b, True, seed=0))
        pieces.append(("input pipeline (one batch)", lambda: next(it)["strokes"]))
        print(f"paper preset, B={b}, T={t}, recurrent dropout {hps.use_recurrent_dropout}, "
              f"policy {keras.mixed_precision.global_policy().name}, {os.cpu_count()} cores, "
              f"LSTM {'fused kernel' if rnn_ops is not None else 'TensorFlow loop'} ({kernel_why})",
              flush=True)
        results = {}
        for name, fn in pieces:
            results[name] = _timeit(fn, args.reps)
            print(f"  {name:32s} {results[name] * 1000:8.1f} ms", flush=True)
    step = results["whole step (no input pipeline)"]
    dec_flops = 3 * 2 * b * t * hps.dec_rnn_size * 4 * hps.dec_rnn_size  # fwd + 2x bwd matmuls
    print(f"  whole step: {b / step:.1f} sketches/s; decoder recurrent matmuls alone "
          f"{dec_flops / 1e9:.0f} GFLOP -> {dec_flops / results['decoder fwd+bwd'] / 1e9:.0f} GFLOP/s achieved")
    for threads in (1, 2):
        env = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(threads)}
        out = subprocess.run([sys.executable, "-c", OPS_CHILD], capture_output=True, text=True, env=env)
        vals = [float(v) for v in out.stdout.split("RESULT")[-1].split()]
        print(f"  per while-loop step, {threads} intra-op thread(s): mul [100,512] {vals[0]:.0f} us, "
              f"sigmoid {vals[1]:.0f} us, tanh {vals[2]:.0f} us, matmul [100,512]x[512,2048] + tanh "
              f"{vals[3]:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
