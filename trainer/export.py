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
only the stored values are rounded (relative error at most 2^-11). `weights="int8"` stores each
kernel as int8 with one float32 scale per output column (symmetric: the column's largest magnitude
maps to 127), about a quarter of the size; the signatures compute in float32 with `q * scale`, so
each weight moves by at most half a step, 1/254 of its column's largest magnitude.

`load_export` rebuilds the Keras model from an export (its hparams, metadata and stored weights),
so an export can be written again with other weight storage without its training checkpoint.
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


WEIGHT_DTYPES = ("float32", "float16", "int8")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


def quantize_int8(value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output column (the last axis): (q int8, scale float32 [columns]) with
    value ~= q * scale; each column's largest magnitude maps to 127 (an all-zero column: scale 1)."""
    value = np.asarray(value, np.float32)
    peak = np.abs(value).reshape(-1, value.shape[-1]).max(axis=0)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(value / scale), -127, 127).astype(np.int8)
    return q, scale


def stored_kernels(model, weights: str = "float16") -> list[tuple[Any, tuple[tf.Variable, ...]]]:
    """(model weight, the variables that store it) for each float32 weight of two or more dimensions:
    one float16 variable (`weights="float16"`) or an int8 variable and its float32 per-column scale
    (`"int8"`, see `quantize_int8`). Raises ValueError if a weight holds a value the storage cannot
    represent (not finite; beyond float16's range)."""
    pairs = []
    for w in model.weights:
        if w.dtype != "float32" or len(w.shape) < 2:
            continue
        value = np.asarray(w.numpy())
        name = w.path.replace("/", "_") + "_" + weights
        if not np.all(np.isfinite(value)):
            raise ValueError(f"weight {w.path} holds values that are not finite: the checkpoint is broken "
                             "(NaN or inf); export an earlier one")
        if weights == "float16" and np.abs(value).max(initial=0.0) > _FLOAT16_MAX:
            raise ValueError(f"weight {w.path} holds values float16 cannot store (largest magnitude "
                             f"{np.abs(value).max():.4g}, float16's {_FLOAT16_MAX:g}): export it "
                             f"with float32 or int8 weights (--weights float32, the default, or int8)")
        if weights == "float16":
            pairs.append((w, (tf.Variable(value.astype(np.float16), trainable=False, name=name),)))
        else:
            q, scale = quantize_int8(value)
            pairs.append((w, (tf.Variable(q, trainable=False, name=name),
                              tf.Variable(scale, trainable=False, name=name + "_scale"))))
    return pairs


def _stored_value(variables) -> tf.Tensor:
    """The float32 weight that `stored_kernels`' variables hold."""
    if len(variables) == 2:
        q, scale = variables
        return tf.cast(q, tf.float32) * scale
    return tf.cast(variables[0], tf.float32)


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

    `weights`: "float32" (the functions read the model's variables), "float16" or "int8" (they read
    float16 or int8 copies of its kernels, turned back into float32 through a
    `keras.StatelessScope`; the model's own float32 kernels are then neither read nor saved; see
    `stored_kernels`).
    """

    def __init__(self, model, hps: HParams, metadata: dict[str, Any], xla: bool = False,
                 weights: str = "float32"):
        super().__init__(name="sketch_rnn")
        if weights not in WEIGHT_DTYPES:
            raise ValueError(f"weights must be one of {WEIGHT_DTYPES}, got {weights!r}")
        self._held = _Held(model)
        self._stored = _Held(stored_kernels(model, weights) if weights != "float32" else [])
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
        order = {id(w.value): (i, 0) for i, w in enumerate(self.model.weights)}
        for w, stored in self._stored.value:  # At their weight's place (int8: values, then scale).
            order.update({id(v): (order[id(w.value)][0], j) for j, v in enumerate(stored)})
        self.serving_variables = sorted(captured.values(), key=lambda v: order.get(id(v), (len(order), 0)))
        return list(self.serving_variables)

    def _weights(self):
        """A context inside which the model reads its float16- or int8-stored kernels as float32
        (a no-op context without them)."""
        if not self._stored.value:
            return contextlib.nullcontext()
        return keras.StatelessScope(state_mapping=[(w, _stored_value(v)) for w, v in self._stored.value])

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
    `--xla_cpu_compilation_enabled` for those on CPU). `weights`: "float32" (default), "float16"
    (kernels stored as float16, about half the size) or "int8" (kernels as int8 with a scale per
    column, about a quarter; see SketchModule). Returns the version directory.

    On a local disk the version is written under a hidden name in the same directory
    (`.<version>.tmp-<pid>`) and renamed into place when complete, so a server watching the base
    directory (TF Serving, `sketch-rnn serve`) never sees it half-written, and an export that fails
    or is interrupted leaves no version behind (its partial files are removed). Object stores
    (gs://...) have no atomic rename: there the version is written in place, as before.
    """
    version = int(version if version is not None else time.time())
    path = os.path.join(export_base_dir, str(version))
    if tf.io.gfile.exists(path):
        raise FileExistsError(f"{path} exists: choose another --version or export dir")
    module = SketchModule(model, hps, metadata, xla=xla, weights=weights)
    module.track_variables()
    local = "://" not in export_base_dir
    target = os.path.join(export_base_dir, f".{version}.tmp-{os.getpid()}") if local else path
    try:
        if tf.io.gfile.exists(target):  # Left by a killed export of this process id.
            tf.io.gfile.rmtree(target)
        tf.saved_model.save(module, target, signatures=module.signature_functions())
        extra = os.path.join(target, "assets.extra")
        tf.io.gfile.makedirs(extra)
        with tf.io.gfile.GFile(os.path.join(extra, "hparams.json"), "w") as f:
            f.write(hps.to_json())
        with tf.io.gfile.GFile(os.path.join(extra, "metadata.json"), "w") as f:
            # n_max: the length the signatures sample to (and the longest input they take).
            f.write(json.dumps({**metadata, "n_max": module.max_len}, indent=2, sort_keys=True))
        if local:
            tf.io.gfile.rename(target, path)  # AlreadyExistsError if PATH appeared meanwhile.
    except BaseException:
        if local and tf.io.gfile.exists(target):
            tf.io.gfile.rmtree(target)
        raise
    return path


def build_model(folder: str):
    """The SketchRNN that FOLDER/hparams.json and FOLDER/metadata.json describe (a training
    --model-dir, or an export's assets.extra), built with fresh weights. Returns (model, hps,
    metadata)."""
    from model.sketch_rnn import SketchRNN

    with tf.io.gfile.GFile(os.path.join(folder, "hparams.json")) as f:
        hps = HParams.from_json(f.read())
    with tf.io.gfile.GFile(os.path.join(folder, schema.METADATA_FILE)) as f:
        metadata = json.loads(f.read())
    model = SketchRNN(hps, schema.n_max(metadata))
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2], tf.int32)}, training=False)
    return model, hps, metadata


def load_export(path: str):
    """Rebuilds the Keras model of an export that `export_saved_model` wrote (a version dir, with
    any weight storage): its hparams and metadata from assets.extra, its weights from the
    variables the signatures read (float16 and int8 kernels turned back into float32). Returns
    (model, hps, metadata). Raises FileNotFoundError if `path` is not such an export, ValueError
    if its variables do not fit the model its hparams describe."""
    extra = os.path.join(path, "assets.extra")
    for need in (os.path.join(path, "saved_model.pb"), os.path.join(extra, "hparams.json"),
                 os.path.join(extra, schema.METADATA_FILE)):
        if not tf.io.gfile.exists(need):
            raise FileNotFoundError(f"{need} not found: give a version dir of a `sketch-rnn export` "
                                    "(EXPORT_DIR/<version>)")
    model, hps, metadata = build_model(extra)
    metadata.pop("n_max", None)  # Written beside the data's metadata by the export; it writes it again.
    loaded = tf.saved_model.load(path)
    groups, saved = [], list(getattr(loaded, "serving_variables", []))
    while saved:  # One group per model weight: an int8 kernel's values, then its per-column scale.
        v = saved.pop(0)
        if v.dtype == tf.int8:
            if not saved or saved[0].dtype != tf.float32 or tuple(saved[0].shape) != tuple(v.shape[-1:]):
                raise ValueError(f"{path}: int8 variable {v.name} has no per-column scale after it")
            groups.append((v, saved.pop(0)))
        else:
            groups.append((v,))
    # Each weight takes the first unused variable of its shape: the export lists them in the model's
    # order when it was written, and only the order of layers of different shapes has changed since.
    for w in model.weights:
        found = next((i for i, g in enumerate(groups) if tuple(g[0].shape) == tuple(w.shape)), None)
        if found is None:
            raise ValueError(f"{path}: no variable of shape {tuple(w.shape)} for the model's {w.path}: "
                             "the export does not match its hparams.json")
        w.assign(_stored_value(groups.pop(found)))
    if groups:
        raise ValueError(f"{path}: the export holds {len(groups)} variables its model does not have")
    _check_as_exported(model, hps, metadata, loaded, path)
    return model, hps, metadata


def _check_as_exported(model, hps: HParams, metadata: dict[str, Any], loaded, path: str) -> None:
    """Raises ValueError unless the rebuilt model computes what the export's signatures do: the first
    10 points of the greedy (temperature 0) sketch from a fixed z (or, unconditional, `sample`'s),
    and `encode` of that sketch. (Only the first points: a near tie between two mixture components
    may go either way in two builds of the same weights, and the sketches part there.)"""
    mine = SketchModule(model, hps, metadata)  # The rebuilt model behind the export's own functions.
    zero, seed = tf.constant(0.0), tf.constant(1)
    if hps.conditional:
        z = tf.constant(np.random.default_rng(0).normal(size=[2, hps.z_size]).astype(np.float32))
        want, got = (f(z=z, temperature=zero, seed=seed) for f in (loaded.signatures["decode"], mine.decode))
    else:
        want, got = (f(num=tf.constant(2), temperature=zero, seed=seed)
                     for f in (loaded.signatures["sample"], mine.sample))
    n = min(10, int(tf.reduce_min(tf.minimum(got["lengths"], want["lengths"]))))
    close = np.allclose(got["strokes"][:, :n].numpy(), want["strokes"][:, :n].numpy(), rtol=1e-3,
                        atol=1e-3 * mine.scale)
    if hps.conditional and close:
        feed = {"strokes": want["strokes"], "lengths": want["lengths"]}
        close = np.allclose(mine.encode(**feed)["mu"].numpy(), loaded.signatures["encode"](**feed)["mu"].numpy(),
                            rtol=1e-3, atol=1e-4)
    if not close:
        raise ValueError(f"{path}: the model rebuilt from the export's weights does not draw what the "
                         "export draws: its variables could not be matched to the model's weights")
