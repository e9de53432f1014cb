"""Stroke format conversions in NumPy (no TensorFlow).

stroke-3: `[n, 3]` rows (dx, dy, pen_lifted): offsets from the previous point; pen_lifted = 1 on the last
point of each stroke (so the last row of a sketch has pen_lifted = 1).
stroke-5: `[N, 5]` rows (dx, dy, p1 pen down, p2 pen up, p3 end of sketch), exactly one of p1..p3 set;
a sketch of length L padded to N rows has rows [L:] = (0, 0, 0, 0, 1).
"""

from __future__ import annotations

import numpy as np


def stroke3_to_stroke5(strokes3: np.ndarray, max_len: int) -> np.ndarray:
    """Pads a stroke-3 sketch `[n, 3]` to stroke-5 `[max_len, 5]` (float32).

    Raises ValueError if the sketch is longer than `max_len` or not `[n, 3]`.
    """
    strokes3 = np.asarray(strokes3)
    if strokes3.ndim != 2 or strokes3.shape[1] != 3:
        raise ValueError(f"stroke-3 must have shape [n, 3], got {strokes3.shape}")
    n = strokes3.shape[0]
    if n > max_len:
        raise ValueError(f"sketch has {n} points, more than max_len={max_len}")
    out = np.zeros((max_len, 5), dtype=np.float32)
    out[:n, 0:2] = strokes3[:, 0:2]
    pen_up = (strokes3[:, 2] != 0).astype(np.float32)
    out[:n, 3] = pen_up
    out[:n, 2] = 1.0 - pen_up
    out[n:, 4] = 1.0
    return out


def stroke5_length(strokes5: np.ndarray) -> int:
    """Number of rows before the first end-of-sketch row (p3 = 1); all rows if none."""
    strokes5 = np.asarray(strokes5)
    ends = np.flatnonzero(strokes5[:, 4] > 0.5)
    return int(ends[0]) if ends.size else int(strokes5.shape[0])


def stroke5_to_stroke3(strokes5: np.ndarray, length: int | None = None) -> np.ndarray:
    """Converts stroke-5 `[N, 5]` to stroke-3 `[L, 3]` (float32), L = `length` or the first p3 row.

    Pen state: pen_lifted = 1 where p2 (pen up) is the largest of p1..p3 (so one-hot and soft rows
    both work). The last kept row is forced to pen_lifted = 1 so the final stroke is closed.
    """
    strokes5 = np.asarray(strokes5, dtype=np.float32)
    if strokes5.ndim != 2 or strokes5.shape[1] != 5:
        raise ValueError(f"stroke-5 must have shape [N, 5], got {strokes5.shape}")
    n = stroke5_length(strokes5) if length is None else int(length)
    if not 0 <= n <= strokes5.shape[0]:
        raise ValueError(f"length {n} outside [0, {strokes5.shape[0]}]")
    out = np.zeros((n, 3), dtype=np.float32)
    out[:, 0:2] = strokes5[:n, 0:2]
    out[:, 2] = (np.argmax(strokes5[:n, 2:5], axis=1) == 1).astype(np.float32)
    if n:
        out[-1, 2] = 1.0
    return out


def to_absolute(strokes3: np.ndarray) -> np.ndarray:
    """Cumulative sum of offsets: `[n, 3]` -> `[n, 3]` with absolute (x, y) and the pen column kept."""
    strokes3 = np.asarray(strokes3, dtype=np.float64)
    out = strokes3.copy()
    out[:, 0:2] = np.cumsum(strokes3[:, 0:2], axis=0)
    return out


def to_polylines(strokes3: np.ndarray) -> list[np.ndarray]:
    """Splits a stroke-3 sketch into absolute polylines `[k, 2]`, one per pen-down stroke.

    The sketch starts at the origin: the first row's offset is applied from (0, 0), as in the
    reference implementation's drawing code.
    """
    absolute = to_absolute(strokes3)
    if absolute.shape[0] == 0:
        return []
    ends = np.flatnonzero(absolute[:, 2] != 0) + 1
    if ends.size == 0 or ends[-1] != absolute.shape[0]:
        ends = np.append(ends, absolute.shape[0])
    starts = np.concatenate([[0], ends[:-1]])
    return [absolute[s:e, 0:2] for s, e in zip(starts, ends) if e > s]


def bounds(strokes3: np.ndarray) -> tuple[float, float, float, float]:
    """(min_x, max_x, min_y, max_y) of the absolute points (0s for an empty sketch)."""
    absolute = to_absolute(strokes3)
    if absolute.shape[0] == 0:
        return 0.0, 0.0, 0.0, 0.0
    xs, ys = absolute[:, 0], absolute[:, 1]
    return float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
