"""Learning-rate and KL-weight schedules of the reference implementation.

Both work on Python numbers, NumPy arrays and TensorFlow tensors (`step` float).
"""

from __future__ import annotations

from model.hparams import HParams


def learning_rate(step, hps: HParams):
    """lr_t = (lr - min_lr) * decay_rate^t + min_lr."""
    return (hps.learning_rate - hps.min_learning_rate) * hps.decay_rate ** step + hps.min_learning_rate


def kl_weight(step, hps: HParams):
    """w_t = w_KL - (w_KL - w_start) * kl_decay_rate^t: from kl_weight_start towards kl_weight."""
    return hps.kl_weight - (hps.kl_weight - hps.kl_weight_start) * hps.kl_decay_rate ** step
