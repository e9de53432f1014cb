"""tf.data input function over the pipeline's TFRecords (local paths or gs://).

One element of the dataset returned by `make_dataset` is a batch dict:
  strokes  float32 `[B, T, 5]` normalized stroke-5 (T = N_max, the data's longest sketch, or
           with trimming min(the batch's longest + 1, N_max)), rows from `lengths[b]` on are
           (0, 0, 0, 0, 1);
  lengths  int32 `[B]`.
Memory does not grow with the dataset: files are streamed through an interleave and a bounded
shuffle buffer; nothing is cached.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

import tensorflow as tf

from model.hparams import HParams
from pipeline import schema
from trainer import augment as augment_lib

SHUFFLE_BUFFER = 10_000
BUCKET_WIDTH = 25  # Points per length bucket with hps.bucket_batches.


def trim_batch(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Cuts `strokes` `[B, N_max, 5]` to `[B, T, 5]`, T = min(max(lengths) + 1, N_max): only
    padding rows are removed, and every sketch keeps its real rows and its first end-of-sketch
    row (the p3 target; a sketch of exactly N_max points has none, as in the reference).

    A speed lever only: the loss still divides by N_max, so what is learned differs from the
    untrimmed batch only by the pen loss of the cut padding rows (predicting p3 again).
    """
    n = tf.shape(batch["strokes"])[1]
    t = tf.minimum(tf.reduce_max(batch["lengths"]) + 1, n)
    return {**batch, "strokes": batch["strokes"][:, :t]}


def parse_and_augment(serialized: tf.Tensor, seed: tf.Tensor | None, max_seq_len: int,
                      hps: HParams, training: bool, n_max: int | None = None
                      ) -> dict[str, tf.Tensor]:
    """One serialized Example (padded to `max_seq_len` rows) -> {strokes `[N_max, 5]`, lengths
    int32 scalar}; rows past N_max (`n_max`, the longest sketch) are padding and are dropped."""
    n_max = n_max or max_seq_len
    parsed = schema.parse_example(serialized, max_seq_len)
    strokes, length = parsed[schema.STROKES][:n_max], parsed[schema.LENGTH]
    # Never cut a real point: a record longer than N_max means metadata from another data set.
    check = tf.debugging.assert_less_equal(
        length, tf.cast(n_max, length.dtype), message=f"a sketch is longer than N_max = {n_max} "
        "(metadata.json longest_sketch): the records and metadata.json do not belong together")
    with tf.control_dependencies([check] if check is not None else []):  # An op in graphs only.
        length = tf.identity(length)
    if training and seed is not None:
        strokes, length = augment_lib.augment(strokes, length, hps.random_scale_factor,
                                              hps.augment_stroke_prob, seed,
                                              hps.augment_flip_prob, hps.augment_rotate_degrees)
    strokes = tf.ensure_shape(strokes, [n_max, 5])
    return {"strokes": strokes, "lengths": length}


class ShardFollower:
    """The shards of one split that a streaming job keeps adding (`sketch-rnn train --follow`).

    As a generator of file names (for `tf.data.Dataset.from_generator`) it never ends: it hands out
    the shards it knows in a shuffled order, pass after pass, and re-lists `pattern` whenever
    `interval_s` has passed since the last listing; new shards go to the front of the queue (read
    next) and join every later pass. `shards` (all handed to the reader so far) and `listings`
    count what it did; `log` is told about each new batch of shards.
    """

    def __init__(self, pattern: str, interval_s: float, seed: int = 0,
                 log: Callable[[str], None] | None = None):
        self.pattern, self.interval_s, self.seed = pattern, float(interval_s), seed
        self.log = log or (lambda s: None)
        self.known: list[str] = []
        self.shards = 0     # distinct shards handed to the reader
        self.listings = 0
        self._listed_at = -float("inf")

    def refresh(self) -> list[str]:
        """Lists `pattern` now; returns the shards not seen before (sorted) and adds them."""
        self._listed_at = time.monotonic()
        self.listings += 1
        seen = set(self.known)
        new = sorted(f for f in tf.io.gfile.glob(self.pattern) if f not in seen)
        self.known += new
        return new

    def wait_for_first(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Blocks (interruptibly, in Python) until `pattern` matches at least one shard."""
        said = False
        while not self.known and not self.refresh():
            if not said:
                self.log(f"follow: no shard matches {self.pattern} yet; re-listing every "
                         f"{self.interval_s:g} s")
                said = True
            sleep(self.interval_s)

    def __call__(self):
        rng = random.Random(self.seed)
        queue: list[str] = []
        handed: set[str] = set()
        if not self.known:
            self.wait_for_first()
        while True:
            if time.monotonic() - self._listed_at >= self.interval_s:
                new = self.refresh()
                if new:
                    self.log(f"follow: {len(new)} new shard(s) in {self.pattern} "
                             f"({len(self.known)} in all): {', '.join(n.rsplit('/', 1)[-1] for n in new)}")
                    queue = new + queue
            if not queue:
                queue = list(self.known)
                rng.shuffle(queue)
            name = queue.pop(0)
            if name not in handed:
                handed.add(name)
                self.shards = len(handed)
            yield name


def make_dataset(data_dir: str, split: str, hps: HParams, metadata: dict[str, Any],
                 batch_size: int, training: bool, seed: int = 0,
                 input_context: tf.distribute.InputContext | None = None,
                 repeat: bool | None = None,
                 follow: ShardFollower | None = None) -> tf.data.Dataset:
    """Batched dataset of one split.

    Args:
      data_dir: directory (or gs:// prefix) with `{split}-*.tfrecord.gz` and metadata.json.
      split: "train", "valid" or "test".
      hps: hyperparameters (augmentation, trim_batches).
      metadata: the data's metadata.json (max_seq_len of the records, N_max = schema.n_max).
      batch_size: batch size of THIS input pipeline (per replica under a strategy).
      training: shuffle, augment, repeat forever and drop the last partial batch.
      seed: fixes file order, shuffling and augmentation.
      input_context: from `distribute_datasets_from_function`: files are sharded per worker.
      repeat: override the repeat-forever default of `training`.
      follow: read the shards this follower hands out (an endless, growing file list, see
        ShardFollower) instead of one listing of the split; never repeated or file-sharded
        (with several input pipelines, each reads every shard and keeps its share of records).
    """
    max_seq_len = int(metadata["max_seq_len"])
    n_max = schema.n_max(metadata)
    pattern = schema.split_pattern(data_dir, split)
    if follow is not None:
        files = None
        files_ds = tf.data.Dataset.from_generator(
            follow, output_signature=tf.TensorSpec([], tf.string))
        repeat = False
    else:
        files = tf.io.gfile.glob(pattern)
        if not files:
            raise FileNotFoundError(f"no files match {pattern}: run `sketch-rnn preprocess` into "
                                    f"{data_dir!r} first")
        files_ds = tf.data.Dataset.from_tensor_slices(sorted(files))
    if input_context is not None and input_context.num_input_pipelines > 1:
        if files is not None and len(files) >= input_context.num_input_pipelines:
            files_ds = files_ds.shard(input_context.num_input_pipelines,
                                      input_context.input_pipeline_id)
            records = None
        else:
            records = "shard_records"  # Fewer files than workers: shard records instead.
    else:
        records = None
    if training and files is not None:
        files_ds = files_ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = files_ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=schema.COMPRESSION),
        cycle_length=min(8, len(files)) if files is not None else 8,
        num_parallel_calls=tf.data.AUTOTUNE,
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
            lambda s, k: parse_and_augment(s, k, max_seq_len, hps, True, n_max),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(lambda s: parse_and_augment(s, None, max_seq_len, hps, False, n_max),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if training and hps.bucket_batches:
        # Buckets every BUCKET_WIDTH points; the shuffle buffer above keeps the batches varied.
        bounds = list(range(BUCKET_WIDTH + 1, n_max + 1, BUCKET_WIDTH))
        ds = ds.bucket_by_sequence_length(lambda e: e["lengths"], bounds,
                                          [batch_size] * (len(bounds) + 1), drop_remainder=True)
    else:
        ds = ds.batch(batch_size, drop_remainder=training)
    if hps.trim_batches:
        ds = ds.map(trim_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
