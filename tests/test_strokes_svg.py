import json
import pathlib
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from model.strokes import (bounds, stroke3_to_stroke5, stroke5_length, stroke5_to_stroke3, to_absolute,
                           to_polylines)
from model.svg import grid_svg, sketch_svg

SVG_NS = "{http://www.w3.org/2000/svg}"


def _real_sketch3(sample_dir: pathlib.Path) -> np.ndarray:
    """A real simplified-style stroke-3 sketch from the bundle: raw points turned into offsets."""
    drawing = json.loads((sample_dir / "cat.ndjson").read_text().splitlines()[0])["drawing"]
    rows = []
    for xs, ys, _ in drawing:
        for i, (x, y) in enumerate(zip(xs, ys)):
            rows.append([x, y, 1.0 if i == len(xs) - 1 else 0.0])
    absolute = np.array(rows)
    out = absolute.copy()
    out[1:, 0:2] = absolute[1:, 0:2] - absolute[:-1, 0:2]
    return out


def test_stroke5_padding_invariants_and_round_trip(sample_dir):
    s3 = _real_sketch3(sample_dir)
    n = len(s3)
    s5 = stroke3_to_stroke5(s3, n + 7)
    assert s5.shape == (n + 7, 5) and s5.dtype == np.float32
    np.testing.assert_array_equal(s5[:, 2:].sum(axis=1), 1.0)  # one-hot pen
    np.testing.assert_array_equal(s5[n:], np.tile([0, 0, 0, 0, 1], (7, 1)))
    assert not s5[:n, 4].any() and s5[n - 1, 3] == 1
    assert stroke5_length(s5) == n
    np.testing.assert_allclose(stroke5_to_stroke3(s5), s3.astype(np.float32))
    np.testing.assert_allclose(stroke5_to_stroke3(s5, length=n), s3.astype(np.float32))


def test_stroke5_rejects_too_long_and_bad_shapes():
    with pytest.raises(ValueError, match="more than max_len"):
        stroke3_to_stroke5(np.zeros((5, 3)), 4)
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        stroke3_to_stroke5(np.zeros((5, 2)), 10)
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        stroke5_to_stroke3(np.zeros((5, 3)))


def test_polylines_recover_absolute_points(sample_dir):
    drawing = json.loads((sample_dir / "cat.ndjson").read_text().splitlines()[0])["drawing"]
    s3 = _real_sketch3(sample_dir)
    lines = to_polylines(s3)
    assert len(lines) == len(drawing)
    for line, (xs, ys, _) in zip(lines, drawing):
        np.testing.assert_allclose(line, np.stack([xs, ys], axis=1), atol=1e-6)
    min_x, max_x, min_y, max_y = bounds(s3)
    all_x = np.concatenate([xs for xs, _, _ in drawing])
    assert min_x == pytest.approx(all_x.min()) and max_x == pytest.approx(all_x.max())
    np.testing.assert_allclose(to_absolute(s3)[-1, :2], [drawing[-1][0][-1], drawing[-1][1][-1]])


def test_svg_is_valid_xml_with_one_path_per_stroke_inside_the_box(sample_dir):
    s3 = _real_sketch3(sample_dir)
    root = ET.fromstring(sketch_svg(s3, size=200, padding=10))
    paths = root.findall(f"{SVG_NS}path")
    assert len(paths) == len(to_polylines(s3))
    coords = np.array([[float(v) for v in tok.lstrip("ML").split(",")]
                       for p in paths for tok in p.get("d").split()])
    assert coords.min() >= 10 - 1e-6 and coords.max() <= 190 + 1e-6
    # The longer side spans the whole box minus padding.
    assert max(np.ptp(coords[:, 0]), np.ptp(coords[:, 1])) == pytest.approx(180, abs=0.2)


def test_grid_places_each_sketch_in_its_cell(sample_dir):
    s3 = _real_sketch3(sample_dir)
    dot = np.array([[0.0, 0.0, 1.0]])
    root = ET.fromstring(grid_svg([s3, dot, s3], columns=2, cell=100, labels=["a", "b", "c"]))
    assert root.get("width") == "200" and root.get("height") == "200"
    assert [t.text for t in root.findall(f"{SVG_NS}text")] == ["a", "b", "c"]
    n_paths = len(root.findall(f"{SVG_NS}path"))
    assert n_paths == 2 * len(to_polylines(s3)) + 1
    with pytest.raises(ValueError, match="labels"):
        grid_svg([s3], labels=["a", "b"])
