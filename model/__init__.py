"""The sketch-rnn network and its math (no I/O, no flags, no distribution strategy)."""

from model.hparams import HParams, PRESETS  # noqa: F401
