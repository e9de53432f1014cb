"""Resuming from the newest checkpoint that really restores.

`tf.train.latest_checkpoint` returns None as soon as the newest checkpoint's `.index` file is gone
(a preempted copy, a half-synced bucket, a careless `rm`), and the trainer would then start from
step 0 without a word and, after `keep_checkpoints` saves, delete the good older checkpoints. Here
every checkpoint of the directory is a candidate (those the `checkpoint` state file lists and
those found on disk, in case the state file itself is lost), newest step first; each one that
fails to restore (missing `.index` or `.data`, truncated or corrupted data: checksum mismatch) is
reported with the reason and the next older one is tried. A directory that holds checkpoints of
which none restores is an error, never a silent fresh start.
"""

from __future__ import annotations

import os
import re
from typing import Callable

import tensorflow as tf


class NoRestorableCheckpointError(FileNotFoundError):
    """Checkpoints exist in the directory but none of them restores."""


def step_of(prefix: str) -> int:
    """The step in a checkpoint prefix `DIR/NAME-STEP`; -1 when it has none."""
    m = re.search(r"-(\d+)$", prefix)
    return int(m.group(1)) if m else -1


def candidates(directory: str) -> list[str]:
    """Checkpoint prefixes in `directory` (`DIR/NAME-STEP`), newest step first.

    Union of the `checkpoint` state file's list and the prefixes of `*.index` / `*.data-*` files,
    so that a checkpoint whose index is lost is still seen (and reported as skipped).
    """
    if not tf.io.gfile.isdir(directory):
        return []
    found = set()
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception:  # noqa: BLE001 - a corrupt state file: fall back to the files themselves
        state = None
    if state is not None:
        for p in state.all_model_checkpoint_paths:
            found.add(p if os.path.isabs(p) or "://" in p else os.path.join(directory, p))
    for name in tf.io.gfile.listdir(directory):
        m = re.match(r"^(.+-\d+)\.(index|data-\d+-of-\d+)$", name)
        if m:
            found.add(os.path.join(directory, m.group(1)))
    return sorted(found, key=lambda p: (step_of(p), p), reverse=True)


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if (isinstance(error, tf.errors.NotFoundError) or "Failed to find any matching files" in text
            or "No such file or directory" in text):
        return "its .index or .data file is missing"
    if isinstance(error, tf.errors.DataLossError) or "Checksum does not match" in text:
        return "its data is corrupted (checksum mismatch)"
    if isinstance(error, IndexError) or "Read less bytes" in text:
        return "its .data file is truncated"
    return f"{type(error).__name__}: {text[:200]}"


def restore_newest(checkpoint: tf.train.Checkpoint, directory: str, *, partial: bool = False,
                   log: Callable[[str], None] | None = None) -> str | None:
    """Restores `checkpoint` from the newest checkpoint in `directory` that restores.

    `partial=False` asserts that every object of `checkpoint` that exists is matched (a resume);
    `partial=True` only restores what it finds (loading a model without its optimizer).
    Returns the restored prefix, or None when the directory holds no checkpoint at all. Raises
    `NoRestorableCheckpointError` (naming every candidate and why it failed) when checkpoints
    exist but none restores. Every skipped checkpoint is reported through `log`.
    """
    log = log or (lambda s: print(s, flush=True))
    tried = []
    for prefix in candidates(directory):
        try:
            status = checkpoint.restore(prefix)
            if partial:
                status.expect_partial()
            else:
                status.assert_existing_objects_matched()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - any failure: try the next older checkpoint
            reason = _reason(e)
            tried.append(f"{prefix} ({reason})")
            log(f"skipped checkpoint {prefix}: {reason}; trying the previous one")
            continue
        return prefix
    if tried:
        # A failed restore may have assigned part of the variables: refuse to train on them.
        raise NoRestorableCheckpointError(
            f"no checkpoint in {directory} restores: {'; '.join(tried)}. Nothing was overwritten; "
            "restore the files from a backup, or move the directory away to start from scratch")
    return None
