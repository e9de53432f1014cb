"""scripts/sketch_classifier.py: the rasteriser, the degenerate-sample counters, the data assembly,
export loading (highest version of a fake SavedModel) and `score` end to end with a tiny untrained
classifier. Nothing here needs a trained classifier; the `--real` test needs ../shared/data."""

import importlib.util
import json
import os
import pathlib
import sys

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "sketch_classifier.py"
_spec = importlib.util.spec_from_file_location("sketch_classifier", SCRIPT)
sc = sys.modules["sketch_classifier"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sc)

# No antialiasing, so that pixels are exactly on or off.
SHARP = sc.RasterConfig(size=32, line_width=1.0, padding=2.0, supersample=1)
SQUARE = [[0, 0, 0], [20, 0, 0], [0, 20, 0], [-20, 0, 0], [0, -20, 1]]


def ink(image, threshold=128):
    return image >= threshold


# --- rasteriser -------------------------------------------------------------------------------


def test_square_lights_its_outline_only():
    img = sc.rasterize(SQUARE, SHARP)
    assert img.shape == (32, 32) and img.dtype == np.uint8
    on = ink(img)
    rows, cols = np.nonzero(on)
    # The square fills the canvas inside the margin (2 px + half the line width), centred.
    assert rows.min() in (2, 3) and rows.max() in (28, 29)
    assert cols.min() in (2, 3) and cols.max() in (28, 29)
    lo, hi = rows.min(), rows.max()
    # Every row between the top and bottom edges has ink only at its left and right edges.
    for r in range(lo + 1, hi):
        lit = np.flatnonzero(on[r])
        assert set(lit) <= {lo, lo + 1, hi - 1, hi}, (r, lit)
        assert lit.min() <= lo + 1 and lit.max() >= hi - 1
    # The top and bottom edges are lit across, the inside and the margin are blank.
    assert on[lo, lo:hi + 1].all() and on[hi, lo:hi + 1].all()
    assert not on[lo + 3:hi - 2, lo + 3:hi - 2].any()
    assert not on[:2].any() and not on[:, :2].any() and not on[30:].any() and not on[:, 30:].any()


def test_antialiased_default_draws_the_same_shape():
    cfg = sc.RasterConfig(size=32)
    img = sc.rasterize(SQUARE, cfg)
    assert img.max() == 255 and img[16, 16] == 0  # ink on the outline, none inside
    assert img[16, :8].max() > 128 and img[16, -8:].max() > 128


def test_pen_up_moves_draw_nothing():
    # Two vertical bars 100 px apart, joined by pen-up moves (bottom of the first -> top of the second).
    bars = np.array([[0, 0, 0], [0, 100, 1], [100, -100, 0], [0, 100, 1]], np.float32)
    img = ink(sc.rasterize(bars, SHARP))
    middle = img[:, 8:24]
    assert not middle.any(), "a pen-up move was drawn"
    assert img[:, :8].any() and img[:, 24:].any()
    # The same points with the pen down draw the diagonal between the bars.
    pen_down = bars.copy()
    pen_down[1, 2] = 0
    assert ink(sc.rasterize(pen_down, SHARP))[:, 8:24].any()


def test_aspect_ratio_kept_and_centred():
    wide = [[0, 0, 0], [100, 0, 0], [0, 10, 0], [-100, 0, 0], [0, -10, 1]]  # 100 x 10
    rows, cols = np.nonzero(ink(sc.rasterize(wide, SHARP)))
    width, height = cols.max() - cols.min(), rows.max() - rows.min()
    assert width >= 25  # fills the canvas horizontally ...
    assert 1 <= height <= 4  # ... and keeps 10:1 vertically
    assert abs((rows.min() + rows.max()) / 2 - 15.5) <= 1  # centred vertically
    # Swapping x and y gives the transposed picture.
    tall = np.asarray(wide, np.float32)[:, [1, 0, 2]]
    assert (sc.rasterize(tall, SHARP) == sc.rasterize(wide, SHARP).T).all()


@pytest.mark.parametrize("sketch", [np.zeros((0, 3)), [[5, 5, 1]], [[5, 5, 0], [0, 0, 1]],
                                    [[3, 4, 1], [0, 0, 0], [0, 0, 1]]])
def test_empty_and_single_point_sketches_do_not_crash(sketch):
    img = sc.rasterize(sketch, sc.RasterConfig(size=16))
    assert img.shape == (16, 16)
    if len(sketch):  # a dot in the centre
        rows, cols = np.nonzero(img)
        assert rows.size and abs(rows.mean() - 7.5) <= 1 and abs(cols.mean() - 7.5) <= 1
    else:
        assert not img.any()


def test_rasterize_all_shapes():
    batch = sc.rasterize_all([SQUARE, np.zeros((0, 3))], SHARP)
    assert batch.shape == (2, 32, 32, 1) and batch.dtype == np.uint8
    assert batch[0].any() and not batch[1].any()


# --- degenerate samples --------------------------------------------------------------------------


def test_near_empty():
    assert sc.is_near_empty(np.zeros((0, 3)))
    assert sc.is_near_empty([[100, 100, 1]])  # one point, however far from the origin
    assert sc.is_near_empty([[50, 50, 0], [3, -2, 0], [-1, 4, 1]])  # a 4 px scribble: a dot
    assert not sc.is_near_empty([[50, 50, 0], [30, 0, 1]])
    assert not sc.is_near_empty([[50, 50, 0], [3, 0, 1]], min_extent=2)


def test_degenerate_counts():
    sketches = [SQUARE, [[1, 1, 1]], np.zeros((8, 3)), SQUARE]
    assert sc.degenerate_counts(sketches, lengths=[5, 1, 8, 8], max_len=8) == \
        {"near_empty": 2, "never_ending": 2}
    assert sc.degenerate_counts(sketches) == {"near_empty": 2, "never_ending": None}


def test_per_class_accuracy():
    out = sc.per_class_accuracy([0, 0, 0, 3, 3], [0, 0, 3, 3, 1])
    assert out["pig"] == {"n": 3, "accuracy": round(2 / 3, 4), "predicted": {"pig": 2, "other": 1}}
    assert out["other"]["accuracy"] == 0.5 and set(out) == {"pig", "other"}


# --- data assembly ---------------------------------------------------------------------------


def _raw_line(word, key_id, xs, ys):
    return json.dumps({"word": word, "key_id": key_id, "recognized": True,
                       "drawing": [[list(map(float, xs)), list(map(float, ys)), list(range(len(xs)))]]})


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A data dir laid out like ../shared/data: the three target .npz files (3/1/2 squares), a raw
    `cat` file of 40 drawings plus a bad line, and a raw `pig` file (a target: not `other`)."""
    root = tmp_path_factory.mktemp("data")
    (root / "quickdraw_npz").mkdir()
    (root / "quickdraw_raw").mkdir()
    sketch = np.array(SQUARE, np.int16)
    for name in sc.TARGETS:
        splits = {}
        for split, n in (("train", 3), ("valid", 1), ("test", 2)):
            arr = np.empty(n, dtype=object)
            arr[:] = [sketch] * n
            splits[split] = arr
        np.savez(root / "quickdraw_npz" / f"{name}.npz", **splits)
    lines = [_raw_line("cat", str(1000 + i), [0, 50, 80, 10], [0, 40, 90, 60]) for i in range(40)]
    (root / "quickdraw_raw" / "cat.ndjson").write_text("\n".join(lines + ["not json"]) + "\n")
    (root / "quickdraw_raw" / "pig.ndjson").write_text(_raw_line("pig", "7", [0, 9, 30], [0, 30, 9]))
    return root


def test_load_dataset_assembles_the_classes(tiny_data):
    splits, raw_targets = sc.load_dataset(tiny_data)
    counts = {s: np.bincount(labels, minlength=4).tolist() for s, (_, labels) in splits.items()}
    other = [counts[s][3] for s in ("train", "valid", "test")]
    assert [counts["train"][:3], counts["valid"][:3], counts["test"][:3]] == [[3] * 3, [1] * 3, [2] * 3]
    assert sum(other) == 40 and other[0] > other[2] > 0  # the bad line is skipped, pig is not `other`
    assert set(raw_targets) == {"pig"} and raw_targets["pig"][0].shape[1] == 3
    assert all(s.dtype == np.float32 and s.shape[1] == 3 for s in splits["train"][0])


def test_load_dataset_without_data_is_a_usage_error(tmp_path):
    with pytest.raises(sc.UsageError, match="missing"):
        sc.load_dataset(tmp_path)


def test_train_end_to_end_on_tiny_data(tiny_data, tmp_path, capsys):
    out = tmp_path / "clf"
    assert sc.main(["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "1",
                    "--size", "16"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    config = json.loads((out / sc.CONFIG_FILE).read_text())
    assert config["classes"] == list(sc.CLASSES) and config["raster"]["size"] == 16
    assert set(config["held_out_test"]) == set(sc.CLASSES) and set(config["raw_quickdraw_targets"]) == {"pig"}
    assert config["train_counts"]["pig"] == 3 and config["held_out_test"]["pig"]["n"] == 2
    model, cfg, _ = sc.load_classifier(out)
    assert cfg.size == 16 and model.output_shape == (None, len(sc.CLASSES))


# --- exports and `score` end to end ----------------------------------------------------------

T = 8  # the fake export's sampling cap


def _fake_export(path, dx):
    """A SavedModel whose `sample` returns 3 fixed sketches: a square (width `dx`), a dot, and one
    that runs to the cap T."""
    import tensorflow as tf

    strokes = np.zeros((3, T, 3), np.float32)
    strokes[0, :5] = [[0, 0, 0], [dx, 0, 0], [0, dx, 0], [-dx, 0, 0], [0, -dx, 1]]
    strokes[1, 0] = [4, 4, 1]
    strokes[2, :, 0] = 30
    strokes[2, :, 2] = [0, 1] * (T // 2)
    lengths = np.array([5, 1, T], np.int32)

    class Fake(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.int32, name="num"),
                                      tf.TensorSpec([], tf.float32, name="temperature"),
                                      tf.TensorSpec([], tf.int32, name="seed")])
        def sample(self, num, temperature, seed):
            return {"strokes": tf.constant(strokes)[:num], "lengths": tf.constant(lengths)[:num]}

    module = Fake()
    tf.saved_model.save(module, str(path), signatures={"sample": module.sample})


@pytest.fixture(scope="module")
def export_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("fake_export")
    _fake_export(base / "2", dx=20.0)
    _fake_export(base / "10", dx=40.0)  # numerically highest: wins over "2"
    (base / "99_notes").mkdir()  # not a version
    return base


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """An untrained classifier whose output is always `pig` (zero kernel, pig bias)."""
    model = sc.build_cnn(16)
    kernel, bias = model.layers[-1].get_weights()
    bias[:] = 0
    bias[sc.CLASSES.index("pig")] = 5.0
    model.layers[-1].set_weights([np.zeros_like(kernel), bias])
    out = tmp_path_factory.mktemp("classifier")
    return sc.save_classifier(model, sc.RasterConfig(size=16), out, {"note": "untrained"})


def test_load_sampler_uses_the_highest_version(export_base):
    path, draw = sc.load_sampler(str(export_base))
    sketches, lengths, max_len = draw(3, 0.5, 1)
    assert path == str(export_base / "10") and max_len == T
    assert lengths.tolist() == [5, 1, T] and [len(s) for s in sketches] == [5, 1, T]
    assert sketches[0][1, 0] == 40.0
    path, draw = sc.load_sampler(str(export_base / "2"))  # a version dir
    sketches, _, _ = draw(2, 0.5, 1)
    assert path == str(export_base / "2") and len(sketches) == 2 and sketches[0][1, 0] == 20.0


def test_load_sampler_errors(tmp_path):
    with pytest.raises(sc.UsageError):
        sc.load_sampler(str(tmp_path))  # no version inside
    assert sc.main(["score", "--export", str(tmp_path / "nowhere"), "--category", "pig",
                    "--classifier", str(tmp_path)]) == 2


def test_classifier_round_trip(classifier_dir):
    model, cfg, classes = sc.load_classifier(classifier_dir)
    assert cfg == sc.RasterConfig(size=16) and classes == list(sc.CLASSES)
    assert json.loads((classifier_dir / sc.CONFIG_FILE).read_text())["note"] == "untrained"
    assert sc.predict(model, cfg, [SQUARE, [[1, 1, 1]]]).tolist() == [0, 0]


def test_missing_classifier_is_a_usage_error(tmp_path, capsys):
    assert sc.main(["score", "--ndjson", os.devnull, "--category", "pig",
                    "--classifier", str(tmp_path)]) == 2
    assert "no trained classifier" in capsys.readouterr().err


def test_score_export_end_to_end(export_base, classifier_dir, capsys):
    assert sc.main(["score", "--export", str(export_base), "--category", "pig", "--num", "3",
                    "--classifier", str(classifier_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num"] == 3 and report["recognised"] == 1.0
    assert report["histogram"] == {"pig": 3, "face": 0, "alarm_clock": 0, "other": 0}
    assert report["near_empty"] == 1 and report["never_ending"] == 1
    assert report["source"]["export"] == str(export_base / "10") and report["source"]["max_len"] == T
    # Another target category: none recognised.
    assert sc.main(["score", "--export", str(export_base), "--category", "face", "--num", "2",
                    "--classifier", str(classifier_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recognised"] == 0.0 and report["never_ending"] == 0


def test_score_export_pools_several_seeds(export_base, classifier_dir, capsys):
    assert sc.main(["score", "--export", str(export_base), "--category", "pig", "--num", "3",
                    "--seed", "2-3,7", "--classifier", str(classifier_dir)]) == 0
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert [r["source"]["seed"] for r in report["per_seed"]] == [2, 3, 7] == report["source"]["seeds"]
    assert all(r["num"] == 3 and r["never_ending"] == 1 for r in report["per_seed"])
    assert (report["num"], report["near_empty"], report["never_ending"]) == (9, 3, 3)
    assert report["histogram"] == {"pig": 9, "face": 0, "alarm_clock": 0, "other": 0}
    assert report["recognised"] == 1.0 and "seed 7: 3 / 3 recognised as pig" in out.err
    # model_card pools per-seed reports itself: a pooled one is refused, its per-seed ones are not.
    with pytest.raises(ValueError, match="one report per seed"):
        sc.pool_scores([report])
    assert sc.pool_scores(report["per_seed"])["hits"] == 9


@pytest.mark.parametrize("text, seeds", [("4", [4]), ("1-5", [1, 2, 3, 4, 5]), ("1, 3,8-9", [1, 3, 8, 9])])
def test_seed_list(text, seeds):
    assert sc.seed_list(text) == seeds


@pytest.mark.parametrize("text", ["", "1-x", "a", "1,1", "1-3,2", "5-4"])
def test_seed_list_rejects(text, capsys):
    with pytest.raises(SystemExit) as e:
        sc.build_parser().parse_args(["score", "--real", "--category", "pig", "--seed", text])
    assert e.value.code == 2 and "--seed" in capsys.readouterr().err


def test_score_ndjson(tmp_path, classifier_dir, capsys):
    path = tmp_path / "samples.ndjson"
    path.write_text("\n".join(json.dumps({"strokes": s}) for s in
                              [[[0, 0, 0], [30, 0, 0], [0, 30, 1]],  # an L
                               [[2, 2, 1]],  # a dot
                               [[0, 0, 0]] * 3 + [[40, 40, 1]]]) + "\n")  # 4 rows: the cap
    assert sc.main(["score", "--ndjson", str(path), "--category", "pig", "--max-len", "4",
                    "--classifier", str(classifier_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num"] == 3 and report["near_empty"] == 1 and report["never_ending"] == 1
    assert sc.main(["score", "--ndjson", str(path), "--category", "pig",
                    "--classifier", str(classifier_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["never_ending"] is None


def test_score_real(shared_data, classifier_dir, capsys):
    if not (shared_data / "quickdraw_npz" / "pig.npz").exists():
        pytest.skip(f"{shared_data / 'quickdraw_npz' / 'pig.npz'} not present")
    assert sc.main(["score", "--real", "--category", "pig", "--classifier", str(classifier_dir),
                    "--data", str(shared_data)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num"] == 100 and report["near_empty"] == 0 and report["never_ending"] is None
    assert report["source"]["split"] == "test"
