"""The fused CPU LSTM kernel (trainer/kernels): the same numbers as TensorFlow's loop, its build and
fallback, the trainer's choice of it, and the loss of a decoder that stops after each sketch's end."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from model import losses, rnn
from model.hparams import HParams
from trainer import kernels

sys.path.insert(0, os.path.dirname(__file__))
from test_input import sample_sketches, write_dataset  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ops():
    lib = kernels.load()
    if lib is None:
        pytest.fail(f"the fused kernel did not build here: {kernels.why()}")
    return lib


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_lstm(x, h0, c0, w, wx, row_bias, mask, lengths):
    """NumPy reference of the kernel's forward: x `[T, B, D]` -> hs `[T, B, H]`, h_T, c_T."""
    steps, batch, _ = x.shape
    h, c = h0.astype(np.float64), c0.astype(np.float64)
    hs = np.zeros((steps, batch, h0.shape[1]))
    for t in range(steps):
        z = h @ w + x[t] @ wx + row_bias
        i, f, g, o = np.split(z, 4, axis=-1)
        g = np.tanh(g) * (mask[t] if mask is not None else 1.0)
        c_new = _sigmoid(f) * c + _sigmoid(i) * g
        h_new = _sigmoid(o) * np.tanh(c_new)
        run = (t < lengths)[:, None]
        h, c = np.where(run, h_new, h), np.where(run, c_new, c)
        hs[t] = h
    return hs, h, c


def _inputs(steps=7, batch=5, units=8, d=3, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s, scale=1.0: (rng.normal(size=s) * scale).astype(np.float32)  # noqa: E731
    return dict(x=f(steps, batch, d), h0=f(batch, units), c0=f(batch, units),
                w=f(units, 4 * units, scale=0.4), wx=f(d, 4 * units, scale=0.5),
                row_bias=f(batch, 4 * units, scale=0.3))


KEEP, SEED = 0.7, np.array([12345, -678], np.int32)


def _dropout(ops, use_mask, shape):
    """(keep_prob, seed) for the ops and the masks they draw (None without dropout)."""
    keep = KEEP if use_mask else 1.0
    if not use_mask:
        return keep, None
    return keep, ops.sketch_dropout_mask(keep, SEED, np.array(shape, np.int32)).numpy()


def test_dropout_masks_are_inverted_dropout_and_depend_on_seed_step_and_row(ops):
    mask = ops.sketch_dropout_mask(KEEP, SEED, np.array([50, 40, 64], np.int32)).numpy()
    assert set(np.unique(mask)) == {0.0, np.float32(1 / KEEP)}
    assert abs((mask == 0).mean() - (1 - KEEP)) < 0.01  # 128,000 draws
    assert not np.array_equal(mask[0], mask[1]) and not np.array_equal(mask[:, 0], mask[:, 1])
    other = ops.sketch_dropout_mask(KEEP, SEED + 1, np.array([50, 40, 64], np.int32)).numpy()
    assert 0.3 < (other != mask).mean() < 0.5  # Another seed: independent masks (2 * 0.7 * 0.3).
    assert np.all(ops.sketch_dropout_mask(1.0, SEED, np.array([2, 3, 4], np.int32)).numpy() == 1.0)


@pytest.mark.parametrize("use_mask", [False, True])
def test_forward_matches_numpy(ops, use_mask):
    """Per-row lengths (0, shorter, all T): ended rows keep their state and repeat their last h."""
    a = _inputs()
    lengths = np.array([7, 3, 0, 5, 7], np.int32)
    keep, mask = _dropout(ops, use_mask, a["x"].shape[:2] + a["h0"].shape[1:])
    hs, _, _, h, c = ops.sketch_lstm_forward(a["x"], a["h0"], a["c0"], a["w"], a["wx"], a["row_bias"],
                                             keep, SEED, lengths)
    want_hs, want_h, want_c = np_lstm(a["x"], a["h0"], a["c0"], a["w"], a["wx"], a["row_bias"], mask, lengths)
    np.testing.assert_allclose(hs.numpy(), want_hs, atol=2e-6)
    np.testing.assert_allclose(h.numpy(), want_h, atol=2e-6)
    np.testing.assert_allclose(c.numpy(), want_c, atol=2e-6)
    np.testing.assert_array_equal(h.numpy()[2], a["h0"][2])  # Length 0: the initial state.


def test_both_ops_refuse_inputs_of_the_wrong_shape(ops):
    """The shared input check: a wrong h0, lengths or input_kernel is an InvalidArgumentError that
    names the input, from the forward and the backward op alike (never a read out of bounds)."""
    a = _inputs()
    lengths = np.full([5], 7, np.int32)
    hs, cs, acts, h, c = ops.sketch_lstm_forward(a["x"], a["h0"], a["c0"], a["w"], a["wx"], a["row_bias"],
                                                 1.0, SEED, lengths)

    def forward(**bad):
        b = {**a, "lengths": lengths, **bad}
        return ops.sketch_lstm_forward(b["x"], b["h0"], b["c0"], b["w"], b["wx"], b["row_bias"], 1.0, SEED,
                                       b["lengths"])

    def backward(**bad):
        b = {**a, "lengths": lengths, **bad}
        return ops.sketch_lstm_backward(b["x"], b["w"], b["wx"], b["h0"], b["c0"], hs, cs, acts, 1.0, SEED,
                                        b["lengths"], tf.zeros_like(hs), tf.zeros_like(h), tf.zeros_like(c))

    backward()  # The good inputs pass.
    for op in (forward, backward):
        with pytest.raises(tf.errors.InvalidArgumentError, match="h0 and c0 must be"):
            op(h0=a["h0"][:4])
        with pytest.raises(tf.errors.InvalidArgumentError, match="lengths must be"):
            op(lengths=lengths[:3])
        with pytest.raises(tf.errors.InvalidArgumentError, match="input_kernel must be"):
            op(wx=a["wx"][:, :-1])


def _loop_reference(x, h0, c0, w, wx, row_bias, mask, lengths):
    """The same cell as TensorFlow ops (model.rnn.lstm_step, one unrolled step at a time)."""
    steps = x.shape[0]
    run = tf.transpose(tf.sequence_mask(lengths, steps))[..., None]
    h, c, outs = h0, c0, []
    for t in range(steps):
        xw = tf.matmul(x[t], wx) + row_bias
        h_new, c_new = rnn.lstm_step(xw, h, c, {"recurrent_kernel": w}, False,
                                     None if mask is None else mask[t])
        h, c = tf.where(run[t], h_new, h), tf.where(run[t], c_new, c)
        outs.append(h)
    return tf.stack(outs), h, c


@pytest.mark.parametrize("use_mask", [False, True])
def test_gradients_match_autodiff_of_the_loop(ops, use_mask):
    """Gradients of every input (x, h0, c0, both kernels, the row bias) against TensorFlow's
    autodiff of the same cell, for a loss that reads the outputs and both final states."""
    rnn.register_fused_gradient(ops)
    a = {k: tf.constant(v) for k, v in _inputs(seed=1).items()}
    lengths = tf.constant([7, 3, 0, 5, 6], tf.int32)
    keep, mask = _dropout(ops, use_mask, [7, 5, 8])
    weights = tf.constant(np.random.default_rng(2).normal(size=(7, 5, 8)).astype(np.float32))
    wrt = [a[k] for k in ("x", "h0", "c0", "w", "wx", "row_bias")]
    grads = []
    for fused in (True, False):
        with tf.GradientTape() as tape:
            tape.watch(wrt)
            if fused:
                hs, _, _, h, c = ops.sketch_lstm_forward(*wrt, keep, SEED, lengths)
            else:
                hs, h, c = _loop_reference(*wrt, mask, lengths)
            loss = tf.reduce_sum(hs * weights) + tf.reduce_sum(h * a["h0"]) + 0.5 * tf.reduce_sum(c * a["c0"])
        grads.append(tape.gradient(loss, wrt))
    for name, got, want in zip(("x", "h0", "c0", "w", "wx", "row_bias"), *grads):
        assert float(tf.reduce_max(tf.abs(want))) > 1e-3, name
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-5, rtol=1e-4, err_msg=name)


def test_layer_fused_equals_loop_with_static_inputs_and_lengths(ops):
    """model.rnn.LSTM: the fused training call gives the loop's outputs and gradients for every
    variable, with static inputs (the decoder's z) and per-row lengths, over more rows than
    threads and rows of length 0."""
    import keras

    batch, steps = 9, 6
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(batch, steps, 5)).astype(np.float32))
    z = tf.constant(rng.normal(size=(batch, 4)).astype(np.float32))
    lengths = tf.constant([6, 1, 0, 6, 3, 2, 5, 4, 6], tf.int32)
    target = tf.constant(rng.normal(size=(batch, steps, 8)).astype(np.float32))
    results = []
    for fused in (True, False):
        keras.utils.set_random_seed(4)
        layer = rnn.LSTM(8, fused_ops=ops if fused else None, static_size=4)
        with tf.GradientTape() as tape:
            tape.watch([x, z])
            hs, (h, c) = layer(x, lengths=lengths, training=True, static_inputs=z)
            loss = tf.reduce_sum(hs * target) + tf.reduce_sum(h) + tf.reduce_sum(c ** 2)
        results.append([hs, h, c, *tape.gradient(loss, [x, z, *layer.trainable_variables])])
    for got, want in zip(*results):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-5, rtol=1e-4)


def test_fused_dropout_is_inverted_dropout_with_a_fresh_mask_each_step(ops):
    """The fused call draws the reference's recurrent dropout: with the forget gate shut and no
    recurrent weights, c_t = i * g * mask_t / keep, each unit dropped with probability `rate`,
    masks independent between steps."""
    units, n, rate = 4, 20_000, 0.3
    keep = 1.0 - rate
    layer = rnn.LSTM(units, recurrent_dropout=rate, fused_ops=ops)
    layer.build((None, None, 3))
    rng = np.random.default_rng(6)
    layer.kernel.assign(rng.normal(0, 1, (3, 4 * units)).astype(np.float32))
    layer.recurrent_kernel.assign(np.zeros((units, 4 * units), np.float32))
    bias = rng.normal(0, 0.5, 4 * units)
    bias[units:2 * units] = -50.0
    layer.bias.assign(bias.astype(np.float32))
    x = np.tile(rng.normal(0, 1, (1, 1, 3)), [n, 2, 1]).astype(np.float32)
    _, (_, c_eval) = layer(tf.constant(x), training=False)
    seq, (_, c_train) = layer(tf.constant(x), training=True)
    c_eval, c_train = c_eval.numpy()[0], c_train.numpy()
    dropped = np.abs(c_train) < 1e-9
    np.testing.assert_allclose(np.where(dropped, c_eval / keep, c_train), np.tile(c_eval / keep, [n, 1]),
                               rtol=1e-5)
    freq = dropped.mean(0)
    assert np.all(np.abs(freq - rate) < 5 * np.sqrt(rate * keep / n)), freq
    both = ((np.abs(seq.numpy()[:, 0]) < 1e-9) & (np.abs(seq.numpy()[:, 1]) < 1e-9)).mean(0)
    assert np.all(np.abs(both - rate ** 2) < 5 * np.sqrt(rate ** 2 / n)), both
    # dropout=False (the first pass of hps.dec_scheduled_sampling): the training kernel, no dropout.
    _, (_, c_plain) = layer(tf.constant(x), training=True, dropout=False)
    np.testing.assert_allclose(c_plain.numpy(), np.tile(c_eval, [n, 1]), rtol=1e-5)


def test_evaluation_and_export_graphs_never_hold_the_custom_op(ops):
    """Only training calls use the kernel: an inference call's graph is TensorFlow's own ops (an
    export must load where the kernel was never built)."""
    layer = rnn.LSTM(8, fused_ops=ops)
    x = tf.zeros([2, 3, 5])

    def op_types(training):
        fn = tf.function(lambda x: layer(x, training=training)[0])
        return {op.type for op in fn.get_concrete_function(x).graph.get_operations()}

    assert "SketchLstmForward" in op_types(True)
    assert "SketchLstmForward" not in op_types(False)


# --- build, fallback, choice ------------------------------------------------------------------


def test_build_errors_say_what_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("SKETCH_RNN_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.raises(RuntimeError, match="false failed"):
        kernels.build()
    monkeypatch.setattr(kernels.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler found"):
        kernels.build()
    assert not list((tmp_path / "cache").rglob("*.so"))  # No half-written library left behind.


def test_build_turns_off_avx512_fp16_where_the_cpu_has_it(monkeypatch):
    """TensorFlow's Eigen does not compile with -march=native on AVX-512 FP16 CPUs (g++ 12): the
    command adds -mno-avx512fp16 after it there, and only there."""
    fp16 = "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16\n"
    monkeypatch.setattr(kernels, "_cpu_signature", lambda: fp16)
    cmd = kernels._command("g++", "out.so")
    assert cmd.index("-mno-avx512fp16") == cmd.index("-march=native") + 1
    monkeypatch.setattr(kernels, "_cpu_signature", lambda: fp16.replace(" avx512_fp16", ""))
    cmd = kernels._command("g++", "out.so")
    assert "-march=native" in cmd and "-mno-avx512fp16" not in cmd


CHOICES = '''
import json, os, sys
from model.hparams import HParams
from trainer import kernels
from trainer.train import resolve_lstm_kernel
default = dict(os.environ)
out = {}
for name, sets, env in json.loads(sys.argv[1]):
    os.environ.clear()
    os.environ.update({**default, **env})
    kernels._STATE.clear()  # What a fresh process starts with: nothing loaded, no reason yet.
    try:
        ops, why = resolve_lstm_kernel(HParams.preset("tiny").with_overrides(sets))
        out[name] = [ops is not None, why]
    except RuntimeError as e:
        out[name] = ["error", str(e)]
print("RESULT " + json.dumps(out))
'''


def test_trainer_falls_back_to_the_loop_and_says_why(tmp_path):
    """No compiler (auto): the loop, with the reason; lstm_kernel=fused there: an error; bf16 or
    SKETCH_RNN_FUSED_LSTM=0: the loop. One child process (TensorFlow not yet running, as in
    `sketch-rnn train`), each case from a clean kernel state under its own environment."""
    empty = {"SKETCH_RNN_KERNEL_CACHE": str(tmp_path / "empty"), "CXX": "/nonexistent/g++", "PATH": "/nonexistent"}
    cases = [("no_compiler", [], empty), ("fused_no_compiler", ["lstm_kernel=fused"], empty),
             ("bf16", ["precision=mixed_bfloat16"], {}), ("off", [], {"SKETCH_RNN_FUSED_LSTM": "0"}),
             ("default", [], {})]
    proc = subprocess.run([sys.executable, "-c", CHOICES, json.dumps(cases)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                                                      "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads([x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])
    used, why = got["no_compiler"]
    assert used is False and "no C++ compiler found" in why and "TensorFlow loop" in why
    used, why = got["fused_no_compiler"]
    assert used == "error" and "lstm_kernel=fused cannot be used" in why
    used, why = got["bf16"]
    assert used is False and "precision mixed_bfloat16" in why
    used, why = got["off"]
    assert used is False and "SKETCH_RNN_FUSED_LSTM=0" in why
    used, why = got["default"]
    assert used is True and "fused CPU kernel" in why


def test_training_steps_with_the_kernel_equal_the_loop(tmp_path, sample_dir, ops):
    """Three real training steps (tiny preset, dropout off so both draw nothing at random):
    the same losses with the fused kernel and with TensorFlow's loop."""
    import keras

    from trainer.train import train_and_evaluate

    write_dataset(tmp_path / "d", sample_sketches(sample_dir, limit=40), shards=1)
    # float32 for both: with the loop, precision auto picks bfloat16 on CPUs with AMX.
    hps = HParams.preset("tiny").replace(batch_size=6, use_recurrent_dropout=False, precision="float32")
    got = {}
    for kernel in ("fused", "loop"):
        keras.utils.set_random_seed(5)
        logs = []
        r = train_and_evaluate(str(tmp_path / "d"), str(tmp_path / kernel), hps.replace(lstm_kernel=kernel), 3,
                               "one_device", eval_every=0, log_every=1, export=False, test_at_end=False,
                               log=logs.append)
        assert any(line.startswith(f"lstm_kernel {kernel}") for line in logs), logs
        got[kernel] = r["train"]
    for name in ("l_s", "l_p", "kl", "cost"):
        assert got["fused"][name] == pytest.approx(got["loop"][name], rel=1e-4), name


# --- the loss of a decoder that stops after each sketch's end ---------------------------------


def test_run_lengths_count_the_last_padding_row_for_every_row_after_it():
    """When the outputs of the padding rows repeat (as a decoder fed the same end row does once
    settled), L_p over rows run with run_lengths equals L_p over all N_max rows; rows past the
    run are ignored whatever (finite) values they hold; L_s is untouched."""
    rng = np.random.default_rng(7)
    n_max, m = 12, 3
    for lengths in (np.array([3, 7, 5, 1], np.int32), np.array([3, 7, 12, 11], np.int32)):
        targets = np.zeros((4, n_max, 5), np.float32)
        targets[..., 4] = 1.0
        for b, n in enumerate(lengths):
            targets[b, :n] = 0.0
            targets[b, :n, :2] = rng.normal(size=(n, 2))
            targets[b, :n, 2] = 1.0
        outputs = rng.normal(size=(4, n_max, 6 * m + 3)).astype(np.float32)
        run = np.minimum(lengths + 2, n_max)
        settled = outputs.copy()
        for b, r in enumerate(run):
            settled[b, r:] = outputs[b, r - 1]  # Padding rows after the run predict what its last did.
        full_s, full_p = losses.per_example_reconstruction_loss(targets, settled, m)
        garbage = settled.copy()
        for b, r in enumerate(run):
            garbage[b, r:] = 5 * rng.normal(size=garbage[b, r:].shape)
        for trimmed in sorted({n_max, int(run.max())}):  # Padded to N_max, or cut to the longest run.
            l_s, l_p = losses.per_example_reconstruction_loss(targets[:, :trimmed], garbage[:, :trimmed], m,
                                                              max_seq_len=n_max, run_lengths=run)
            np.testing.assert_allclose(l_p.numpy(), full_p.numpy(), rtol=1e-5)
            np.testing.assert_allclose(l_s.numpy(), full_s.numpy(), rtol=1e-5)
        # Without the run lengths the garbage rows would count.
        _, l_p = losses.per_example_reconstruction_loss(targets, garbage, m, run_lengths=None)
        assert not np.allclose(l_p.numpy(), full_p.numpy())
