"""SavedModel export with serving signatures in pixel-unit stroke-3 (TF Serving versioned layout).

Signatures (strokes are stroke-3 float32 `[.., N, 3]` rows (dx, dy, pen_lifted) in PIXEL units;
normalization by the data's scale factor and stroke-3 <-> stroke-5 happen inside the graph):
  sample(num: int32[], temperature: float32[], seed: int32[]) -> {strokes [num, N_max, 3], lengths [num]}
  serving_default: the same as sample (the signature a TF Serving request without a name gets)
  encode(strokes [B, N, 3], lengths [B]) -> {mu [B, Z], sigma [B, Z]}   (sigma = exp(sigma_hat / 2))
  decode(z [B, Z], temperature: float32[], seed: int32[]) -> {strokes [B, N_max, 3], lengths [B]}
  complete(strokes [1, N, 3], lengths [1], num, temperature, seed) -> {strokes, lengths}
     (the returned strokes start with the given prefix)
Unconditional models export serving_default, sample and complete only. Rows from `lengths[i]` on
are zeros; the last real row has pen_lifted = 1.

`weights="float16"` stores the kernels (every float32 weight of two or more dimensions: the LSTM
and head matrices, nearly all the bytes) as float16 variables, about half the export's size; the
signatures cast them back to float32 and compute as before (inputs and outputs unchanged), so
only the stored values are rounded (relative error at most 2^-11).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from model.hparams import HParams
from pipeline import schema


def stroke3_to_stroke5_tf(strokes3: tf.Tensor, lengths: tf.Tensor, scale: float) -> tf.Tensor:
    """Pixel stroke-3 `[B, N, 3]` + lengths `[B]` -> normalized stroke-5 `[B, N, 5]`."""
    strokes3 = tf.cast(strokes3, tf.float32)
    n = tf.shape(strokes3)[1]
    real = (tf.range(n)[None, :] < tf.cast(lengths, tf.int32)[:, None])[..., None]
    pen_up = tf.cast(strokes3[..., 2:3] > 0.5, tf.float32)
    rows = tf.concat([strokes3[..., :2] / scale, 1.0 - pen_up, pen_up, tf.zeros_like(pen_up)], -1)
    return tf.where(real, rows, tf.constant([0.0, 0.0, 0.0, 0.0, 1.0]))


def stroke5_to_stroke3_tf(strokes5: tf.Tensor, lengths: tf.Tensor, scale: float) -> tf.Tensor:
    """Normalized stroke-5 `[B, N, 5]` -> pixel stroke-3 `[B, N, 3]`, zeros after `lengths`."""
    strokes5 = tf.cast(strokes5, tf.float32)
    lengths = tf.cast(lengths, tf.int32)
    n = tf.shape(strokes5)[1]
    idx = tf.range(n)[None, :]
    pen = tf.cast(tf.equal(tf.argmax(strokes5[..., 2:5], axis=-1, output_type=tf.int32), 1), tf.float32)
    pen = tf.where(tf.equal(idx, lengths[:, None] - 1), 1.0, pen)  # Close the last stroke.
    rows = tf.concat([strokes5[..., :2] * scale, pen[..., None]], -1)
    return tf.where((idx < lengths[:, None])[..., None], rows, 0.0)


WEIGHT_DTYPES = ("float32", "float16")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def stored_kernels(model) -> list[tuple[Any, tf.Variable]]:
    """(model weight, float16 variable holding its rounded values) for each float32 weight of two
    or more dimensions. Raises ValueError if one holds a value float16 cannot represent."""
    pairs = []
    for w in model.weights:
        if w.dtype != "float32" or len(w.shape) < 2:
            continue
        value = np.asarray(w.numpy())
        if not np.all(np.isfinite(value)) or np.abs(value).max(initial=0.0) > _FLOAT16_MAX:
            raise ValueError(f"weight {w.path} holds values float16 cannot store (largest magnitude "
                             f"{np.abs(value).max():.4g}, float16's {_FLOAT16_MAX:g}): export it "
                             f"with float32 weights (--weights float32, the default)")
        name = w.path.replace("/", "_") + "_float16"
        pairs.append((w, tf.Variable(value.astype(np.float16), trainable=False, name=name)))
    return pairs


class _Held:
    """A plain holder: what it holds stays out of the SavedModel's object graph."""

    def __init__(self, value):
        self.value = value


class SketchModule(tf.Module):
    """tf.Module with the serving functions over a Keras SketchRNN and the data's scale factor.

    What is saved: the functions and `serving_variables`, the `tf.Variable`s the functions read
    (as `keras.export.ExportArchive` does), not the Keras model. A Keras 3 variable saved through
    its layer is written as a second variable initialized from the one the functions capture; the
    TF1 session loader (`saved_model_cli run`, TF Serving's SavedModelBundle) restores only the
    second, and every signature then fails on an uninitialized variable. `tf.saved_model.load`
    (TF2) hides this. Listing the captured variables on the module saves each once, under the
    handle the graphs read. `track_variables()` does that; `export_saved_model` calls it.

    `xla`: compile `sample` and `decode` with XLA (jit_compile): one sketch of 250 points takes
    about a third of the time on CPU; the first call for each `num` compiles (about a second),
    and the same seed gives other sketches than without XLA. Off by default: TF Serving's
    model server disables XLA on CPU unless started with `--xla_cpu_compilation_enabled`, and
    such signatures then fail on their first request.

    `weights`: "float32" (the functions read the model's variables) or "float16" (they read
    float16 copies of its kernels, cast to float32 through a `keras.StatelessScope`; the model's
    own float32 kernels are then neither read nor saved; see `stored_kernels`).
    """

    def __init__(self, model, hps: HParams, metadata: dict[str, Any], xla: bool = False,
                 weights: str = "float32"):
        super().__init__(name="sketch_rnn")
        if weights not in WEIGHT_DTYPES:
            raise ValueError(f"weights must be one of {WEIGHT_DTYPES}, got {weights!r}")
        self._held = _Held(model)
        self._stored = _Held(stored_kernels(model) if weights == "float16" else [])
        self.scale = float(metadata["scale_factor"])
        self.max_len = schema.n_max(metadata)  # Sampling runs at most N_max steps.
        self.conditional = hps.conditional
        self.z_size = hps.z_size
        jit = True if xla else None
        self.sample = tf.function(self._sample, jit_compile=jit, input_signature=[
            tf.TensorSpec([], tf.int32, name="num"), tf.TensorSpec([], tf.float32, name="temperature"),
            tf.TensorSpec([], tf.int32, name="seed")])
        self.complete = tf.function(self._complete, input_signature=[
            tf.TensorSpec([1, None, 3], tf.float32, name="strokes"),
            tf.TensorSpec([1], tf.int32, name="lengths"), tf.TensorSpec([], tf.int32, name="num"),
            tf.TensorSpec([], tf.float32, name="temperature"), tf.TensorSpec([], tf.int32, name="seed")])
        if self.conditional:  # Saving traces every tf.function attribute: none without an encoder.
            self.encode = tf.function(self._encode, input_signature=[
                tf.TensorSpec([None, None, 3], tf.float32, name="strokes"),
                tf.TensorSpec([None], tf.int32, name="lengths")])
            self.decode = tf.function(self._decode, jit_compile=jit, input_signature=[
                tf.TensorSpec([None, None], tf.float32, name="z"),
                tf.TensorSpec([], tf.float32, name="temperature"), tf.TensorSpec([], tf.int32, name="seed")])

    @property
    def model(self):
        """The Keras SketchRNN (not saved: the functions and `serving_variables` are)."""
        return self._held.value

    def signature_functions(self) -> dict[str, Any]:
        """Signature name -> tf.function; `serving_default` is `sample`."""
        fns = {"serving_default": self.sample, "sample": self.sample, "complete": self.complete}
        if self.conditional:
            fns["encode"] = self.encode
            fns["decode"] = self.decode
        return fns

    def track_variables(self) -> list[tf.Variable]:
        """Traces every signature and lists the variables their graphs read on the module, each
        once, in the order the model holds them. Returns that list."""
        captured = {}
        for fn in self.signature_functions().values():
            for v in fn.get_concrete_function().variables:
                captured.setdefault(id(v), v)
        order = {id(w.value): i for i, w in enumerate(self.model.weights)}
        order.update({id(v): order[id(w.value)] for w, v in self._stored.value})  # At their weight's place.
        self.serving_variables = sorted(captured.values(), key=lambda v: order.get(id(v), len(order)))
        return list(self.serving_variables)

    def _weights(self):
        """A context inside which the model reads its float16-stored kernels, cast to float32
        (a no-op context without them)."""
        if not self._stored.value:
            return contextlib.nullcontext()
        return keras.StatelessScope(state_mapping=[(w, tf.cast(v, w.dtype)) for w, v in self._stored.value])

    def _out(self, strokes5, lengths):
        lengths = tf.cast(lengths, tf.int32)
        return {"strokes": stroke5_to_stroke3_tf(strokes5, lengths, self.scale), "lengths": lengths}

    def _sample(self, num, temperature, seed):
        with self._weights():
            strokes5, lengths = self.model.sample(num, temperature, seed, max_len=self.max_len)
        return self._out(strokes5, lengths)

    def _complete(self, strokes, lengths, num, temperature, seed):
        prefix = stroke3_to_stroke5_tf(strokes, lengths, self.scale)
        with self._weights():
            strokes5, out_lengths = self.model.complete(prefix, lengths, num, temperature, seed,
                                                        max_len=self.max_len)
        return self._out(strokes5, out_lengths)

    def _encode(self, strokes, lengths):
        with self._weights():
            mu, sigma_hat = self.model.encode(stroke3_to_stroke5_tf(strokes, lengths, self.scale), lengths)
        return {"mu": tf.cast(mu, tf.float32), "sigma": tf.exp(tf.cast(sigma_hat, tf.float32) / 2.0)}

    def _decode(self, z, temperature, seed):
        with self._weights():
            strokes5, lengths = self.model.sample(tf.shape(z)[0], temperature, seed, z=z,
                                                  max_len=self.max_len)
        return self._out(strokes5, lengths)


def export_saved_model(model, hps: HParams, metadata: dict[str, Any], export_base_dir: str,
                       version: int | None = None, xla: bool = False, weights: str = "float32") -> str:
    """Writes `export_base_dir/<version>/` (saved_model.pb, variables/, assets.extra/{hparams,metadata}.json).

    `version` defaults to the current Unix time in seconds (TF Serving serves the highest).
    Signatures: serving_default (= sample), sample, complete, and for conditional models encode and
    decode; the TF1 session loader (TF Serving, `saved_model_cli run`) restores and runs each.
    `xla`: XLA-compile `sample` and `decode` (see SketchModule; TF Serving needs
    `--xla_cpu_compilation_enabled` for those on CPU). `weights`: "float32" (default) or
    "float16" (kernels stored as float16, about half the size; see SketchModule). Returns the
    version directory.
    """
    version = int(version if version is not None else time.time())
    path = os.path.join(export_base_dir, str(version))
    if tf.io.gfile.exists(path):
        raise FileExistsError(f"{path} exists: choose another --version or export dir")
    module = SketchModule(model, hps, metadata, xla=xla, weights=weights)
    module.track_variables()
    tf.saved_model.save(module, path, signatures=module.signature_functions())
    extra = os.path.join(path, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, "hparams.json"), "w") as f:
        f.write(hps.to_json())
    with tf.io.gfile.GFile(os.path.join(extra, "metadata.json"), "w") as f:
        # n_max: the length the signatures sample to (and the longest input they take).
        f.write(json.dumps({**metadata, "n_max": module.max_len}, indent=2, sort_keys=True))
    return path
