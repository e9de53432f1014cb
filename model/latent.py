"""Latent-space utilities (NumPy): spherical interpolation between latent vectors."""

from __future__ import annotations

import math

import numpy as np


def slerp(z0: np.ndarray, z1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation from z0 (t=0) to z1 (t=1), as in the paper's latent morphs.

    Falls back to linear interpolation when the vectors are (anti)parallel or zero.
    """
    z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
    cos = np.dot(z0, z1) / max(np.linalg.norm(z0) * np.linalg.norm(z1), 1e-12)
    omega = math.acos(float(np.clip(cos, -1.0, 1.0)))
    if abs(math.sin(omega)) < 1e-6:
        return (1 - t) * z0 + t * z1
    return (math.sin((1 - t) * omega) * z0 + math.sin(t * omega) * z1) / math.sin(omega)
