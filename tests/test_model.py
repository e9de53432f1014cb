"""The sketch-rnn model: losses against a NumPy reference written from the formulas, masking,
sampling validity/determinism/greedy, completion, cells, and a tiny model that overfits."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from model import losses, schedules
from model.hparams import HParams
from model.latent import slerp
from model.rnn import LSTM, HyperLSTM
from model.sketch_rnn import END_ROW, START_ROW, SketchRNN
from model.strokes import stroke3_to_stroke5
from test_input import sample_sketches

M = 3


# --- an independent NumPy reference of the losses (float64, straight from the paper) ----------


def np_logsumexp(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    return (m + np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True))).squeeze(axis)


def np_reconstruction(targets, outputs, m, mask_pen=False):
    targets, outputs = targets.astype(np.float64), outputs.astype(np.float64)
    b, t, _ = targets.shape
    pen_logits = outputs[..., :3]
    rest = outputs[..., 3:]
    pi_l, mu_x, mu_y, ls_x, ls_y, rho_pre = (rest[..., k * m:(k + 1) * m] for k in range(6))
    log_pi = pi_l - np_logsumexp(pi_l, -1)[..., None]
    sx, sy, rho = np.exp(ls_x), np.exp(ls_y), np.tanh(rho_pre)
    dx, dy = targets[..., 0:1], targets[..., 1:2]
    zx, zy = (dx - mu_x) / sx, (dy - mu_y) / sy
    z = zx ** 2 + zy ** 2 - 2 * rho * zx * zy
    one_m = 1 - rho ** 2
    log_n = -z / (2 * one_m) - np.log(2 * np.pi * sx * sy * np.sqrt(one_m))
    end = targets[..., 4]
    l_s = -np_logsumexp(log_pi + log_n, -1) * (1 - end)
    log_p = pen_logits - np_logsumexp(pen_logits, -1)[..., None]
    l_p = -np.sum(targets[..., 2:5] * log_p, -1)
    if mask_pen:
        l_p = l_p * (1 - end)
    return l_s.sum() / (b * t), l_p.sum() / (b * t)


def random_batch(rng, b=4, t=12, m=M, extreme=False):
    lengths = rng.integers(1, t + 1, size=b)
    targets = np.zeros([b, t, 5], np.float32)
    for i, n in enumerate(lengths):
        targets[i, :n, :2] = rng.normal(0, 1.5, size=[n, 2])
        pen = rng.integers(0, 2, size=n)
        targets[i, :n, 2] = 1 - pen
        targets[i, :n, 3] = pen
        targets[i, n:, 4] = 1
    outputs = rng.normal(0, 1, size=[b, t, 6 * m + 3]).astype(np.float32)
    if extreme:
        rho_pre = outputs[..., 3 + 5 * m:]
        # Correlations near +-1 (|tanh| up to 1 - 5e-8) and tiny/huge sigmas, as in the NaN runs.
        rho_pre[...] = rng.choice([-8.0, -5.0, 5.0, 8.0], size=rho_pre.shape)
        outputs[..., 3 + 3 * m:3 + 5 * m] = rng.choice([-4.0, -2.0, 2.0], size=[b, t, 2 * m])
        # Put the targets near the means so the densities stay in float32's range of the test.
        targets[..., 0] = np.where(targets[..., 4] > 0, 0, outputs[..., 3 + m] + 1e-3)
        targets[..., 1] = np.where(targets[..., 4] > 0, 0, outputs[..., 3 + 2 * m] - 1e-3)
    return targets, outputs


@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("mask_pen", [False, True])
def test_reconstruction_loss_matches_numpy(extreme, mask_pen):
    rng = np.random.default_rng(1 + extreme)
    targets, outputs = random_batch(rng, extreme=extreme)
    l_s, l_p = losses.reconstruction_loss(targets, outputs, M, mask_pen_loss=mask_pen)
    ref_s, ref_p = np_reconstruction(targets, outputs, M, mask_pen)
    assert np.isfinite(l_s) and np.isfinite(l_p)
    np.testing.assert_allclose(float(l_s), ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(l_p), ref_p, rtol=1e-5, atol=1e-5)


def test_trimmed_batch_divides_by_n_max():
    """A batch padded to N_max and the same batch trimmed to T < N_max give the same L_s when the
    trimmed one divides by N_max; L_p differs exactly by the cut padding rows' pen loss."""
    rng = np.random.default_rng(7)
    targets, outputs = random_batch(rng, b=5, t=10)
    n_max = 16
    pad_t = np.zeros([5, n_max - 10, 5], np.float32)
    pad_t[..., 4] = 1
    pad_o = rng.normal(0, 1, size=[5, n_max - 10, 6 * M + 3]).astype(np.float32)
    full_t, full_o = np.concatenate([targets, pad_t], 1), np.concatenate([outputs, pad_o], 1)
    ref_s, ref_p = np_reconstruction(full_t, full_o, M)  # Divides by N_max = 16.
    l_s, l_p = losses.reconstruction_loss(targets, outputs, M, max_seq_len=n_max)
    np.testing.assert_allclose(float(l_s), ref_s, rtol=1e-5)
    cut_p = np_reconstruction(pad_t, pad_o, M)[1] * (n_max - 10) / n_max
    np.testing.assert_allclose(float(l_p), ref_p - cut_p, rtol=1e-5)
    # Without the keyword the divisor is the targets' T (10), as before.
    np.testing.assert_allclose(float(losses.reconstruction_loss(targets, outputs, M)[0]),
                               ref_s * n_max / 10, rtol=1e-5)


def test_recurrent_kernel_is_orthogonal_per_gate():
    """The reference's lstm_ortho_initializer: each [H, H] gate block orthogonal (singular values
    1), the blocks independent (a single orthogonal [H, 4H] has per-gate singular values 0.5)."""
    from model.rnn import LSTM, HyperLSTM

    layer = LSTM(24)
    layer.build((None, None, 5))
    w = layer.recurrent_kernel.numpy()
    blocks = [w[:, i * 24:(i + 1) * 24] for i in range(4)]
    for blk in blocks:
        np.testing.assert_allclose(np.linalg.svd(blk)[1], np.ones(24), atol=1e-5)
    assert np.abs(blocks[0].T @ blocks[1]).max() > 0.05  # Not the same block (nor orthogonal to it).
    assert not np.allclose(blocks[0], blocks[2])


def test_log_density_finite_where_tanh_saturates():
    # tanh(12) == 1 in float32: the naive 1 - rho^2 is 0 and its log -inf.
    x = tf.constant([12.0, -12.0, 30.0])
    assert float(tf.reduce_min(1.0 - tf.tanh(x) ** 2)) == 0.0
    got = losses.log_one_minus_tanh_sq(x).numpy()
    ref = np.log(1.0 - np.tanh(np.float64([12.0, -12.0])) ** 2)
    np.testing.assert_allclose(got[:2], ref, rtol=1e-6)
    np.testing.assert_allclose(got[2], -2 * (30 - math.log(2)), rtol=1e-6)  # -2 log cosh(30)
    dens = losses.bivariate_log_density(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, x)
    assert np.all(np.isfinite(dens.numpy()))


def test_kl_loss_matches_numpy():
    rng = np.random.default_rng(3)
    mu, sh = rng.normal(size=[5, 7]), rng.normal(size=[5, 7])
    ref = -0.5 * np.mean(1 + sh - mu ** 2 - np.exp(sh))
    np.testing.assert_allclose(float(losses.kl_loss(mu.astype(np.float32), sh.astype(np.float32))),
                               ref, rtol=1e-5)
    assert float(losses.floored_kl(tf.constant(0.05), 0.2)) == pytest.approx(0.2)
    assert float(losses.floored_kl(tf.constant(0.5), 0.2)) == pytest.approx(0.5)


def test_l_s_ignores_values_after_the_end():
    rng = np.random.default_rng(4)
    targets, outputs = random_batch(rng)
    changed = targets.copy()
    changed[..., :2] = np.where(targets[..., 4:5] > 0, rng.normal(0, 50, size=targets[..., :2].shape),
                                targets[..., :2])
    a = losses.reconstruction_loss(targets, outputs, M)[0]
    b = losses.reconstruction_loss(changed, outputs, M)[0]
    assert float(a) == float(b)
    # ...while changing a real point does change it (the mask is not all zeros).
    changed[0, 0, 0] += 3.0
    assert float(losses.reconstruction_loss(changed, outputs, M)[0]) != float(a)


def test_schedules_follow_the_reference_formulas():
    hps = HParams.preset("paper")
    for step in (0, 1, 1000, 100000):
        assert schedules.learning_rate(step, hps) == pytest.approx(
            (1e-3 - 1e-5) * 0.9999 ** step + 1e-5)
        assert schedules.kl_weight(step, hps) == pytest.approx(0.5 - (0.5 - 0.01) * 0.99995 ** step)
    assert schedules.learning_rate(10 ** 7, hps) == pytest.approx(1e-5)


def test_slerp_endpoints_and_norm():
    a, b = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    np.testing.assert_allclose(slerp(a, b, 0.0), a, atol=1e-12)
    np.testing.assert_allclose(slerp(a, b, 1.0), b, atol=1e-12)
    u, v = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    for t in (0.25, 0.5, 0.9):  # Unit vectors stay on the circle at angle t * 90 degrees.
        np.testing.assert_allclose(slerp(u, v, t), [math.cos(t * math.pi / 2), math.sin(t * math.pi / 2)],
                                   atol=1e-12)
    np.testing.assert_allclose(slerp(a, 3 * a, 0.5), 2 * a)  # Parallel: linear.


# --- layers ------------------------------------------------------------------------------------


def _layer(cell, **kwargs):
    if cell == "hyper":
        return HyperLSTM(6, hyper_units=5, embedding_size=3, **kwargs)
    return LSTM(6, layer_norm=cell == "layer_norm", **kwargs)


@pytest.mark.parametrize("cell", ["lstm", "layer_norm", "hyper"])
def test_lstm_sequence_equals_step_by_step(cell):
    """The sequence call (one projection before the loop) equals project + step one row at a
    time (what sampling runs); a HyperLSTM's state packs its hyper cell's, its output is h_main."""
    tf.random.set_seed(0)
    layer = _layer(cell)
    x = tf.random.normal([3, 5, 4])
    layer.build(x.shape)
    if cell == "hyper":  # Move the embeddings off their init, where the hyper cell is idle.
        for v in (layer.embed_kernel, layer.shift_kernel):
            v.assign(tf.random.normal(v.shape, stddev=0.3))
    width = layer.state_units
    assert width == (11 if cell == "hyper" else 6)
    h0, c0 = tf.random.normal([3, width]), tf.random.normal([3, width])
    lengths = tf.constant([5, 2, 0])
    seq, (h_t, c_t) = layer(x, initial_state=(h0, c0), lengths=lengths)
    h, c = h0, c0
    for t in range(5):
        h_new, c_new = layer.step(layer.project(x[:, t]), h, c)
        keep = (t < lengths)[:, None]
        h, c = tf.where(keep, h_new, h), tf.where(keep, c_new, c)
        np.testing.assert_allclose(seq[:, t], layer.output(h), atol=1e-5)
    # 1e-5: float32 rounding of five steps, which differs between CPUs (AMD AVX2 gave 1.06e-6 on h).
    np.testing.assert_allclose(h_t, h, atol=1e-5)
    np.testing.assert_allclose(c_t, c, atol=1e-5)
    np.testing.assert_allclose(h_t[2], h0[2])  # Zero length: the initial state.


@pytest.mark.parametrize("batch,splits,cell", [(5, 2, "lstm"), (4, 4, "lstm"), (2, 3, "lstm"), (5, 2, "hyper")])
def test_lstm_batch_splits_give_the_same_outputs_states_and_gradients(batch, splits, cell):
    """Slicing the batch into independent loops is a speed choice: uneven slices, and more
    slices than sketches (empty loops), give what one loop gives, forward and backward."""
    tf.random.set_seed(1)
    one = _layer(cell)
    x = tf.random.normal([batch, 7, 4])
    h0, c0 = tf.random.normal([batch, one.state_units]), tf.random.normal([batch, one.state_units])
    lengths = tf.constant([7, 3, 0, 5, 1][:batch])
    one.build(x.shape)
    sliced = _layer(cell, batch_splits=splits)
    sliced.build(x.shape)
    for a, b in zip(sliced.weights, one.weights):
        a.assign(b)

    def run(layer):
        with tf.GradientTape() as tape:
            seq, (h, c) = layer(x, initial_state=(h0, c0), lengths=lengths)
            loss = tf.reduce_sum(seq * tf.range(1.0, 8.0)[None, :, None]) + tf.reduce_sum(h * c)
        return seq, h, c, tape.gradient(loss, layer.trainable_variables)

    # The HyperLSTM's gradients reach the hundreds: float32 sums in another order differ by more.
    tol = 1e-4 if cell == "hyper" else 1e-5
    for got, want in zip(run(sliced), run(one)):
        for g, w in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


def test_lstm_batch_splits_must_be_positive():
    with pytest.raises(ValueError, match="batch_splits must be >= 1"):
        LSTM(4, batch_splits=0)
    with pytest.raises(ValueError, match="rnn_batch_splits must be >= 0"):
        HParams.preset("tiny").replace(rnn_batch_splits=-1)


def test_model_layers_get_the_batch_splits():
    hps = HParams.preset("tiny").replace(rnn_batch_splits=3)
    model = SketchRNN(hps, 20)
    assert {model.decoder.batch_splits, model.encoder.forward_rnn.batch_splits,
            model.encoder.backward_rnn.batch_splits} == {3}
    assert SketchRNN(HParams.preset("tiny"), 20).decoder.batch_splits == 1  # 0 (auto) -> 1 here


def test_recurrent_dropout_only_in_training():
    tf.random.set_seed(0)
    layer = LSTM(8, recurrent_dropout=0.5)
    x = tf.random.normal([2, 6, 3])
    a, _ = layer(x, training=False)
    b, _ = layer(x, training=False)
    np.testing.assert_array_equal(a, b)
    c, _ = layer(x, training=True)
    d, _ = layer(x, training=True)
    assert not np.allclose(c, d)
    assert not np.allclose(a, c)


def _model(max_len=30, **overrides):
    # Keras 3's initializers draw from Keras' own seed generator, which tf.random.set_seed leaves
    # unseeded: without this the weights differ from run to run (and a greedy test could meet a
    # near tie between two mixture components in one run of a hundred).
    keras.utils.set_random_seed(0)
    hps = HParams.preset("tiny").replace(**overrides)
    model = SketchRNN(hps, max_len)
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])})
    return model, hps


def _padded(sketches5, t):
    batch = np.tile(np.array(END_ROW, np.float32), [len(sketches5), t, 1])
    for i, s in enumerate(sketches5):
        batch[i, :len(s)] = s
    return batch


def test_encoder_ignores_padding_after_length():
    model, _ = _model()
    rng = np.random.default_rng(0)
    s = rng.normal(size=[1, 7, 5]).astype(np.float32)
    short = model.encode(s[:, :4], tf.constant([4]))
    padded = model.encode(s, tf.constant([4]))
    np.testing.assert_allclose(short[0], padded[0], atol=1e-6)
    np.testing.assert_allclose(short[1], padded[1], atol=1e-6)


def test_forward_shapes_conditional_and_unconditional():
    model, hps = _model()
    x = {"strokes": tf.random.normal([3, 9, 5]), "lengths": tf.constant([9, 4, 1])}
    out = model(x, training=True)
    assert out["outputs"].shape == (3, 9, 6 * hps.num_mixture + 3)
    assert out["mu"].shape == out["sigma_hat"].shape == out["z"].shape == (3, hps.z_size)
    unc, _ = _model(conditional=False)
    out = unc(x)
    assert set(out) == {"outputs"}
    assert not any("encoder" in v.path for v in unc.trainable_variables)
    with pytest.raises(ValueError, match="unconditional"):
        unc.encode(x["strokes"], x["lengths"])


def test_hyper_model_trains_every_weight_and_samples():
    """dec_model=hyper: after one Adam step (the embeddings start at 0, as the reference's, so the
    hyper cell gets its first gradient from the second step on) every decoder weight has a finite,
    nonzero gradient; sample and complete give valid sketches; recurrent dropout acts in training."""
    import keras
    model, hps = _model(dec_model="hyper", recurrent_dropout_rate=0.3)
    assert isinstance(model.decoder, HyperLSTM) and model.decoder.state_units == hps.dec_rnn_size + 256
    x = {"strokes": tf.random.normal([3, 6, 5]), "lengths": tf.constant([6, 3, 1])}
    opt = keras.optimizers.Adam(1e-2)
    for _ in range(2):
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            loss = sum(losses.reconstruction_loss(x["strokes"], out["outputs"], hps.num_mixture))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
    for v, g in zip(model.trainable_variables, grads):
        if "decoder" in v.path and "embed_bias" not in v.path:
            assert g is not None and np.all(np.isfinite(g)) and np.any(g != 0), v.path
    a = model(x, training=True)["outputs"]
    b = model(x, training=True)["outputs"]
    assert not np.allclose(a, b)  # Dropout (and z's noise) differ between training calls.
    strokes, lengths = model.sample(4, 0.5, 1)
    assert_valid_stroke5(strokes, lengths, 30)
    strokes, lengths = model.complete(x["strokes"][:1], tf.constant([3]), 2, 0.5, 1)
    np.testing.assert_array_equal(strokes[:, :3], np.repeat(x["strokes"][:1, :3], 2, axis=0))
    assert strokes.shape == (2, 30, 5) and np.all(lengths.numpy() >= 3)


def test_layer_norm_model_gradients_finite():
    model, hps = _model(enc_model="layer_norm", dec_model="layer_norm")
    x = {"strokes": tf.random.normal([2, 6, 5]), "lengths": tf.constant([6, 3])}
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = sum(losses.reconstruction_loss(x["strokes"], out["outputs"], hps.num_mixture))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
    assert any("gate_gamma" in v.path for v in model.trainable_variables)


# --- sampling ----------------------------------------------------------------------------------


def assert_valid_stroke5(strokes, lengths, n_max):
    strokes, lengths = np.asarray(strokes), np.asarray(lengths)
    assert strokes.shape[1:] == (n_max, 5)
    assert np.all(np.isfinite(strokes))
    for s, n in zip(strokes, lengths):
        assert 1 <= n <= n_max
        pens = s[:, 2:]
        assert np.all(np.sum(pens, axis=1) == 1) and np.all((pens == 0) | (pens == 1))
        assert np.all(s[:n, 4] == 0)  # p3 only from the end on...
        np.testing.assert_array_equal(s[n:], np.tile(END_ROW, [n_max - n, 1]))  # ...and then only.


def test_sample_valid_and_deterministic():
    model, _ = _model(max_len=25)
    a = model.sample(6, tf.constant(0.8), tf.constant(5))
    b = model.sample(6, tf.constant(0.8), tf.constant(5))
    c = model.sample(6, tf.constant(0.8), tf.constant(6))
    assert_valid_stroke5(*a, 25)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    short = model.sample(2, tf.constant(1.0), tf.constant(1), max_len=7)
    assert_valid_stroke5(*short, 7)


def naive_greedy(model, z, steps):
    """Greedy decoding with one Python call per step (an independent loop over the same layers);
    with hps.dec_position the input also holds the sum of the rows' offsets so far."""
    hps = model.hps
    h, c = model.initial_decoder_state(tf.constant(z), z.shape[0])
    prev = np.tile(np.array(START_ROW, np.float32), [z.shape[0], 1])
    position = np.zeros([z.shape[0], 2], np.float32)
    rows, done = [], np.zeros(z.shape[0], bool)
    for _ in range(steps):
        position = position + prev[:, :2]
        x = np.concatenate([prev, position, z] if hps.dec_position else [prev, z], axis=1)
        h, c = model.decoder.step(model.decoder.project(tf.constant(x)), h, c)
        out = model.head(h).numpy().astype(np.float64)
        m = hps.num_mixture
        k = np.argmax(out[:, 3:3 + m], axis=1)
        pen = np.argmax(out[:, :3] if rows else out[:, :2], axis=1)  # No end at the first step.
        idx = np.arange(len(k))
        row = np.zeros([len(k), 5], np.float32)
        row[:, 0] = out[idx, 3 + m + k]
        row[:, 1] = out[idx, 3 + 2 * m + k]
        row[idx, 2 + pen] = 1
        done |= pen == 2
        row[done] = END_ROW
        rows.append(row)
        prev = row
    return np.stack(rows, axis=1)


@pytest.mark.parametrize("position", [False, True])
def test_temperature_zero_is_greedy_and_matches_a_naive_loop(position):
    model, hps = _model(max_len=20, dec_position=position)
    assert model.decoder.kernel.shape[0] == (7 if position else 5) + hps.z_size
    z = np.random.default_rng(0).normal(size=[3, hps.z_size]).astype(np.float32)
    a = model.sample(None, tf.constant(0.0), tf.constant(1), z=tf.constant(z))
    b = model.sample(None, tf.constant(0.0), tf.constant(99), z=tf.constant(z))
    np.testing.assert_array_equal(a[0], b[0])  # The seed does not matter when greedy.
    ref = naive_greedy(model, z, 20)
    np.testing.assert_allclose(a[0], ref, atol=1e-5)


@pytest.mark.parametrize("conditional", [False, True])
def test_position_input_of_teacher_forcing_equals_the_sampling_loop(conditional):
    """hps.dec_position: the decoder's outputs over a sketch read with teacher forcing (the position
    a cumulative sum) equal those of the sampling loop that drew it (the position a running sum),
    and an unconditional model's greedy completion of a prefix of its greedy sample is that sample."""
    model, hps = _model(max_len=16, dec_position=True, conditional=conditional)
    z = np.random.default_rng(1).normal(size=[2, hps.z_size]).astype(np.float32) if conditional else None
    strokes, lengths = model.sample(2, tf.constant(0.0), tf.constant(3),
                                    z=None if z is None else tf.constant(z))
    prev = tf.concat([tf.broadcast_to(tf.constant(START_ROW), [2, 1, 5]), strokes[:, :-1]], axis=1)
    zt = None if z is None else tf.constant(z)
    h, _ = model._run_decoder(prev, zt, model.initial_decoder_state(zt, 2))
    out = model.head(h).numpy()
    m = hps.num_mixture
    k = np.argmax(out[..., 3:3 + m], axis=-1)
    mu_x = np.take_along_axis(out[..., 3 + m:3 + 2 * m], k[..., None], -1)[..., 0]
    for i, n in enumerate(lengths.numpy()):  # The greedy offsets are the means of the top component.
        np.testing.assert_allclose(strokes[i, :n, 0], mu_x[i, :n], atol=1e-4)
    if not conditional:
        full = model.sample(1, tf.constant(0.0), tf.constant(3))[0]
        done = model.complete(full[:, :6], tf.constant([6]), 1, tf.constant(0.0), tf.constant(3),
                              max_len=16)[0]
        np.testing.assert_allclose(done, full, atol=1e-4)


def test_decoder_input_noise_only_on_training_offsets():
    """hps.dec_input_noise: training adds N(0, s^2) to the dx, dy of S_1.. that are not end rows;
    S_0, the pen states and end rows stay; evaluation (and s = 0) reads the clean rows."""
    model, hps = _model(max_len=40, conditional=False, use_recurrent_dropout=False,
                        dec_input_noise=0.3)
    rng = np.random.default_rng(2)
    strokes = np.stack([stroke3_to_stroke5(np.c_[rng.normal(size=[n, 2]), rng.random(n) < 0.2], 40)
                        for n in (30, 12)])
    prev = np.concatenate([np.tile(np.array(START_ROW, np.float32), [2, 1, 1]), strokes[:, :-1]], 1)
    tf.random.set_seed(5)
    noisy = model._noisy_offsets(tf.constant(prev)).numpy()
    np.testing.assert_array_equal(noisy[..., 2:], prev[..., 2:])
    np.testing.assert_array_equal(noisy[:, 0], prev[:, 0])
    end = prev[..., 4] == 1
    np.testing.assert_array_equal(noisy[end], prev[end])
    moved = ~end
    moved[:, 0] = False
    delta = (noisy - prev)[moved][:, :2]
    assert delta.size == 2 * (30 + 12) and np.all(delta != 0)
    assert 0.2 < delta.std() < 0.4 and abs(delta.mean()) < 0.1
    inputs = {"strokes": tf.constant(strokes), "lengths": tf.constant([30, 12])}
    clean = model(inputs, training=False)["outputs"].numpy()
    h, _ = model._run_decoder(tf.constant(prev), None, model.initial_decoder_state(None, 2))
    np.testing.assert_allclose(clean, model.head(h).numpy(), atol=1e-6)  # Evaluation: clean rows.
    train = model(inputs, training=True)["outputs"].numpy()
    np.testing.assert_allclose(train[:, 0], clean[:, 0], atol=1e-6)  # From S_0: no noise yet.
    assert np.abs(train[:, 1:] - clean[:, 1:]).max() > 1e-3
    quiet, _ = _model(max_len=40, conditional=False, use_recurrent_dropout=False)
    np.testing.assert_allclose(quiet(inputs, training=True)["outputs"].numpy(),
                               quiet(inputs, training=False)["outputs"].numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="dec_input_noise"):
        HParams(dec_input_noise=-0.1)


def test_scheduled_sampling_swaps_inputs_for_the_decoders_own_draws():
    """hps.dec_scheduled_sampling: rows S_1.. that are not end rows are swapped, with the given
    probability, for the decoder's draw of them from a teacher-forced pass without dropout; at
    temperature 0 that draw is the greedy row (likeliest pen state but the end, likeliest
    component's mean), computed here from the evaluation pass's outputs."""
    model, hps = _model(max_len=40, recurrent_dropout_rate=0.5, dec_scheduled_sampling=1.0,
                        dec_scheduled_sampling_temperature=0.0)
    rng = np.random.default_rng(3)
    strokes = np.stack([stroke3_to_stroke5(np.c_[rng.normal(size=[n, 2]), rng.random(n) < 0.2], 40)
                        for n in (30, 12)])
    prev = np.concatenate([np.tile(np.array(START_ROW, np.float32), [2, 1, 1]), strokes[:, :-1]], 1)
    z = tf.constant(rng.normal(size=[2, hps.z_size]).astype(np.float32))
    state = model.initial_decoder_state(z, 2)
    h, _ = model._run_decoder(tf.constant(prev), z, state, training=False)
    p = {k: v.numpy() for k, v in losses.split_outputs(model.head(h), hps.num_mixture).items()}
    k = p["pi_logits"].argmax(-1)[..., None]
    greedy = np.concatenate([np.take_along_axis(p["mu_x"], k, -1), np.take_along_axis(p["mu_y"], k, -1),
                             np.eye(3)[p["pen_logits"][..., :2].argmax(-1)]], -1)
    mixed = model.scheduled_inputs(tf.constant(prev), z, state, None, 1.0, 0.0,
                                   tf.constant(7, tf.int64)).numpy()
    end = prev[..., 4] == 1
    np.testing.assert_array_equal(mixed[:, 0], prev[:, 0])
    np.testing.assert_array_equal(mixed[end], prev[end])
    swapped = ~end
    swapped[:, 0] = False
    np.testing.assert_allclose(mixed[:, 1:][swapped[:, 1:]], greedy[:, :-1][swapped[:, 1:]], atol=1e-5)
    assert swapped.sum() == 30 + 12
    # Probability 0.5 at temperature 0.5: about half the rows, each a drawn pen-down/up row.
    drawn = [model.scheduled_inputs(tf.constant(prev), z, state, None, 0.5, 0.5,
                                    tf.constant(s, tf.int64)).numpy() for s in range(10)]
    changed = np.array([np.any(d != prev, axis=-1)[swapped] for d in drawn])
    assert 0.35 < changed.mean() < 0.65
    rows = np.concatenate([d[swapped] for d in drawn])
    assert np.all(rows[:, 4] == 0) and np.all(rows[:, 2] + rows[:, 3] == 1)
    # A training step runs through the swap: every weight gets a finite gradient.
    inputs = {"strokes": tf.constant(strokes), "lengths": tf.constant([30, 12])}
    with tf.GradientTape() as tape:
        out = model(inputs, training=True)["outputs"]
        loss = tf.reduce_mean(tf.square(out))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(tf.convert_to_tensor(g).numpy())) for g in grads)
    for name, value in (("dec_scheduled_sampling", 1.5), ("dec_scheduled_sampling_temperature", -1.0)):
        with pytest.raises(ValueError, match=name):
            HParams(**{name: value})


def test_completion_keeps_the_prefix():
    model, _ = _model(max_len=30)
    prefix = np.zeros([1, 12, 5], np.float32)
    prefix[0, :8] = stroke3_to_stroke5(np.array([[1, 2, 0], [3, -1, 0], [0.5, 0.5, 1], [2, 2, 0],
                                                 [-1, 0, 0], [0, -3, 1], [4, 4, 0], [1, 1, 1]],
                                                np.float32), 8)[:8]
    prefix[0, 8:] = 9.0  # Garbage after the prefix's length must not be used.
    strokes, lengths = model.complete(prefix, tf.constant([8]), 4, tf.constant(0.7), tf.constant(2))
    assert_valid_stroke5(strokes, lengths, 30)
    np.testing.assert_array_equal(strokes[:, :8], np.repeat(prefix[:, :8], 4, axis=0))
    assert np.all(lengths.numpy() >= 8)
    again = model.complete(prefix, tf.constant([8]), 4, tf.constant(0.7), tf.constant(2))
    np.testing.assert_array_equal(strokes, again[0])


def test_mixed_precision_outputs_stay_float32():
    """Under mixed_bfloat16 (what training picks on AMX CPUs) the outputs, encode's (mu, sigma_hat)
    and the sampled sketches are float32, and complete (which draws z from encode's outputs and
    float32 noise, as the export's `complete` signature does) runs."""
    import keras
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model, _ = _model(precision="mixed_bfloat16")
        x = {"strokes": tf.random.normal([2, 5, 5]), "lengths": tf.constant([5, 2])}
        out = model(x, training=True)
        assert out["outputs"].dtype == tf.float32
        assert model.decoder.compute_dtype == "bfloat16"
        assert np.all(np.isfinite(out["outputs"]))
        mu, sigma_hat = model.encode(x["strokes"], x["lengths"])
        assert mu.dtype == sigma_hat.dtype == tf.float32
        strokes, lengths = model.complete(x["strokes"][:1], tf.constant([3]), 2, 0.5, 1)
        assert strokes.dtype == tf.float32 and strokes.shape == (2, 30, 5)
        assert np.all(np.isfinite(strokes)) and np.all(lengths.numpy() >= 3)
        strokes, lengths = model.sample(2, 0.5, 1)
        assert_valid_stroke5(strokes, lengths, 30)
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --- learning ----------------------------------------------------------------------------------


def test_tiny_model_overfits_real_sketches(sample_dir):
    """Fails if the gradient path is broken: 16 real sketches, 250 Adam steps, loss falls a lot."""
    sketches = [s for s in sample_sketches(sample_dir, limit=40, step=8) if 5 <= len(s) <= 40][:16]
    scale = np.std(np.concatenate([s[:, :2] for s in sketches]))
    t = max(len(s) for s in sketches)
    batch = _padded([stroke3_to_stroke5(s / [scale, scale, 1], len(s))[:len(s)] for s in sketches], t)
    x = {"strokes": tf.constant(batch), "lengths": tf.constant([len(s) for s in sketches])}
    model, hps = _model(max_len=t, use_recurrent_dropout=False)
    import keras
    opt = keras.optimizers.Adam(5e-3)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            l_s, l_p = losses.reconstruction_loss(x["strokes"], out["outputs"], hps.num_mixture)
            loss = l_s + l_p + 0.01 * losses.kl_loss(out["mu"], out["sigma_hat"])
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip([tf.clip_by_value(g, -1, 1) for g in grads], model.trainable_variables))
        return l_s + l_p

    first = [float(step()) for _ in range(5)]
    for _ in range(240):
        step()
    last = [float(step()) for _ in range(5)]
    assert np.mean(last) < np.mean(first) - 0.5, (first, last)


def test_head_bias_starts_glorot_uniform_like_the_reference():
    """The reference's output_b has no initializer: TF1's default Glorot-uniform, U(+-sqrt(3 / n))."""
    model, hps = _model(num_mixture=20)
    bias = model.head.bias.numpy()
    limit = np.sqrt(3.0 / bias.size)
    assert bias.size == 6 * 20 + 3 and np.abs(bias).max() <= limit
    assert np.std(bias) > 0.4 * limit  # Spread over the interval (zeros would fail).
