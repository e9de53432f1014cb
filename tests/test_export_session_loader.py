"""The export as TF Serving loads it: the TF1 session loader (`tf.compat.v1.saved_model.loader`,
the restore path of TF Serving's C++ SavedModelBundle and of `saved_model_cli run`) restores every
variable and runs every signature, with the outputs of the TF2 loader (`tf.saved_model.load`,
what deploy/ uses, and which does not see a variable the session loader leaves uninitialized).

One untrained `tiny` model is exported per module (a few seconds).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from model.hparams import HParams
from model.sketch_rnn import SketchRNN
from trainer.export import _check_as_exported, export_saved_model, load_export, quantize_int8, stored_kernels

MAX_SEQ_LEN = 32
SQUARE = [[10.0, 10.0, 0.0], [20.0, 0.0, 0.0], [0.0, 20.0, 0.0], [-20.0, 0.0, 0.0], [0.0, -20.0, 1.0],
          [5.0, 5.0, 0.0], [3.0, 2.0, 1.0]]


def _inputs(z_size: int) -> dict[str, dict[str, np.ndarray]]:
    """Signature name -> its inputs (NumPy, the signature's dtypes)."""
    square = np.array(SQUARE, np.float32)
    batch = np.zeros([2, len(SQUARE), 3], np.float32)
    batch[0], batch[1, :4] = square, square[:4]
    batch[1, 3, 2] = 1.0
    sampling = {"num": np.int32(3), "temperature": np.float32(0.5), "seed": np.int32(7)}
    z = np.random.default_rng(0).normal(size=[2, z_size]).astype(np.float32)
    return {
        "serving_default": sampling,
        "sample": sampling,
        "complete": {"strokes": square[None, :5], "lengths": np.array([5], np.int32),
                     "num": np.int32(2), "temperature": np.float32(0.5), "seed": np.int32(3)},
        "encode": {"strokes": batch, "lengths": np.array([7, 4], np.int32)},
        "decode": {"z": z, "temperature": np.float32(0.5), "seed": np.int32(1)},
    }


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """(version dir, hparams, model) of a fresh conditional tiny export with the default options."""
    hps = HParams.preset("tiny")
    model = SketchRNN(hps, max_seq_len=MAX_SEQ_LEN)
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])}, training=False)
    metadata = {"format_version": 1, "scale_factor": 10.0, "max_seq_len": MAX_SEQ_LEN, "classes": ["cat"]}
    path = export_saved_model(model, hps, metadata, str(tmp_path_factory.mktemp("export")), version=1)
    return path, hps, model


@pytest.fixture(scope="module")
def tf2_outputs(export):
    """Signature name -> outputs through `tf.saved_model.load` (the reference)."""
    path, hps, _ = export
    loaded = tf.saved_model.load(path)
    out = {}
    for name, inputs in _inputs(hps.z_size).items():
        fn = loaded.signatures[name]
        out[name] = {k: v.numpy() for k, v in fn(**{k: tf.constant(v) for k, v in inputs.items()}).items()}
    return out


@contextlib.contextmanager
def _xla_compilation_disabled():
    """XLA compilation off in this process while inside, as tensorflow_model_server runs without
    `--xla_cpu_compilation_enabled` (it calls tensorflow::DisableXlaCompilation; compiling then
    fails with "XLA compilation disabled"). Yields False where TensorFlow does not export it."""
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(tf.__file__), "libtensorflow_cc.so.2"))
        disable = lib._ZN10tensorflow21DisableXlaCompilationEv
        enable = lib._ZN10tensorflow20EnableXlaCompilationEv
        failing = lib._ZN10tensorflow20FailOnXlaCompilationEv
    except (OSError, AttributeError):
        yield False
        return
    failing.restype = ctypes.c_bool
    disable()
    try:
        assert failing()
        yield True
    finally:
        enable()


def _run_session_loader(path: str, inputs: dict[str, dict[str, np.ndarray]]):
    """Loads `path` with the TF1 loader in a Session on its own Graph and runs each signature
    through its SignatureDef tensor names. Returns (signature_defs, {name: outputs})."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        defs = dict(meta_graph.signature_def)
        out = {}
        for name, feed in inputs.items():
            sig = defs[name]
            feeds = {sig.inputs[k].name: v for k, v in feed.items()}
            out[name] = sess.run({k: t.name for k, t in sig.outputs.items()}, feeds)
    return defs, out


def _assert_valid(strokes: np.ndarray, lengths: np.ndarray, num: int, n_max: int):
    assert strokes.shape == (num, n_max, 3) and strokes.dtype == np.float32
    assert lengths.shape == (num,) and lengths.dtype == np.int32
    assert np.all(np.isfinite(strokes))
    for s, n in zip(strokes, lengths):
        assert 1 <= n <= n_max
        assert s[n - 1, 2] == 1.0 and np.all(s[n:] == 0) and set(np.unique(s[:n, 2])) <= {0.0, 1.0}


def test_session_loader_runs_every_signature_as_the_tf2_loader(export, tf2_outputs):
    """Every SignatureDef, fed and fetched by its tensor names, with XLA off as in TF Serving."""
    path, hps, _ = export
    inputs = _inputs(hps.z_size)
    with _xla_compilation_disabled():
        defs, got = _run_session_loader(path, inputs)

    sampling = {"num", "temperature", "seed"}
    expected_inputs = {"serving_default": sampling, "sample": sampling,
                       "complete": {"strokes", "lengths"} | sampling,
                       "encode": {"strokes", "lengths"}, "decode": {"z", "temperature", "seed"}}
    assert set(defs) - {"__saved_model_init_op"} == set(expected_inputs)
    for name, names in expected_inputs.items():
        assert set(defs[name].inputs) == names, name
        assert set(defs[name].outputs) == ({"mu", "sigma"} if name == "encode" else {"strokes", "lengths"})
        assert defs[name].method_name == "tensorflow/serving/predict"

    for name, want in tf2_outputs.items():
        assert set(got[name]) == set(want), name
        for key, value in want.items():
            # The same graph and stateless seeds: the same sketches, the same latent statistics.
            if value.dtype == np.int32:
                np.testing.assert_array_equal(got[name][key], value, err_msg=f"{name}.{key}")
            else:
                np.testing.assert_allclose(got[name][key], value, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{name}.{key}")

    n_max = MAX_SEQ_LEN
    for name, num in (("serving_default", 3), ("sample", 3), ("complete", 2), ("decode", 2)):
        _assert_valid(got[name]["strokes"], got[name]["lengths"], num, n_max)
    np.testing.assert_array_equal(got["serving_default"]["strokes"], got["sample"]["strokes"])
    prefix = np.array(SQUARE[:5], np.float32)
    np.testing.assert_allclose(got["complete"]["strokes"][:, :5], [prefix, prefix], rtol=1e-5, atol=1e-4)
    assert got["encode"]["mu"].shape == got["encode"]["sigma"].shape == (2, hps.z_size)
    assert np.all(got["encode"]["sigma"] > 0)


def test_each_weight_saved_once(export):
    path, _, model = export
    keys = [name for name, _ in tf.train.list_variables(os.path.join(path, "variables", "variables"))
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(keys) == len(model.weights)
    assert sorted(os.listdir(os.path.join(path, "assets.extra"))) == ["hparams.json", "metadata.json"]


def test_default_export_has_no_xla_compiled_function(export):
    """TF Serving's model server disables XLA on CPU unless `--xla_cpu_compilation_enabled`: a
    jit_compile signature then fails on its first request ("XLA compilation disabled")."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(pathlib.Path(export[0], "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    flagged = [f.signature.name for f in graph.library.function if f.attr["_XlaMustCompile"].b]
    flagged += [n.name for n in nodes if n.attr["_XlaMustCompile"].b]
    assert not flagged


def test_xla_disabled_as_tf_serving_rejects_jit_compile():
    """The harness above does what TF Serving does: a jit_compile function fails under it."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [])
        y = tf.function(lambda v: v * v, jit_compile=True)(x)
    with _xla_compilation_disabled() as disabled, tf.compat.v1.Session(graph=graph) as sess:
        if not disabled:
            pytest.skip("tensorflow::DisableXlaCompilation is not exported by this TensorFlow")
        with pytest.raises(tf.errors.OpError, match="XLA compilation disabled"):
            sess.run(y, {x: 3.0})
    with tf.compat.v1.Session(graph=graph) as sess:
        assert sess.run(y, {x: 3.0}) == 9.0


def _saved_model_cli() -> str | None:
    beside = pathlib.Path(sys.executable).with_name("saved_model_cli")
    return str(beside) if beside.exists() else shutil.which("saved_model_cli")


def test_saved_model_cli_runs_serving_default(export, tf2_outputs):
    cli = _saved_model_cli()
    if cli is None:
        pytest.skip("saved_model_cli not installed")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([cli, "run", "--dir", export[0], "--tag_set", "serve", "--signature_def",
                           "serving_default", "--input_exprs", "num=3;temperature=0.5;seed=7"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = re.search(r"Result for output key lengths:\s*\[([^\]]*)\]", proc.stdout)
    assert found, proc.stdout[-2000:]
    assert [int(x) for x in found.group(1).split()] == tf2_outputs["sample"]["lengths"].tolist()
    assert "Result for output key strokes:" in proc.stdout


def _saved_dtypes(path: str) -> dict[str, str]:
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    return {k: v.name for k, v in reader.get_variable_to_dtype_map().items()
            if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _data_bytes(path: str) -> int:
    folder = os.path.join(path, "variables")
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if ".data-" in f)


def _assert_serves_as_the_float32_export(path, hps, tf2_outputs, rtol, atol):
    """An export with stored (rounded) kernels: the session loader runs every signature as the TF2
    loader does, with the float32 export's dtypes; its latent statistics are the float32 export's
    within rtol / atol, yet not identical (the kernels were rounded); its sketches are valid."""
    inputs = _inputs(hps.z_size)
    loaded = tf.saved_model.load(path)
    tf2 = {name: {k: v.numpy() for k, v in loaded.signatures[name](
        **{k: tf.constant(v) for k, v in feed.items()}).items()} for name, feed in inputs.items()}
    with _xla_compilation_disabled():
        _, got = _run_session_loader(path, inputs)
    for name, want in tf2.items():
        for key, value in want.items():
            assert value.dtype == tf2_outputs[name][key].dtype, f"{name}.{key}"
            np.testing.assert_allclose(got[name][key], value, rtol=1e-5, atol=1e-5, err_msg=f"{name}.{key}")
    for key in ("mu", "sigma"):
        np.testing.assert_allclose(tf2["encode"][key], tf2_outputs["encode"][key], rtol=rtol, atol=atol)
        assert not np.array_equal(tf2["encode"][key], tf2_outputs["encode"][key])  # Rounded, not the same.
    for name, num in (("sample", 3), ("complete", 2), ("decode", 2)):
        _assert_valid(got[name]["strokes"], got[name]["lengths"], num, MAX_SEQ_LEN)


def test_float16_export_stores_kernels_as_float16_and_serves_as_the_float32_one(export, tf2_outputs,
                                                                                tmp_path):
    """`weights="float16"`: each kernel saved once, as float16 (the float32 copy not at all), the
    rest float32; the session loader restores and runs it as the TF2 loader does; the signatures'
    dtypes are unchanged and the latent statistics are the float32 export's up to the rounding."""
    path32, hps, model = export
    metadata = {"format_version": 1, "scale_factor": 10.0, "max_seq_len": MAX_SEQ_LEN, "classes": ["cat"]}
    path16 = export_saved_model(model, hps, metadata, str(tmp_path), version=1, weights="float16")

    dtypes = _saved_dtypes(path16)
    kernels = [w for w in model.weights if len(w.shape) >= 2]
    assert len(dtypes) == len(model.weights)
    assert sorted(dtypes.values()) == sorted(["float16"] * len(kernels)
                                             + ["float32"] * (len(model.weights) - len(kernels)))
    assert set(_saved_dtypes(path32).values()) == {"float32"}
    n16 = sum(int(np.prod(w.shape)) for w in kernels)
    assert _data_bytes(path32) - _data_bytes(path16) == pytest.approx(2 * n16, rel=0.02)

    _assert_serves_as_the_float32_export(path16, hps, tf2_outputs, rtol=1e-2, atol=1e-4)


def test_a_version_appears_complete_or_not_at_all(tmp_path, monkeypatch):
    """The version is written under a hidden name and renamed when complete: a server watching
    the base directory never sees it half-written, and an interrupted export leaves nothing."""
    hps = HParams.preset("tiny")
    model = SketchRNN(hps, max_seq_len=MAX_SEQ_LEN)
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])}, training=False)
    metadata = {"format_version": 1, "scale_factor": 10.0, "max_seq_len": MAX_SEQ_LEN, "classes": ["cat"]}
    real_save, during = tf.saved_model.save, []

    def save_then_ctrl_c(*args, **kwargs):
        real_save(*args, **kwargs)
        during.append(sorted(os.listdir(tmp_path)))
        raise KeyboardInterrupt  # Ctrl-C after the SavedModel, before assets.extra is written.

    monkeypatch.setattr(tf.saved_model, "save", save_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        export_saved_model(model, hps, metadata, str(tmp_path), version=1)
    assert during == [[f".1.tmp-{os.getpid()}"]]  # not a version: TF Serving skips such names
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    path = export_saved_model(model, hps, metadata, str(tmp_path), version=1)
    assert os.listdir(tmp_path) == ["1"] and path == str(tmp_path / "1")
    assert (tmp_path / "1" / "assets.extra" / "metadata.json").exists()
    with pytest.raises(FileExistsError):
        export_saved_model(model, hps, metadata, str(tmp_path), version=1)


def test_float16_export_refuses_weights_float16_cannot_hold(tmp_path):
    hps = HParams.preset("tiny")
    model = SketchRNN(hps, max_seq_len=MAX_SEQ_LEN)
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])}, training=False)
    kernel = next(w for w in model.weights if len(w.shape) >= 2)
    kernel.assign(tf.fill(kernel.shape, 1e5))
    metadata = {"format_version": 1, "scale_factor": 10.0, "max_seq_len": MAX_SEQ_LEN, "classes": ["cat"]}
    with pytest.raises(ValueError, match="float16 cannot store.*--weights float32"):
        export_saved_model(model, hps, metadata, str(tmp_path), version=1, weights="float16")
    assert not (tmp_path / "1").exists()
    with pytest.raises(ValueError, match="weights must be one of"):
        export_saved_model(model, hps, metadata, str(tmp_path), version=1, weights="bfloat16")
    kernel.assign(tf.fill(kernel.shape, float("nan")))
    with pytest.raises(ValueError, match="not finite"):
        export_saved_model(model, hps, metadata, str(tmp_path), version=1, weights="int8")
    assert not (tmp_path / "1").exists()



def test_hyper_decoder_exports_float16_and_serves_through_the_session_loader(tmp_path):
    """dec_model=hyper (its packed state; its 3-d embedding weights stored as float16 too): the
    session loader runs every signature as the TF2 loader does, the latent statistics are the
    float32 export's up to the rounding, and the sketches are valid."""
    hps = HParams.preset("tiny").replace(dec_model="hyper")
    model = SketchRNN(hps, max_seq_len=MAX_SEQ_LEN)
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])}, training=False)
    rng = np.random.default_rng(2)
    for v in (model.decoder.embed_kernel, model.decoder.shift_kernel):  # The hyper cell at work.
        v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32))
    metadata = {"format_version": 1, "scale_factor": 10.0, "max_seq_len": MAX_SEQ_LEN, "classes": ["cat"]}
    inputs = _inputs(hps.z_size)
    outputs = {}
    for weights in ("float32", "float16"):
        path = export_saved_model(model, hps, metadata, str(tmp_path / weights), version=1, weights=weights)
        loaded = tf.saved_model.load(path)
        outputs[weights] = {name: {k: v.numpy() for k, v in loaded.signatures[name](
            **{k: tf.constant(v) for k, v in feed.items()}).items()} for name, feed in inputs.items()}
    assert sum(d == "float16" for d in _saved_dtypes(path).values()) == sum(
        len(w.shape) >= 2 for w in model.weights)
    with _xla_compilation_disabled():
        _, got = _run_session_loader(path, inputs)
    for name, want in outputs["float16"].items():
        for key, value in want.items():
            np.testing.assert_allclose(got[name][key], value, rtol=1e-5, atol=1e-5, err_msg=f"{name}.{key}")
    for key in ("mu", "sigma"):
        np.testing.assert_allclose(outputs["float16"]["encode"][key], outputs["float32"]["encode"][key],
                                   rtol=1e-2, atol=1e-4)
    for name, num in (("sample", 3), ("complete", 2), ("decode", 2)):
        _assert_valid(got[name]["strokes"], got[name]["lengths"], num, MAX_SEQ_LEN)


def test_int8_quantization_is_per_column_and_within_half_a_step():
    rng = np.random.default_rng(3)
    value = rng.normal(size=[7, 5]).astype(np.float32) * np.array([1e-3, 0.1, 1.0, 30.0, 0.0], np.float32)
    q, scale = quantize_int8(value)
    assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (5,)
    peak = np.abs(value).max(axis=0)
    np.testing.assert_array_equal(np.abs(q).max(axis=0), [127, 127, 127, 127, 0])  # Each column's peak.
    assert scale[4] == 1.0 and not q[:, 4].any()  # An all-zero column.
    err = np.abs(q * scale - value)
    assert np.all(err <= peak / 254 * (1 + 1e-5)) and err.max() > 0


def test_int8_export_stores_kernels_as_int8_and_serves_through_the_session_loader(export, tf2_outputs,
                                                                                  tmp_path):
    """`weights="int8"`: each kernel saved once, as int8, followed by its float32 per-column scale;
    the session loader runs every signature as the TF2 loader does; the latent statistics are the
    float32 export's up to the quantization."""
    path32, hps, model = export
    metadata = {"format_version": 1, "scale_factor": 10.0, "max_seq_len": MAX_SEQ_LEN, "classes": ["cat"]}
    path8 = export_saved_model(model, hps, metadata, str(tmp_path), version=1, weights="int8")
    kernels = [w for w in model.weights if len(w.shape) >= 2]
    dtypes = sorted(_saved_dtypes(path8).values())
    assert dtypes == sorted(["int8"] * len(kernels) + ["float32"] * len(model.weights))
    n = sum(int(np.prod(w.shape)) for w in kernels)
    columns = sum(int(w.shape[-1]) for w in kernels)
    reader = tf.train.load_checkpoint(os.path.join(path8, "variables", "variables"))
    stored = sum(reader.get_tensor(k).nbytes for k in _saved_dtypes(path8))  # The object graph aside.
    everything = sum(int(np.prod(w.shape)) for w in model.weights)
    assert stored == 4 * (everything - n) + n + 4 * columns  # A byte per kernel weight, 4 per scale.

    _assert_serves_as_the_float32_export(path8, hps, tf2_outputs, rtol=5e-2, atol=2e-3)


@pytest.mark.parametrize("weights", ["float32", "float16", "int8"])
def test_load_export_rebuilds_the_model_with_the_weights_the_export_holds(export, tmp_path, weights):
    """load_export: the model's weights are what the signatures read (float16 and int8 turned back
    into float32). (Writing the rebuilt model again: the end-to-end test's `--from-export` step.)"""
    _, hps, model = export
    metadata = {"format_version": 1, "scale_factor": 10.0, "max_seq_len": MAX_SEQ_LEN, "classes": ["cat"]}
    path = export_saved_model(model, hps, metadata, str(tmp_path), version=1, weights=weights)
    rebuilt, hps2, metadata2 = load_export(path)
    assert hps2 == hps and metadata2 == metadata
    stored = {id(w): v for w, v in stored_kernels(model, weights)} if weights != "float32" else {}
    for w, r in zip(model.weights, rebuilt.weights):
        assert w.path.split("/", 1)[1] == r.path.split("/", 1)[1]  # Past the model's own name.
        want = w.numpy()
        if id(w) in stored:
            v = stored[id(w)]
            want = v[0].numpy().astype(np.float32) * (v[1].numpy() if len(v) == 2 else 1.0)
        np.testing.assert_array_equal(r.numpy(), want, err_msg=w.path)


def test_load_export_of_a_shipped_model_written_before_its_layers_were_reordered():
    """face's export lists initial_state before the decoder (the model's order when it was written;
    the model now builds the decoder first): each weight still finds its variable, checked by the
    greedy sketch and encoding load_export compares with the export's own."""
    path = pathlib.Path(__file__).resolve().parents[1] / "deploy" / "pretrained" / "face" / "16000"
    shapes = [tuple(v.shape) for v in tf.saved_model.load(str(path)).serving_variables]
    model, hps, _ = load_export(str(path))
    paths = [w.path.split("/", 1)[1] for w in model.weights]
    assert paths.index("decoder/kernel") < paths.index("initial_state/kernel")
    assert shapes.index((64, 512)) < shapes.index((69, 1024))  # initial_state's kernel, the decoder's.
    assert len(shapes) == len(model.weights) and hps.dec_rnn_size == 256


def test_load_export_refuses_what_does_not_fit(export, tmp_path):
    _, hps, model = export
    metadata = {"format_version": 1, "scale_factor": 10.0, "max_seq_len": MAX_SEQ_LEN, "classes": ["cat"]}
    path = pathlib.Path(export_saved_model(model, hps, metadata, str(tmp_path), version=1))
    with pytest.raises(FileNotFoundError, match="give a version dir"):
        load_export(str(tmp_path))  # The base dir.
    other = tmp_path / "other"
    shutil.copytree(path, other)
    (other / "assets.extra" / "hparams.json").write_text(hps.replace(dec_rnn_size=hps.dec_rnn_size + 2).to_json())
    with pytest.raises(ValueError, match="does not match its hparams.json"):
        load_export(str(other))
    # Weights of the right shapes but not the export's (two layers' biases swapped, say): the greedy
    # sketch or the encoding differs from the export's, and it says so.
    rebuilt, hps2, metadata2 = load_export(str(path))
    bias = next(w for w in rebuilt.weights if w.path.endswith("/mixture_head/bias"))
    bias.assign(bias.numpy() + 0.5)
    with pytest.raises(ValueError, match="does not draw what the export draws"):
        _check_as_exported(rebuilt, hps2, metadata2, tf.saved_model.load(str(path)), str(path))
    from trainer import export_cli

    assert export_cli.main(["--from-export", str(tmp_path), "--export-dir", str(tmp_path / "x")]) == 1
    with pytest.raises(SystemExit):  # --checkpoint belongs to --model-dir.
        export_cli.main(["--from-export", str(path), "--export-dir", str(tmp_path / "x"), "--checkpoint", "best"])


def test_load_export_of_an_unconditional_model(tmp_path):
    """No encoder: load_export checks the rebuilt model against the export's `sample` signature."""
    hps = HParams.preset("tiny").replace(conditional=False)
    model = SketchRNN(hps, max_seq_len=MAX_SEQ_LEN)
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])}, training=False)
    metadata = {"format_version": 1, "scale_factor": 10.0, "max_seq_len": MAX_SEQ_LEN, "classes": ["cat"]}
    path = export_saved_model(model, hps, metadata, str(tmp_path), version=1, weights="int8")
    rebuilt, _, _ = load_export(path)
    stored = {id(w): v for w, v in stored_kernels(model, "int8")}
    for w, r in zip(model.weights, rebuilt.weights):
        want = stored[id(w)][0].numpy() * stored[id(w)][1].numpy() if id(w) in stored else w.numpy()
        np.testing.assert_array_equal(r.numpy(), want, err_msg=w.path)
    head = next(w for w in rebuilt.weights if w.path.endswith("/mixture_head/bias"))
    head.assign(head.numpy() + 0.5)
    with pytest.raises(ValueError, match="does not draw what the export draws"):
        _check_as_exported(rebuilt, hps, metadata, tf.saved_model.load(path), path)
