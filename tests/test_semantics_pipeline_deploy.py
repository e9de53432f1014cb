"""Pipeline and serving semantics (issue 14): options that must reach the code that uses them,
and CLI outputs that must be what the model makes of THEIR input.

* `--rdp-epsilon` reaches the simplifier (CLI -> Config -> process_line -> simplify);
* `sketch-rnn sample --input` decodes the chosen sketch's mu, `--interpolate` decodes the
  spherical interpolation between the two sketches' mu, checked against the export's own
  encode / decode signatures, on an export whose outputs depend on z (the untrained tiny
  model's 0.001-scale encoder maps every sketch to about the same z).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from pipeline import cli as pipeline_cli
from pipeline import records as R
from pipeline import simplify as S

MAX_SEQ_LEN = 64
SCALE = 10.0


# --- --rdp-epsilon ------------------------------------------------------------------------------


def _raw_line(sample_dir, index=0):
    return (sample_dir / "cat.ndjson").read_text().splitlines()[index]


def test_rdp_epsilon_reaches_the_simplifier(sample_dir):
    """A raw drawing simplified with epsilon e is exactly simplify(..., e): a coarser tolerance
    keeps fewer points, and the default is Quick Draw's 2.0."""
    line = _raw_line(sample_dir)
    xy, lengths, is_raw = R.parse_strokes(json.loads(line)["drawing"], "auto")
    assert is_raw
    counts = {}
    for eps in (0.5, 2.0, 8.0):
        got = R.process_line(line, R.Config(rdp_epsilon=eps))
        assert isinstance(got, R.Drawing), got
        want = S.to_stroke3(*S.simplify(xy, lengths, eps))
        np.testing.assert_array_equal(got.strokes3, want)
        counts[eps] = len(got.strokes3)
    assert counts[0.5] > counts[2.0] > counts[8.0], counts
    np.testing.assert_array_equal(R.process_line(line, R.Config()).strokes3,
                                  R.process_line(line, R.Config(rdp_epsilon=2.0)).strokes3)


def test_cli_passes_rdp_epsilon_and_the_other_options_into_the_job_config(tmp_path, monkeypatch):
    seen = {}

    def fake_run_batch(args, config, beam_args):
        seen["config"], seen["beam_args"] = config, beam_args
        raise pipeline_cli.JobError("stopped by the test")

    monkeypatch.setattr(pipeline_cli, "run_batch", fake_run_batch)
    rc = pipeline_cli.main(["--input", str(tmp_path / "x.ndjson"), "--output", str(tmp_path / "out"),
                            "--rdp-epsilon", "5.5", "--max-seq-len", "120", "--valid-fraction", "0.1",
                            "--test-fraction", "0.2", "--format", "raw", "--categories", "Cat,dog",
                            "--recognized-only", "--runner", "DirectRunner"])
    assert rc == 1
    config = seen["config"]
    assert config == R.Config(max_seq_len=120, rdp_epsilon=5.5, valid_fraction=0.1, test_fraction=0.2,
                              input_format="raw", categories=("cat", "dog"), recognized_only=True)
    assert seen["beam_args"] == ["--runner", "DirectRunner"]
    pipeline_cli.main(["--input", str(tmp_path / "x.ndjson"), "--output", str(tmp_path / "out")])
    assert seen["config"].rdp_epsilon == 2.0


def test_written_example_holds_offsets_divided_once_by_the_scale_factor(sample_dir):
    """The record of a drawing: rows (dx / s, dy / s, p1, p2, p3) from its pixel stroke-3, p2 on
    each stroke's last point, (0, 0, 0, 0, 1) after the end; parsed back with the trainer's schema."""
    import tensorflow as tf

    from pipeline import schema

    drawing = R.process_line(_raw_line(sample_dir, 1), R.Config())
    s3 = drawing.strokes3.astype(np.float64)
    n, scale, max_len = len(s3), 7.25, 120
    parsed = schema.parse_example(tf.constant(R.drawing_to_example(drawing, scale, max_len)), max_len)
    strokes, length = parsed[schema.STROKES].numpy(), int(parsed[schema.LENGTH].numpy())
    assert length == n
    want = np.zeros((max_len, 5))
    want[:n, :2] = s3[:, :2] / scale
    want[:n, 3] = s3[:, 2]
    want[:n, 2] = 1 - s3[:, 2]
    want[n:, 4] = 1
    np.testing.assert_allclose(strokes, want, rtol=1e-6, atol=1e-7)
    assert want[:n, 3].sum() == len(json.loads(_raw_line(sample_dir, 1))["drawing"])  # one lift per stroke


# --- serving --------------------------------------------------------------------------------------


def test_encode_signature_gives_mu_and_sigma_of_the_normalized_sketch():
    """The export's encode(pixel stroke-3) = the model's encoder on stroke-5 of offsets / scale
    factor: mu, and sigma = exp(sigma_hat / 2) (sigma_hat is a log-variance), with sigma_hat made
    O(1) here (at init it is ~0, where exp(sigma_hat) and exp(sigma_hat / 2) agree)."""
    import tensorflow as tf

    from model.hparams import HParams
    from model.sketch_rnn import SketchRNN
    from model.strokes import stroke3_to_stroke5
    from trainer.export import SketchModule

    tf.random.set_seed(3)
    hps = HParams.preset("tiny")
    model = SketchRNN(hps, max_seq_len=16)
    model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2])}, training=False)
    rng = np.random.default_rng(9)
    for layer in (model.encoder.mu, model.encoder.sigma_hat):
        layer.kernel.assign(rng.normal(0, 0.5, layer.kernel.shape).astype(np.float32))
        layer.bias.assign(np.linspace(-2.0, 1.0, hps.z_size).astype(np.float32))
    module = SketchModule(model, hps, {"scale_factor": SCALE, "max_seq_len": 16})
    a = np.array([[10, 5, 0], [-20, 15, 0], [5, 5, 1], [30, -10, 1]], np.float32)
    b = np.array([[-5, 25, 0], [15, 0, 1], [0, 0, 0], [0, 0, 0]], np.float32)  # 2 real rows
    out = module.encode(tf.constant(np.stack([a, b])), tf.constant([4, 2]))
    five = np.stack([stroke3_to_stroke5(s[:n] / [SCALE, SCALE, 1], 4) for s, n in ((a, 4), (b, 2))])
    mu, sigma_hat = (t.numpy() for t in model.encode(tf.constant(five), tf.constant([4, 2])))
    assert np.ptp(sigma_hat) > 1.0
    np.testing.assert_allclose(out["mu"].numpy(), mu, atol=1e-5)
    np.testing.assert_allclose(out["sigma"].numpy(), np.exp(sigma_hat / 2), rtol=1e-5)


# --- reconstruction and interpolation -----------------------------------------------------------


@pytest.fixture(scope="module")
def z_export(tmp_path_factory):
    """The deploy tests' tiny export (shared, built once per session) with its z made to matter:
    the untrained encoder's mu kernel (N(0, 0.001)) maps every sketch to about the same z, and the
    initial-state kernel (N(0, 0.001)) makes the start state ~0. Here both are scaled to O(1)
    (x 500) and p3 made rarer (longer sketches), by rewriting the copy's variables checkpoint
    (identified by shape; the [2 * enc, Z] kernels are mu's and sigma_hat's), which is much
    cheaper than tracing and saving a second SavedModel."""
    import shutil

    import tensorflow as tf

    from deploy_fixtures import shared_export_dir
    from model.hparams import HParams

    hps = HParams.preset("tiny")
    src = os.path.join(shared_export_dir(tmp_path_factory), "1")
    base = tmp_path_factory.mktemp("z_export") / "export"
    dst = str(base / "1")
    shutil.copytree(src, dst)
    prefix = os.path.join(dst, "variables", "variables")
    reader = tf.train.load_checkpoint(prefix)
    names, tensors, scaled = [], [], 0
    for name, shape in tf.train.list_variables(prefix):
        value = reader.get_tensor(name)
        if shape in ([2 * hps.enc_rnn_size, hps.z_size], [hps.z_size, 2 * hps.dec_rnn_size]):
            value, scaled = value * 500.0, scaled + 1  # mu, sigma_hat; initial_state
        elif shape == [6 * hps.num_mixture + 3] and name.endswith("VARIABLE_VALUE"):
            value = value.copy()
            value[2] -= 3.0  # the head's bias: outputs [:3] are the pen logits, p3 = end
            scaled += 1
        names.append(name)
        tensors.append(tf.constant(value))
    assert scaled == 4, "the tiny export's variables are not the expected ones"
    for f in os.listdir(os.path.dirname(prefix)):
        os.remove(os.path.join(os.path.dirname(prefix), f))
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=tensors)
    module = tf.saved_model.load(dst)
    two = [[[5.0, 5.0, 0.0], [9.0, -3.0, 1.0]], [[-7.0, 2.0, 0.0], [1.0, 8.0, 1.0]]]
    mu = _signature(module, "encode", strokes=two, lengths=[2, 2])["mu"]
    assert np.abs(mu[0] - mu[1]).max() > 0.05  # The encoder now tells sketches apart.
    return str(base), module


def _signature(module, name, **inputs):
    import tensorflow as tf

    fn = module.signatures[name]
    specs = fn.structured_input_signature[1]
    out = fn(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def _rows(strokes, lengths):
    """The CLI's ndjson rows: unpadded, offsets rounded to 1/1000 pixel."""
    return [np.round(s[:n].astype(np.float64), 3).tolist() for s, n in zip(strokes, lengths)]


def _sample_cli(capsys, *argv):
    from deploy import sample

    code = sample.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_reconstruct_decodes_the_mu_of_the_chosen_sketch(z_export, sample_dir, tmp_path, capsys):
    """`--input FILE --index i`: the --num decodings are decode(z = mu(sketch i)) with the given
    temperature and seed, the sketch i being the drawing simplified as the pipeline does."""
    base, module = z_export
    source = sorted(sample_dir.glob("*.ndjson"))[0]
    lines = source.read_text().splitlines()
    got = {}
    for index in (2, 3):
        _sample_cli(capsys, "--model", base, "--input", source, "--index", index, "--num", 3,
                    "--temperature", 0.3, "--seed", 5, "--output", tmp_path / f"recon{index}")
        got[index] = [r["strokes"] for r in _read(tmp_path / f"recon{index}.ndjson")]
        sketch = R.process_line(lines[index], R.Config()).strokes3
        assert len(sketch) <= MAX_SEQ_LEN
        mu = _signature(module, "encode", strokes=sketch[None], lengths=[len(sketch)])["mu"]
        out = _signature(module, "decode", z=np.repeat(mu, 3, axis=0), temperature=0.3, seed=5)
        assert got[index] == _rows(out["strokes"], out["lengths"])
    assert got[2] != got[3]  # The decodings depend on the input...
    zero = _signature(module, "decode", z=np.zeros([3, 8], np.float32), temperature=0.3, seed=5)
    assert got[2] != _rows(zero["strokes"], zero["lengths"])  # ...through its z.


def slerp_reference(a, b, t):
    """Spherical interpolation (Shoemake): sin((1 - t) w) / sin w * a + sin(t w) / sin w * b."""
    omega = math.acos(float(np.clip(np.dot(a / np.linalg.norm(a), b / np.linalg.norm(b)), -1, 1)))
    return (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


def test_interpolation_frames_decode_the_slerp_between_the_two_mus(z_export, sample_dir, tmp_path, capsys):
    """`--interpolate FILE --num 5 --temperature 0` (greedy): frame k is the greedy decoding of
    slerp(mu_A, mu_B, k / 4); the ends are the two sketches' own decodings."""
    base, module = z_export
    lines = sorted(sample_dir.glob("*.ndjson"))[1].read_text().splitlines()
    a, b = (R.process_line(lines[i], R.Config()).strokes3 for i in (0, 1))
    two = tmp_path / "two.ndjson"
    two.write_text(json.dumps({"strokes": a.tolist()}) + "\n" + json.dumps({"strokes": b.tolist()}) + "\n")
    _sample_cli(capsys, "--model", base, "--interpolate", two, "--num", 5, "--temperature", 0,
                "--output", tmp_path / "lerp")
    records = _read(tmp_path / "lerp.ndjson")
    assert [r["t"] for r in records] == [0.0, 0.25, 0.5, 0.75, 1.0]
    frames = [r["strokes"] for r in records]
    mus = [_signature(module, "encode", strokes=s[None], lengths=[len(s)])["mu"][0].astype(np.float64)
           for s in (a, b)]
    for t, frame in zip((0.0, 0.25, 0.5, 0.75, 1.0), frames):
        z = slerp_reference(mus[0], mus[1], t)
        # Greedy decoding is per row, so one z at a time gives the frame (to float32 noise).
        out = _signature(module, "decode", z=z[None].astype(np.float32), temperature=0.0, seed=0)
        want = _rows(out["strokes"], out["lengths"])[0]
        assert len(frame) == len(want), t
        np.testing.assert_allclose(np.array(frame), np.array(want), atol=2e-3, err_msg=f"t={t}")
    assert frames[0] != frames[-1] and frames[0] != frames[2]
