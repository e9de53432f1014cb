"""Training-time data augmentation in TensorFlow ops (works eagerly and inside `Dataset.map`).

Both functions act on ONE padded stroke-5 sketch `[N, 5]` with its `length` (int32 scalar) and
take a stateless seed `[2]` (int32/int64): the same seed gives the same output, eagerly or in a
`tf.data` pipeline, on any worker.

Semantics follow the reference implementation (magenta sketch_rnn `utils.py`), which applies
`random_scale` and then `augment_strokes` to each training sketch:

* `random_scale`: dx *= U(1 - f, 1 + f), dy *= U(1 - f, 1 + f), one factor per axis per sketch.
* `augment_strokes`: walking the points in order, a point is dropped when it is pen-down
  (stroke-3 pen_lifted = 0, i.e. stroke-5 p1 = 1), the previous point is pen-down too, it is at
  least the 4th point of the current run of pen-down points (the reference's `count > 2`, so the
  first points of a stroke are never dropped) and a uniform draw is < prob. A dropped point's
  offset is added to the last kept point, so every later point keeps its absolute position and
  the pen states of kept points are unchanged. Because the drop condition only depends on the
  original pen states (the reference's `prev_stroke` is always pen-down when a drop happens), the
  walk is computed without a loop: run lengths by a cumulative max, merging by a segment sum.
  The new length is the number of kept points; rows from it on are (0, 0, 0, 0, 1) again.

Two options the reference does not have (off by default, so the reference's stream of random
numbers is unchanged when they are off), applied before `random_scale`:

* `flip`: with probability p, dx *= -1 (the sketch mirrored left-right).
* `rotate`: offsets rotated by an angle U(-a, a) degrees (y points down, as in Quick Draw).
"""

from __future__ import annotations

import math

import tensorflow as tf


def random_scale(strokes: tf.Tensor, factor: float, seed: tf.Tensor) -> tf.Tensor:
    """Scales offsets of `strokes` `[N, 5]` by U(1-f, 1+f) per axis; returns `[N, 5]`.

    Padding rows have zero offsets, so they stay (0, 0, 0, 0, 1).
    """
    strokes = tf.convert_to_tensor(strokes, tf.float32)
    scale = tf.random.stateless_uniform([2], seed=seed, minval=1.0 - factor, maxval=1.0 + factor)
    return tf.concat([strokes[:, :2] * scale, strokes[:, 2:]], axis=1)


def flip_and_rotate(strokes: tf.Tensor, flip_prob: float, rotate_degrees: float,
                    seed: tf.Tensor) -> tf.Tensor:
    """Mirrors (dx -> -dx, with probability `flip_prob`) then rotates the offsets of `strokes`
    `[N, 5]` by U(-a, a) degrees; returns `[N, 5]`. Padding rows keep zero offsets."""
    strokes = tf.convert_to_tensor(strokes, tf.float32)
    u = tf.random.stateless_uniform([2], seed=seed)
    sign = tf.where(u[0] < flip_prob, -1.0, 1.0)
    angle = (2.0 * u[1] - 1.0) * math.radians(rotate_degrees)
    cos, sin = tf.cos(angle), tf.sin(angle)
    dx, dy = strokes[:, 0] * sign, strokes[:, 1]
    return tf.concat([tf.stack([cos * dx - sin * dy, sin * dx + cos * dy], axis=1), strokes[:, 2:]],
                     axis=1)


def drop_mask(pen_down: tf.Tensor, uniform: tf.Tensor, prob: float) -> tf.Tensor:
    """Which points `augment_strokes` drops: bool `[N]` from pen_down bool `[N]`, uniform `[N]`.

    `count[i]` is the reference's counter: the number of consecutive points j <= i with
    pen_down[j] and pen_down[j - 1] (point -1 counts as pen-up, as the reference's initial
    `prev_stroke = [0, 0, 1]`).
    """
    n = tf.shape(pen_down)[0]
    prev_down = tf.concat([[False], pen_down[:-1]], axis=0)
    link = tf.logical_and(pen_down, prev_down)  # The counter increments here, else resets to 0.
    idx = tf.range(n)
    # Index of the last reset at or before i (a running max, without a loop: the k-th reset's
    # index for the points after it); count = i - last_reset. Point 0 is always a reset.
    resets = tf.reshape(tf.cast(tf.where(~link), tf.int32), [-1])
    last_reset = tf.gather(resets, tf.maximum(tf.cumsum(tf.cast(~link, tf.int32)) - 1, 0))
    count = idx - last_reset
    return link & (count > 2) & (uniform < prob)


def augment_strokes(strokes: tf.Tensor, length: tf.Tensor, prob: float,
                    seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Randomly merges pen-down points into the previous kept point (see module docstring).

    Args:
      strokes: float32 `[N, 5]` padded stroke-5 sketch.
      length: int32 scalar, the number of real rows.
      prob: probability of dropping an eligible point.
      seed: stateless seed `[2]`.
    Returns:
      (strokes `[N, 5]` with rows [new_length:] = (0, 0, 0, 0, 1), new_length int32 scalar).
    """
    strokes = tf.convert_to_tensor(strokes, tf.float32)
    length = tf.cast(length, tf.int32)
    n = tf.shape(strokes)[0]
    real = tf.range(n) < length
    pen_down = (strokes[:, 2] > 0.5) & real
    uniform = tf.random.stateless_uniform([n], seed=seed)
    drop = drop_mask(pen_down, uniform, prob)
    keep = real & ~drop
    # Segment of each row = index of the kept row it merges into (dropped rows follow a kept one:
    # a drop needs count > 2, so the first real row is always kept).
    segment = tf.cumsum(tf.cast(keep, tf.int32)) - 1
    segment = tf.where(real, tf.maximum(segment, 0), n - 1)  # Padding goes to a row rewritten below.
    offsets = tf.math.unsorted_segment_sum(
        tf.where(real[:, None], strokes[:, :2], 0.0), segment, n)
    pens = tf.math.unsorted_segment_sum(
        tf.where(keep[:, None], strokes[:, 2:], 0.0), segment, n)
    new_length = tf.reduce_sum(tf.cast(keep, tf.int32))
    is_pad = (tf.range(n) >= new_length)[:, None]
    pad_row = tf.constant([[0.0, 0.0, 0.0, 0.0, 1.0]])
    out = tf.where(is_pad, pad_row, tf.concat([offsets, pens], axis=1))
    return out, new_length


def augment(strokes: tf.Tensor, length: tf.Tensor, scale_factor: float, stroke_prob: float,
            seed: tf.Tensor, flip_prob: float = 0.0, rotate_degrees: float = 0.0
            ) -> tuple[tf.Tensor, tf.Tensor]:
    """Reference order: random scale, then stroke augmentation (flip/rotate first when on).
    `[N, 5]`, int32 -> same."""
    seed = tf.cast(seed, tf.int64)
    if flip_prob > 0 or rotate_degrees > 0:  # Its own stream: the two below stay as they were.
        strokes = flip_and_rotate(strokes, flip_prob, rotate_degrees,
                                  tf.random.experimental.stateless_fold_in(seed, 3))
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    if scale_factor > 0:
        strokes = random_scale(strokes, scale_factor, seeds[0])
    if stroke_prob > 0:
        strokes, length = augment_strokes(strokes, length, stroke_prob, seeds[1])
    return strokes, tf.cast(length, tf.int32)
