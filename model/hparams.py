"""Hyperparameters of sketch-rnn: one frozen dataclass with named presets.

The `paper` preset reproduces the defaults of the reference implementation
(magenta/models/sketch_rnn, Ha & Eck 2017). Values that come from the data
(N_max, the scale factor, the class list) are *not* hyperparameters: they are read
from the pipeline's metadata.json and passed separately.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Iterable, Mapping

CELL_TYPES = ("lstm", "layer_norm", "hyper")
# The encoder's cells: the reference also offers a HyperLSTM encoder, not implemented here (its
# default encoder, and the paper's, is the plain LSTM).
ENCODER_CELL_TYPES = ("lstm", "layer_norm")
# "auto": the fused CPU kernel for training where it applies (CPU only, plain cell, float32) and
# builds; "fused": the same, an error where it cannot run; "loop": TensorFlow's while loop.
LSTM_KERNELS = ("auto", "fused", "loop")
# "auto": the trainer picks mixed_bfloat16 on CPUs with AMX bf16 units, else float32.
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


@dataclasses.dataclass(frozen=True)
class HParams:
    """All knobs of the model, the losses and the optimisation.

    Sizes follow the reference names. Dropout values are *drop rates* (the reference
    stores keep probabilities: its `recurrent_dropout_prob=0.9` is our 0.1).
    """

    # Network.
    conditional: bool = True  # False: unconditional decoder-only model (no encoder, no z).
    enc_rnn_size: int = 256  # Units per direction of the bidirectional encoder LSTM.
    dec_rnn_size: int = 512  # Units of the decoder LSTM.
    z_size: int = 128  # Latent dimension.
    num_mixture: int = 20  # M, components of the Gaussian mixture over (dx, dy).
    enc_model: str = "lstm"  # One of ENCODER_CELL_TYPES.
    dec_model: str = "lstm"  # One of CELL_TYPES ("hyper": the reference's HyperLSTM, 256 hyper units).
    # Not in the reference (off by default): the decoder also reads the pen's position, the running
    # sum of the offsets drawn so far (normalized units, (0, 0) at S_0), beside S_{i-1}, so where a
    # part goes (a snout inside a head) does not rest on the LSTM summing ~100 offsets itself.
    dec_position: bool = False
    # Not in the reference (off by default): training only, Gaussian noise of this standard
    # deviation (normalized units) on the offsets (dx, dy) of the decoder's inputs S_1..S_{T-1}
    # (not S_0, not end-of-sketch rows; the targets stay clean), so the decoder learns to go on
    # from offsets a little off the data's, as its own samples are when it draws (exposure bias).
    dec_input_noise: float = 0.0
    # Not in the reference (off by default): training only, parallel scheduled sampling (Duckworth
    # et al. 2019, one extra pass). A first teacher-forced pass of the decoder, without dropout or
    # gradient, draws at every step its own S_i at this temperature (never an end row); each input
    # S_1..S_{T-1} that is not an end row is then swapped, with this probability, for the decoder's
    # draw of it, and the trained pass reads the mixed rows (the targets stay the data's). Against
    # exposure bias with the model's own errors rather than dec_input_noise's Gaussian ones; about
    # a third more time per step.
    dec_scheduled_sampling: float = 0.0
    dec_scheduled_sampling_temperature: float = 0.5
    use_recurrent_dropout: bool = True  # Dropout on the cell candidate ("without memory loss").
    recurrent_dropout_rate: float = 0.1
    use_input_dropout: bool = False
    input_dropout_rate: float = 0.1
    use_output_dropout: bool = False
    output_dropout_rate: float = 0.1

    # Loss.
    kl_weight: float = 0.5  # Final KL weight w_KL.
    kl_weight_start: float = 0.01  # KL weight at step 0 (annealing start).
    kl_decay_rate: float = 0.99995  # w_t = w_KL - (w_KL - w_start) * rate^t.
    kl_tolerance: float = 0.2  # KL floor: the loss uses max(KL, kl_tolerance).

    # Optimisation.
    batch_size: int = 100  # Global batch size (split across replicas).
    learning_rate: float = 1e-3
    decay_rate: float = 0.9999  # lr_t = (lr - min_lr) * rate^t + min_lr.
    min_learning_rate: float = 1e-5
    grad_clip: float = 1.0  # Per-value gradient clipping.

    # Data augmentation (training only).
    random_scale_factor: float = 0.15  # Scale dx, dy by U(1 - f, 1 + f), independently per axis.
    augment_stroke_prob: float = 0.10  # Probability of merging a point into the next one.
    # Not in the reference (off by default): for categories with few sketches. A mirrored sketch
    # (dx -> -dx) is the same object facing the other way; a small rotation, another hand.
    augment_flip_prob: float = 0.0  # Probability of mirroring a sketch left-right.
    augment_rotate_degrees: float = 0.0  # Rotate each sketch by U(-a, a) degrees.

    # Input / speed (do not change what is learned, only how fast).
    # The loss always divides by N_max, so trimming changes the speed, not the loss.
    trim_batches: bool = True  # Cut each batch to its longest sketch + 1 end row (<= N_max).
    # With trim_batches: the decoder runs each sketch only to its end + this many end-of-sketch
    # rows (the fused kernel skips the rest; its state is frozen after them), and the pen loss of
    # the last row run stands for every padding row after it up to N_max (see
    # losses.per_example_reconstruction_loss). Validation stops the decoder at the same rows, so it
    # measures the model as trained. 0: every row of the trimmed batch runs. 16, not 2: with 2,
    # validation L_p (over all N_max rows, the decoder left to run on: before 2026-12-06) was 0.011
    # higher at step 200 on aaron_sheep.
    decoder_end_rows: int = 16
    # Group sketches of similar length into a batch (training only; then trimmed): 1.6x faster
    # on aaron_sheep on an AVX2-only AMD CPU, no faster on an Intel Xeon with AVX-512/AMX (the
    # fused kernel already skips the padding rows; README, Benchmarks), and batches are no longer
    # random in length as in the reference, which learns slower per step (aaron_sheep, paper
    # preset, step 200: valid L_R +0.04, KL about half the reference's), so it is off by default.
    bucket_batches: bool = False
    jit_compile: bool = False  # XLA-compile the training step.
    precision: str = "auto"  # One of PRECISIONS; mixture math always stays float32.
    # Run each LSTM's time loop as this many independent loops over slices of the batch (same
    # result). 0 = auto: the trainer picks one loop per CPU core (at most 4) with single-threaded
    # ops on a CPU-only machine, 1 elsewhere; a model built directly treats 0 as 1.
    rnn_batch_splits: int = 0
    # How training runs the LSTMs (one of LSTM_KERNELS; same math): the fused CPU kernel
    # (trainer/kernels, built for the CPU at first use) runs each LSTM's whole time loop and its
    # gradient as one op each; rnn_batch_splits then does not apply.
    lstm_kernel: str = "auto"

    def __post_init__(self) -> None:
        errors = []
        for name in ("enc_rnn_size", "dec_rnn_size", "z_size", "num_mixture", "batch_size"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("recurrent_dropout_rate", "input_dropout_rate", "output_dropout_rate",
                     "augment_stroke_prob", "random_scale_factor"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                errors.append(f"{name} must be in [0, 1), got {value}")
        if not 0.0 <= self.dec_scheduled_sampling <= 1.0:
            errors.append(f"dec_scheduled_sampling must be in [0, 1], got {self.dec_scheduled_sampling}")
        if not 0.0 <= self.augment_flip_prob <= 1.0:
            errors.append(f"augment_flip_prob must be in [0, 1], got {self.augment_flip_prob}")
        if not 0.0 <= self.augment_rotate_degrees <= 180.0:
            errors.append(f"augment_rotate_degrees must be in [0, 180], got {self.augment_rotate_degrees}")
        for name in ("decay_rate", "kl_decay_rate"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                errors.append(f"{name} must be in (0, 1], got {value}")
        for name in ("learning_rate", "grad_clip"):
            if getattr(self, name) <= 0:
                errors.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_learning_rate", "kl_weight", "kl_weight_start", "kl_tolerance",
                     "dec_input_noise", "dec_scheduled_sampling_temperature"):
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.dec_model not in CELL_TYPES:
            errors.append(f"dec_model must be one of {CELL_TYPES}, got {self.dec_model!r}")
        if self.enc_model not in ENCODER_CELL_TYPES:
            errors.append(f"enc_model must be one of {ENCODER_CELL_TYPES}, got {self.enc_model!r}"
                          + (" (a HyperLSTM encoder is not implemented; dec_model=hyper is)"
                             if self.enc_model == "hyper" else ""))
        if self.decoder_end_rows < 0:
            errors.append(f"decoder_end_rows must be >= 0, got {self.decoder_end_rows}")
        if self.rnn_batch_splits < 0:
            errors.append(f"rnn_batch_splits must be >= 0 (0 = auto), got {self.rnn_batch_splits}")
        if self.lstm_kernel not in LSTM_KERNELS:
            errors.append(f"lstm_kernel must be one of {LSTM_KERNELS}, got {self.lstm_kernel!r}")
        if self.precision not in PRECISIONS:
            errors.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if errors:
            raise ValueError("invalid hyperparameters: " + "; ".join(errors))

    # --- construction -----------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **overrides: Any) -> "HParams":
        """Returns a copy with `overrides` applied; unknown names raise ValueError."""
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {unknown}; known names: {', '.join(self.field_names())}")
        return dataclasses.replace(self, **overrides)

    def with_overrides(self, assignments: Iterable[str]) -> "HParams":
        """Applies CLI-style `NAME=VALUE` strings, parsing VALUE by the field's type."""
        hints = typing.get_type_hints(type(self))
        parsed: dict[str, Any] = {}
        for item in assignments:
            name, sep, raw = item.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ValueError(f"expected NAME=VALUE, got {item!r}")
            if name not in hints:
                raise ValueError(
                    f"unknown hyperparameter {name!r}; known names: {', '.join(self.field_names())}")
            parsed[name] = _parse_value(name, raw.strip(), hints[name])
        return self.replace(**parsed)

    def diff(self, other: "HParams", names: Iterable[str] | None = None) -> dict[str, tuple[Any, Any]]:
        """{name: (value here, value in `other`)} for each field (of `names`, default all) that differs."""
        names = self.field_names() if names is None else names  # An empty `names` compares nothing.
        return {k: (getattr(self, k), getattr(other, k)) for k in names if getattr(self, k) != getattr(other, k)}

    @classmethod
    def preset(cls, name: str) -> "HParams":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]

    # --- serialisation ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "HParams":
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {unknown} in saved hparams")
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> "HParams":
        return cls.from_dict(json.loads(text))


def _parse_value(name: str, raw: str, kind: Any) -> Any:
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name} expects a boolean (true/false), got {raw!r}")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name} expects {kind.__name__}, got {raw!r}") from None


PAPER = HParams()
PRESETS: dict[str, HParams] = {
    # The reference implementation's defaults (Ha & Eck 2017; magenta sketch_rnn).
    "paper": PAPER,
    # Fast on a laptop CPU: for demos and the README's end-to-end command.
    "small": PAPER.replace(enc_rnn_size=128, dec_rnn_size=256, z_size=64, num_mixture=10,
                           batch_size=64),
    # For tests: seconds per hundred steps on CPU.
    "tiny": PAPER.replace(enc_rnn_size=16, dec_rnn_size=32, z_size=8, num_mixture=3,
                          batch_size=8, learning_rate=3e-3),
}
