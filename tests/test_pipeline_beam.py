"""The Beam job (pipeline/beam_job.py, pipeline/cli.py): the composite transform under TestPipeline,
the whole job on the bundled sample plus malformed lines (read back with the shared schema), the
streaming job under TestStream, and sketch-rnn .npz input."""

import collections
import glob
import json
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
# Aliased: pytest would try to collect classes named Test*.
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipeline import beam_job, cli, schema
from pipeline import records as R

IN_MEMORY = ["--direct_running_mode", "in_memory"]
BAD = [
    "{truncated json",
    '{"word": "cat", "key_id": "1", "drawing": [[[1, 2, 3], [4, 5]]]}',
    '{"word": "cat", "key_id": "2", "drawing": [[[1, NaN], [4, 5]]]}',
    '{"word": "cat", "key_id": "3", "drawing": []}',
    '{"word": "cat", "key_id": "4", "drawing": [[[7], [7]]]}',
    '{"word": "cat", "drawing": [[[1, 2], [4, 5]]]}',
    '{"word": "cat", "key_id": "5", "drawing": [[[1, 2e9], [4, 5]]]}',
    '"just a string"',
]


def _sample_lines(sample_dir, names=None):
    paths = sorted(sample_dir.glob("*.ndjson"))
    return [line for p in paths if names is None or p.stem in names
            for line in p.read_text(encoding="utf-8").splitlines()]


def _read_split(out_dir, split, max_seq_len):
    import tensorflow as tf

    files = sorted(glob.glob(schema.split_pattern(str(out_dir), split)))
    assert files, f"no {split} shards in {out_dir}"
    ds = tf.data.TFRecordDataset(files, compression_type=schema.COMPRESSION).batch(100000)
    out = {"strokes": np.zeros((0, max_seq_len, 5), np.float32), "length": np.zeros(0, np.int32),
           "word": [], "key_id": []}
    for batch in ds:
        parsed = schema.parse_example(batch, max_seq_len)
        out["strokes"] = np.concatenate([out["strokes"], parsed["strokes"].numpy()])
        out["length"] = np.concatenate([out["length"], parsed["length"].numpy()])
        out["word"] += [w.decode() for w in parsed["word"].numpy()]
        out["key_id"] += [k.decode() for k in parsed["key_id"].numpy()]
    return out


def _check_stroke5_invariants(data, max_seq_len):
    s5, lengths = data["strokes"], data["length"]
    assert s5.shape[1:] == (max_seq_len, 5)
    assert ((lengths >= 2) & (lengths <= max_seq_len)).all()
    pen = s5[:, :, 2:]
    assert ((pen == 0) | (pen == 1)).all() and (pen.sum(-1) == 1).all()  # one-hot p1..p3
    rows = np.arange(max_seq_len)[None, :]
    assert ((s5[:, :, 4] == 1) == (rows >= lengths[:, None])).all()     # p3 = 1 exactly from length on
    assert (s5[rows >= lengths[:, None]][:, :4] == 0).all()
    assert (s5[np.arange(len(lengths)), lengths - 1, 3] == 1).all()      # last real row lifts the pen


def test_preprocess_transform_with_test_pipeline(sample_dir):
    """The composite `Preprocess` against the plain per-record functions applied in Python."""
    config = R.Config(max_seq_len=100)
    lines = _sample_lines(sample_dir, {"cat", "pig", "star"}) + BAD
    results = [R.process_record(line, config) for line in lines]
    drawings = [r for r in results if isinstance(r, R.Drawing)]
    train = np.concatenate([d.strokes3[:, :2].reshape(-1) for d in drawings
                            if d.split == "train"]).astype(np.float64)
    expected_scale = float(np.std(train))  # the reference's normalizing scale factor
    expected_counts = collections.Counter({("read",): len(lines)})
    for r in results:
        key = ("rejected", r.reason) if isinstance(r, R.Rejection) else ("written", r.split, r.word)
        expected_counts[key] += 1
        if isinstance(r, R.Drawing):  # The length histogram that gives longest_sketch (N_max).
            expected_counts[("length", r.strokes3.shape[0])] += 1
    expected_dead = [r.to_json() for r in results if isinstance(r, R.Rejection) and r.kind == R.DEAD_LETTER]
    by_key = {d.key_id: d for d in drawings}
    assert len(expected_dead) == len(BAD) and any(getattr(r, "reason", "") == "too_long" for r in results)

    def check_examples(examples):
        import tensorflow as tf

        assert len(examples) == len(drawings)
        for split, word, blob in examples:
            ex = tf.train.Example.FromString(blob).features.feature
            d = by_key[ex["key_id"].bytes_list.value[0].decode()]
            assert (split, word) == (d.split, d.word)
            np.testing.assert_allclose(np.array(ex["strokes"].float_list.value).reshape(100, 5),
                                       R.to_stroke5(d, expected_scale, 100), rtol=1e-6)

    with BeamTestPipeline(options=PipelineOptions(IN_MEMORY)) as p:
        # Shuffled input: the result may not depend on the order.
        shuffled = random.Random(0).sample(lines, len(lines))
        out = p | beam.Create(shuffled) | beam_job.Preprocess(config)
        assert_that(out["counts"], equal_to([expected_counts]), label="counts")
        assert_that(out["dead_letters"], equal_to(expected_dead), label="dead_letters")
        assert_that(out["scale_factor"] | beam.Map(lambda s: round(s / expected_scale, 9)),
                    equal_to([1.0]), label="scale_factor")
        assert_that(out["examples"], check_examples, label="examples")


@pytest.fixture(scope="module")
def job_input(tmp_path_factory, sample_dir):
    """The bundled sample plus one file of malformed lines, and the lines in all of them."""
    d = tmp_path_factory.mktemp("job_input")
    lines = []
    for path in sorted(sample_dir.glob("*.ndjson")):
        text = path.read_text(encoding="utf-8")
        (d / path.name).write_text(text, encoding="utf-8")
        lines += text.splitlines()
    (d / "malformed.ndjson").write_text("\n".join(BAD) + "\n", encoding="utf-8")
    return d, lines + BAD


def test_whole_job_on_sample_with_malformed_lines(job_input, tmp_path, capsys):
    in_dir, lines = job_input
    out = tmp_path / "out"
    # Default runner settings (DirectRunner, multi-process), on 2 workers to stay within CI time.
    rc = cli.main(["--input", str(in_dir / "*.ndjson"), "--output", str(out), "--max-seq-len", "100",
                   "--direct_num_workers", "2"])
    assert rc == 0
    summary = capsys.readouterr().out
    assert "records read" in summary and "scale factor" in summary and "drawings/s" in summary

    meta = schema.read_metadata(str(out))
    assert meta["lines_read"] == len(lines) == 263 + len(BAD)
    written = sum(meta["counts"].values())
    assert written + meta["dead_lettered"] + meta["filtered"] == meta["lines_read"] and meta["accounted"]
    assert meta["dead_lettered"] == len(BAD) and meta["rejected"]["too_long"] == meta["filtered"] == 7
    assert meta["max_seq_len"] == 100 and meta["rdp_epsilon"] == 2.0
    assert meta["classes"] == sorted(p.stem for p in in_dir.glob("*.ndjson") if p.stem != "malformed")

    data = {split: _read_split(out, split, 100) for split in schema.SPLITS}
    key_split = {}
    for split, d in data.items():
        assert len(d["key_id"]) == meta["counts"][split]
        _check_stroke5_invariants(d, 100)
        for key, word in zip(d["key_id"], d["word"]):
            assert key not in key_split
            key_split[key] = split
            assert split == R.assign_split(key, 0.05, 0.05)
        per_class = collections.Counter(d["word"])
        assert {w: c[split] for w, c in meta["class_counts"].items() if c[split]} == dict(per_class)
    assert len(key_split) == written
    # N_max: the longest written sketch over all splits (the reference's get_max_len).
    assert meta["longest_sketch"] == max(int(d["length"].max()) for d in data.values() if len(d["length"]))
    assert schema.n_max(meta) == meta["longest_sketch"] < 100

    # Train offsets have std 1 after normalization (pooled dx, dy of the real rows).
    t = data["train"]
    mask = np.arange(100)[None, :] < t["length"][:, None]
    np.testing.assert_allclose(np.std(t["strokes"][mask][:, :2]), 1.0, rtol=1e-5)
    # ... and the scale factor is the std of the raw train offsets computed without Beam.
    plain = [R.process_line(line, R.Config(max_seq_len=100)) for line in lines]
    train = np.concatenate([d.strokes3[:, :2].reshape(-1) for d in plain
                            if isinstance(d, R.Drawing) and d.split == "train"]).astype(np.float64)
    np.testing.assert_allclose(meta["scale_factor"], np.std(train), rtol=1e-12)

    # Dead letters: one JSON line per bad input line, with the reason and the line itself.
    dead = [json.loads(x) for f in sorted(glob.glob(str(out / "rejected*.jsonl")))
            for x in open(f, encoding="utf-8").read().splitlines()]
    assert sorted(x["line"] for x in dead) == sorted(BAD)
    assert collections.Counter(x["reason"] for x in dead) == {
        r: n for r, n in meta["rejected"].items() if R.REASONS[r] == R.DEAD_LETTER}

    # Split determinism: another order, other files, other sharding, other runner mode.
    shuffled = random.Random(1).sample(lines, len(lines))
    in2 = tmp_path / "in2"
    in2.mkdir()
    for i in range(3):
        (in2 / f"part{i}.ndjson").write_text("\n".join(shuffled[i::3]) + "\n", encoding="utf-8")
    out2 = tmp_path / "out2"
    out2.mkdir()
    stale = [out2 / "train-00000-of-00009.tfrecord.gz", out2 / "rejected-00000-of-00001.jsonl"]
    for path in stale + [out2 / "notes.txt"]:
        path.write_bytes(b"from an earlier run")
    assert cli.main(["--input", str(in2 / "part2.ndjson"), "--input", str(in2 / "part[01].ndjson"),
                     "--output", str(out2), "--max-seq-len", "100", "--num-shards", "3"] + IN_MEMORY) == 0
    assert len(glob.glob(schema.split_pattern(str(out2), "train"))) == 3
    assert (out2 / "notes.txt").exists() and not any(p.exists() and p.read_bytes() == b"from an earlier run"
                                                     for p in stale)
    key_split2 = {k: s for s in schema.SPLITS for k in _read_split(out2, s, 100)["key_id"]}
    assert key_split2 == key_split
    meta2 = schema.read_metadata(str(out2))
    np.testing.assert_allclose(meta2["scale_factor"], meta["scale_factor"], rtol=1e-12)
    assert meta2["counts"] == meta["counts"] and meta2["rejected"] == meta["rejected"]


def test_given_scale_factor_and_category_filter(job_input, tmp_path):
    in_dir, lines = job_input
    out = tmp_path / "out"
    assert cli.main(["--input", str(in_dir / "*.ndjson"), "--output", str(out), "--scale-factor", "10",
                     "--categories", "Cat,pig", "--categories", "star"] + IN_MEMORY) == 0
    meta = schema.read_metadata(str(out))
    assert meta["scale_factor"] == 10.0 and meta["scale_factor_source"] == "given"
    assert meta["classes"] == ["cat", "pig", "star"]
    assert meta["rejected"]["category_excluded"] == meta["filtered"]
    assert meta["written"] == sum(1 for line in lines[:-len(BAD)]
                                  if json.loads(line)["word"] in ("cat", "pig", "star"))
    d = _read_split(out, "train", 250)
    first = d["key_id"][0]
    line = next(x for x in lines if f'"key_id":"{first}"' in x.replace(" ", ""))
    np.testing.assert_allclose(d["strokes"][0, :, :2],
                               R.to_stroke5(R.process_line(line, R.Config()), 10.0, 250)[:, :2])


def test_cli_errors_are_clear(tmp_path, capsys):
    assert cli.main(["--input", "x.ndjson"]) == 2
    assert "--output DIR is required" in capsys.readouterr().err
    assert cli.main(["--input", str(tmp_path / "nothing*.ndjson"), "--output", str(tmp_path)]) == 2
    assert "matches no file" in capsys.readouterr().err
    assert cli.main(["--output", str(tmp_path)]) == 2
    assert "--input" in capsys.readouterr().err
    assert cli.main(["--streaming", "--pubsub-topic", "projects/p/topics/t", "--output", str(tmp_path)]) == 2
    assert "--scale-factor or --metadata-from" in capsys.readouterr().err
    assert cli.main(["--input", "x", "--output", str(tmp_path), "--valid-fraction", "0.9",
                     "--test-fraction", "0.2"]) == 2
    assert "sum to less than 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0 and "DataflowRunner" in capsys.readouterr().out
    # Beam's own flags pass through; the local defaults fill in only what the user left out.
    opts = cli.beam_options(["--direct_num_workers", "3"]).get_all_options()
    assert (opts["runner"], opts["direct_running_mode"], opts["direct_num_workers"]) == (
        "DirectRunner", "multi_processing", 3)
    opts = cli.beam_options(["--runner=DataflowRunner", "--project", "p"]).get_all_options()
    assert opts["runner"] == "DataflowRunner" and opts["project"] == "p"


def test_streaming_with_test_stream(sample_dir, tmp_path):
    """Two one-minute windows of lines (plus a malformed one, a blank one and a redelivered one)
    -> TFRecord shards and a manifest with the window's accounting per window."""
    lines = _sample_lines(sample_dir, {"cat", "star"})
    first, second = lines[:20] + [lines[3]], lines[20:35] + [BAD[0], "  "]
    config = R.Config()
    stream = (BeamTestStream()
              .advance_watermark_to(0)
              .add_elements([TimestampedValue(x, 1 + i) for i, x in enumerate(first)])
              .advance_watermark_to(60)
              .add_elements([TimestampedValue(x, 61 + i) for i, x in enumerate(second)])
              .advance_watermark_to_infinity())
    out = tmp_path / "stream"
    out.mkdir()
    with BeamTestPipeline(options=PipelineOptions(streaming=True)) as p:
        beam_job.build_streaming(p | stream, str(out), config, scale_factor=8.0, window_seconds=60)

    import tensorflow as tf

    def keys_in(pattern):
        files = sorted(glob.glob(str(out / pattern)))
        if not files:
            return []
        ds = tf.data.TFRecordDataset(files, compression_type="GZIP")
        return [schema.parse_example(r, 250)["key_id"].numpy().decode() for r in ds]

    for window_lines, start in ((first, "1970-01-01T00:00:00"), (second, "1970-01-01T00:01:00")):
        expected, reasons = collections.defaultdict(set), collections.Counter()
        moments = (0, 0.0, 0.0)
        for line in window_lines:
            d = R.process_line(line, config)
            if isinstance(d, R.Rejection):
                reasons[d.reason] += 1
            elif d.key_id in expected[d.split]:
                reasons["duplicate"] += 1  # Redelivered: kept once per window.
            else:
                expected[d.split].add(d.key_id)
                if d.split == "train":
                    moments = R.merge_moments(moments, R.offset_moments(d.strokes3))
        for split in schema.SPLITS:
            got = keys_in(f"{split}-{start}*{schema.TFRECORD_SUFFIX}")
            assert sorted(got) == sorted(expected[split]), (split, start)
        # The window's manifest accounts for every line it read, by split and reason.
        [path] = glob.glob(str(out / f"manifest-{start}-*.json"))
        manifest = json.loads(open(path).read())
        assert manifest["window_start"] == start + "Z"
        assert manifest["read"] == len(window_lines)
        assert manifest["counts"] == {s: len(expected[s]) for s in schema.SPLITS}
        assert manifest["rejected"] == dict(reasons)
        dead = sum(n for r, n in reasons.items() if R.REASONS[r] == R.DEAD_LETTER)
        assert (manifest["written"], manifest["dead_lettered"], manifest["filtered"]) == (
            sum(map(len, expected.values())), dead, sum(reasons.values()) - dead)
        assert manifest["written"] + manifest["dead_lettered"] + manifest["filtered"] == manifest["read"]
        assert manifest["accounted"]
        assert manifest["train_offsets"]["count"] == moments[0]  # pixels: compare with scale_factor
        assert manifest["train_offsets"]["std"] == pytest.approx(R.scale_factor_from_moments(moments))
        assert manifest["files"] == sorted(
            p.name for p in out.glob("*-*") if p.name.split("-", 1)[1].startswith(start + "-")
            and not p.name.startswith("manifest-"))
    assert {r for p in out.glob("manifest-*.json") for r in json.loads(p.read_text())["rejected"]} == {
        "duplicate", "malformed_json", "blank_line"}
    # The whole output is readable through the schema's split pattern, values scaled by 8.
    train_files = glob.glob(schema.split_pattern(str(out), "train"))
    ds = tf.data.TFRecordDataset(train_files, compression_type="GZIP").batch(100)
    parsed = schema.parse_example(next(iter(ds)), 250)
    key = parsed["key_id"].numpy()[0].decode()
    line = next(x for x in first + second if f'"key_id":"{key}"' in x.replace(" ", ""))
    np.testing.assert_allclose(parsed["strokes"].numpy()[0], R.to_stroke5(R.process_line(line, config), 8.0, 250))
    dead = [json.loads(x) for f in glob.glob(str(out / "rejected-1970-01-01T00:01:00*.jsonl"))
            for x in open(f).read().splitlines()]
    assert [d["line"] for d in dead] == [BAD[0]]


def test_npz_input_keeps_its_split(shared_data, tmp_path):
    path = shared_data / "sketchrnn_npz" / "aaron_sheep.npz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    npz = np.load(path, encoding="latin1", allow_pickle=True)
    out = tmp_path / "sheep"
    assert cli.main(["--input", str(path), "--output", str(out)] + IN_MEMORY) == 0
    meta = schema.read_metadata(str(out))
    sizes = {s: len(npz[s]) for s in schema.SPLITS}
    too_long = {s: sum(len(x) > 250 for x in npz[s]) for s in schema.SPLITS}
    assert meta["counts"] == {s: sizes[s] - too_long[s] for s in schema.SPLITS}
    assert meta["lines_read"] == sum(sizes.values()) and meta["accounted"]
    assert meta["classes"] == ["aaron_sheep"]
    assert meta["longest_sketch"] == max(len(x) for s in schema.SPLITS for x in npz[s] if len(x) <= 250)
    # The reference's normalizing scale factor: np.std of all train dx, dy (sketches <= 250).
    train = [x for x in npz["train"] if len(x) <= 250]
    ref = np.std(np.concatenate([x[:, 0:2].reshape(-1) for x in train]).astype(np.float64))
    np.testing.assert_allclose(meta["scale_factor"], ref, rtol=1e-9)
    valid = _read_split(out, "valid", 250)
    _check_stroke5_invariants(valid, 250)
    assert all(k.startswith("aaron_sheep.npz:valid:") for k in valid["key_id"])
    i = int(valid["key_id"][0].rsplit(":", 1)[1])
    sketch = npz["valid"][i]
    np.testing.assert_allclose(valid["strokes"][0, :len(sketch), :2], sketch[:, :2] / ref, rtol=1e-5)
    np.testing.assert_array_equal(valid["strokes"][0, :len(sketch), 3], sketch[:, 2])


def test_npz_input_resimplified_from_the_cli(tmp_path):
    """--resimplify-epsilon: each npz sketch is RDP'd again (records.process_npz_sketch), the
    metadata says so, and N_max is the longest sketch after it."""
    line = np.array([[0, 0, 0], [10, 1, 0], [10, 0, 0], [10, 0, 0], [10, -1, 1], [5, 5, 0], [1, 0, 1]],
                    dtype=np.int16)
    bent = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 1]], dtype=np.int16)
    path = tmp_path / "pig.npz"
    arrays = {s: np.empty(2, dtype=object) for s in schema.SPLITS}
    for arr in arrays.values():
        arr[0], arr[1] = line, bent
    np.savez(path, **arrays)
    out = tmp_path / "out"
    assert cli.main(["--input", str(path), "--output", str(out), "--resimplify-epsilon", "1.5"]
                    + IN_MEMORY) == 0
    meta = schema.read_metadata(str(out))
    assert meta["resimplify_epsilon"] == 1.5 and meta["counts"] == {s: 2 for s in schema.SPLITS}
    assert meta["longest_sketch"] == 4
    valid = _read_split(out, "valid", meta["max_seq_len"])
    assert sorted(valid["length"].tolist()) == [3, 4]


def test_streaming_cli_checks_its_inputs(tmp_path, capsys):
    base = ["--streaming", "--pubsub-topic", "projects/p/topics/t", "--output", str(tmp_path / "o")]
    assert cli.main(base + ["--metadata-from", str(tmp_path / "missing")]) == 2
    assert "cannot read metadata.json" in capsys.readouterr().err
    meta_dir = tmp_path / "batch"
    meta = beam_job.build_metadata(collections.Counter({("read",): 1, ("written", "train", "cat"): 1}),
                                   (4, 0.0, 4.0), 1.0, "train_std", R.Config(max_seq_len=100), ["x"])
    beam_job.write_metadata_file(str(meta_dir), meta)
    assert schema.read_metadata(str(meta_dir))["counts"] == {"train": 1, "valid": 0, "test": 0}
    assert cli.main(base + ["--metadata-from", str(meta_dir), "--max-seq-len", "99"]) == 2
    assert "differs from the batch run's 100" in capsys.readouterr().err
    assert cli.main(base + ["--scale-factor", "3", "--input", "x.ndjson"]) == 2
    assert "not --input files" in capsys.readouterr().err
    assert cli.main(["--streaming", "--scale-factor", "3", "--output", str(tmp_path)]) == 2
    assert "--pubsub-topic" in capsys.readouterr().err
