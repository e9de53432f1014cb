"""tf.data input function over the pipeline's TFRecords (local paths or gs://).

One element of the dataset returned by `make_dataset` is a batch dict:
  strokes  float32 `[B, T, 5]` normalized stroke-5 (T = the batch's longest sketch when trimming,
           else N_max), rows from `lengths[b]` on are (0, 0, 0, 0, 1);
  lengths  int32 `[B]`.
Memory does not grow with the dataset: files are streamed through an interleave and a bounded
shuffle buffer; nothing is cached.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from model.hparams import HParams
from pipeline import schema
from trainer import augment as augment_lib

SHUFFLE_BUFFER = 10_000
BUCKET_WIDTH = 25  # Points per length bucket with hps.bucket_batches.


def trim_batch(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Cuts `strokes` `[B, N, 5]` to `[B, max(lengths), 5]`: only padding rows are removed.

    The model (and its loss) see T = max(lengths) instead of N_max; every sketch keeps all its
    real rows, the shorter ones keep their (0, 0, 0, 0, 1) padding up to T.
    """
    t = tf.maximum(tf.reduce_max(batch["lengths"]), 1)
    return {**batch, "strokes": batch["strokes"][:, :t]}


def parse_and_augment(serialized: tf.Tensor, seed: tf.Tensor | None, max_seq_len: int,
                      hps: HParams, training: bool) -> dict[str, tf.Tensor]:
    """One serialized Example -> {strokes `[N_max, 5]`, lengths int32 scalar}."""
    parsed = schema.parse_example(serialized, max_seq_len)
    strokes, length = parsed[schema.STROKES], parsed[schema.LENGTH]
    if training and seed is not None:
        strokes, length = augment_lib.augment(strokes, length, hps.random_scale_factor,
                                              hps.augment_stroke_prob, seed)
    strokes = tf.ensure_shape(strokes, [max_seq_len, 5])
    return {"strokes": strokes, "lengths": length}


def make_dataset(data_dir: str, split: str, hps: HParams, metadata: dict[str, Any],
                 batch_size: int, training: bool, seed: int = 0,
                 input_context: tf.distribute.InputContext | None = None,
                 repeat: bool | None = None) -> tf.data.Dataset:
    """Batched dataset of one split.

    Args:
      data_dir: directory (or gs:// prefix) with `{split}-*.tfrecord.gz` and metadata.json.
      split: "train", "valid" or "test".
      hps: hyperparameters (augmentation, trim_batches).
      metadata: the data's metadata.json (for max_seq_len).
      batch_size: batch size of THIS input pipeline (per replica under a strategy).
      training: shuffle, augment, repeat forever and drop the last partial batch.
      seed: fixes file order, shuffling and augmentation.
      input_context: from `distribute_datasets_from_function`: files are sharded per worker.
      repeat: override the repeat-forever default of `training`.
    """
    max_seq_len = int(metadata["max_seq_len"])
    pattern = schema.split_pattern(data_dir, split)
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise FileNotFoundError(f"no files match {pattern}: run `sketch-rnn preprocess` into "
                                f"{data_dir!r} first")
    files_ds = tf.data.Dataset.from_tensor_slices(sorted(files))
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) >= input_context.num_input_pipelines:
            files_ds = files_ds.shard(input_context.num_input_pipelines,
                                      input_context.input_pipeline_id)
            records = None
        else:
            records = "shard_records"  # Fewer files than workers: shard records instead.
    else:
        records = None
    if training:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = files_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=schema.COMPRESSION),
        cycle_length=min(8, len(files)), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    if records is not None:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if repeat if repeat is not None else training:
        ds = ds.repeat()
    if training:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
        # One stateless seed [2] per element from a seeded random stream: reproducible and
        # the same eagerly and in the pipeline (no stateful RNG op inside map).
        pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
        seeds = tf.data.Dataset.random(seed=seed * 1000 + pipeline_id).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda s, k: parse_and_augment(s, k, max_seq_len, hps, True),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda s: parse_and_augment(s, None, max_seq_len, hps, False),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if training and hps.bucket_batches:
        # Buckets every BUCKET_WIDTH points; the shuffle buffer above keeps the batches varied.
        bounds = list(range(BUCKET_WIDTH + 1, max_seq_len + 1, BUCKET_WIDTH))
        ds = ds.bucket_by_sequence_length(lambda e: e["lengths"], bounds,
                                          [batch_size] * (len(bounds) + 1), drop_remainder=True)
    else:
        ds = ds.batch(batch_size, drop_remainder=training)
    if hps.trim_batches:
        ds = ds.map(trim_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
