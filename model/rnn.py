"""LSTM layers for sketch-rnn: one set of weights for whole sequences and for single steps.

`LSTM` implements the three cells the reference offers through one layer:
  * plain LSTM (default);
  * layer-normalized LSTM (`layer_norm=True`, Ba et al. 2016, as the reference's
    LayerNormLSTMCell: each gate pre-activation and the new cell are normalized);
  * recurrent dropout on the cell candidate, "without memory loss" (Semeniuta et al. 2016):
    c_t = f * c_{t-1} + i * dropout(g), a fresh mask every step, training only.

Speed: the input projection x W + b of all T steps is one matmul before the loop, so each
step only multiplies h by the recurrent kernel. Weights use Keras' LSTM layout (gate order
i, f, g, o; kernel `[in, 4H]`, recurrent kernel `[H, 4H]`, bias `[4H]`, forget bias initialised
to 1), so the plain cell runs through the cuDNN kernel on a GPU when the conditions hold
(no recurrent dropout in this call, no layer norm, right-padded masks).
"""

from __future__ import annotations

import random

import keras
import tensorflow as tf


def _gpu_available() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def _layer_norm(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor, epsilon: float = 1e-3) -> tf.Tensor:
    """Normalizes the last axis (float32 statistics), then scales and shifts."""
    x32 = tf.cast(x, tf.float32)
    mean, var = tf.nn.moments(x32, axes=[-1], keepdims=True)
    y = (x32 - mean) * tf.math.rsqrt(var + epsilon)
    return tf.cast(y, x.dtype) * gamma + beta


def per_gate_orthogonal(shape, dtype=None):
    """`[H, 4H]` recurrent kernel made of four independent orthogonal `[H, H]` blocks, one per
    gate, as the reference's `lstm_ortho_initializer` (a single orthogonal `[H, 4H]` matrix has
    per-gate singular values 0.5 instead of 1)."""
    rows, cols = int(shape[0]), int(shape[1])
    if cols % 4:
        raise ValueError(f"per-gate orthogonal init needs a [H, 4H] shape, got {shape}")
    # Four independently seeded initializers (an unseeded Keras initializer repeats its values);
    # the seeds come from Python's RNG, which keras.utils.set_random_seed fixes.
    blocks = [keras.initializers.Orthogonal(seed=random.randint(1, 2**31 - 1))((rows, cols // 4))
              for _ in range(4)]
    return tf.cast(tf.concat(blocks, axis=1), dtype or "float32")


class LSTM(keras.layers.Layer):
    """An LSTM over `[B, T, D]` sequences or single steps, with optional layer norm and
    recurrent dropout on the cell candidate.

    Args:
      units: H.
      layer_norm: use the layer-normalized cell.
      recurrent_dropout: drop rate on the cell candidate g (training only).
      batch_splits: run the time loop as this many independent loops over slices of the batch
        (same result; on a CPU with single-threaded ops each core then runs its own loop, see
        `call`).
    """

    def __init__(self, units: int, layer_norm: bool = False, recurrent_dropout: float = 0.0,
                 batch_splits: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.layer_norm = bool(layer_norm)
        self.recurrent_dropout = float(recurrent_dropout)
        if int(batch_splits) < 1:
            raise ValueError(f"batch_splits must be >= 1, got {batch_splits}")
        self.batch_splits = int(batch_splits)

    def build(self, input_shape):
        h = self.units
        d = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(d, 4 * h), initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(h, 4 * h),
                                                initializer=per_gate_orthogonal)

        def bias_init(shape, dtype=None):
            # Forget gate bias 1 (the reference adds forget_bias=1.0 inside its cell).
            return tf.concat([tf.zeros([h]), tf.ones([h]), tf.zeros([2 * h])], 0)

        if not self.layer_norm:  # The layer-norm cell's shift is gate_beta.
            self.bias = self.add_weight(name="bias", shape=(4 * h,), initializer=bias_init)
        else:
            self.gate_gamma = self.add_weight(name="gate_gamma", shape=(4, h), initializer="ones")
            self.gate_beta = self.add_weight(name="gate_beta", shape=(4, h), initializer="zeros")
            self.cell_gamma = self.add_weight(name="cell_gamma", shape=(h,), initializer="ones")
            self.cell_beta = self.add_weight(name="cell_beta", shape=(h,), initializer="zeros")

    # --- the math ---------------------------------------------------------------------

    def project(self, x: tf.Tensor) -> tf.Tensor:
        """Input part of the gate pre-activations: `[..., D]` -> `[..., 4H]` (x W + b)."""
        dtype = self.compute_dtype
        x = tf.cast(x, dtype)
        k = tf.cast(self.kernel, dtype)
        if self.layer_norm:  # The bias goes after the normalization (as beta).
            return tf.matmul(x, k) if x.shape.rank == 2 else tf.einsum("btd,dg->btg", x, k)
        b = tf.cast(self.bias, dtype)
        return (tf.matmul(x, k) if x.shape.rank == 2 else tf.einsum("btd,dg->btg", x, k)) + b

    def cell_weights(self) -> dict[str, tf.Tensor]:
        """The step's weights read once (in the compute dtype), to pass into a loop: reading
        variables inside a while loop makes its gradient accumulate every read."""
        dtype = self.compute_dtype
        w = {"recurrent_kernel": tf.cast(tf.convert_to_tensor(self.recurrent_kernel), dtype)}
        if self.layer_norm:
            for name in ("gate_gamma", "gate_beta", "cell_gamma", "cell_beta"):
                w[name] = tf.cast(tf.convert_to_tensor(getattr(self, name)), dtype)
        return w

    def step(self, xw: tf.Tensor, h: tf.Tensor, c: tf.Tensor, drop_mask: tf.Tensor | None = None,
             weights: dict[str, tf.Tensor] | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        """One step from the projected input `xw` `[B, 4H]`: returns (h, c) `[B, H]`.

        `drop_mask` `[B, H]` (already scaled by 1 / (1 - rate)) multiplies the candidate g.
        `weights`: from `cell_weights()` (read here when None).
        """
        return lstm_step(xw, h, c, weights if weights is not None else self.cell_weights(),
                         self.layer_norm, drop_mask)

    def call(self, inputs: tf.Tensor, initial_state: tuple[tf.Tensor, tf.Tensor] | None = None,
             lengths: tf.Tensor | None = None, training: bool = False):
        """Runs the whole sequence.

        Args:
          inputs: `[B, T, D]`.
          initial_state: (h, c) `[B, H]` each; zeros when None.
          lengths: `[B]` int; the state stops changing after `lengths[b]` steps (outputs after
            that repeat the last h). None: all T steps are real.
          training: enables recurrent dropout.
        Returns:
          outputs `[B, T, H]`, (h_T, c_T).
        """
        dtype = self.compute_dtype
        inputs = tf.cast(inputs, dtype)
        batch = tf.shape(inputs)[0]
        if initial_state is None:
            zeros = tf.zeros([batch, self.units], dtype)
            initial_state = (zeros, zeros)
        h0, c0 = (tf.cast(s, dtype) for s in initial_state)
        use_dropout = bool(training) and self.recurrent_dropout > 0.0
        if (not use_dropout and not self.layer_norm and self.compute_dtype == "float32"
                and _gpu_available()):
            result = self._cudnn(inputs, h0, c0, lengths)
            if result is not None:
                return result
        xw = tf.transpose(self.project(inputs), [1, 0, 2])  # [T, B, 4H]
        weights = self.cell_weights()
        dropout = self.recurrent_dropout if use_dropout else 0.0
        if self.batch_splits == 1:
            outputs, state = scan(xw, h0, c0, weights, self.layer_norm, dropout, lengths)
        else:
            # Independent loops over batch slices: the executor runs them concurrently, one per
            # inter-op thread. With one intra-op thread that beats one loop whose small per-step
            # ops pay a thread hand-off each (see benchmarks/profile_step.py).
            sizes = _split_sizes(batch, self.batch_splits)
            pieces = zip(tf.split(xw, sizes, axis=1), tf.split(h0, sizes), tf.split(c0, sizes),
                         tf.split(lengths, sizes) if lengths is not None else [None] * self.batch_splits)
            results = [scan(x, h, c, weights, self.layer_norm, dropout, n) for x, h, c, n in pieces]
            outputs = tf.concat([r[0] for r in results], axis=1)
            state = tuple(tf.concat([r[1][k] for r in results], 0) for k in (0, 1))
        return tf.transpose(outputs, [1, 0, 2]), state

    def _cudnn(self, inputs, h0, c0, lengths):
        """The fused cuDNN kernel through Keras' TensorFlow backend; None when not usable."""
        try:
            from keras.src.backend.tensorflow.rnn import cudnn_ok, lstm as backend_lstm
        except ImportError:  # A Keras without these internals: the generic loop runs.
            return None
        if not cudnn_ok("tanh", "sigmoid", False, True):
            return None
        mask = None if lengths is None else tf.sequence_mask(lengths, tf.shape(inputs)[1])
        try:
            _, outputs, (h, c) = backend_lstm(
                inputs, h0, c0, mask, kernel=self.kernel, recurrent_kernel=self.recurrent_kernel,
                bias=self.bias, activation=tf.tanh, recurrent_activation=tf.sigmoid,
                return_sequences=True)
        except NotImplementedError:
            return None
        return outputs, (h, c)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "layer_norm": self.layer_norm,
                "recurrent_dropout": self.recurrent_dropout, "batch_splits": self.batch_splits}


def _split_sizes(batch: tf.Tensor, splits: int) -> tf.Tensor:
    """`[splits]` slice sizes that sum to `batch` (the first `batch % splits` one larger; a batch
    smaller than `splits` gives empty slices, which the loops run over harmlessly)."""
    base = batch // splits
    extra = batch - base * splits
    return base + tf.cast(tf.range(splits) < extra, batch.dtype)


def lstm_step(xw: tf.Tensor, h: tf.Tensor, c: tf.Tensor, w: dict[str, tf.Tensor], layer_norm: bool,
              drop_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """The cell: `xw` `[..., B, 4H]` (x W + b), h, c `[..., B, H]`, weights from `LSTM.cell_weights()`
    (a leading axis of K stacked cells is allowed: recurrent kernel `[K, H, 4H]`)."""
    z = xw + tf.matmul(h, w["recurrent_kernel"])
    if layer_norm:
        units = tf.shape(h)[-1]
        zs = tf.reshape(z, tf.concat([tf.shape(z)[:-1], [4, units]], 0))
        zs = _layer_norm(zs, w["gate_gamma"], w["gate_beta"])
        i, f, g, o = tf.unstack(zs, num=4, axis=-2)
        f = f + 1.0  # Forget bias (beta starts at 0 here, so add it as the reference does).
    else:
        i, f, g, o = tf.split(z, 4, axis=-1)
    g = tf.tanh(g)
    if drop_mask is not None:
        g = g * drop_mask
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * g
    c_out = _layer_norm(c, w["cell_gamma"], w["cell_beta"]) if layer_norm else c
    return tf.tanh(c_out) * tf.sigmoid(o), c


def scan(xw: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, weights: dict[str, tf.Tensor],
         layer_norm: bool, dropout: float = 0.0, lengths: tf.Tensor | None = None):
    """Runs the cell over time: xw `[T, ..., B, 4H]` -> (outputs `[T, ..., B, H]`, (h_T, c_T)).

    `lengths` `[B]`: the state stops changing after `lengths[b]` steps. `dropout`: drop rate on
    the cell candidate, a fresh mask each step.
    """
    dtype = xw.dtype
    steps = tf.shape(xw)[0]
    # Read steps through a TensorArray: the gradient of `xw[t]` inside a loop would build a
    # full [T, B, 4H] tensor per step (quadratic time); a TensorArray read's does not.
    xs = tf.TensorArray(dtype, size=steps).unstack(xw)
    mask = None
    if lengths is not None:
        mask = tf.transpose(tf.sequence_mask(lengths, steps))[..., None]  # [T, B, 1]
    outputs = tf.TensorArray(dtype, size=steps)
    keep = 1.0 - dropout

    def body(t, h, c, outputs):
        drop = None
        if dropout > 0.0:
            drop = tf.cast(tf.cast(tf.random.uniform(tf.shape(h)) < keep, tf.float32) / keep, dtype)
        h_new, c_new = lstm_step(xs.read(t), h, c, weights, layer_norm, drop)
        if mask is not None:
            h_new = tf.where(mask[t], h_new, h)
            c_new = tf.where(mask[t], c_new, c)
        return t + 1, h_new, c_new, outputs.write(t, h_new)

    # maximum_iterations bounds the gradient's accumulators (XLA needs that bound).
    _, h, c, outputs = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), h0, c0, outputs),
                                     maximum_iterations=steps)
    return outputs.stack(), (h, c)


def bidirectional_final_h(forward: LSTM, backward: LSTM, inputs: tf.Tensor, lengths: tf.Tensor,
                          training: bool = False) -> tf.Tensor:
    """[h_fw; h_bw] `[B, 2H]`: the last states of a bidirectional LSTM over `[B, T, D]` masked by
    lengths (the backward cell reads each sequence's first `lengths[b]` steps in reverse).

    (Running both directions as one loop of two stacked cells was measured: no faster on CPU,
    the batched matmul's gradient costs what the saved loop overhead gains.)
    """
    lengths = tf.cast(lengths, tf.int32)
    _, (h_fw, _) = forward(inputs, lengths=lengths, training=training)
    reversed_ = tf.reverse_sequence(inputs, lengths, seq_axis=1, batch_axis=0)
    _, (h_bw, _) = backward(reversed_, lengths=lengths, training=training)
    return tf.concat([h_fw, h_bw], axis=-1)
