"""Losses of sketch-rnn as plain functions, in log space.

Decoder outputs `[B, T, 6M+3]` use the reference implementation's layout:
    [pen logits (3) | pi logits (M) | mu_x (M) | mu_y (M) | log sigma_x (M) | log sigma_y (M) | rho pre-tanh (M)]
Targets are stroke-5 `[B, T, 5]`: the points to predict, S_1..S_T (no S_0); rows after a
sketch's end are (0, 0, 0, 0, 1).

L_s = -log sum_k pi_k N(dx, dy | mu_k, sigma_k, rho_k), masked after the sketch's end (where
the target's p3 = 1); L_p = cross entropy of the pen state over all T steps. Both are summed
over time and divided by N_max (the reference's divisor), then averaged over the batch. N_max is
`max_seq_len` when given (a batch trimmed to T < N_max rows keeps the reference's scale: only
padding rows were cut), else T (a batch padded to N_max, as the reference feeds it).
"""

from __future__ import annotations

import math

import tensorflow as tf

LOG_2PI = math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)


def split_outputs(outputs: tf.Tensor, num_mixture: int) -> dict[str, tf.Tensor]:
    """`[..., 6M+3]` -> dict of pen_logits `[..., 3]` and pi_logits, mu_x, mu_y, log_sigma_x,
    log_sigma_y, rho_pre `[..., M]` each (raw values, nothing normalized)."""
    m = num_mixture
    pen = outputs[..., :3]
    pi, mu_x, mu_y, ls_x, ls_y, rho = tf.split(outputs[..., 3:3 + 6 * m], 6, axis=-1)
    return {"pen_logits": pen, "pi_logits": pi, "mu_x": mu_x, "mu_y": mu_y,
            "log_sigma_x": ls_x, "log_sigma_y": ls_y, "rho_pre": rho}


def log_one_minus_tanh_sq(x: tf.Tensor) -> tf.Tensor:
    """log(1 - tanh(x)^2) = -2 log cosh(x), finite for every finite x.

    In float32 tanh(x) is exactly 1 for |x| > ~9, so log(1 - rho^2) would be -inf (a known
    source of NaN runs in the reference); this form never forms 1 - rho^2.
    """
    a = tf.abs(x)
    return 2.0 * LOG_2 - 2.0 * (a + tf.nn.softplus(-2.0 * a))


def bivariate_log_density(dx: tf.Tensor, dy: tf.Tensor, mu_x: tf.Tensor, mu_y: tf.Tensor,
                          log_sigma_x: tf.Tensor, log_sigma_y: tf.Tensor,
                          rho_pre: tf.Tensor) -> tf.Tensor:
    """log N(dx, dy | mu, sigma, rho) with rho = tanh(rho_pre); dx, dy broadcast against `[..., M]`.

    N = exp(-Z / (2 (1 - rho^2))) / (2 pi sx sy sqrt(1 - rho^2)),
    Z = zx^2 + zy^2 - 2 rho zx zy,  zx = (dx - mu_x) / sx,  zy = (dy - mu_y) / sy.
    """
    rho = tf.tanh(rho_pre)
    zx = (dx - mu_x) * tf.exp(-log_sigma_x)
    zy = (dy - mu_y) * tf.exp(-log_sigma_y)
    z = tf.square(zx) + tf.square(zy) - 2.0 * rho * zx * zy
    log_1m_rho2 = log_one_minus_tanh_sq(rho_pre)
    return (-LOG_2PI - log_sigma_x - log_sigma_y - 0.5 * log_1m_rho2
            - 0.5 * z * tf.exp(-log_1m_rho2))


def per_example_reconstruction_loss(targets: tf.Tensor, outputs: tf.Tensor, num_mixture: int,
                                    mask_pen_loss: bool = False, max_seq_len: int | None = None,
                                    run_lengths: tf.Tensor | None = None
                                    ) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-sketch (L_s, L_p), each `[B]`: the sum over the T steps divided by N_max.

    Args:
      targets: stroke-5 `[B, T, 5]` (S_1..S_T).
      outputs: raw decoder outputs `[B, T, 6M+3]`.
      num_mixture: M.
      mask_pen_loss: also mask L_p after the sketch's end (the reference does this in eval mode).
      max_seq_len: the divisor N_max; None divides by T (targets padded to N_max).
      run_lengths: `[B]` rows the decoder ran per sketch (>= its length; the outputs of later rows
        are not predictions and are left out). The pen loss of the last row run, when it is a
        padding row, counts once for it and once for each padding row after it up to N_max: those
        rows (cut, or never run) repeat the same prediction of the same target (p3), so the sum
        is the reference's L_p over all N_max rows as long as the prediction stays the same there.
    """
    targets = tf.cast(targets, tf.float32)
    outputs = tf.cast(outputs, tf.float32)
    p = split_outputs(outputs, num_mixture)
    dx, dy = targets[..., 0:1], targets[..., 1:2]
    log_pi = tf.nn.log_softmax(p["pi_logits"], axis=-1)
    log_n = bivariate_log_density(dx, dy, p["mu_x"], p["mu_y"], p["log_sigma_x"],
                                  p["log_sigma_y"], p["rho_pre"])
    mask = 1.0 - targets[..., 4]  # 0 from the end of the sketch on.
    l_s_steps = -tf.reduce_logsumexp(log_pi + log_n, axis=-1) * mask
    pen_targets = targets[..., 2:5]
    l_p_steps = tf.nn.softmax_cross_entropy_with_logits(labels=pen_targets, logits=p["pen_logits"])
    if mask_pen_loss:
        l_p_steps = l_p_steps * mask
    if run_lengths is not None:
        steps = tf.shape(targets)[1]
        n_max = tf.cast(steps if max_seq_len is None else max_seq_len, tf.float32)
        run = tf.cast(run_lengths, tf.int32)[:, None]
        index = tf.range(steps)[None, :]
        last_padding = tf.logical_and(tf.equal(index, run - 1), targets[..., 4] > 0.5)
        weight = tf.where(last_padding, n_max - tf.cast(run, tf.float32) + 1.0, 1.0)
        l_p_steps = l_p_steps * tf.where(index < run, weight, 0.0)
    t = tf.cast(tf.shape(targets)[1] if max_seq_len is None else max_seq_len, tf.float32)
    return tf.reduce_sum(l_s_steps, axis=1) / t, tf.reduce_sum(l_p_steps, axis=1) / t


def reconstruction_loss(targets: tf.Tensor, outputs: tf.Tensor, num_mixture: int,
                        mask_pen_loss: bool = False, max_seq_len: int | None = None
                        ) -> tuple[tf.Tensor, tf.Tensor]:
    """(L_s, L_p) scalars: sums over batch and steps divided by B * N_max, as in the reference
    (N_max = `max_seq_len`, or T when None)."""
    l_s, l_p = per_example_reconstruction_loss(targets, outputs, num_mixture, mask_pen_loss,
                                               max_seq_len)
    return tf.reduce_mean(l_s), tf.reduce_mean(l_p)


def per_example_kl_loss(mu: tf.Tensor, sigma_hat: tf.Tensor) -> tf.Tensor:
    """KL(N(mu, exp(sigma_hat)) || N(0, I)) averaged over latent dims: `[B, Z]` -> `[B]`."""
    mu = tf.cast(mu, tf.float32)
    sigma_hat = tf.cast(sigma_hat, tf.float32)
    return -0.5 * tf.reduce_mean(1.0 + sigma_hat - tf.square(mu) - tf.exp(sigma_hat), axis=-1)


def kl_loss(mu: tf.Tensor, sigma_hat: tf.Tensor) -> tf.Tensor:
    """-0.5 * mean(1 + sigma_hat - mu^2 - exp(sigma_hat)) over batch and latent dims (no floor)."""
    return tf.reduce_mean(per_example_kl_loss(mu, sigma_hat))


def floored_kl(kl: tf.Tensor, kl_tolerance: float) -> tf.Tensor:
    """max(KL, kl_tolerance): below the tolerance the KL term gives no gradient."""
    return tf.maximum(kl, tf.cast(kl_tolerance, kl.dtype))


def total_loss(l_s: tf.Tensor, l_p: tf.Tensor, kl: tf.Tensor, kl_weight: tf.Tensor,
               kl_tolerance: float) -> tf.Tensor:
    """L_R + w_KL * max(KL, tolerance)."""
    return l_s + l_p + kl_weight * floored_kl(kl, kl_tolerance)
