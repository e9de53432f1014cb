"""`sketch-rnn sample`: SVG / ndjson / PNG outputs that parse back, the four modes, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from deploy import sample
from deploy_fixtures import MAX_SEQ_LEN, shared_export_dir, square_stroke3

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return shared_export_dir(tmp_path_factory)


def run(capsys, *argv):
    code = sample.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_ndjson(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def cells(svg_path):
    """Grid cells of a grid_svg picture (one grey-bordered rect per sketch)."""
    root = ET.parse(svg_path).getroot()
    assert root.tag == SVG + "svg"
    return [r for r in root.iter(SVG + "rect") if r.get("stroke") == "#ddd"]


def test_samples_svg_ndjson_png(export, tmp_path, capsys):
    prefix = tmp_path / "out" / "samples"
    code, out, err = run(capsys, "--model", export, "--num", 16, "--temperature", 0.5, "--seed", 1,
                         "--output", prefix, "--png")
    assert code == 0, err
    assert "16 sketch(es)" in out
    assert len(cells(f"{prefix}.svg")) == 16
    records = read_ndjson(f"{prefix}.ndjson")
    assert len(records) == 16
    for r in records:
        assert r["mode"] == "sample" and r["temperature"] == 0.5 and r["seed"] == 1
        s = np.array(r["strokes"], dtype=np.float32).reshape(-1, 3)
        assert s.shape[0] <= MAX_SEQ_LEN
        assert set(np.unique(s[:, 2])) <= {0.0, 1.0}
        if len(s):
            assert s[-1, 2] == 1.0
    png = open(f"{prefix}.png", "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import tensorflow as tf

    image = tf.io.decode_png(png).numpy()
    assert image.shape == (4 * 128, 4 * 128, 1)
    # Same seed, same sketches; the version dir works like the base dir.
    code, _, err = run(capsys, "--model", os.path.join(export, "1"), "--num", 16, "--temperature", 0.5,
                       "--seed", 1, "--output", tmp_path / "again.svg")
    assert code == 0, err
    assert read_ndjson(tmp_path / "again.ndjson") == records
    assert not (tmp_path / "again.png").exists()


def test_resolve_export_dir_picks_the_highest_version(tmp_path):
    for name in ("3", "12", "abc", "40"):
        (tmp_path / name).mkdir()
    for name in ("3", "12", "abc"):
        (tmp_path / name / "saved_model.pb").write_bytes(b"")
    # 40 has no saved_model.pb (an unfinished export), abc is not a version.
    assert sample.resolve_export_dir(str(tmp_path)) == (str(tmp_path / "12"), 12)
    assert sample.resolve_export_dir(str(tmp_path / "3")) == (str(tmp_path / "3"), 3)
    with pytest.raises(sample.UsageError, match="numeric version subdirectories"):
        sample.resolve_export_dir(str(tmp_path / "40"))


def direct_signature(export, name, **inputs):
    """The SavedModel's own signature (not through deploy.sample), on NumPy inputs."""
    import tensorflow as tf

    fn = tf.saved_model.load(os.path.join(export, "1")).signatures[name]
    specs = fn.structured_input_signature[1]
    out = fn(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def rows_of(out):
    return [np.round(s[:n].astype(np.float64), 3).tolist() for s, n in zip(out["strokes"], out["lengths"])]


def test_reconstruct_from_a_quickdraw_ndjson(export, sample_dir, tmp_path, capsys):
    from pipeline import records as R

    source = sorted(sample_dir.glob("*.ndjson"))[0]
    code, _, err = run(capsys, "--model", export, "--input", source, "--index", 2, "--num", 3,
                       "--temperature", 0.4, "--seed", 9, "--output", tmp_path / "recon")
    assert code == 0, err
    assert len(cells(tmp_path / "recon.svg")) == 4  # the input, then 3 decodings
    records = read_ndjson(tmp_path / "recon.ndjson")
    assert [r["mode"] for r in records] == ["reconstruct"] * 3
    # The decodings are decode(mu of drawing 2, simplified as the pipeline does) at that
    # temperature and seed (tests/test_semantics_pipeline_deploy.py: on a model where z matters).
    sketch = R.process_line(source.read_text().splitlines()[2], R.Config()).strokes3
    mu = direct_signature(export, "encode", strokes=sketch[None], lengths=[len(sketch)])["mu"]
    out = direct_signature(export, "decode", z=np.repeat(mu, 3, axis=0), temperature=0.4, seed=9)
    assert [r["strokes"] for r in records] == rows_of(out)


def test_complete_keeps_the_prefix(export, tmp_path, capsys):
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"strokes": square_stroke3()}))
    code, _, err = run(capsys, "--model", export, "--complete", partial, "--num", 5, "--seed", 2,
                       "--output", tmp_path / "done")
    assert code == 0, err
    records = read_ndjson(tmp_path / "done.ndjson")
    assert len(records) == 5
    for r in records:
        assert r["strokes"][: len(square_stroke3())] == square_stroke3()
        assert r["prefix_length"] == len(square_stroke3())
    assert len(cells(tmp_path / "done.svg")) == 6


def test_a_users_prefix_is_resimplified_like_the_training_data(export, tmp_path, capsys):
    """An export whose data went through --resimplify-epsilon gets the user's sketch simplified the
    same way before the model reads it (here the square's sides' midpoints go)."""
    import shutil

    copy = tmp_path / "coarse"
    shutil.copytree(export, copy)
    meta_path = next(copy.rglob("assets.extra/metadata.json"))
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "resimplify_epsilon": 1.5}))
    rows = [[10, 10, 0], [10, 0, 0], [10, 1, 0], [0, 10, 0], [-1, 10, 1], [5, 5, 0], [3, 2, 1]]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"strokes": rows}))
    code, _, err = run(capsys, "--model", copy, "--complete", partial, "--num", 1, "--output", tmp_path / "done")
    assert code == 0, err
    record, = read_ndjson(tmp_path / "done.ndjson")
    assert record["prefix_length"] == 5
    assert record["strokes"][:5] == [[10, 10, 0], [20, 1, 0], [-1, 20, 1], [5, 5, 0], [3, 2, 1]]


def test_interpolate_between_two_sketches(export, tmp_path, capsys):
    two = tmp_path / "two.ndjson"
    a, b = square_stroke3(), [[5.0, 5.0, 0.0], [30.0, 10.0, 0.0], [-10.0, 25.0, 1.0]]
    two.write_text(json.dumps({"strokes": a}) + "\n\n" + json.dumps({"strokes": b}) + "\n")
    code, _, err = run(capsys, "--model", export, "--interpolate", two, "--num", 5, "--temperature", 0.1,
                       "--output", tmp_path / "lerp")
    assert code == 0, err
    records = read_ndjson(tmp_path / "lerp.ndjson")
    assert [r["t"] for r in records] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(cells(tmp_path / "lerp.svg")) == 7  # A, 5 frames, B
    # The frames decode the slerp between the two sketches' mu (one decode call, as the CLI).
    batch = np.zeros((2, len(a), 3), np.float32)
    batch[0], batch[1, :len(b)] = a, b
    mu = direct_signature(export, "encode", strokes=batch, lengths=[len(a), len(b)])["mu"].astype(np.float64)
    z = np.stack([sample.slerp(mu[0], mu[1], t) for t in (0.0, 0.25, 0.5, 0.75, 1.0)]).astype(np.float32)
    out = direct_signature(export, "decode", z=z, temperature=0.1, seed=0)
    assert [r["strokes"] for r in records] == rows_of(out)


def test_slerp_ends_and_norm():
    z0, z1 = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    assert np.allclose(sample.slerp(z0, z1, 0.0), z0) and np.allclose(sample.slerp(z0, z1, 1.0), z1)
    mid = sample.slerp(z0, np.array([0.0, 1.0]), 0.5)  # along the unit circle, not the chord
    assert np.allclose(mid, [np.sqrt(0.5), np.sqrt(0.5)])
    assert np.allclose(sample.slerp(z0, 3 * z0, 0.5), 2 * z0)  # parallel: linear


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", ["missing file", "not json line", "wrong shape", "nan", "pen value",
                                  "bad quickdraw", "index out of range", "interpolate needs two",
                                  "too long", "empty file", "no sketch field"])
def test_bad_input_sketches_exit_2_with_a_clear_message(export, tmp_path, capsys, case):
    sq = json.dumps(square_stroke3())
    mode, text, message = {
        "missing file": ("--input", None, "no such file"),
        "not json line": ("--input", sq + "\n{oops\n", "line 2: not JSON"),
        "wrong shape": ("--complete", "[[1, 2], [3, 4]]", "shape [n, 3]"),
        "nan": ("--complete", "[[1, NaN, 1]]", "NaN or Infinity"),
        "pen value": ("--complete", "[[1, 2, 3]]", "must be 0 or 1"),
        "bad quickdraw": ("--input", '{"word": "cat", "drawing": [[[1, 2], [3]]]}', "length_mismatch"),
        "index out of range": ("--input", sq, "holds 1 sketch(es)"),
        "interpolate needs two": ("--interpolate", sq, "holds 1 sketch(es)"),
        "too long": ("--complete", json.dumps([[1, 1, 0]] * (MAX_SEQ_LEN + 1)), f"N_max = {MAX_SEQ_LEN}"),
        "empty file": ("--input", "  \n", "the file is empty"),
        "no sketch field": ("--input", '{"word": "cat"}', "needs a `drawing`"),
    }[case]
    path = tmp_path / "missing.json" if text is None else write(tmp_path, "in.json", text)
    extra = ["--index", 5] if case == "index out of range" else []
    code, _, err = run(capsys, "--model", export, mode, path, *extra, "--output", tmp_path / "x")
    assert code == 2, err
    assert "sketch-rnn sample: error:" in err and message in err, err
    assert not (tmp_path / "x.svg").exists()


def test_usage_and_runtime_errors(export, tmp_path, capsys):
    code, _, err = run(capsys, "--model", export, "--num", 0, "--output", tmp_path / "x")
    assert code == 2 and "--num must be in" in err
    code, _, err = run(capsys, "--model", export, "--temperature", "nan", "--output", tmp_path / "x")
    assert code == 2 and "--temperature" in err
    code, _, err = run(capsys, "--model", export, "--index", 1, "--output", tmp_path / "x")
    assert code == 2 and "--index needs" in err
    code, _, err = run(capsys, "--model", export, "--input", "a", "--complete", "b", "--output", tmp_path / "x")
    assert code == 2 and "not allowed with" in err
    code, _, err = run(capsys, "--model", tmp_path / "nowhere", "--output", tmp_path / "x")
    assert code == 2 and "no such directory" in err
    code, _, err = run(capsys, "--model", tmp_path, "--output", tmp_path / "x")
    assert code == 2 and "saved_model.pb" in err
    broken = tmp_path / "broken" / "5"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    code, _, err = run(capsys, "--model", broken.parent, "--output", tmp_path / "x")
    assert code == 1 and "cannot load the model" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "--model", export, "--num", 1, "--output", blocker / "sub" / "x")
    assert code == 1 and "cannot write" in err


def test_dispatcher_usage_error_is_fast_and_exits_2():
    result = subprocess.run([sys.executable, "-m", "deploy.cli", "sample", "--model", "m", "--output", "o",
                             "--bogus"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "unrecognized arguments: --bogus" in result.stderr


def test_unconditional_export_samples_but_cannot_encode(tmp_path, capsys):
    from deploy_fixtures import build_tiny_export

    export = build_tiny_export(str(tmp_path), conditional=False)
    code, _, err = run(capsys, "--model", export, "--num", 2, "--output", tmp_path / "s")
    assert code == 0, err
    partial = write(tmp_path, "p.json", json.dumps(square_stroke3()))
    code, _, err = run(capsys, "--model", export, "--complete", partial, "--num", 2, "--output", tmp_path / "c")
    assert code == 0, err
    code, _, err = run(capsys, "--model", export, "--input", partial, "--output", tmp_path / "r")
    assert code == 2 and "no encode, decode signature" in err
