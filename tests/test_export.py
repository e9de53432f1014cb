"""In-graph pixel stroke-3 <-> normalized stroke-5 conversions of the export, against model.strokes."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from model.strokes import stroke3_to_stroke5, stroke5_to_stroke3
from trainer.export import stroke3_to_stroke5_tf, stroke5_to_stroke3_tf


def _sketches():
    rng = np.random.default_rng(0)
    out = []
    for n in (3, 7, 11):
        s = np.zeros((n, 3), np.float32)
        s[:, :2] = rng.integers(-40, 40, size=(n, 2))
        s[rng.choice(n - 1, size=2, replace=False), 2] = 1
        s[-1, 2] = 1
        out.append(s)
    return out


def test_stroke3_to_stroke5_matches_numpy():
    sketches, scale, n = _sketches(), 12.5, 11
    batch = np.stack([np.pad(s, [(0, n - len(s)), (0, 0)]) for s in sketches])
    got = stroke3_to_stroke5_tf(batch, tf.constant([len(s) for s in sketches]), scale).numpy()
    for g, s in zip(got, sketches):
        want = stroke3_to_stroke5(s * [1 / scale, 1 / scale, 1], n)
        np.testing.assert_allclose(g, want, rtol=1e-6)


def test_stroke5_to_stroke3_round_trip():
    sketches, scale, n = _sketches(), 12.5, 14
    five = np.stack([stroke3_to_stroke5(s * [1 / scale, 1 / scale, 1], n) for s in sketches])
    lengths = tf.constant([len(s) for s in sketches])
    got = stroke5_to_stroke3_tf(five, lengths, scale).numpy()
    for g, s, f in zip(got, sketches, five):
        np.testing.assert_allclose(g[: len(s)], s, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(g[: len(s)], stroke5_to_stroke3(f, len(s)) * [scale, scale, 1], rtol=1e-5)
        assert np.all(g[len(s):] == 0)


def test_stroke5_to_stroke3_closes_last_stroke_of_soft_rows():
    five = np.array([[[1, 1, 0.9, 0.1, 0], [2, 2, 0.8, 0.1, 0.1], [0, 0, 0, 0, 1]]], np.float32)
    got = stroke5_to_stroke3_tf(five, tf.constant([2]), 2.0).numpy()
    np.testing.assert_allclose(got[0], [[2, 2, 0], [4, 4, 1], [0, 0, 0]])
