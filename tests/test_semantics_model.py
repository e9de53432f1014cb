"""The model's semantics against independent expectations (issue 14): closed forms and NumPy
references written from DESIGN.md and the reference's cells, never from our own code paths.

* sampling temperature: statistics of many draws of `sample_step` against softmax(logits / tau)
  and sigma * sqrt(tau), and of the model's first sampled point against a NumPy decoder step;
* the decoder's initial state tanh(W z + b) = [c; h] (the reference's LSTMCell state order),
  the decoder inputs [S_{i-1}; z] and the head, against a NumPy decoder run from the weights;
* the LSTM cells (plain and layer-normalized, as the reference's LayerNormLSTMCell, and the
  HyperLSTM, as the reference's HyperLSTMCell) against NumPy;
* recurrent dropout: the two-point law {0, g / keep} with P(0) = rate, a fresh mask each step.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from model.hparams import HParams
from model.rnn import LSTM, HyperLSTM
from model.sketch_rnn import SketchRNN, sample_step

START = np.array([0.0, 0.0, 1.0, 0.0, 0.0])
END = np.array([0.0, 0.0, 0.0, 0.0, 1.0])


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_layer_norm(x, gamma, beta, eps=1e-3):
    """The reference's layer_norm / layer_norm_all: (x - mean) / sqrt(var + 1e-3) over the units."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_lstm_step(x, h, c, w, layer_norm):
    """One step of the reference's LSTMCell / LayerNormLSTMCell in Keras' gate layout (i, f, g, o).

    Plain: gates = x K + h U + b (the forget bias 1 lives in b). Layer norm: each gate's
    pre-activation (no bias) is normalized over its H units, scaled and shifted by its own
    gamma / beta, the forget gate gets + 1; h = tanh(LN(c_new)) * sigmoid(o), the state keeps the
    unnormalized c_new.
    """
    units = h.shape[-1]
    z = x @ w["kernel"] + h @ w["recurrent_kernel"]
    if layer_norm:
        zs = z.reshape(z.shape[:-1] + (4, units))
        zs = np_layer_norm(zs, w["gate_gamma"], w["gate_beta"])
        i, f, g, o = (zs[..., k, :] for k in range(4))
        f = f + 1.0
    else:
        z = z + w["bias"]
        i, f, g, o = (z[..., k * units:(k + 1) * units] for k in range(4))
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    c_out = np_layer_norm(c_new, w["cell_gamma"], w["cell_beta"]) if layer_norm else c_new
    return np.tanh(c_out) * sigmoid(o), c_new


def lstm_weights(layer: LSTM) -> dict[str, np.ndarray]:
    names = ["kernel", "recurrent_kernel"] + (
        ["gate_gamma", "gate_beta", "cell_gamma", "cell_beta"] if layer.layer_norm else ["bias"])
    return {n: getattr(layer, n).numpy().astype(np.float64) for n in names}


# --- temperature -----------------------------------------------------------------------------

M = 3


def _decoder_output(n):
    """One fixed decoder output row `[6M+3]` repeated n times: 3 components far apart in x, so a
    draw's component is read off its x."""
    pen = np.array([0.4, -0.3, -1.2])
    pi = np.array([0.8, -0.4, 0.1])
    mu_x, mu_y = np.array([-60.0, 0.0, 60.0]), np.array([1.0, -2.0, 3.0])
    log_sx, log_sy = np.log([1.5, 0.8, 2.0]), np.log([0.7, 1.2, 1.0])
    rho_pre = np.arctanh([0.6, -0.3, 0.0])
    row = np.concatenate([pen, pi, mu_x, mu_y, log_sx, log_sy, rho_pre]).astype(np.float32)
    params = dict(pen=pen, pi=pi, mu_x=mu_x, mu_y=mu_y, sx=np.exp(log_sx), sy=np.exp(log_sy),
                  rho=np.tanh(rho_pre))
    return np.tile(row, [n, 1]), params


def _assert_freq(counts, probs, n, what):
    """Observed counts against probabilities, within 5 binomial standard deviations."""
    freq = counts / n
    sd = np.sqrt(probs * (1 - probs) / n)
    assert np.all(np.abs(freq - probs) <= 5 * sd + 1e-9), f"{what}: observed {freq}, expected {probs}"


@pytest.mark.parametrize("tau", [0.3, 2.0])
def test_sample_step_temperature_matches_the_closed_form(tau):
    """DESIGN: tau divides the pen and pi logits and multiplies sigma^2 (sigma by sqrt(tau));
    rho is unchanged. 40,000 draws of one output row against those closed forms."""
    n = 40_000
    out, p = _decoder_output(n)
    rows = sample_step(tf.constant(out), M, tf.constant(tau, tf.float32), tf.constant(7, tf.int64),
                       tf.constant(0), allow_end=True).numpy().astype(np.float64)
    pens = rows[:, 2:]
    assert np.all(pens.sum(1) == 1)
    _assert_freq(pens.sum(0), softmax(p["pen"] / tau), n, "pen states")
    k = np.argmin(np.abs(rows[:, :1] - p["mu_x"][None]), axis=1)  # Components are 60 apart.
    _assert_freq(np.bincount(k, minlength=M), softmax(p["pi"] / tau), n, "mixture components")
    for j in range(M):
        x, y = rows[k == j, 0], rows[k == j, 1]
        m = len(x)
        sx, sy = p["sx"][j] * np.sqrt(tau), p["sy"][j] * np.sqrt(tau)
        # Means within 5 standard errors; standard deviations within 5 of theirs (sd / sqrt(2m)).
        assert abs(x.mean() - p["mu_x"][j]) < 5 * sx / np.sqrt(m)
        assert abs(y.mean() - p["mu_y"][j]) < 5 * sy / np.sqrt(m)
        assert abs(x.std() - sx) < 5 * sx / np.sqrt(2 * m), (j, x.std(), sx)
        assert abs(y.std() - sy) < 5 * sy / np.sqrt(2 * m), (j, y.std(), sy)
        assert abs(np.corrcoef(x, y)[0, 1] - p["rho"][j]) < 5 * (1 - p["rho"][j] ** 2) / np.sqrt(m)


def test_sample_step_greedy_and_no_end():
    out, p = _decoder_output(4)
    rows = sample_step(tf.constant(out), M, tf.constant(0.0), tf.constant(1, tf.int64), tf.constant(0),
                       allow_end=False).numpy()
    k = int(np.argmax(p["pi"]))
    np.testing.assert_allclose(rows[:, :2], np.tile([p["mu_x"][k], p["mu_y"][k]], [4, 1]), atol=1e-6)
    np.testing.assert_array_equal(rows[:, 2:], np.tile(np.eye(3)[np.argmax(p["pen"])], [4, 1]))
    many, _ = _decoder_output(5000)
    many[:, 2] = 5.0  # p3 would win nearly always; allow_end=False rules it out.
    rows = sample_step(tf.constant(many), M, tf.constant(1.0), tf.constant(2, tf.int64), tf.constant(0),
                       allow_end=False).numpy()
    assert rows[:, 4].sum() == 0 and rows[:, 2].sum() > 0 and rows[:, 3].sum() > 0


# --- the decoder against NumPy -------------------------------------------------------------------


def _conditional_model(max_len=20, **overrides):
    """A tiny conditional model whose initial state and z matter: initial_state weights N(0, 0.6)
    (the init's 0.001 would make the state ~0, hiding which half is h and which c), and
    sigma_hat pinned to -40 so that z = mu (exp(-20) noise)."""
    import keras

    keras.utils.set_random_seed(11)  # Python's RNG too: it seeds the recurrent kernels' init.
    hps = HParams.preset("tiny").replace(**overrides)
    model = SketchRNN(hps, max_len)
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])})
    rng = np.random.default_rng(5)
    dense = model.initial_state
    dense.kernel.assign(rng.normal(0, 0.6, dense.kernel.shape).astype(np.float32))
    dense.bias.assign(rng.normal(0, 0.6, dense.bias.shape).astype(np.float32))
    sig = model.encoder.sigma_hat
    sig.kernel.assign(np.zeros(sig.kernel.shape, np.float32))
    sig.bias.assign(np.full(sig.bias.shape, -40.0, np.float32))
    mu = model.encoder.mu  # mu of order 1, so z spans the state's range.
    mu.kernel.assign(rng.normal(0, 0.5, mu.kernel.shape).astype(np.float32))
    return model, hps


def np_initial_state(model, z):
    """The reference: state = tanh(z W + b), and its LSTMCell splits the state as [c, h]."""
    w = model.initial_state.kernel.numpy().astype(np.float64)
    b = model.initial_state.bias.numpy().astype(np.float64)
    state = np.tanh(z @ w + b)
    units = model.hps.dec_rnn_size
    return state[:, units:], state[:, :units]  # (h, c)


def np_head(model, h):
    return h @ model.head.kernel.numpy().astype(np.float64) + model.head.bias.numpy().astype(np.float64)


def _strokes(rng, b, t):
    lengths = rng.integers(2, t + 1, size=b)
    strokes = np.tile(END, [b, t, 1])
    for i, n in enumerate(lengths):
        strokes[i, :n, :2] = rng.normal(0, 1, [n, 2])
        up = rng.random(n) < 0.3
        strokes[i, :n, 2:] = np.stack([~up, up, np.zeros(n, bool)], 1)
    return strokes.astype(np.float32), lengths.astype(np.int32)


def test_teacher_forced_decoder_matches_numpy():
    """outputs[:, i] = head(h_i), h_i from the LSTM over [S_{i-1}; z] (S_0 = (0, 0, 1, 0, 0)) started
    at tanh(W z + b) = [c_0; h_0], with z = mu (sigma pinned ~0); no dropout at training=False."""
    model, hps = _conditional_model(use_recurrent_dropout=True, recurrent_dropout_rate=0.5)
    rng = np.random.default_rng(0)
    strokes, lengths = _strokes(rng, 3, 9)
    out = model({"strokes": tf.constant(strokes), "lengths": tf.constant(lengths)}, training=False)
    z = out["z"].numpy().astype(np.float64)
    np.testing.assert_allclose(z, out["mu"].numpy(), atol=1e-6)
    assert np.abs(z).max() > 0.3  # z is not ~0: the decoder's dependence on it is tested.
    w = lstm_weights(model.decoder)
    h, c = np_initial_state(model, z)
    prev = np.concatenate([np.tile(START, [3, 1, 1]), strokes[:, :-1].astype(np.float64)], axis=1)
    want = []
    for t in range(strokes.shape[1]):
        h, c = np_lstm_step(np.concatenate([prev[:, t], z], 1), h, c, w, False)
        want.append(np_head(model, h))
    np.testing.assert_allclose(out["outputs"].numpy(), np.stack(want, 1), atol=2e-5)


def _np_greedy(model, z, steps):
    """Greedy decoding in NumPy: the most likely component's mean, the most likely pen state
    (no end at the first step), END rows after the end."""
    m = model.hps.num_mixture
    w = lstm_weights(model.decoder)
    h, c = np_initial_state(model, z)
    prev = np.tile(START, [len(z), 1])
    rows, done = [], np.zeros(len(z), bool)
    for t in range(steps):
        h, c = np_lstm_step(np.concatenate([prev, z], 1), h, c, w, False)
        out = np_head(model, h)
        k = np.argmax(out[:, 3:3 + m], 1)
        pen = np.argmax(out[:, :3] if t else out[:, :2], 1)
        idx = np.arange(len(z))
        row = np.zeros([len(z), 5])
        row[:, 0], row[:, 1] = out[idx, 3 + m + k], out[idx, 3 + 2 * m + k]
        row[idx, 2 + pen] = 1
        done |= pen == 2
        row[done] = END
        rows.append(row)
        prev = row
    return np.stack(rows, 1)


def test_greedy_sampling_from_z_matches_numpy():
    """The in-graph sampler (hoisted z projection, initial state, greedy picks) against NumPy."""
    model, hps = _conditional_model(max_len=12)
    z = np.random.default_rng(1).normal(0, 1, [4, hps.z_size])
    strokes, lengths = model.sample(None, tf.constant(0.0), tf.constant(3), z=tf.constant(z, tf.float32))
    np.testing.assert_allclose(strokes.numpy(), _np_greedy(model, z, 12), atol=2e-5)


def test_greedy_completion_matches_numpy():
    """complete(prefix S_1..S_P): z = mu(prefix) (sigma pinned ~0), the decoder reads
    S_0..S_{P-1} from tanh(W z + b), then decodes greedily from prev = S_P; the output starts with
    the prefix and its length counts it."""
    model, hps = _conditional_model(max_len=14)
    kernel, bias = model.head.get_weights()
    kernel[:, 2], bias[2] = 0.0, -30.0  # No end: all 9 continuation points are compared.
    model.head.set_weights([kernel, bias])
    rng = np.random.default_rng(7)
    strokes, _ = _strokes(rng, 1, 5)
    prefix = strokes[:, :5]
    p = 5
    got, lengths = model.complete(prefix, tf.constant([p]), 2, tf.constant(0.0), tf.constant(3))
    z = model.encode(tf.constant(prefix), tf.constant([p]))[0].numpy().astype(np.float64)
    w = lstm_weights(model.decoder)
    h, c = np_initial_state(model, z)
    s64 = prefix[0].astype(np.float64)
    inputs = np.concatenate([START[None], s64[:p - 1]], 0)  # S_0..S_{P-1}
    for row in inputs:
        h, c = np_lstm_step(np.concatenate([row[None], z], 1), h, c, w, False)
    m = hps.num_mixture
    prev, rows, done = s64[p - 1][None], [], False
    for _ in range(14 - p):
        h, c = np_lstm_step(np.concatenate([prev, z], 1), h, c, w, False)
        out = np_head(model, h)[0]
        k, pen = np.argmax(out[3:3 + m]), np.argmax(out[:3])
        row = np.zeros(5)
        row[0], row[1], row[2 + pen] = out[3 + m + k], out[3 + 2 * m + k], 1
        done = done or pen == 2
        rows.append(END if done else row)
        prev = row[None]
    want = np.concatenate([s64[:p], np.stack(rows)], 0)
    n = p + next((i for i, r in enumerate(rows) if r[4] == 1), len(rows))
    assert n == 14
    for b in range(2):
        np.testing.assert_allclose(got.numpy()[b], want, atol=2e-5)
        assert int(lengths.numpy()[b]) == n


def test_first_sampled_point_follows_the_tempered_mixture():
    """3,000 sketches from one z: the first point's pen state ~ softmax(pen[:2] / tau) (no end at
    step 1), its dx ~ the tempered mixture: mean sum pi_k mu_k, variance
    sum pi_k (tau sigma_k^2 + mu_k^2) - mean^2, with pi = softmax(pi_logits / tau)."""
    tau, n = 0.5, 3000
    model, hps = _conditional_model(max_len=1)
    m = hps.num_mixture
    z = np.random.default_rng(2).normal(0, 1, [1, hps.z_size])
    h, c = np_initial_state(model, z)
    h, _ = np_lstm_step(np.concatenate([START[None], z], 1), h, c, lstm_weights(model.decoder), False)
    # Shift the head's bias so that this step's pen logits are (0.7, 0) and its mixture logits
    # (1, 0, -1): far enough from a sure thing for the temperature to show.
    out = np_head(model, h)[0]
    bias = model.head.bias.numpy().astype(np.float64)
    bias[:2] += np.array([0.7, 0.0]) - out[:2]
    bias[3:3 + m] += np.linspace(1.0, -1.0, m) - out[3:3 + m]
    model.head.bias.assign(bias.astype(np.float32))
    out = np_head(model, h)[0]
    strokes, _ = model.sample(None, tf.constant(tau), tf.constant(4),
                              z=tf.constant(np.repeat(z, n, 0), tf.float32), max_len=1)
    rows = strokes.numpy()[:, 0].astype(np.float64)
    p_pen = softmax(out[:2] / tau)
    assert abs(p_pen[0] - softmax(out[:2])[0]) > 10 * np.sqrt(0.25 / n)  # tau matters here
    _assert_freq(rows[:, 2:4].sum(0), p_pen, n, "first pen state")
    pi = softmax(out[3:3 + m] / tau)
    mu, sigma = out[3 + m:3 + 2 * m], np.exp(out[3 + 3 * m:3 + 4 * m])
    s2 = tau * sigma ** 2
    mean = pi @ mu
    var = pi @ (s2 + mu ** 2) - mean ** 2
    d = mu - mean  # The 4th central moment of the mixture gives the sample variance's error.
    m4 = pi @ (d ** 4 + 6 * d ** 2 * s2 + 3 * s2 ** 2)
    assert abs(rows[:, 0].mean() - mean) < 5 * np.sqrt(var / n), (rows[:, 0].mean(), mean)
    assert abs(rows[:, 0].var() - var) < 5 * np.sqrt((m4 - var ** 2) / n), (rows[:, 0].var(), var)


# --- cells ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_norm", [False, True])
def test_lstm_cell_matches_numpy_reference(layer_norm):
    """Three steps of the plain and the layer-normalized cell from a random state, with gamma / beta
    away from their 1 / 0 init (so their roles are tested), against the NumPy cell above."""
    rng = np.random.default_rng(3)
    units, dim = 6, 4
    layer = LSTM(units, layer_norm=layer_norm)
    layer.build((None, None, dim))
    if layer_norm:
        layer.gate_gamma.assign(rng.uniform(0.5, 1.5, (4, units)).astype(np.float32))
        layer.gate_beta.assign(rng.normal(0, 0.5, (4, units)).astype(np.float32))
        layer.cell_gamma.assign(rng.uniform(0.5, 1.5, units).astype(np.float32))
        layer.cell_beta.assign(rng.normal(0, 0.5, units).astype(np.float32))
    else:
        layer.bias.assign(rng.normal(0, 0.5, 4 * units).astype(np.float32))
    layer.kernel.assign(rng.normal(0, 0.7, (dim, 4 * units)).astype(np.float32))
    x = rng.normal(0, 1, (2, 3, dim)).astype(np.float32)
    h0, c0 = (rng.normal(0, 1, (2, units)).astype(np.float32) for _ in range(2))
    seq, (h_t, c_t) = layer(tf.constant(x), initial_state=(tf.constant(h0), tf.constant(c0)))
    w = lstm_weights(layer)
    h, c = h0.astype(np.float64), c0.astype(np.float64)
    for t in range(3):
        h, c = np_lstm_step(x[:, t].astype(np.float64), h, c, w, layer_norm)
        np.testing.assert_allclose(seq[:, t], h, atol=1e-5)
    np.testing.assert_allclose(h_t, h, atol=1e-5)
    np.testing.assert_allclose(c_t, c, atol=1e-5)


def test_layer_norm_model_encoder_and_decoder_match_numpy():
    """A whole layer-norm model: the encoder's final states and the teacher-forced decoder against
    NumPy (both directions, masked lengths, per-gate layer norm)."""
    model, hps = _conditional_model(enc_model="layer_norm", dec_model="layer_norm")
    rng = np.random.default_rng(4)
    strokes, lengths = _strokes(rng, 3, 7)
    for layer in (model.encoder.forward_rnn, model.encoder.backward_rnn, model.decoder):
        u = layer.units
        layer.gate_gamma.assign(rng.uniform(0.5, 1.5, (4, u)).astype(np.float32))
        layer.gate_beta.assign(rng.normal(0, 0.3, (4, u)).astype(np.float32))
        layer.cell_gamma.assign(rng.uniform(0.5, 1.5, u).astype(np.float32))
        layer.cell_beta.assign(rng.normal(0, 0.3, u).astype(np.float32))
    out = model({"strokes": tf.constant(strokes), "lengths": tf.constant(lengths)}, training=False)
    s64 = strokes.astype(np.float64)
    finals = []
    for layer, reverse in ((model.encoder.forward_rnn, False), (model.encoder.backward_rnn, True)):
        w = lstm_weights(layer)
        hs = []
        for b in range(3):
            seq = s64[b, :lengths[b]][::-1] if reverse else s64[b, :lengths[b]]
            h = c = np.zeros([1, layer.units])
            for row in seq:
                h, c = np_lstm_step(row[None], h, c, w, True)
            hs.append(h[0])
        finals.append(np.stack(hs))
    enc_h = np.concatenate(finals, 1)
    mu = enc_h @ model.encoder.mu.kernel.numpy() + model.encoder.mu.bias.numpy()
    np.testing.assert_allclose(out["mu"].numpy(), mu, atol=2e-5)
    z = out["z"].numpy().astype(np.float64)
    h, c = np_initial_state(model, z)
    prev = np.concatenate([np.tile(START, [3, 1, 1]), s64[:, :-1]], axis=1)
    w = lstm_weights(model.decoder)
    want = []
    for t in range(strokes.shape[1]):
        h, c = np_lstm_step(np.concatenate([prev[:, t], z], 1), h, c, w, True)
        want.append(np_head(model, h))
    np.testing.assert_allclose(out["outputs"].numpy(), np.stack(want, 1), atol=5e-5)


# The reference's gates are (i, j, f, o), ours (i, f, g, o) with g = j: reference gate -> our index.
REF_GATES = {"i": 0, "j": 2, "f": 1, "o": 3}


def hyper_weights(layer: HyperLSTM) -> dict[str, np.ndarray]:
    names = ["kernel", "recurrent_kernel", "bias", "gate_gamma", "gate_beta", "cell_gamma", "cell_beta",
             "embed_kernel", "embed_bias", "scale_kernel", "shift_kernel"]
    w = {n: getattr(layer, n).numpy().astype(np.float64) for n in names}
    w.update({"hyper_" + n: getattr(layer.hyper, n).numpy().astype(np.float64) for n in (
        "kernel", "recurrent_kernel", "gate_gamma", "gate_beta", "cell_gamma", "cell_beta")})
    return w


def _ref_layout(a, units):
    """Last axis `[4H]` in our gate order -> the reference's (i, j, f, o)."""
    blocks = np.split(a, 4, axis=-1)
    return np.concatenate([blocks[REF_GATES[g]] for g in "ijfo"], axis=-1)


def np_ref_layer_norm_lstm(x, h, c, w_xh, w_hh, gamma, beta, gamma_c, beta_c):
    """The reference's LayerNormLSTMCell (its layout): [x, h] [W_xh; W_hh], layer_norm_all over
    each of i, j, f, o, then c' = c sigmoid(f + 1) + sigmoid(i) tanh(j), h' = tanh(LN(c')) sigmoid(o)."""
    units = h.shape[-1]
    concat = np.concatenate([x, h], 1) @ np.concatenate([w_xh, w_hh], 0)
    normed = np_layer_norm(concat.reshape(-1, 4, units), 1.0, 0.0).reshape(-1, 4 * units) * gamma + beta
    i, j, f, o = np.split(normed, 4, 1)
    new_c = c * sigmoid(f + 1.0) + sigmoid(i) * np.tanh(j)
    return np.tanh(np_layer_norm(new_c, gamma_c, beta_c)) * sigmoid(o), new_c


def np_hyper_lstm_step(x, total_h, total_c, w):
    """The reference's HyperLSTMCell.__call__ (use_layer_norm=True, forget_bias 1, no dropout),
    transcribed in its own layout from our weights: state = ([h; h_hyper], [c; c_hyper])."""
    units = w["recurrent_kernel"].shape[0]
    x_size = x.shape[1]
    h, c = total_h[:, :units], total_c[:, :units]
    hyper_h, hyper_c = total_h[:, units:], total_c[:, units:]
    # The hyper cell: a LayerNormLSTMCell over [x, h].
    hyper_out, hyper_c = np_ref_layer_norm_lstm(
        np.concatenate([x, h], 1), hyper_h, hyper_c, _ref_layout(w["hyper_kernel"], 0),
        _ref_layout(w["hyper_recurrent_kernel"], 0), _ref_layout(w["hyper_gate_gamma"].reshape(-1), 0),
        _ref_layout(w["hyper_gate_beta"].reshape(-1), 0), w["hyper_cell_gamma"], w["hyper_cell_beta"])

    def hyper_norm(layer, k, use_bias, part):
        # zw = hyper_output W_zw + b_zw; alpha = zw W_alpha; result = alpha * layer (+ zb W_beta).
        slot = k + (4 if part == "h" else 0)
        zw = hyper_out @ w["embed_kernel"][:, slot] + w["embed_bias"][slot]
        result = (zw @ w["scale_kernel"][slot]) * layer
        if use_bias:
            zb = hyper_out @ w["embed_kernel"][:, 8 + k]
            result = result + zb @ w["shift_kernel"][k]
        return result

    xh = x @ w["kernel"][:x_size]
    hh = h @ w["recurrent_kernel"]
    gates = {}
    for g, k in REF_GATES.items():
        cols = slice(k * units, (k + 1) * units)
        gates[g] = (hyper_norm(xh[:, cols], k, False, "x") + hyper_norm(hh[:, cols], k, True, "h")
                    + w["bias"][cols])
    concat = np.concatenate([gates[g] for g in "ijfo"], 1)
    normed = (np_layer_norm(concat.reshape(-1, 4, units), 1.0, 0.0).reshape(-1, 4 * units)
              * _ref_layout(w["gate_gamma"].reshape(-1), 0) + _ref_layout(w["gate_beta"].reshape(-1), 0))
    i, j, f, o = np.split(normed, 4, 1)
    new_c = c * sigmoid(f + 1.0) + sigmoid(i) * np.tanh(j)
    new_h = np.tanh(np_layer_norm(new_c, w["cell_gamma"], w["cell_beta"])) * sigmoid(o)
    return np.concatenate([new_h, hyper_out], 1), np.concatenate([new_c, hyper_c], 1)


def _randomize(layer, rng, scale=0.5):
    """Every weight of `layer` replaced by random values (gammas around 1), so each one's role is
    tested, not only its init (the init's zero embeddings would hide the hyper cell)."""
    for v in layer.weights:
        name = v.path.split("/")[-1]
        if "gamma" in name:
            value = rng.uniform(0.5, 1.5, v.shape)
        else:
            value = rng.normal(0, scale, v.shape)
        v.assign(value.astype(np.float32))


def test_hyper_lstm_cell_matches_numpy_reference():
    """Four steps of the HyperLSTM with per-step and static inputs and masked lengths against the
    reference's HyperLSTMCell in NumPy; the layer's outputs are the main cell's h."""
    rng = np.random.default_rng(8)
    units, hyper, emb, dim, static = 6, 5, 3, 4, 2
    layer = HyperLSTM(units, static_size=static, hyper_units=hyper, embedding_size=emb)
    layer.build((None, None, dim))
    _randomize(layer, rng)
    x = rng.normal(0, 1, (3, 4, dim)).astype(np.float32)
    zs = rng.normal(0, 1, (3, static)).astype(np.float32)
    h0, c0 = (rng.normal(0, 1, (3, units + hyper)).astype(np.float32) for _ in range(2))
    lengths = np.array([4, 2, 0], np.int32)
    seq, (h_t, c_t) = layer(tf.constant(x), initial_state=(tf.constant(h0), tf.constant(c0)),
                            lengths=tf.constant(lengths), static_inputs=tf.constant(zs))
    assert seq.shape == (3, 4, units) and h_t.shape == c_t.shape == (3, units + hyper)
    w = hyper_weights(layer)
    h, c = h0.astype(np.float64), c0.astype(np.float64)
    for t in range(4):
        h_new, c_new = np_hyper_lstm_step(np.concatenate([x[:, t], zs], 1).astype(np.float64), h, c, w)
        keep = (t < lengths)[:, None]
        h, c = np.where(keep, h_new, h), np.where(keep, c_new, c)
        np.testing.assert_allclose(seq[:, t], h[:, :units], atol=2e-5)
    np.testing.assert_allclose(h_t, h, atol=2e-5)
    np.testing.assert_allclose(c_t, c, atol=2e-5)
    assert np.abs(h[:2] - h0[:2]).max() > 0.1  # The state moved (row 2 has length 0).


def test_hyper_decoder_model_matches_numpy():
    """A conditional model with dec_model=hyper: the teacher-forced outputs are the head of the
    HyperLSTM's main h over [S_{i-1}; z], started at tanh(W z + b) = [c_0; h_0] of width
    2 (H + H_hyper), and the first sampled step's mixture is the same cell's."""
    model, hps = _conditional_model(dec_model="hyper")
    rng = np.random.default_rng(9)
    _randomize(model.decoder, rng, 0.3)
    strokes, lengths = _strokes(rng, 3, 6)
    out = model({"strokes": tf.constant(strokes), "lengths": tf.constant(lengths)}, training=False)
    z = out["z"].numpy().astype(np.float64)
    state = np.tanh(z @ model.initial_state.kernel.numpy() + model.initial_state.bias.numpy())
    width = model.decoder.state_units
    assert state.shape[1] == 2 * width == 2 * (hps.dec_rnn_size + 256)
    c, h = state[:, :width], state[:, width:]
    prev = np.concatenate([np.tile(START, [3, 1, 1]), strokes[:, :-1].astype(np.float64)], axis=1)
    w = hyper_weights(model.decoder)
    want = []
    for t in range(strokes.shape[1]):
        h, c = np_hyper_lstm_step(np.concatenate([prev[:, t], z], 1), h, c, w)
        want.append(np_head(model, h[:, :hps.dec_rnn_size]))
    np.testing.assert_allclose(out["outputs"].numpy(), np.stack(want, 1), atol=5e-5)


# --- recurrent dropout ---------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_recurrent_dropout_is_inverted_dropout_with_a_fresh_mask_each_step(rate):
    """c_t = f c_{t-1} + i * dropout(g): each candidate unit is 0 with probability `rate`, else
    g / (1 - rate) (so E[c] is the eval value), with a new mask at every step.

    The forget gate is shut (bias -50) and the recurrent kernel zero, so that each step's c is
    i * g * mask_t / keep on its own; one input row repeated 20,000 times gives many draws."""
    units, n, keep = 4, 20_000, 1.0 - rate
    layer = LSTM(units, recurrent_dropout=rate)
    layer.build((None, None, 3))
    rng = np.random.default_rng(6)
    layer.kernel.assign(rng.normal(0, 1, (3, 4 * units)).astype(np.float32))
    layer.recurrent_kernel.assign(np.zeros((units, 4 * units), np.float32))
    bias = rng.normal(0, 0.5, 4 * units)
    bias[units:2 * units] = -50.0  # sigmoid(f) = 0: no memory of the previous step.
    layer.bias.assign(bias.astype(np.float32))
    x = np.tile(rng.normal(0, 1, (1, 1, 3)), [n, 2, 1]).astype(np.float32)
    tf.random.set_seed(1)
    seq_eval, (_, c_eval) = layer(tf.constant(x), training=False)
    seq, (_, c_train) = layer(tf.constant(x), training=True)
    c_eval, c_train = c_eval.numpy()[0], c_train.numpy()
    assert np.all(np.abs(c_eval) > 1e-3)
    dropped = np.abs(c_train) < 1e-9
    # Kept units carry exactly g / keep.
    np.testing.assert_allclose(np.where(dropped, c_eval / keep, c_train), np.tile(c_eval / keep, [n, 1]),
                               rtol=1e-5)
    _assert_freq(dropped.sum(0).astype(float), np.full(units, rate), n, "dropped units")
    np.testing.assert_allclose(c_train.mean(0), c_eval, rtol=6 * np.sqrt(rate / keep / n) + 1e-6)
    # h_t = tanh(c_t) sigmoid(o): zero exactly where step t's mask dropped the unit.
    h1, h2 = (np.abs(seq.numpy()[:, t]) < 1e-9 for t in (0, 1))
    h_eval = seq_eval.numpy()[0, 0]
    np.testing.assert_allclose(np.where(h1, 0, np.abs(seq.numpy()[:, 0])),
                               np.where(h1, 0, np.abs(np.tanh(c_eval / keep) * h_eval / np.tanh(c_eval))),
                               rtol=1e-4)
    _assert_freq((h1 & h2).sum(0).astype(float), np.full(units, rate ** 2), n,
                 "dropped at both steps (independent masks)")


def test_model_cells_get_the_recurrent_drop_rate():
    """hps.recurrent_dropout_rate is a drop rate (the reference's keep prob 0.9 is our 0.1) and
    reaches the encoder and decoder cells; off when use_recurrent_dropout is False."""
    hps = HParams.preset("tiny").replace(recurrent_dropout_rate=0.25)
    model = SketchRNN(hps, 10)
    for layer in (model.encoder.forward_rnn, model.encoder.backward_rnn, model.decoder):
        assert layer.recurrent_dropout == pytest.approx(0.25)
    off = SketchRNN(hps.replace(use_recurrent_dropout=False), 10)
    assert off.decoder.recurrent_dropout == 0.0 and off.encoder.forward_rnn.recurrent_dropout == 0.0
