"""The sketch-rnn network (Ha & Eck 2017) in Keras 3: encoder, latent, decoder, sampling.

Shapes: B batch, T steps, Z = hps.z_size, H = hps.dec_rnn_size, M = hps.num_mixture.
Strokes are normalized stroke-5 rows (dx, dy, p1 pen down, p2 pen up, p3 end); a batch holds the
points to predict, S_1..S_T, with rows from `lengths[b]` on set to (0, 0, 0, 0, 1). The decoder
input at step i is [S_{i-1}; z] with S_0 = (0, 0, 1, 0, 0); its output at step i parametrizes
S_i. Sampling and completion run as one `tf.while_loop` over steps for a whole batch.
"""

from __future__ import annotations

import weakref

import keras
import tensorflow as tf

from model import losses
from model.hparams import HParams
from model.rnn import LSTM, HyperLSTM, bidirectional_final_h

START_ROW = (0.0, 0.0, 1.0, 0.0, 0.0)  # S_0.
END_ROW = (0.0, 0.0, 0.0, 0.0, 1.0)  # Padding after a sketch's end.

# Seed salts: independent stateless streams for each random draw of the sampler.
_SALT_Z, _SALT_EPS, _SALT_PEN, _SALT_PI, _SALT_XY = 11, 13, 17, 19, 23
# hps.dec_scheduled_sampling: the seed of a training step's draws (one stateful draw per step).
_SEED_RANGE = 2**31 - 1


def _seed(seed: tf.Tensor, salt, t=0) -> tf.Tensor:
    """A stateless seed `[2]` int64 from the user's seed, a salt per draw kind and a step."""
    return tf.stack([tf.cast(seed, tf.int64),
                     tf.cast(salt, tf.int64) * 1_000_003 + tf.cast(t, tf.int64)])


def _mixture_params(out: tf.Tensor, m: int, temperature: tf.Tensor):
    """Decoder output `[n, 6M+3]` -> tempered log-probabilities and Gaussian parameters.

    pi and pen logits are divided by tau; sigma^2 is multiplied by tau (sigma by sqrt(tau)).
    """
    p = losses.split_outputs(tf.cast(out, tf.float32), m)
    tau = tf.maximum(temperature, 1e-6)
    return {"pen_logits": p["pen_logits"] / tau, "pi_logits": p["pi_logits"] / tau,
            "mu_x": p["mu_x"], "mu_y": p["mu_y"],
            "sigma_x": tf.exp(p["log_sigma_x"]) * tf.sqrt(tau),
            "sigma_y": tf.exp(p["log_sigma_y"]) * tf.sqrt(tau),
            "rho": tf.tanh(p["rho_pre"])}


def _categorical(logits: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One draw per row of `[n, K]` logits (Gumbel-max: argmax(logits + Gumbel noise)).

    Exact categorical sampling that XLA compiles (its StatelessMultinomial kernel does not).
    """
    u = tf.random.stateless_uniform(tf.shape(logits), seed, minval=1e-12, maxval=1.0)
    return tf.argmax(logits - tf.math.log(-tf.math.log(u)), axis=-1, output_type=tf.int32)


def sample_step(out: tf.Tensor, num_mixture: int, temperature: tf.Tensor, seed: tf.Tensor,
                t: tf.Tensor, allow_end: tf.Tensor | bool = True) -> tf.Tensor:
    """One stroke-5 row `[n, 5]` per decoder output `[n, 6M+3]`.

    temperature <= 0 is greedy: the most likely pen state and mixture component, and that
    component's mean offset. `allow_end` False rules out p3 (a sketch has at least one point).
    """
    n = tf.shape(out)[0]
    q = _mixture_params(out, num_mixture, temperature)
    no_end = tf.constant([0.0, 0.0, -1e9])
    q["pen_logits"] = tf.where(allow_end, q["pen_logits"], q["pen_logits"] + no_end)
    greedy = temperature <= 0.0
    pen_s = _categorical(q["pen_logits"], _seed(seed, _SALT_PEN, t))
    pen_g = tf.argmax(q["pen_logits"], axis=-1, output_type=tf.int32)
    pen = tf.where(greedy, pen_g, pen_s)
    k_s = _categorical(q["pi_logits"], _seed(seed, _SALT_PI, t))
    k_g = tf.argmax(q["pi_logits"], axis=-1, output_type=tf.int32)
    k = tf.where(greedy, k_g, k_s)
    pick = lambda v: tf.gather(v, k, axis=1, batch_dims=1)  # noqa: E731
    mu_x, mu_y, sx, sy, rho = (pick(q[name]) for name in ("mu_x", "mu_y", "sigma_x", "sigma_y", "rho"))
    e = tf.random.stateless_normal([n, 2], _seed(seed, _SALT_XY, t))
    x = mu_x + sx * e[:, 0]
    y = mu_y + sy * (rho * e[:, 0] + tf.sqrt(tf.maximum(1.0 - tf.square(rho), 0.0)) * e[:, 1])
    x = tf.where(greedy, mu_x, x)
    y = tf.where(greedy, mu_y, y)
    return tf.concat([tf.stack([x, y], axis=1), tf.one_hot(pen, 3)], axis=1)


class StrokeEncoder(keras.layers.Layer):
    """Bidirectional LSTM over `[B, T, 5]` (masked by lengths) -> mu, sigma_hat `[B, Z]`."""

    def __init__(self, units: int, z_size: int, layer_norm: bool, recurrent_dropout: float,
                 batch_splits: int = 1, rnn_ops=None, **kwargs):
        super().__init__(**kwargs)
        self.forward_rnn = LSTM(units, layer_norm, recurrent_dropout, batch_splits, rnn_ops,
                                name="forward")
        self.backward_rnn = LSTM(units, layer_norm, recurrent_dropout, batch_splits, rnn_ops,
                                 name="backward")
        # Small Gaussian init as the reference (so the KL starts near zero).
        init = keras.initializers.RandomNormal(stddev=0.001)
        self.mu = keras.layers.Dense(z_size, kernel_initializer=init, name="mu")
        self.sigma_hat = keras.layers.Dense(z_size, kernel_initializer=init, name="sigma_hat")

    def call(self, strokes: tf.Tensor, lengths: tf.Tensor, training: bool = False):
        h = bidirectional_final_h(self.forward_rnn, self.backward_rnn, strokes, lengths, training)
        return self.mu(h), self.sigma_hat(h)


class SketchRNN(keras.Model):
    """sketch-rnn: a seq2seq VAE over stroke-5 sketches (or its decoder alone when unconditional).

    Args:
      hps: hyperparameters.
      max_seq_len: N_max of the data (the default sampling length).
      rnn_ops: the fused CPU LSTM kernel's op library (`trainer.kernels.load()`) for training
        calls, or None (TensorFlow's loop; see `model.rnn.LSTM`).
    """

    def __init__(self, hps: HParams, max_seq_len: int, rnn_ops=None, **kwargs):
        super().__init__(**kwargs)
        self.hps = hps
        self.max_seq_len = int(max_seq_len)
        drop = hps.recurrent_dropout_rate if hps.use_recurrent_dropout else 0.0
        splits = max(1, hps.rnn_batch_splits)  # 0 (auto) is resolved by the trainer.
        if hps.conditional:
            self.encoder = StrokeEncoder(hps.enc_rnn_size, hps.z_size, hps.enc_model == "layer_norm",
                                         drop, splits, rnn_ops, name="encoder")
        # z enters every step: a static input of the decoder (its projection is computed once),
        # unless input dropout draws a new mask over [S_{i-1}; z] at every step. The kernel's rows
        # are [S; z] either way.
        static = hps.z_size if hps.conditional and not hps.use_input_dropout else 0
        if hps.dec_model == "hyper":
            self.decoder = HyperLSTM(hps.dec_rnn_size, drop, splits, static_size=static, name="decoder")
        else:
            self.decoder = LSTM(hps.dec_rnn_size, hps.dec_model == "layer_norm", drop, splits, rnn_ops,
                                static_size=static, name="decoder")
        if hps.conditional:
            # The whole decoder state (h and c; a HyperLSTM's includes its hyper cell's).
            self.initial_state = keras.layers.Dense(
                2 * self.decoder.state_units, activation="tanh",
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.001), name="initial_state")
        # Mixture math stays in float32 under mixed precision. The bias starts Glorot-uniform as
        # the reference's `output_b` (a TF1 get_variable without initializer), not at zero.
        self.head = keras.layers.Dense(6 * hps.num_mixture + 3, dtype="float32", name="mixture_head",
                                       bias_initializer="glorot_uniform")
        self.input_dropout = keras.layers.Dropout(hps.input_dropout_rate if hps.use_input_dropout else 0.0)
        self.output_dropout = keras.layers.Dropout(hps.output_dropout_rate if hps.use_output_dropout else 0.0)

    # --- pieces -----------------------------------------------------------------------

    def encode(self, strokes: tf.Tensor, lengths: tf.Tensor, training: bool = False):
        """stroke-5 `[B, T, 5]` (S_1..S_T) + lengths `[B]` -> (mu, sigma_hat) `[B, Z]` float32
        (under a mixed precision policy too, like z drawn from them)."""
        if not self.hps.conditional:
            raise ValueError("an unconditional model has no encoder")
        mu, sigma_hat = self.encoder(tf.cast(strokes, tf.float32), lengths, training=training)
        return tf.cast(mu, tf.float32), tf.cast(sigma_hat, tf.float32)

    def initial_decoder_state(self, z: tf.Tensor | None, batch: tf.Tensor):
        """(h, c) `[B, state_units]`: tanh(W z + b) split into (c, h) as the reference's LSTMCell;
        zeros if unconditional."""
        if not self.hps.conditional:
            zeros = tf.zeros([batch, self.decoder.state_units], self.decoder.compute_dtype)
            return zeros, zeros
        state = self.initial_state(z)
        c, h = tf.split(state, 2, axis=-1)
        return h, c

    def _decoder_inputs(self, prev: tf.Tensor, z: tf.Tensor | None) -> tf.Tensor:
        """[S_{i-1}; z] along the last axis (`prev` `[B, T, 5]` or `[B, 5]`)."""
        if z is None:
            return prev
        if prev.shape.rank == 3:
            z = tf.broadcast_to(z[:, None, :], tf.concat([tf.shape(prev)[:2], tf.shape(z)[-1:]], 0))
        return tf.concat([prev, tf.cast(z, prev.dtype)], axis=-1)

    @property
    def _row_size(self) -> int:
        """Width of the per-step decoder input before z: S_{i-1} (5), + the pen position (2)."""
        return 7 if self.hps.dec_position else 5

    def _run_decoder(self, prev: tf.Tensor, z: tf.Tensor | None, state, training: bool = False,
                     lengths: tf.Tensor | None = None, dropout: bool = True):
        """The decoder over `[B, T, 5]` rows S_{i-1} with z at every step -> (h `[B, T, H]`, state).
        `prev` starts at S_0 (hps.dec_position: the position is the running sum of its offsets).
        `dropout` False: no dropout, even in training (which still picks the training kernel)."""
        if self.hps.dec_position:
            prev = tf.concat([prev, tf.cumsum(prev[..., :2], axis=1)], axis=-1)
        drop = bool(training) and dropout
        if self.decoder.static_size:
            x = self.input_dropout(prev, training=drop)
            return self.decoder(x, initial_state=state, training=training, lengths=lengths,
                                static_inputs=z, dropout=dropout)
        x = self.input_dropout(self._decoder_inputs(prev, z), training=drop)
        return self.decoder(x, initial_state=state, training=training, lengths=lengths,
                            dropout=dropout)

    @staticmethod
    def _drawn_rows(prev: tf.Tensor) -> tf.Tensor:
        """`[B, T, 1]` bool: the rows of `prev` (S_0..S_{T-1}) the decoder draws itself when it
        samples, S_1.. that are not end-of-sketch (padding) rows; False on S_0."""
        later = tf.one_hot(0, tf.shape(prev)[1], on_value=False, off_value=True)[None, :, None]
        return later & (prev[..., 4:5] < 0.5)

    def _noisy_offsets(self, prev: tf.Tensor) -> tf.Tensor:
        """hps.dec_input_noise: `prev` (S_0..S_{T-1}) with N(0, noise^2) added to the offsets of
        S_1.. that are not end-of-sketch rows; S_0 and the pen states stay as they are."""
        noise = tf.random.normal(tf.shape(prev[..., :2]), stddev=self.hps.dec_input_noise)
        noise = noise * tf.cast(self._drawn_rows(prev), noise.dtype)
        return tf.concat([prev[..., :2] + noise, prev[..., 2:]], axis=-1)

    def scheduled_inputs(self, prev: tf.Tensor, z: tf.Tensor | None, state, lengths,
                         rate: float, temperature: float, seed: tf.Tensor) -> tf.Tensor:
        """hps.dec_scheduled_sampling: `prev` (S_0..S_{T-1}) with each row S_1.. that is not an end
        row swapped, with probability `rate`, for the decoder's own draw of it (`sample_step` at
        `temperature`, no end row) from a teacher-forced pass over `prev` without dropout. No
        gradient flows through the draws or the pass."""
        stop = lambda x: None if x is None else tf.stop_gradient(x)  # noqa: E731
        # training=True with dropout off: the training kernel (fused where it applies), no dropout.
        h, _ = self._run_decoder(prev, stop(z), tf.nest.map_structure(stop, state), True,
                                 lengths=lengths, dropout=False)
        out = tf.stop_gradient(self.head(h))  # out[:, i] parametrizes S_{i+1}, prev[:, i + 1].
        b, t = tf.shape(out)[0], tf.shape(out)[1]
        rows = sample_step(tf.reshape(out, [b * t, -1]), self.hps.num_mixture,
                           tf.constant(temperature, tf.float32), seed, 0, allow_end=False)
        drawn = tf.concat([prev[:, :1], tf.reshape(rows, [b, t, 5])[:, :-1]], axis=1)
        u = tf.random.stateless_uniform([b, t, 1], _seed(seed, _SALT_EPS, 1))
        swap = (u < rate) & self._drawn_rows(prev)
        return tf.where(swap, tf.cast(drawn, prev.dtype), prev)

    def call(self, inputs: dict, training: bool = False) -> dict:
        """Teacher-forced pass.

        Args:
          inputs: {"strokes": `[B, T, 5]` S_1..S_T, "lengths": `[B]`, optionally
            "decoder_lengths": `[B]` steps the decoder runs per sketch (its state, and so its
            outputs, stop changing after them: rows past it are for a loss that leaves them out,
            see `losses.per_example_reconstruction_loss(run_lengths=)`); default all T}.
        Returns:
          {"outputs": `[B, T, 6M+3]` float32 raw mixture/pen parameters, and when conditional
           "mu", "sigma_hat", "z" `[B, Z]`}.
        """
        strokes = tf.cast(inputs["strokes"], tf.float32)
        lengths = tf.cast(inputs["lengths"], tf.int32)
        batch = tf.shape(strokes)[0]
        start = tf.broadcast_to(tf.constant(START_ROW), tf.stack([batch, 1, 5]))
        prev = tf.concat([start, strokes[:, :-1]], axis=1)  # S_0..S_{T-1}.
        if training and self.hps.dec_input_noise > 0:
            prev = self._noisy_offsets(prev)
        result = {}
        z = None
        if self.hps.conditional:
            mu, sigma_hat = self.encoder(strokes, lengths, training=training)
            eps = tf.random.normal(tf.shape(mu), dtype=mu.dtype)
            z = mu + tf.exp(sigma_hat / 2.0) * eps
            result.update(mu=mu, sigma_hat=sigma_hat, z=z)
        state = self.initial_decoder_state(z, batch)
        run = inputs.get("decoder_lengths")
        run = None if run is None else tf.cast(run, tf.int32)
        if training and self.hps.dec_scheduled_sampling > 0:
            seed = tf.random.uniform([], maxval=_SEED_RANGE, dtype=tf.int64)
            prev = self.scheduled_inputs(prev, z, state, run, self.hps.dec_scheduled_sampling,
                                         self.hps.dec_scheduled_sampling_temperature, seed)
        h, _ = self._run_decoder(prev, z, state, training, lengths=run)
        h = self.output_dropout(h, training=training)
        result["outputs"] = self.head(h)
        return result

    # --- sampling ---------------------------------------------------------------------

    def _sample_loop(self, h, c, prev, z, steps, temperature, seed, min_steps=1,
                     fixed_steps: bool = False, position=None):
        """Autoregressive sampling for a batch: returns rows `[n, steps, 5]` and lengths `[n]`.

        Stops per sample at the first p3 (its length = the points before it) and at `steps`;
        p3 is ruled out for the first `min_steps` steps. `fixed_steps` (with a Python int
        `steps`): static output shapes, what XLA compiles (rows after the loop's early exit are
        filled in afterwards instead of concatenated). `position` `[n, 2]`: the pen's position
        after `prev` (hps.dec_position; default the offsets of `prev`, as after S_0).
        """
        n = tf.shape(prev)[0]
        temperature = tf.cast(temperature, tf.float32)
        # One spare slot so the array is never empty (zero-size arrays need static shapes).
        size = steps if fixed_steps else steps + 1
        rows = tf.TensorArray(tf.float32, size=size, element_shape=tf.TensorShape([None, 5]))
        end = tf.constant(END_ROW)
        lengths0 = tf.fill([n], tf.cast(steps, tf.int32))
        dtype = self.decoder.compute_dtype
        weights = self.decoder.cell_weights()
        # The z part of the decoder's input projection is the same at every step.
        z_proj = None
        kernel = self.decoder.input_kernel()
        if z is not None:
            z_proj = tf.matmul(tf.cast(z, dtype), kernel[self._row_size:])
        bias = self.decoder.input_bias()
        if bias is not None:
            z_proj = bias if z_proj is None else z_proj + bias
        k_prev = kernel[:self._row_size]
        if position is None:
            position = prev[:, :2]

        def cond(t, h, c, prev, done, lengths, rows, position):
            return tf.logical_and(t < steps, tf.logical_not(tf.reduce_all(done)))

        def body(t, h, c, prev, done, lengths, rows, position):
            x = tf.concat([prev, position], axis=-1) if self.hps.dec_position else prev
            xw = tf.matmul(tf.cast(x, dtype), k_prev)
            if z_proj is not None:
                xw = xw + z_proj
            h, c = self.decoder.step(xw, h, c, weights=weights)
            row = sample_step(self.head(self.decoder.output(h)), self.hps.num_mixture, temperature, seed, t,
                              allow_end=t >= min_steps)
            ended = tf.logical_and(tf.logical_not(done), row[:, 4] > 0.5)
            lengths = tf.where(ended, t, lengths)
            done = tf.logical_or(done, ended)
            row = tf.where(done[:, None], end, row)
            return t + 1, h, c, row, done, lengths, rows.write(t, row), position + row[:, :2]

        t, _, _, _, _, lengths, rows, _ = tf.while_loop(
            cond, body, (tf.constant(0), tf.cast(h, dtype), tf.cast(c, dtype), prev,
                         tf.zeros([n], tf.bool), lengths0, rows, position),
            shape_invariants=(tf.TensorShape([]), tf.TensorShape([None, None]),
                              tf.TensorShape([None, None]), tf.TensorShape([None, 5]),
                              tf.TensorShape([None]), tf.TensorShape([None]), None,
                              tf.TensorShape([None, 2])),
            maximum_iterations=steps)
        if fixed_steps:  # Slots after the exit were never written: XLA leaves them zero.
            out = tf.transpose(rows.stack(), [1, 0, 2])
            real = tf.range(steps)[None, :, None] < lengths[:, None, None]
            return tf.where(real, out, end), lengths
        rows = rows.write(t, tf.broadcast_to(end, tf.stack([n, 5])))
        out = tf.transpose(rows.gather(tf.range(t + 1))[:t], [1, 0, 2])
        pad = tf.broadcast_to(end, tf.stack([n, steps - t, 5]))
        return tf.concat([out, pad], axis=1), lengths

    def sample(self, num, temperature, seed, z: tf.Tensor | None = None,
               max_len: int | None = None, xla: bool = False):
        """Draws sketches in one in-graph loop.

        Args:
          num: number of sketches (ignored when `z` is given: one per row of z).
          temperature: tau (float scalar); <= 0 is greedy.
          seed: int scalar; the same seed gives the same sketches.
          z: optional `[n, Z]` latent vectors (conditional models); drawn from N(0, I) if None.
          max_len: steps at most (default N_max).
          xla: compile the loop with XLA when called eagerly (about 3x faster for one sketch on
            CPU; XLA's random numbers differ from TensorFlow's kernels, so the same seed gives
            other, equally deterministic, sketches). Inside a tf.function, set jit_compile there.
        Returns:
          (strokes `[n, max_len, 5]` float32, lengths `[n]` int32).
        """
        fn = _eager_fn(self, "sample", xla) if tf.executing_eagerly() else self._sample
        return fn(num, temperature, seed, z, int(max_len or self.max_seq_len))

    def _sample(self, num, temperature, seed, z, max_len):
        seed = tf.cast(seed, tf.int64)
        if z is not None:
            z = tf.cast(z, tf.float32)
            num = tf.shape(z)[0]
        num = tf.cast(num, tf.int32)
        if self.hps.conditional and z is None:
            z = tf.random.stateless_normal(tf.stack([num, self.hps.z_size]), _seed(seed, _SALT_Z))
        if not self.hps.conditional:
            z = None
        h, c = self.initial_decoder_state(z, num)
        prev = tf.broadcast_to(tf.constant(START_ROW), tf.stack([num, 5]))
        return self._sample_loop(h, c, prev, z, max_len, temperature, seed, fixed_steps=True)

    def complete(self, prefix, prefix_length, num, temperature, seed, max_len: int | None = None):
        """Continues a partial sketch `num` times.

        Conditional models encode the prefix and draw z = mu + sigma * eps per candidate; the
        decoder then reads the prefix (teacher forcing, no dropout) and samples from its state.

        Args:
          prefix: stroke-5 `[1, P_pad, 5]`; prefix_length `[1]` (P real rows, 0 allowed).
        Returns:
          (strokes `[num, max_len, 5]` starting with the prefix unchanged, lengths `[num]`).
        """
        fn = _eager_fn(self, "complete") if tf.executing_eagerly() else self._complete
        return fn(prefix, prefix_length, num, temperature, seed, int(max_len or self.max_seq_len))

    def _complete(self, prefix, prefix_length, num, temperature, seed, max_len):
        seed = tf.cast(seed, tf.int64)
        num = tf.cast(num, tf.int32)
        prefix = tf.cast(prefix, tf.float32)
        p = tf.cast(tf.reshape(prefix_length, [-1])[0], tf.int32)
        p = tf.clip_by_value(p, 0, tf.minimum(tf.shape(prefix)[1], max_len))
        prefix = prefix[:1, :p]
        prefix = tf.tile(prefix, tf.stack([num, 1, 1]))
        lengths = tf.fill([num], p)
        z = None
        if self.hps.conditional:
            mu, sigma_hat = self.encode(prefix, lengths)
            eps = tf.random.stateless_normal(tf.shape(mu), _seed(seed, _SALT_EPS))
            z = mu + tf.exp(sigma_hat / 2.0) * eps
        h, c = self.initial_decoder_state(z, num)
        start = tf.broadcast_to(tf.constant(START_ROW), tf.stack([num, 1, 5]))
        with_start = tf.concat([start, prefix], axis=1)  # S_0..S_P.
        _, (h, c) = self._run_decoder(with_start[:, :p], z, (h, c), training=False)
        rows, gen_lengths = self._sample_loop(h, c, with_start[:, p], z, max_len - p,
                                              temperature, seed, min_steps=tf.cast(p == 0, tf.int32),
                                              position=tf.reduce_sum(with_start[:, :p + 1, :2], axis=1))
        return tf.concat([prefix, rows], axis=1), p + gen_lengths


_EAGER_CACHE: "weakref.WeakKeyDictionary[SketchRNN, dict]" = weakref.WeakKeyDictionary()


def _eager_fn(model: SketchRNN, name: str, xla: bool = False):
    """A tf.function of `model._<name>` kept outside the model (so saving never sees it)."""
    fns = _EAGER_CACHE.setdefault(model, {})
    if (name, xla) not in fns:
        fns[(name, xla)] = tf.function(getattr(model, "_" + name), reduce_retracing=True,
                                       jit_compile=xla or None)
    return fns[(name, xla)]
