"""The one schema of the pipeline's output, used by the writer (pipeline) and the reader (trainer).

A record is a `tf.train.Example` with:
  strokes  float32 list of length N_max * 5: a row-major stroke-5 array [N_max, 5]
           (dx, dy, p1 pen down, p2 pen up, p3 end of sketch), offsets divided by the
           dataset's scale factor, padded with (0, 0, 0, 0, 1) from `length` on.
  length   int64: number of real points (rows before the padding).
  word     bytes: the category.
  key_id   bytes: the drawing's id (Quick Draw key_id, or "<file>:<split>:<index>" for npz).

Files: `DIR/{train,valid,test}-SSSSS-of-NNNNN.tfrecord.gz` (GZIP) and `DIR/metadata.json`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

FORMAT_VERSION = 1
SPLITS = ("train", "valid", "test")
STROKES = "strokes"
LENGTH = "length"
WORD = "word"
KEY_ID = "key_id"
METADATA_FILE = "metadata.json"
TFRECORD_SUFFIX = ".tfrecord.gz"
COMPRESSION = "GZIP"
METADATA_KEYS = ("format_version", "scale_factor", "max_seq_len", "classes", "counts",
                 "lines_read", "rejected", "rdp_epsilon", "sources")


def n_max(metadata: dict[str, Any]) -> int:
    """N_max of a data set: its longest written sketch (`longest_sketch`, the reference's
    `get_max_len` over all splits), never above the records' padding `max_seq_len` (the filter
    cap). Data written before `longest_sketch` existed falls back to `max_seq_len`.

    The trainer pads or trims to it, the loss divides by it, sampling runs at most N_max steps.
    """
    cap = int(metadata["max_seq_len"])
    longest = metadata.get("longest_sketch")
    return cap if not longest else min(int(longest), cap)


def split_pattern(data_dir: str, split: str) -> str:
    """Glob pattern of one split's shards, e.g. `gs://b/d/train-*.tfrecord.gz`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return os.path.join(data_dir, f"{split}-*{TFRECORD_SUFFIX}")


def serialize_example(strokes5: np.ndarray, length: int, word: str, key_id: str) -> bytes:
    """Serializes one padded stroke-5 sketch `[N_max, 5]` to tf.train.Example bytes."""
    import tensorflow as tf  # Imported lazily: Beam pickles the functions that call this.

    strokes5 = np.asarray(strokes5, dtype=np.float32)
    if strokes5.ndim != 2 or strokes5.shape[1] != 5:
        raise ValueError(f"strokes must have shape [N_max, 5], got {strokes5.shape}")
    feature = {
        STROKES: tf.train.Feature(float_list=tf.train.FloatList(value=strokes5.reshape(-1))),
        LENGTH: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(length)])),
        WORD: tf.train.Feature(bytes_list=tf.train.BytesList(value=[word.encode("utf-8")])),
        KEY_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(key_id).encode("utf-8")])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec(max_seq_len: int) -> dict[str, Any]:
    import tensorflow as tf

    return {
        STROKES: tf.io.FixedLenFeature([max_seq_len * 5], tf.float32),
        LENGTH: tf.io.FixedLenFeature([], tf.int64),
        WORD: tf.io.FixedLenFeature([], tf.string),
        KEY_ID: tf.io.FixedLenFeature([], tf.string),
    }


def parse_example(serialized, max_seq_len: int) -> dict[str, Any]:
    """Parses one (scalar) or a batch (vector) of serialized examples.

    Returns `strokes` float32 `[..., N_max, 5]`, `length` int32 `[...]`, `word` and
    `key_id` string tensors `[...]`. Works eagerly and inside `Dataset.map`.
    """
    import tensorflow as tf

    parsed = tf.io.parse_example(serialized, feature_spec(max_seq_len))
    strokes = tf.reshape(parsed[STROKES], tf.concat([tf.shape(parsed[LENGTH]), [max_seq_len, 5]], 0))
    return {STROKES: strokes, LENGTH: tf.cast(parsed[LENGTH], tf.int32),
            WORD: parsed[WORD], KEY_ID: parsed[KEY_ID]}


def write_metadata(data_dir: str, metadata: dict[str, Any]) -> str:
    """Writes `metadata.json` (local path or gs://) after checking the required keys."""
    import tensorflow as tf

    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"metadata is missing keys {missing}")
    path = os.path.join(data_dir, METADATA_FILE)
    tf.io.gfile.makedirs(data_dir)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(metadata, indent=2, sort_keys=True))
    return path


def read_metadata(data_dir: str) -> dict[str, Any]:
    """Reads `DIR/metadata.json` written by `sketch-rnn preprocess`, with a clear error."""
    import tensorflow as tf

    path = os.path.join(data_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"{path} not found: is {data_dir!r} the --output of `sketch-rnn preprocess`?")
    with tf.io.gfile.GFile(path) as f:
        metadata = json.loads(f.read())
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"{path} lacks keys {missing}; re-run `sketch-rnn preprocess`")
    if metadata["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {metadata['format_version']}, "
                         f"this code reads {FORMAT_VERSION}; re-run `sketch-rnn preprocess`")
    return metadata
