"""Trainer input function: parse + augment, trimming, pen-state validity, against NumPy references."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from model.hparams import HParams
from model.strokes import stroke3_to_stroke5
from pipeline import schema
from trainer import augment as augment_lib
from trainer import input as input_lib


def sample_sketches(sample_dir: pathlib.Path, limit: int = 120, step: int = 6) -> list[np.ndarray]:
    """Real drawings from the bundled raw ndjson as stroke-3 (every `step`-th raw point kept)."""
    out = []
    for path in sorted(sample_dir.glob("*.ndjson")):
        for line in path.read_text().splitlines():
            drawing = json.loads(line)["drawing"]
            points = []
            for stroke in drawing:
                xs, ys = stroke[0][::step] + [stroke[0][-1]], stroke[1][::step] + [stroke[1][-1]]
                for i, (x, y) in enumerate(zip(xs, ys)):
                    points.append((x, y, 1 if i == len(xs) - 1 else 0))
            p = np.array(points, dtype=np.float32)
            d = np.concatenate([p[:1, :2] * 0, np.diff(p[:, :2], axis=0)])
            out.append(np.concatenate([d, p[:, 2:]], axis=1)[1:])
            if len(out) >= limit:
                return out
    return out


def write_dataset(out_dir: pathlib.Path, sketches: list[np.ndarray], max_len: int | None = None,
                  shards: int = 2, record_longest: bool = False) -> dict:
    """Writes train/valid/test GZIP TFRecords + metadata.json like the pipeline does.

    `max_len`: the records' padding (the filter cap); `record_longest`: also write
    `longest_sketch` (N_max) as the pipeline does (without it N_max falls back to max_len)."""
    sketches = [s for s in sketches if len(s) >= 2]
    max_len = max_len or max(len(s) for s in sketches)
    sketches = [s for s in sketches if len(s) <= max_len]
    scale = float(np.std(np.concatenate([s[:, :2] for s in sketches]).reshape(-1)))
    splits = {"train": sketches[: int(len(sketches) * 0.8)],
              "valid": sketches[int(len(sketches) * 0.8): int(len(sketches) * 0.9)],
              "test": sketches[int(len(sketches) * 0.9):]}
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, items in splits.items():
        for shard in range(shards):
            name = out_dir / f"{split}-{shard:05d}-of-{shards:05d}{schema.TFRECORD_SUFFIX}"
            with tf.io.TFRecordWriter(str(name), options="GZIP") as w:
                for i, s in enumerate(items[shard::shards]):
                    norm = s.copy()
                    norm[:, :2] /= scale
                    w.write(schema.serialize_example(stroke3_to_stroke5(norm, max_len), len(s),
                                                     "x", f"{split}:{shard}:{i}"))
    metadata = {"format_version": schema.FORMAT_VERSION, "scale_factor": scale,
                "max_seq_len": max_len, "classes": ["x"],
                "counts": {k: len(v) for k, v in splits.items()}, "lines_read": len(sketches),
                "rejected": 0, "rdp_epsilon": 2.0, "sources": ["test"]}
    if record_longest:
        metadata["longest_sketch"] = max(len(s) for s in sketches)
    schema.write_metadata(str(out_dir), metadata)
    return metadata


def ref_augment_strokes(strokes3: np.ndarray, uniform: np.ndarray, prob: float) -> np.ndarray:
    """magenta sketch_rnn utils.augment_strokes, verbatim logic, with given uniform draws."""
    result = []
    prev_stroke = [0, 0, 1]
    count = 0
    stroke = [0, 0, 1]
    for i in range(len(strokes3)):
        candidate = [strokes3[i][0], strokes3[i][1], strokes3[i][2]]
        if candidate[2] == 1 or prev_stroke[2] == 1:
            count = 0
        else:
            count += 1
        urnd = uniform[i]
        if candidate[2] == 0 and prev_stroke[2] == 0 and count > 2 and urnd < prob:
            stroke[0] += candidate[0]
            stroke[1] += candidate[1]
        else:
            stroke = candidate
            prev_stroke = stroke
            result.append(stroke)
    return np.array(result, dtype=np.float32)


@pytest.fixture(scope="module")
def sketches(sample_dir):
    return sample_sketches(sample_dir)


def test_augment_strokes_matches_reference_loop(sketches):
    max_len = max(len(s) for s in sketches) + 3
    for k, s3 in enumerate(sketches[:40]):
        seed = tf.constant([k, 7], tf.int64)
        s5 = stroke3_to_stroke5(s3, max_len)
        uniform = tf.random.stateless_uniform([max_len], seed=seed).numpy()
        got, new_len = augment_lib.augment_strokes(s5, len(s3), 0.3, seed)
        want = ref_augment_strokes(s3, uniform, 0.3)
        assert int(new_len) == len(want)
        np.testing.assert_allclose(got.numpy()[: len(want)], stroke3_to_stroke5(want, max_len)[: len(want)],
                                   rtol=1e-5, atol=1e-4)
        # Absolute end point unchanged; padding rows restored.
        np.testing.assert_allclose(got.numpy()[:, :2].sum(0), s3[:, :2].sum(0), atol=1e-3)
        np.testing.assert_array_equal(got.numpy()[len(want):], [[0, 0, 0, 0, 1]] * (max_len - len(want)))


def test_augment_keeps_pen_states_valid(sketches):
    max_len = max(len(s) for s in sketches)
    dropped = 0
    for k, s3 in enumerate(sketches):
        s5 = stroke3_to_stroke5(s3, max_len)
        got, n = augment_lib.augment(s5, len(s3), 0.15, 0.5, tf.constant([k, 1], tf.int64))
        got, n = got.numpy(), int(n)
        dropped += len(s3) - n
        assert 1 <= n <= len(s3)
        np.testing.assert_array_equal(got[:, 2:].sum(axis=1), np.ones(max_len))  # One-hot pens.
        assert set(np.unique(got[:, 2:])) <= {0.0, 1.0}
        assert np.all(got[:n, 4] == 0) and np.all(got[n:, 4] == 1)
        assert got[n - 1, 3] == 1  # The last real row still lifts the pen.
        # Stroke count (pen-up rows) unchanged: only pen-down points are merged.
        assert got[:n, 3].sum() == s3[:, 2].sum()
    assert dropped > 0


def test_random_scale_range_and_padding():
    s5 = stroke3_to_stroke5(np.array([[1.0, 2.0, 0], [3.0, -4.0, 1]]), 4)
    for k in range(20):
        got = augment_lib.random_scale(s5, 0.15, tf.constant([k, 0])).numpy()
        sx, sy = got[0, 0] / 1.0, got[0, 1] / 2.0
        assert 0.85 <= sx <= 1.15 and 0.85 <= sy <= 1.15
        np.testing.assert_allclose(got[1, :2], [3 * sx, -4 * sy], rtol=1e-6)
        np.testing.assert_array_equal(got[2:], [[0, 0, 0, 0, 1]] * 2)


def test_parse_augment_same_eagerly_and_in_map(tmp_path, sketches):
    metadata = write_dataset(tmp_path, sketches, shards=1)
    hps = HParams.preset("tiny")
    files = tf.io.gfile.glob(schema.split_pattern(str(tmp_path), "train"))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").take(10))
    seeds = [tf.constant([i, 3], tf.int64) for i in range(10)]
    eager = [input_lib.parse_and_augment(r, k, metadata["max_seq_len"], hps, True)
             for r, k in zip(records, seeds)]
    ds = tf.data.Dataset.from_tensor_slices((tf.stack(records), tf.stack(seeds))).map(
        lambda r, k: input_lib.parse_and_augment(r, k, metadata["max_seq_len"], hps, True))
    for e, m in zip(eager, ds):
        np.testing.assert_array_equal(e["strokes"].numpy(), m["strokes"].numpy())
        assert int(e["lengths"]) == int(m["lengths"])
    # Augmentation actually changed something.
    plain = input_lib.parse_and_augment(records[0], None, metadata["max_seq_len"], hps, False)
    assert not np.array_equal(plain["strokes"].numpy(), eager[0]["strokes"].numpy())


def test_make_dataset_trims_without_cutting(tmp_path, sketches):
    metadata = write_dataset(tmp_path, sketches)
    n_max = metadata["max_seq_len"]
    hps = HParams.preset("tiny")
    ds = input_lib.make_dataset(str(tmp_path), "train", hps, metadata, batch_size=8, training=True,
                                seed=1)
    widths = []
    for batch in ds.take(12):
        strokes, lengths = batch["strokes"].numpy(), batch["lengths"].numpy()
        assert strokes.shape[0] == 8
        # Trimmed to the longest + its end row (never beyond N_max), never shorter.
        assert strokes.shape[1] == min(lengths.max() + 1, n_max)
        widths.append(strokes.shape[1])
        for s, n in zip(strokes, lengths):
            assert np.all(s[:n, 4] == 0) and s[n - 1, 3] == 1
            assert np.all(s[n:] == [0, 0, 0, 0, 1])
            assert n == n_max or s[n, 4] == 1  # Every sketch keeps its end-of-sketch target.
    assert min(widths) < n_max
    full = input_lib.make_dataset(str(tmp_path), "valid", hps.replace(trim_batches=False), metadata,
                                  batch_size=4, training=False)
    count = 0
    for batch in full:
        assert batch["strokes"].shape[1] == n_max
        count += batch["lengths"].shape[0]
    assert count == metadata["counts"]["valid"]  # Evaluation sees every sketch once.


def test_n_max_is_the_longest_sketch_not_the_padding(tmp_path, sketches):
    """Records padded to a cap of 250 rows; N_max = the longest sketch (the reference's
    get_max_len) sets the untrimmed width and bounds the trimmed one."""
    metadata = write_dataset(tmp_path, sketches, max_len=250, record_longest=True)
    longest = metadata["longest_sketch"]
    assert longest < 250 and schema.n_max(metadata) == longest
    assert schema.n_max({"max_seq_len": 250}) == 250  # Older metadata: the padding.
    hps = HParams.preset("tiny")
    for trim in (False, True):
        ds = input_lib.make_dataset(str(tmp_path), "train", hps.replace(trim_batches=trim), metadata,
                                    batch_size=8, training=True, seed=2)
        for batch in ds.take(5):
            width, top = batch["strokes"].shape[1], int(batch["lengths"].numpy().max())
            assert width == (min(top + 1, longest) if trim else longest)


def test_same_seed_same_batches(tmp_path, sketches):
    metadata = write_dataset(tmp_path, sketches)
    hps = HParams.preset("tiny")
    a = [b["strokes"].numpy() for b in input_lib.make_dataset(
        str(tmp_path), "train", hps, metadata, 8, True, seed=5).take(3)]
    b = [b["strokes"].numpy() for b in input_lib.make_dataset(
        str(tmp_path), "train", hps, metadata, 8, True, seed=5).take(3)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_missing_files_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="sketch-rnn preprocess"):
        input_lib.make_dataset(str(tmp_path), "train", HParams.preset("tiny"), {"max_seq_len": 5}, 2, True)


def test_bucketed_batches_group_lengths_and_keep_every_point(tmp_path, sketches):
    metadata = write_dataset(tmp_path, sketches)
    hps = HParams.preset("tiny").replace(bucket_batches=True, augment_stroke_prob=0.0,
                                         random_scale_factor=0.0)
    ds = input_lib.make_dataset(str(tmp_path), "train", hps, metadata, 4, True, seed=1)
    for batch in ds.take(20):
        lengths = batch["lengths"].numpy()
        assert len(lengths) == 4
        # One bucket per batch: all lengths within one BUCKET_WIDTH-wide interval.
        assert lengths.max() - lengths.min() < input_lib.BUCKET_WIDTH
        # Trimmed, nothing real cut (N_max = the longest sketch here).
        assert batch["strokes"].shape[1] == min(lengths.max() + 1, metadata["max_seq_len"])
        s = batch["strokes"].numpy()
        for row, n in zip(s, lengths):
            assert np.all(row[:n, 4] == 0)


def test_a_record_longer_than_n_max_is_an_error(tmp_path, sketches):
    metadata = write_dataset(tmp_path, sketches, max_len=250, record_longest=True)
    wrong = {**metadata, "longest_sketch": 10}  # metadata of another data set
    ds = input_lib.make_dataset(str(tmp_path), "valid", HParams.preset("tiny"), wrong, 4, False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="longer than N_max = 10"):
        next(iter(ds))
