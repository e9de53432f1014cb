"""Quick Draw's raw -> simplified conversion, vectorized in NumPy over all strokes of a drawing.

Quick Draw describes its simplified set as: align the drawing to the top-left corner (minimum 0),
scale it uniformly so the maximum coordinate is 255, resample every stroke at 1 pixel spacing,
then simplify every stroke with Ramer-Douglas-Peucker (RDP), epsilon 2.0, and store integers.
Quick Draw did not publish its code; the choices below are the ones that reproduce its files best
on the drawings present in both forms (see tests/test_pipeline_simplify.py, about 95% identical
drawings and a mean point-count difference near 0):

* resampling is by arc length: points at distances 0, 1, 2, ... from the stroke's start (crossing
  vertices), plus the stroke's last point; a stroke of zero length keeps two copies of its point;
* RDP measures the distance to the infinite line through the two end points (to the point when
  they coincide) and splits at the first maximum when it is strictly greater than epsilon;
* coordinates are rounded to the nearest integer only at the end.

The work per drawing is bounded (hostile or corrupt input must not stall a worker): more than
`MAX_RESAMPLED_POINTS` points after resampling (counted from the arc lengths, before anything of
that size is allocated) or more than `MAX_RDP_WORK` point visits in RDP raise `TooComplex`.
Both bounds are far above real drawings: over the 8,019 raw Quick Draw drawings of ../shared/data
and the bundled sample the maxima are 31,874 resampled points and 414,445 RDP point visits
(26 levels); a 10,000-point zig-zag across the canvas would resample to about 2.5 million points.

A drawing is passed as flat arrays: `xy [P, 2]` float64 (all points of all strokes, in order)
and `stroke_lengths [S]` int (points per stroke, each >= 1). No Python loop runs per point:
resampling is one `np.interp`-style gather, RDP runs level by level over all open segments at once
(the number of levels is the recursion depth, ~log2 of the points per stroke, but up to the
number of points for a spiral: hence the work bound).
"""

from __future__ import annotations

import numpy as np

QUICKDRAW_SIZE = 255.0
DEFAULT_RDP_EPSILON = 2.0
# Bounds on one drawing (see the module docstring): about 30x and 100x the largest real drawing.
MAX_RESAMPLED_POINTS = 1_000_000
MAX_RDP_WORK = 40_000_000


class TooComplex(ValueError):
    """A drawing beyond `MAX_RESAMPLED_POINTS` or `MAX_RDP_WORK`; the message gives the numbers."""


def align_and_scale(xy: np.ndarray, size: float = QUICKDRAW_SIZE) -> np.ndarray:
    """Moves the drawing to the top-left (min x = min y = 0) and scales it uniformly to max `size`.

    `xy [P, 2]` -> `[P, 2]` float64. A drawing whose points all coincide is only aligned (all 0).
    """
    xy = np.asarray(xy, dtype=np.float64)
    aligned = xy - xy.min(axis=0)
    extent = aligned.max()
    if extent <= 0:
        return aligned
    # `* size / extent` (not `* (size / extent)`): this rounding order matches Quick Draw's files best.
    return aligned * size / extent


def _stroke_starts(stroke_lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(stroke_lengths)[:-1]]).astype(np.int64)


def resample(xy: np.ndarray, stroke_lengths: np.ndarray, spacing: float = 1.0,
             max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resamples every stroke at `spacing` along its arc length.

    Args:
      xy: `[P, 2]` float64 points of all strokes, stroke after stroke.
      stroke_lengths: `[S]` int, points per stroke (each >= 1), summing to P.
    Returns:
      (`[Q, 2]` float64 resampled points, `[S]` int64 points per resampled stroke). A stroke of arc
      length L gets the points at distances 0, spacing, ... < L plus its last point; a stroke of zero
      length gets its point twice (as Quick Draw stores a dot).
    Raises:
      TooComplex: more than `max_points` resampled points (checked before they are allocated).
    """
    xy = np.asarray(xy, dtype=np.float64)
    lengths = np.asarray(stroke_lengths, dtype=np.int64)
    starts = _stroke_starts(lengths)
    ends = starts + lengths - 1  # index of each stroke's last point
    num_points = xy.shape[0]
    # Segment i joins point i and i + 1; segments that cross from one stroke to the next get length 0
    # and are never interpolated on (their start is a stroke's last point, excluded below).
    seg = np.hypot(*np.diff(xy, axis=0).T) if num_points > 1 else np.zeros(0)
    if seg.size:
        seg[ends[:-1]] = 0.0
    cum = np.concatenate([[0.0], np.cumsum(seg)])  # arc length at each point, running over strokes
    arc_start = cum[starts]
    arc_len = cum[ends] - arc_start  # [S]
    # Samples per stroke: ceil(L / spacing) at distances k * spacing (k >= 0, < L), then the last point.
    n_inner = np.maximum(np.ceil(arc_len / spacing).astype(np.int64), 1)
    n_out = n_inner + 1
    total = int(n_out.sum())
    if max_points is not None and total > max_points:
        raise TooComplex(f"{total:,} points after resampling at {spacing:g} px (arc length "
                         f"{float(arc_len.sum()):,.0f} px on the 0..255 canvas) > {max_points:,}")
    stroke_of = np.repeat(np.arange(lengths.size), n_inner)
    first_out = np.concatenate([[0], np.cumsum(n_inner)[:-1]])
    k = np.arange(stroke_of.size) - first_out[stroke_of]
    target = arc_start[stroke_of] + k * spacing  # absolute arc position of every inner sample
    # The segment holding each target: the last point of the same stroke at or before it.
    idx = np.searchsorted(cum, target, side="right") - 1
    idx = np.clip(idx, starts[stroke_of], np.maximum(ends[stroke_of] - 1, starts[stroke_of]))
    seg_len = np.where(idx < ends[stroke_of], cum[np.minimum(idx + 1, num_points - 1)] - cum[idx], 0.0)
    frac = np.divide(target - cum[idx], seg_len, out=np.zeros_like(target), where=seg_len > 0)
    frac = np.clip(frac, 0.0, 1.0)
    nxt = np.minimum(idx + 1, ends[stroke_of])
    inner = xy[idx] + (xy[nxt] - xy[idx]) * frac[:, None]
    # Interleave: each stroke's inner samples followed by its last point.
    out = np.empty((int(n_out.sum()), 2), dtype=np.float64)
    out_starts = np.concatenate([[0], np.cumsum(n_out)[:-1]])
    last_pos = out_starts + n_out - 1
    is_last = np.zeros(out.shape[0], dtype=bool)
    is_last[last_pos] = True
    out[~is_last] = inner
    out[last_pos] = xy[ends]
    return out, n_out


def rdp_keep_mask(xy: np.ndarray, stroke_lengths: np.ndarray, epsilon: float,
                  max_work: int | None = None) -> np.ndarray:
    """Ramer-Douglas-Peucker over all strokes at once: which points survive.

    `xy [P, 2]`, `stroke_lengths [S]` (each >= 1) -> bool `[P]`. Equal to running the textbook
    recursive RDP on each stroke (distance to the line through the segment's ends, or to the end
    point when both ends coincide; split at the first farthest point if it is > epsilon).

    Each level costs O(open points + kept points) (never O(P)); the work is the sum of that over
    the levels. Raises `TooComplex` when it would exceed `max_work` (a spiral-like stroke peels one
    point per level, so the work can grow like P^2).
    """
    xy = np.asarray(xy, dtype=np.float64)
    x, y = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    lengths = np.asarray(stroke_lengths, dtype=np.int64)
    starts = _stroke_starts(lengths)
    keep = np.zeros(x.size, dtype=bool)
    keep[starts] = True
    keep[starts + lengths - 1] = True
    cand = np.flatnonzero(~keep)  # points still inside a segment that may split (sorted)
    kept = np.flatnonzero(keep)   # sorted
    work = levels = 0
    while cand.size:
        work += cand.size + kept.size
        levels += 1
        if max_work is not None and work > max_work:
            raise TooComplex(f"RDP needs more than {max_work:,} point visits ({levels} levels over "
                             f"{x.size:,} resampled points, {cand.size:,} still open)")
        seg = np.searchsorted(kept, cand)  # segment (kept[seg - 1], kept[seg]); same stroke
        ai, bi = kept[seg - 1], kept[seg]
        ax, ay = x[ai], y[ai]
        dx, dy = x[bi] - ax, y[bi] - ay
        px, py = x[cand] - ax, y[cand] - ay
        norm = np.hypot(dx, dy)
        dist = np.hypot(px, py)  # distance to the end point where both ends coincide ...
        np.divide(np.abs(dx * py - dy * px), norm, out=dist, where=norm > 0)  # ... else to the line
        # Runs of equal `seg` are contiguous (cand is sorted): per-run max and its first position.
        new_run = np.empty(cand.size, dtype=bool)
        new_run[0] = True
        np.not_equal(seg[1:], seg[:-1], out=new_run[1:])
        run_start = np.flatnonzero(new_run)
        run_max = np.maximum.reduceat(dist, run_start)
        run_len = np.diff(run_start, append=cand.size)
        max_pos = np.flatnonzero(dist == np.repeat(run_max, run_len))
        first_max = max_pos[np.searchsorted(max_pos, run_start)]
        split = run_max > epsilon
        chosen_pos = first_max[split]
        chosen = cand[chosen_pos]
        keep[chosen] = True
        # Segments that did not split are final: their inner points are dropped for good.
        still_open = np.repeat(split, run_len)
        still_open[chosen_pos] = False
        cand = cand[still_open]
        kept = np.sort(np.concatenate([kept, chosen]))
    return keep


def simplify(xy: np.ndarray, stroke_lengths: np.ndarray, epsilon: float = DEFAULT_RDP_EPSILON,
             max_resampled: int | None = MAX_RESAMPLED_POINTS,
             max_rdp_work: int | None = MAX_RDP_WORK) -> tuple[np.ndarray, np.ndarray]:
    """Raw drawing -> Quick Draw simplified drawing.

    Args:
      xy: `[P, 2]` raw points of all strokes in order (any units), P >= 1.
      stroke_lengths: `[S]` points per stroke (each >= 1).
      epsilon: RDP tolerance in the 0..255 space.
    Returns:
      (`[Q, 2]` int32 points on 0..255, `[S]` int64 points per stroke, each >= 2).
    Raises:
      TooComplex: beyond `max_resampled` points or `max_rdp_work` (None: unbounded).
    """
    scaled = align_and_scale(xy)
    res, res_lengths = resample(scaled, stroke_lengths, max_points=max_resampled)
    kept, new_lengths = rdp_points(res, res_lengths, epsilon, max_work=max_rdp_work)
    return np.round(kept).astype(np.int32), new_lengths


def to_stroke3(xy: np.ndarray, stroke_lengths: np.ndarray) -> np.ndarray:
    """Absolute points `[P, 2]` + points per stroke `[S]` -> stroke-3 `[P, 3]` float32.

    Rows are (dx, dy, pen_lifted): offsets from the previous point, the first from the origin (as in
    the reference `lines_to_strokes`); pen_lifted = 1 on each stroke's last point.
    """
    xy = np.asarray(xy, dtype=np.float32)
    lengths = np.asarray(stroke_lengths, dtype=np.int64)
    out = np.zeros((xy.shape[0], 3), dtype=np.float32)
    out[:, 0:2] = np.diff(xy, axis=0, prepend=np.zeros((1, 2), dtype=np.float32))
    out[np.cumsum(lengths) - 1, 2] = 1.0
    return out


def rdp_points(xy: np.ndarray, stroke_lengths: np.ndarray, epsilon: float,
               max_work: int | None = MAX_RDP_WORK) -> tuple[np.ndarray, np.ndarray]:
    """RDP on points that are already simplified (no alignment, resampling or rounding): the kept
    points `[Q, 2]` (same dtype) and points per stroke `[S]` (each stroke keeps its two ends).
    Raises `TooComplex` beyond `max_work` point visits."""
    lengths = np.asarray(stroke_lengths, dtype=np.int64)
    keep = rdp_keep_mask(xy, lengths, epsilon, max_work=max_work)
    stroke_of = np.repeat(np.arange(lengths.size), lengths)
    return np.asarray(xy)[keep], np.bincount(stroke_of[keep], minlength=lengths.size).astype(np.int64)


def resimplify_stroke3(strokes3: np.ndarray, epsilon: float,
                       max_work: int | None = MAX_RDP_WORK) -> np.ndarray:
    """A simplified stroke-3 sketch `[n, 3]` (dx, dy, pen_lifted) -> stroke-3 float32 of the same
    strokes with RDP run again at `epsilon` (in the sketch's own units: Quick Draw's 0..255 canvas
    for its simplified and .npz data): fewer points, every kept point exactly where it was.

    A stroke ends at each pen_lifted row (and at the last row). Raises `TooComplex` as `rdp_points`.
    """
    s = np.asarray(strokes3, dtype=np.float64)
    ends = np.flatnonzero(s[:, 2] != 0)
    if ends.size == 0 or ends[-1] != s.shape[0] - 1:
        ends = np.append(ends, s.shape[0] - 1)
    xy, lengths = rdp_points(np.cumsum(s[:, :2], axis=0), np.diff(ends, prepend=-1), epsilon,
                             max_work)
    return to_stroke3(xy, lengths)
