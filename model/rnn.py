"""LSTM layers for sketch-rnn: one set of weights for whole sequences and for single steps.

`LSTM` implements two of the reference's cells through one layer, `HyperLSTM` the third:
  * plain LSTM (default);
  * layer-normalized LSTM (`layer_norm=True`, Ba et al. 2016, as the reference's
    LayerNormLSTMCell: each gate pre-activation and the new cell are normalized);
  * HyperLSTM (Ha et al. 2016, as the reference's HyperLSTMCell with its defaults: a small
    layer-norm LSTM reads [x; h] and rescales the main cell's gate pre-activations every step);
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
      fused_ops: the fused CPU kernel's op library (`trainer.kernels.load()`), or None. When set,
        a float32 plain-LSTM training call runs its whole time loop, and its gradient, as one op
        each (`fused_scan`: the same outputs and gradients as `scan`).
      static_size: width of `static_inputs` (inputs that are the same at every step, such as the
        decoder's z): the kernel has `D + static_size` rows, as for inputs concatenated at every
        step, but their projection is computed once per sequence.
    """

    def __init__(self, units: int, layer_norm: bool = False, recurrent_dropout: float = 0.0,
                 batch_splits: int = 1, fused_ops=None, static_size: int = 0, **kwargs):
        super().__init__(**kwargs)
        # Inputs that are the same at every step (`static_inputs` of `call`), after the per-step
        # inputs in the kernel's rows: kernel = [W_x; W_static], as for the concatenation.
        self.static_size = int(static_size)
        # The fused CPU kernel's op library (trainer/kernels), or None: the TensorFlow loop.
        self.fused_ops = fused_ops
        self.units = int(units)
        self.layer_norm = bool(layer_norm)
        self.recurrent_dropout = float(recurrent_dropout)
        if int(batch_splits) < 1:
            raise ValueError(f"batch_splits must be >= 1, got {batch_splits}")
        self.batch_splits = int(batch_splits)

    def build(self, input_shape):
        h = self.units
        d = int(input_shape[-1]) + self.static_size
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

    @property
    def state_units(self) -> int:
        """Width of h and of c in the state (H; `HyperLSTM` packs its hyper cell's state in too)."""
        return self.units

    @property
    def _plain_cell(self) -> bool:
        """The plain cell, which the fused CPU kernel and cuDNN also run."""
        return not self.layer_norm

    def input_kernel(self) -> tf.Tensor:
        """`[D + static_size, G]` in the compute dtype: x W gives the input part of the step's
        pre-activations (G = 4H here)."""
        return tf.cast(self.kernel, self.compute_dtype)

    def input_bias(self) -> tf.Tensor | None:
        """`[G]` added to x W before the loop, or None (the layer-norm cell's shift is gate_beta)."""
        return None if self.layer_norm else tf.cast(self.bias, self.compute_dtype)

    def output(self, h: tf.Tensor) -> tf.Tensor:
        """The layer's output `[..., H]` from a state's h (the same tensor here)."""
        return h

    def project(self, x: tf.Tensor) -> tf.Tensor:
        """Input part of the step's pre-activations: `[..., D]` -> `[..., G]` (x W + b)."""
        x = tf.cast(x, self.compute_dtype)
        k = self.input_kernel()
        xw = tf.matmul(x, k) if x.shape.rank == 2 else tf.einsum("btd,dg->btg", x, k)
        bias = self.input_bias()
        return xw if bias is None else xw + bias

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

    def _cell(self, weights: dict[str, tf.Tensor]):
        """The step for `scan`: (xw, h, c, drop_mask) -> (h, c), with `weights` read once."""
        return lambda xw, h, c, drop_mask: self.step(xw, h, c, drop_mask, weights=weights)

    def call(self, inputs: tf.Tensor, initial_state: tuple[tf.Tensor, tf.Tensor] | None = None,
             lengths: tf.Tensor | None = None, training: bool = False,
             static_inputs: tf.Tensor | None = None, dropout: bool = True):
        """Runs the whole sequence.

        Args:
          inputs: `[B, T, D]`.
          initial_state: (h, c) `[B, H]` each; zeros when None.
          lengths: `[B]` int; the state stops changing after `lengths[b]` steps (outputs after
            that repeat the last h). None: all T steps are real.
          training: enables recurrent dropout, and the fused training kernel where it applies.
          dropout: False leaves recurrent dropout out even in training (a pass of the training
            graph that must see the model as it samples, on the training kernel).
          static_inputs: `[B, S]` inputs of every step (S = `static_size`), the same as
            concatenating them to `inputs` at each step; None: `inputs` hold all the kernel's rows.
        Returns:
          outputs `[B, T, H]`, (h_T, c_T).
        """
        dtype = self.compute_dtype
        inputs = tf.cast(inputs, dtype)
        batch = tf.shape(inputs)[0]
        if initial_state is None:
            zeros = tf.zeros([batch, self.state_units], dtype)
            initial_state = (zeros, zeros)
        h0, c0 = (tf.cast(s, dtype) for s in initial_state)
        use_dropout = bool(training) and dropout and self.recurrent_dropout > 0.0
        plain = self._plain_cell
        if not use_dropout and plain and self.compute_dtype == "float32" and _gpu_available():
            full = inputs
            if static_inputs is not None:
                full = tf.concat([inputs, tf.broadcast_to(
                    tf.cast(static_inputs, dtype)[:, None, :],
                    tf.concat([tf.shape(inputs)[:2], tf.shape(static_inputs)[-1:]], 0))], -1)
            result = self._cudnn(full, h0, c0, lengths)
            if result is not None:
                return result
        # x W of every step is [T, B, G]: built from time-major inputs (no [B, T, G] transpose),
        # and the static inputs' part and the bias as one [B, G] row bias.
        x = tf.transpose(inputs, [1, 0, 2])  # [T, B, D]
        d = int(inputs.shape[-1])
        kernel = self.input_kernel()
        row_bias = tf.zeros([batch, int(kernel.shape[-1])], dtype)
        if static_inputs is not None:
            row_bias = tf.matmul(tf.cast(static_inputs, dtype), kernel[d:])
        bias = self.input_bias()
        if bias is not None:
            row_bias = row_bias + bias
        weights = self.cell_weights()
        dropout = self.recurrent_dropout if use_dropout else 0.0
        # Training only: evaluation, sampling and exported signatures keep TensorFlow's own ops
        # (a SavedModel must load where the kernel was never built, e.g. in TF Serving).
        if self.fused_ops is not None and bool(training) and plain and dtype == "float32":
            outputs, state = fused_scan(self.fused_ops, x, h0, c0, weights["recurrent_kernel"],
                                        kernel[:d], row_bias, dropout, lengths)
            return tf.transpose(outputs, [1, 0, 2]), state
        xw = tf.einsum("tbd,dg->tbg", x, kernel[:d]) + row_bias  # [T, B, G]
        cell = self._cell(weights)
        if self.batch_splits == 1:
            outputs, state = scan(xw, h0, c0, cell, dropout, lengths, self.units, self.output)
        else:
            # Independent loops over batch slices: the executor runs them concurrently, one per
            # inter-op thread. With one intra-op thread that beats one loop whose small per-step
            # ops pay a thread hand-off each (see benchmarks/profile_step.py).
            sizes = _split_sizes(batch, self.batch_splits)
            pieces = zip(tf.split(xw, sizes, axis=1), tf.split(h0, sizes), tf.split(c0, sizes),
                         tf.split(lengths, sizes) if lengths is not None else [None] * self.batch_splits)
            results = [scan(x, h, c, cell, dropout, n, self.units, self.output)
                       for x, h, c, n in pieces]
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
                "recurrent_dropout": self.recurrent_dropout, "batch_splits": self.batch_splits,
                "static_size": self.static_size}


class HyperLSTM(LSTM):
    """The reference's HyperLSTMCell (Ha et al. 2016) with the defaults sketch-rnn uses it with
    (`dec_model=hyper`): layer norm on, a hyper cell of `hyper_units` (256) units, embeddings of
    `embedding_size` (32), no recurrent dropout in the hyper cell.

    Each step, a small layer-norm LSTM (the hyper cell) reads [x; h] and emits, through embeddings
    of size E, a per-unit scale for each gate's input part x W_x and recurrent part h W_h and a
    shift for the recurrent part; the main cell then runs as the layer-norm LSTM on
        gates = alpha_x * (x W_x) + alpha_h * (h W_h) + beta_h + b,
    with the forget bias 1 added after the normalization. The two cells' states are packed as
    h = [h_main; h_hyper], c = [c_main; c_hyper] (width `state_units` = H + H_hyper, what the
    reference's initial state tanh(W z + b) also covers); the layer's output is h_main.

    Weights (our gate order i, f, g, o; the reference's is i, j, f, o with j = g):
      kernel `[D + S, 4H]`, recurrent_kernel `[H, 4H]`, bias `[4H]` (0; before the norm),
      gate_gamma / gate_beta `[4, H]`, cell_gamma / cell_beta `[H]`: the main cell;
      `hyper`: the hyper cell, a layer-norm `LSTM` of H_h units whose kernel `[D + S + H, 4H_h]`
      has rows x, static inputs, h_main;
      embed_kernel `[H_h, 12, E]`: the 8 scale embeddings (x part of the 4 gates, then h part;
      0 at init, with embed_bias `[8, E]`, 1 at init) and the 4 shift embeddings of the h part
      (N(0, 0.01) at init, no bias); scale_kernel `[8, E, H]` (0.1 / E at init) and shift_kernel
      `[4, E, H]` (0 at init).
    The fused CPU kernel and cuDNN do not run this cell (TensorFlow's loop does).
    """

    def __init__(self, units: int, recurrent_dropout: float = 0.0, batch_splits: int = 1,
                 static_size: int = 0, hyper_units: int = 256, embedding_size: int = 32, **kwargs):
        super().__init__(units, layer_norm=True, recurrent_dropout=recurrent_dropout,
                         batch_splits=batch_splits, fused_ops=None, static_size=static_size, **kwargs)
        self.hyper_units = int(hyper_units)
        self.embedding_size = int(embedding_size)
        # The hyper cell: a layer-norm LSTM over [x; static inputs; h_main] (its weights only: this
        # layer runs its step).
        self.hyper = LSTM(self.hyper_units, layer_norm=True, name="hyper")

    def build(self, input_shape):
        h, hh, e = self.units, self.hyper_units, self.embedding_size
        super().build(input_shape)  # The main cell's layer-norm LSTM weights.
        self.bias = self.add_weight(name="bias", shape=(4 * h,), initializer="zeros")
        self.hyper.build((None, int(self.kernel.shape[0]) + h))

        def embed_kernel_init(shape, dtype=None):
            scale = tf.zeros([hh, 8, e])
            shift = tf.random.normal([hh, 4, e], stddev=0.01, seed=random.randint(1, 2**31 - 1))
            return tf.cast(tf.concat([scale, shift], axis=1), dtype or "float32")

        self.embed_kernel = self.add_weight(name="embed_kernel", shape=(hh, 12, e), initializer=embed_kernel_init)
        self.embed_bias = self.add_weight(name="embed_bias", shape=(8, e), initializer="ones")
        self.scale_kernel = self.add_weight(name="scale_kernel", shape=(8, e, h),
                                            initializer=keras.initializers.Constant(0.1 / e))
        self.shift_kernel = self.add_weight(name="shift_kernel", shape=(4, e, h), initializer="zeros")

    @property
    def state_units(self) -> int:
        return self.units + self.hyper_units

    @property
    def _plain_cell(self) -> bool:
        return False

    def input_kernel(self) -> tf.Tensor:
        """`[D + S, 4H + 4H_h]`: the main cell's x W_x and the hyper cell's input part of x."""
        d = int(self.kernel.shape[0])
        return tf.cast(tf.concat([self.kernel, self.hyper.kernel[:d]], axis=1), self.compute_dtype)

    def input_bias(self) -> tf.Tensor | None:
        return None  # The main bias goes after the hyper scaling; the hyper cell's is its beta.

    def output(self, h: tf.Tensor) -> tf.Tensor:
        return h[..., :self.units]

    def cell_weights(self) -> dict[str, tf.Tensor]:
        dtype = self.compute_dtype
        d = int(self.kernel.shape[0])
        read = lambda v: tf.cast(tf.convert_to_tensor(v), dtype)  # noqa: E731
        w = {name: read(getattr(self, name)) for name in (
            "gate_gamma", "gate_beta", "cell_gamma", "cell_beta", "embed_kernel", "scale_kernel",
            "shift_kernel")}
        # h_main multiplies the main recurrent kernel and the hyper cell's h_main rows: one matmul.
        w["recurrent_kernel"] = tf.concat([read(self.recurrent_kernel), read(self.hyper.kernel)[d:]], axis=1)
        w["bias"] = tf.reshape(read(self.bias), [4, self.units])
        # The shift embeddings have no bias.
        w["embed_bias"] = tf.concat([read(self.embed_bias), tf.zeros([4, self.embedding_size], dtype)], 0)
        w["hyper"] = self.hyper.cell_weights()
        return w

    def step(self, xw, h, c, drop_mask=None, weights=None):
        return hyper_lstm_step(xw, h, c, weights if weights is not None else self.cell_weights(),
                               self.units, drop_mask)

    def get_config(self):
        config = super().get_config()
        config.pop("layer_norm")
        return {**config, "hyper_units": self.hyper_units, "embedding_size": self.embedding_size}


def hyper_lstm_step(xw: tf.Tensor, h: tf.Tensor, c: tf.Tensor, w: dict, units: int,
                    drop_mask: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """One HyperLSTM step (see `HyperLSTM`): xw `[B, 4H + 4H_h]` (x [W_x, W_hyper_x]), packed
    h, c `[B, H + H_h]`, weights from `HyperLSTM.cell_weights()`; returns the packed (h, c)."""
    hw = tf.matmul(h[:, :units], w["recurrent_kernel"])  # [B, 4H + 4H_h]
    g4 = 4 * units
    h_hyp, c_hyp = lstm_step(xw[:, g4:] + hw[:, g4:], h[:, units:], c[:, units:], w["hyper"], True)
    embed = tf.einsum("bj,jke->kbe", h_hyp, w["embed_kernel"]) + w["embed_bias"][:, None, :]  # [12, B, E]
    scale = tf.matmul(embed[:8], w["scale_kernel"])  # [8, B, H]
    shift = tf.matmul(embed[8:], w["shift_kernel"])  # [4, B, H]
    gx = tf.transpose(tf.reshape(xw[:, :g4], [-1, 4, units]), [1, 0, 2])  # [4, B, H]
    gh = tf.transpose(tf.reshape(hw[:, :g4], [-1, 4, units]), [1, 0, 2])
    gates = scale[:4] * gx + scale[4:] * gh + shift + w["bias"][:, None, :]  # [4, B, H]
    i, f, g, o = tf.unstack(_layer_norm(tf.transpose(gates, [1, 0, 2]), w["gate_gamma"], w["gate_beta"]),
                            num=4, axis=1)
    g = tf.tanh(g)
    if drop_mask is not None:
        g = g * drop_mask
    c_new = tf.sigmoid(f + 1.0) * c[:, :units] + tf.sigmoid(i) * g
    h_new = tf.tanh(_layer_norm(c_new, w["cell_gamma"], w["cell_beta"])) * tf.sigmoid(o)
    return tf.concat([h_new, h_hyp], axis=-1), tf.concat([c_new, c_hyp], axis=-1)


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


def scan(xw: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, cell, dropout: float, lengths: tf.Tensor | None,
         drop_units: int, output):
    """Runs a cell over time: xw `[T, ..., B, G]` -> (outputs `[T, ..., B, H]`, (h_T, c_T)).

    `cell(xw_t, h, c, drop_mask) -> (h, c)`, e.g. `LSTM._cell(weights)`; `output(h)` the step's
    output (`LSTM.output`). `lengths` `[B]` (or None): the state stops changing after `lengths[b]`
    steps. `dropout`: drop rate on the cell candidate, a fresh `[..., B, drop_units]` mask each
    step.
    """
    dtype = xw.dtype
    steps = tf.shape(xw)[0]
    # Read steps through a TensorArray: the gradient of `xw[t]` inside a loop would build a
    # full [T, B, G] tensor per step (quadratic time); a TensorArray read's does not.
    xs = tf.TensorArray(dtype, size=steps).unstack(xw)
    mask = None
    if lengths is not None:
        mask = tf.transpose(tf.sequence_mask(lengths, steps))[..., None]  # [T, B, 1]
    outputs = tf.TensorArray(dtype, size=steps)
    keep = 1.0 - dropout

    def body(t, h, c, outputs):
        drop = None
        if dropout > 0.0:
            shape = tf.concat([tf.shape(h)[:-1], [drop_units]], 0)
            drop = tf.cast(tf.cast(tf.random.uniform(shape) < keep, tf.float32) / keep, dtype)
        h_new, c_new = cell(xs.read(t), h, c, drop)
        if mask is not None:
            h_new = tf.where(mask[t], h_new, h)
            c_new = tf.where(mask[t], c_new, c)
        return t + 1, h_new, c_new, outputs.write(t, output(h_new))

    # maximum_iterations bounds the gradient's accumulators (XLA needs that bound).
    _, h, c, outputs = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), h0, c0, outputs),
                                     maximum_iterations=steps)
    return outputs.stack(), (h, c)


def fused_scan(ops, x: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, recurrent_kernel: tf.Tensor,
               input_kernel: tf.Tensor, row_bias: tf.Tensor, dropout: float = 0.0,
               lengths: tf.Tensor | None = None):
    """The plain float32 cell over time as one op (the fused CPU kernel, `ops` from
    `trainer.kernels.load()`): the same as `scan` of xw = x W_x + row_bias.

    Args:
      x: per-step inputs `[T, B, D]`; input_kernel `[D, 4H]`; row_bias `[B, 4H]` (bias plus the
        projection of the static inputs); recurrent_kernel `[H, 4H]`; h0, c0 `[B, H]`.
      dropout: drop rate on the cell candidate; the op draws a fresh mask for every step and row
        (the distribution of `scan`'s masks) from a seed drawn here, and its gradient draws the
        same masks again.
      lengths: `[B]`; None: every row runs all T steps.
    Returns:
      (outputs `[T, B, H]`, (h_T, c_T)); the gradient is the kernel's backward op
      (`register_fused_gradient`).
    """
    batch = tf.shape(x)[1]
    if dropout > 0.0:
        # A fresh seed per call (from TensorFlow's seeded stream); the op draws the masks from it.
        seed = tf.random.uniform([2], 0, 2**31 - 1, dtype=tf.int32)
    else:
        seed = tf.zeros([2], tf.int32)
    if lengths is None:
        lengths = tf.fill([batch], tf.shape(x)[0])
    hs, _, _, h, c = ops.sketch_lstm_forward(x, h0, c0, recurrent_kernel, input_kernel, row_bias,
                                             tf.constant(1.0 - dropout, tf.float32), seed,
                                             tf.cast(lengths, tf.int32))
    return hs, (h, c)


def register_fused_gradient(ops) -> None:
    """Registers the gradient of the fused kernel's forward op (once per process; the op is
    found by its type name, the backward op in `ops`)."""

    def grad(op, d_hs, d_cs, d_acts, d_h, d_c):
        del d_cs, d_acts  # Internal outputs: nothing outside the op reads them.
        x, h0, c0, kernel, input_kernel, _, keep, seed, lengths = op.inputs
        hs, cs, acts = op.outputs[:3]
        zeros = lambda g, like: tf.zeros_like(like) if g is None else g  # noqa: E731
        d_x, d_h0, d_c0, d_kernel, d_input_kernel, d_row_bias = _FUSED_OPS["ops"].sketch_lstm_backward(
            x, kernel, input_kernel, h0, c0, hs, cs, acts, keep, seed, lengths, zeros(d_hs, hs),
            zeros(d_h, h0), zeros(d_c, c0))
        return d_x, d_h0, d_c0, d_kernel, d_input_kernel, d_row_bias, None, None, None

    _FUSED_OPS["ops"] = ops
    if not _FUSED_OPS.get("registered"):
        tf.RegisterGradient("SketchLstmForward")(grad)
        _FUSED_OPS["registered"] = True


_FUSED_OPS: dict = {}


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
