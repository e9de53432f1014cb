"""Quick Draw simplification (pipeline/simplify.py): hand-checked cases, RDP against a brute-force
recursive reference, and agreement with Quick Draw's own simplified files."""

import json

import numpy as np

from pipeline import simplify as S


def test_align_and_scale_hand_case():
    out = S.align_and_scale(np.array([[10.0, 20.0], [30.0, 60.0], [20.0, 30.0]]))
    # min (10, 20) -> origin; largest extent is y: 40 -> 255, so x 20 -> 127.5, 10 -> 63.75
    np.testing.assert_allclose(out, [[0, 0], [127.5, 255], [63.75, 63.75]])
    # A drawing whose points coincide is only moved to the origin (no division by zero).
    np.testing.assert_array_equal(S.align_and_scale(np.array([[5.0, 5.0], [5.0, 5.0]])), np.zeros((2, 2)))


def test_resample_hand_cases():
    xy = np.array([[0, 0], [3, 0],            # stroke 0: straight, length 3 -> 0, 1, 2 + end
                   [0, 0], [1.5, 0], [1.5, 1.5],  # stroke 1: a corner, length 3
                   [5, 5],                    # stroke 2: a dot -> the point twice
                   [0, 0], [2.5, 0]], float)  # stroke 3: length 2.5 -> 0, 1, 2 + end
    out, lengths = S.resample(xy, np.array([2, 3, 1, 2]))
    np.testing.assert_array_equal(lengths, [4, 4, 2, 4])
    expected = [[0, 0], [1, 0], [2, 0], [3, 0],
                [0, 0], [1, 0], [1.5, 0.5], [1.5, 1.5],  # arc length carries across the corner
                [5, 5], [5, 5],
                [0, 0], [1, 0], [2, 0], [2.5, 0]]         # and does not carry across strokes
    np.testing.assert_allclose(out, expected, atol=1e-12)
    # Consecutive resampled points of a stroke are exactly 1 apart along the path, except the last.
    many, n = S.resample(np.array([[0, 0], [10, 0], [10, 7.25]], float), np.array([3]))
    assert n[0] == 19
    steps = np.hypot(*np.diff(many, axis=0).T)  # the corner at arc length 10 is a sample itself
    np.testing.assert_allclose(steps, [1.0] * 17 + [0.25], atol=1e-12)


def test_rdp_hand_cases():
    # Farthest point (3, 3) splits; then (2, 0) is 1.41 from the chord (0,0)-(3,3) and splits;
    # (1, 0.5) is 0.5 from (0,0)-(2,0) and goes.
    xy = np.array([[0, 0], [1, 0.5], [2, 0], [3, 3], [4, 0]], float)
    keep = S.rdp_keep_mask(xy, np.array([5]), 1.0)
    np.testing.assert_array_equal(keep, [1, 0, 1, 1, 1])
    # Closed stroke (both ends equal): distances are to the end point itself, nothing is dropped.
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]], float)
    assert S.rdp_keep_mask(square, np.array([5]), 1.0).all()
    # A straight line collapses to its ends; strokes are independent.
    line = np.array([[0, 0], [1, 1], [2, 2], [3, 3], [9, 9], [9, 9.5], [9, 10]], float)
    np.testing.assert_array_equal(S.rdp_keep_mask(line, np.array([4, 3]), 0.1), [1, 0, 0, 1, 1, 0, 1])


def _rdp_reference(points, eps):
    """Textbook recursive RDP on one stroke: indices kept."""
    def rec(lo, hi):
        if hi - lo < 2:
            return []
        a, b = points[lo], points[hi]
        d = b - a
        norm = np.hypot(*d)
        best, best_i = -1.0, -1
        for i in range(lo + 1, hi):
            p = points[i]
            dist = (abs(d[0] * (p[1] - a[1]) - d[1] * (p[0] - a[0])) / norm if norm > 0
                    else np.hypot(*(p - a)))
            if dist > best:
                best, best_i = dist, i
        if best > eps:
            return rec(lo, best_i) + [best_i] + rec(best_i, hi)
        return []
    n = len(points)
    return sorted({0, n - 1, *rec(0, n - 1)})


def test_rdp_matches_brute_force_reference():
    rng = np.random.default_rng(0)
    for trial in range(40):
        lengths = rng.integers(1, 120, size=rng.integers(1, 6))
        xy = np.cumsum(rng.normal(size=(lengths.sum(), 2)) * rng.uniform(0.3, 5), axis=0)
        if trial % 4 == 0:  # closed strokes: last point equals the first
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            xy[starts + lengths - 1] = xy[starts]
        eps = rng.uniform(0.2, 4.0)
        keep = S.rdp_keep_mask(xy, lengths, eps)
        offset = 0
        for n in lengths:
            expected = _rdp_reference(xy[offset:offset + n], eps)
            np.testing.assert_array_equal(np.flatnonzero(keep[offset:offset + n]), expected)
            offset += n


def test_to_stroke3_hand_case():
    xy = np.array([[1, 2], [4, 6], [4, 6], [0, 0], [1, 1]])
    s3 = S.to_stroke3(xy, np.array([2, 3]))
    np.testing.assert_array_equal(s3, [[1, 2, 0], [3, 4, 1], [0, 0, 0], [-4, -6, 0], [1, 1, 1]])
    assert s3.dtype == np.float32


def test_resimplify_stroke3_keeps_exact_points_of_each_stroke():
    # Stroke 1: (1, 2) -> (3, 2) -> (5, 2.5) -> (5, 6); at epsilon 1 the middle point (3, 2) goes
    # (0.25 from the chord), the corner stays. Stroke 2: a 2-point stroke keeps both ends.
    s3 = np.array([[1, 2, 0], [2, 0, 0], [2, 0.5, 0], [0, 3.5, 1], [-4, 0, 0], [1, 1, 1]], np.float32)
    out = S.resimplify_stroke3(s3, 1.0)
    np.testing.assert_array_equal(out, [[1, 2, 0], [4, 0.5, 0], [0, 3.5, 1], [-4, 0, 0], [1, 1, 1]])
    assert out.dtype == np.float32
    # Random sketches: the kept points are the brute-force RDP's, at the same absolute positions;
    # a last row without pen_lifted still ends a stroke.
    rng = np.random.default_rng(3)
    for _ in range(20):
        lengths = rng.integers(2, 40, size=rng.integers(1, 5))
        raw = np.round(rng.normal(size=(lengths.sum(), 3)) * 8)
        raw[:, 2] = 0
        raw[np.cumsum(lengths) - 1, 2] = 1
        if rng.random() < 0.5:
            raw[-1, 2] = 0
        eps = rng.uniform(0.5, 6.0)
        out = S.resimplify_stroke3(raw, eps)
        xy = np.cumsum(raw[:, :2], axis=0)
        expected, offset = [], 0
        for n in lengths:
            expected += [xy[offset + i] for i in _rdp_reference(xy[offset:offset + n], eps)]
            offset += n
        np.testing.assert_allclose(np.cumsum(out[:, :2], axis=0), expected, atol=1e-4)
        assert out[:, 2].sum() == len(lengths) and out[-1, 2] == 1


def _pairs(shared_data, max_files):
    simplified = {}
    for path in sorted((shared_data / "quickdraw_simplified").glob("*.ndjson"))[:max_files]:
        for line in path.open():
            rec = json.loads(line)
            simplified[rec["key_id"]] = rec["drawing"]
    pairs = []
    for path in sorted((shared_data / "quickdraw_raw").glob("*.ndjson"))[:max_files]:
        for line in path.open():
            rec = json.loads(line)
            if rec["key_id"] in simplified:
                pairs.append((rec["drawing"], simplified[rec["key_id"]]))
    return pairs


def test_matches_quickdraw_simplified_files(shared_data):
    """Raw -> simplified against Quick Draw's own simplified drawings (same key_id).

    Quick Draw did not publish its simplification code. On all 6,417 shared drawings this
    implementation gives 94.7% identical drawings and a mean point-count difference of -0.001
    (mean |difference| 0.02). The misses are RDP near-ties: the farthest point and a neighbour
    1 px away along the curve have distances equal to ~1e-3 px, so floating-point details of
    Quick Draw's code pick the other one (95% of the mismatching strokes use only points of our
    resampling). Tolerance: >= 90% identical and |mean point difference| <= 0.05 on the first
    100 categories (~2,200 pairs), well beyond what any other choice of order or resampling gets
    (scale-after-resample, per-segment resampling or rounding before RDP all match < 1%).
    """
    pairs = _pairs(shared_data, 100)
    assert len(pairs) > 2000
    exact, diffs = 0, []
    for raw, simplified in pairs:
        xy = np.concatenate([np.array(s[:2], float).T for s in raw])
        pts, lengths = S.simplify(xy, np.array([len(s[0]) for s in raw]), 2.0)
        ours = [p.T.tolist() for p in np.split(pts, np.cumsum(lengths)[:-1])]
        exact += ours == [[list(a) for a in s] for s in simplified]
        diffs.append(len(pts) - sum(len(s[0]) for s in simplified))
    rate, mean_diff = exact / len(pairs), float(np.mean(diffs))
    print(f"exact {rate:.3f} over {len(pairs)} pairs, mean point diff {mean_diff:+.4f}, "
          f"mean |diff| {np.mean(np.abs(diffs)):.4f}")
    assert rate >= 0.90
    assert abs(mean_diff) <= 0.05
    assert pts.min() >= 0 and pts.max() <= 255


def test_simplify_output_invariants():
    rng = np.random.default_rng(1)
    xy = np.cumsum(rng.normal(size=(300, 2)) * 7, axis=0) + 1000
    pts, lengths = S.simplify(xy, np.array([100, 1, 199]), 2.0)
    assert pts.dtype == np.int32 and lengths.sum() == len(pts)
    assert pts.min() >= 0 and 250 <= pts.max() <= 255  # RDP may drop an extreme point within eps
    assert (lengths >= 2).all() and lengths[1] == 2  # the dot stays as two equal points
    np.testing.assert_array_equal(pts[lengths[0]], pts[lengths[0] + 1])
