"""Training end to end on CPU: MirroredStrategy over 2 logical devices, loss decreases,
checkpoint, resume at the saved step, export, load in a fresh TensorFlow-only process."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("model.sketch_rnn", reason="model/sketch_rnn.py not there yet")

from test_input import sample_sketches, write_dataset  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

TRAIN_SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from model.hparams import HParams
    from trainer.train import train_and_evaluate
    data, model_dir, steps, export = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    hps = HParams.preset("tiny").replace(batch_size=16, augment_stroke_prob=0.0, random_scale_factor=0.0)
    logs = []
    r = train_and_evaluate(data, model_dir, hps, steps, "mirrored", checkpoint_every=10, eval_every=20,
                           log_every=1, export=export, num_samples=4, log=logs.append)
    print("RESULT " + json.dumps({"step": r["step"], "replicas": 2, "logs": logs,
                                  "export_path": r.get("export_path"), "valid": r["valid"]}))
''')

LOAD_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    m = tf.saved_model.load(sys.argv[1])
    out = {"signatures": sorted(m.signatures.keys())}
    s = m.signatures["sample"](num=tf.constant(3), temperature=tf.constant(0.5), seed=tf.constant(7))
    s2 = m.signatures["sample"](num=tf.constant(3), temperature=tf.constant(0.5), seed=tf.constant(7))
    out["sample"] = [s["strokes"].numpy().tolist(), s["lengths"].numpy().tolist()]
    out["sample_repeat_equal"] = bool(np.array_equal(s["strokes"].numpy(), s2["strokes"].numpy()))
    strokes = np.array(json.loads(sys.argv[2]), np.float32)[None]
    n = tf.constant([strokes.shape[1]], tf.int32)
    e = m.signatures["encode"](strokes=tf.constant(strokes), lengths=n)
    out["mu"], out["sigma"] = e["mu"].numpy().tolist(), e["sigma"].numpy().tolist()
    d = m.signatures["decode"](z=e["mu"], temperature=tf.constant(0.1), seed=tf.constant(1))
    out["decode"] = [d["strokes"].numpy().tolist(), d["lengths"].numpy().tolist()]
    c = m.signatures["complete"](strokes=tf.constant(strokes[:, :5]), lengths=tf.constant([5]),
                                 num=tf.constant(2), temperature=tf.constant(0.5), seed=tf.constant(3))
    out["complete"] = [c["strokes"].numpy().tolist(), c["lengths"].numpy().tolist()]
    out["project_modules"] = sorted(k for k in sys.modules if k.split(".")[0] in ("model", "trainer", "pipeline"))
    print("RESULT " + json.dumps(out))
''')


def run_script(tmp_path, script, *args, timeout=300, project=True):
    path = tmp_path / f"script_{abs(hash(script))}.py"
    path.write_text(script)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    if project:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    else:  # A fresh process that can import only TensorFlow (run outside the checkout).
        env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def assert_valid_sketches(strokes, lengths, n_max):
    strokes, lengths = np.asarray(strokes), np.asarray(lengths)
    assert strokes.shape[1:] == (n_max, 3)
    assert np.all(np.isfinite(strokes))
    for s, n in zip(strokes, lengths):
        assert 1 <= n <= n_max
        assert set(np.unique(s[:n, 2])) <= {0.0, 1.0} and s[n - 1, 2] == 1.0
        assert np.all(s[n:] == 0)


def _losses(logs):
    return [float(x.split(" cost ")[1].split()[0]) for x in logs if x.startswith("step ")]


def test_train_mirrored_resume_export(tmp_path, sample_dir):
    sketches = sample_sketches(sample_dir, limit=160)
    data = tmp_path / "data"
    metadata = write_dataset(data, sketches)
    model_dir = tmp_path / "run"
    first = run_script(tmp_path, TRAIN_SCRIPT, data, model_dir, 40, 0)
    assert first["step"] == 40
    losses = _losses(first["logs"])
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < np.mean(losses[:8])  # Learns on real sketches.
    ckpts = sorted(os.listdir(model_dir / "checkpoints"))
    assert any(c.startswith("ckpt-40.") for c in ckpts) and any(c.startswith("ckpt-30.") for c in ckpts)
    assert os.listdir(model_dir / "best")
    assert json.loads((model_dir / "hparams.json").read_text())["batch_size"] == 16
    assert json.loads((model_dir / "metadata.json").read_text()) == metadata
    _check_tensorboard(model_dir)

    second = run_script(tmp_path, TRAIN_SCRIPT, data, model_dir, 50, 1)
    assert second["logs"][0].startswith(f"resumed from {model_dir / 'checkpoints' / 'ckpt-40'}")
    steps = [int(x.split()[1].split("/")[0]) for x in second["logs"] if x.startswith("step ")]
    assert steps == list(range(41, 51))  # Continues at the saved step.
    export = pathlib.Path(second["export_path"])
    assert (export / "saved_model.pb").exists()
    assert json.loads((export / "assets.extra" / "metadata.json").read_text()) == {
        **metadata, "n_max": metadata["max_seq_len"]}

    probe = sketches[0]
    out = run_script(tmp_path, LOAD_SCRIPT, export, json.dumps(probe.tolist()), project=False)
    assert out["project_modules"] == []
    n_max = metadata["max_seq_len"]
    assert out["signatures"] == ["complete", "decode", "encode", "sample", "serving_default"]
    assert out["sample_repeat_equal"]
    assert_valid_sketches(*out["sample"], n_max)
    assert_valid_sketches(*out["decode"], n_max)
    assert_valid_sketches(*out["complete"], n_max)
    mu, sigma = np.array(out["mu"]), np.array(out["sigma"])
    assert mu.shape == (1, 8) and np.all(sigma > 0)
    # The completion starts with the given prefix, in pixel units.
    comp = np.array(out["complete"][0])
    np.testing.assert_allclose(comp[:, :4, :2], np.broadcast_to(probe[:4, :2], (2, 4, 2)), rtol=1e-4, atol=1e-3)
    assert np.all(np.array(out["complete"][1]) >= 5)


def test_cli_rejects_bad_set(tmp_path):
    from trainer import cli
    assert cli.main(["--data", str(tmp_path), "--model-dir", str(tmp_path / "m"), "--set", "nope=1"]) == 2
    assert cli.main(["--data", str(tmp_path), "--model-dir", str(tmp_path / "m"), "--steps", "1"]) == 1


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, sample_dir):
    from model.hparams import HParams
    from trainer.train import NonFiniteLossError, train_and_evaluate

    sketches = sample_sketches(sample_dir, limit=60)
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_dataset(good, sketches, shards=1)
    poisoned = [s.copy() for s in sketches]
    for s in poisoned:
        s[1, 0] = np.nan
    write_dataset(bad, poisoned, max_len=max(len(s) for s in sketches), shards=1)
    # Same max_seq_len; the scale factor of the poisoned set is NaN, so copy the good metadata.
    (bad / "metadata.json").write_text((good / "metadata.json").read_text())
    hps = HParams.preset("tiny").replace(batch_size=4)
    kw = dict(checkpoint_every=2, eval_every=0, log_every=1, export=False, test_at_end=False, log=lambda s: None)
    train_and_evaluate(str(good), str(tmp_path / "run"), hps, 4, "one_device", **kw)
    with pytest.raises(NonFiniteLossError, match=r"at step 5: .*ckpt-4"):
        train_and_evaluate(str(bad), str(tmp_path / "run"), hps, 8, "one_device", **kw)
    import tensorflow as tf
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-4")


def test_hparams_mismatch_is_refused(tmp_path, sample_dir):
    from model.hparams import HParams
    from trainer.train import train_and_evaluate

    write_dataset(tmp_path / "d", sample_sketches(sample_dir, limit=40), shards=1)
    hps = HParams.preset("tiny").replace(batch_size=4)
    kw = dict(eval_every=0, export=False, test_at_end=False, log=lambda s: None)
    train_and_evaluate(str(tmp_path / "d"), str(tmp_path / "run"), hps, 1, "one_device", **kw)
    with pytest.raises(ValueError, match="learning_rate"):
        train_and_evaluate(str(tmp_path / "d"), str(tmp_path / "run"), hps.replace(learning_rate=0.1), 2,
                           "one_device", **kw)


def test_render_grid_draws_lines():
    from trainer.train import render_grid

    square = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [-10, 0, 0], [0, -10, 1]], np.float32)
    img = render_grid([square, square * [2, 1, 1]], cell=32, columns=2)
    assert img.shape == (32, 64, 1) and img.dtype == np.uint8
    left = img[:, :32, 0]
    assert 60 < (left < 128).sum() < 250  # Four 24-pixel edges, anti-aliased lines about 1.5 px wide.
    assert left[16, 16] == 255  # The inside of the square stays blank.


def test_train_and_export_clis(tmp_path, sample_dir, capsys):
    from trainer import cli, export_cli

    write_dataset(tmp_path / "d", sample_sketches(sample_dir, limit=40), shards=1)
    run = tmp_path / "run"
    assert cli.main(["--data", str(tmp_path / "d"), "--model-dir", str(run), "--preset", "tiny",
                     "--set", "batch_size=4", "--steps", "3", "--strategy", "one_device",
                     "--log-every", "1", "--eval-every", "2", "--no-export"]) == 0
    out = capsys.readouterr().out
    assert "step 3/3 cost" in out and "sketches/s ETA" in out and "valid step 2" in out
    assert not (run / "export").exists()
    assert export_cli.main(["--model-dir", str(run), "--export-dir", str(tmp_path / "exp"),
                            "--version", "7", "--checkpoint", "best"]) == 0
    assert (tmp_path / "exp" / "7" / "saved_model.pb").exists()
    assert (tmp_path / "exp" / "7" / "assets.extra" / "hparams.json").exists()
    assert export_cli.main(["--model-dir", str(tmp_path / "nothing"), "--export-dir", str(tmp_path / "e")]) == 1
    assert "hparams.json not found" in capsys.readouterr().err


class Stop(Exception):
    """Raised by the test's signal handlers (a KeyboardInterrupt escaping would end pytest)."""


def test_deferred_signals_reach_their_handlers_after_the_block():
    import signal
    import threading

    from trainer import interrupts

    came = []

    def handler(signum, frame):
        came.append(signum)
        raise Stop(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.signal(signum, handler)
        try:
            finished = False
            with pytest.raises(Stop):
                with interrupts.deferred():
                    os.kill(os.getpid(), signum)
                    os.kill(os.getpid(), signum)  # The same signal twice is passed on once,
                    finished = True               # after the block has run to its end.
            assert finished and came == [signum]
            assert signal.getsignal(signum) is handler  # The handler is back in place.
        finally:
            signal.signal(signum, previous)
        came.clear()
    # A signal left to its default action is not held (SIGTERM would end the process at once).
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with interrupts.deferred():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Outside the main thread (no handlers can be installed there) the block just runs.
    ran = []

    def in_a_thread():
        with interrupts.deferred():
            ran.append(True)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert ran == [True]


def test_sigterm_during_an_export_lets_it_finish_then_saves_and_stops(tmp_path, sample_dir, monkeypatch):
    """`sketch-rnn train` turns SIGTERM into KeyboardInterrupt. One that comes while a version is
    being exported waits until the version is complete (nothing half-written for a server to
    load), then the trainer saves its checkpoint and stops, as it does between steps."""
    import signal

    import tensorflow as tf

    from model.hparams import HParams
    from trainer.train import train_and_evaluate

    write_dataset(tmp_path / "d", sample_sketches(sample_dir, limit=40), shards=1)
    real_save = tf.saved_model.save

    def save_under_sigterm(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # Preemption just as the SavedModel is written.
        real_save(*args, **kwargs)

    def on_sigterm(signum, frame):  # as trainer/cli.py's
        raise KeyboardInterrupt

    monkeypatch.setattr(tf.saved_model, "save", save_under_sigterm)
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    logs = []
    try:
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(str(tmp_path / "d"), str(tmp_path / "run"),
                               HParams.preset("tiny").replace(batch_size=4), 6, "one_device",
                               checkpoint_every=100, eval_every=0, log_every=1, export_every=2,
                               test_at_end=False, log=logs.append)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert any(x.startswith("interrupted at step 2; checkpoint saved") for x in logs), logs
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")).endswith("ckpt-2")
    export = tmp_path / "run" / "export"
    (version,) = os.listdir(export)  # One complete version, no partial or temporary directory.
    assert version.isdigit()
    assert (export / version / "saved_model.pb").exists()
    assert (export / version / "assets.extra" / "metadata.json").exists()


EQUIV_SCRIPT = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from model.hparams import HParams
    from trainer.train import train_and_evaluate
    data, model_dir, strategy = sys.argv[1:4]
    keras.utils.set_random_seed(3)
    # Nothing random in the step: no z noise (unconditional), no dropout, no augmentation, and
    # full-length batches (each replica would trim its half differently).
    hps = HParams.preset("tiny").replace(conditional=False, use_recurrent_dropout=False, batch_size=8,
                                         augment_stroke_prob=0.0, random_scale_factor=0.0,
                                         trim_batches=False, bucket_batches=False)  # same batches
    train_and_evaluate(data, model_dir, hps, 3, strategy, checkpoint_every=1, eval_every=0, log_every=1,
                       export=False, test_at_end=False, log=lambda s: None)
    reader = tf.train.load_checkpoint(model_dir + "/checkpoints")
    first = tf.train.load_checkpoint(model_dir + "/checkpoints/ckpt-1")
    names = [n for n, _ in tf.train.list_variables(model_dir + "/checkpoints")
             if n.startswith(("model/", "optimizer/_variables/")) and n.endswith("VARIABLE_VALUE")]
    print("RESULT " + json.dumps({n: [reader.get_tensor(n).tolist(), first.get_tensor(n).tolist()] for n in names}))
''')


def test_two_replicas_update_like_one_device(tmp_path, sample_dir):
    """The replica loss scaling and gradient all-reduce: 2 mirrored replicas with half batches
    give the same weights and Adam moments (which scale with the gradient, unlike Adam's update)
    as one device with the whole batch, and the weights do move."""
    data = tmp_path / "data"
    write_dataset(data, sample_sketches(sample_dir, limit=64), shards=1)
    one = run_script(tmp_path, EQUIV_SCRIPT, data, tmp_path / "one", "one_device")
    two = run_script(tmp_path, EQUIV_SCRIPT, data, tmp_path / "two", "mirrored")
    assert set(one) == set(two) and any("head" in n for n in one) and any("optimizer" in n for n in one)
    for name in one:
        after_one, after_step1 = (np.array(x) for x in one[name])
        after_two = np.array(two[name][0])
        np.testing.assert_allclose(after_two, after_one, atol=2e-5, err_msg=name)
        if name.startswith("model/"):
            assert not np.allclose(after_one, after_step1), f"{name} did not change from step 1 to 3"


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_metrics_file_holds_the_reference_loss_terms(tmp_path, sample_dir):
    """MODEL_DIR/metrics.jsonl: train lines with the KL weight and floor the step really used,
    validation cost as the reference's, test at the end; a resumed run appends."""
    from model.hparams import HParams
    from trainer.train import train_and_evaluate

    write_dataset(tmp_path / "d", sample_sketches(sample_dir, limit=40), shards=1)
    hps = HParams.preset("tiny").replace(batch_size=4, kl_tolerance=0.05)
    run = tmp_path / "run"
    kw = dict(checkpoint_every=2, eval_every=2, log_every=2, export=False, log=lambda s: None)
    train_and_evaluate(str(tmp_path / "d"), str(run), hps, 4, "one_device", **kw)
    first = _metrics(run)
    assert [(m["split"], m["step"]) for m in first] == [
        ("train", 2), ("valid", 2), ("train", 4), ("valid", 4), ("test", 4)]
    for m in first:
        assert {"split", "step", "recon", "l_s", "l_p", "kl", "kl_floored", "cost", "wall_s"} <= set(m)
        assert m["recon"] == pytest.approx(m["l_s"] + m["l_p"], rel=1e-5)
        assert m["kl_floored"] >= hps.kl_tolerance - 1e-7
    for m in first:
        if m["split"] == "train":
            # The weight of step N (0-based N - 1), from the reference's formula, not our schedule code.
            w = hps.kl_weight - (hps.kl_weight - hps.kl_weight_start) * hps.kl_decay_rate ** (m["step"] - 1)
            assert m["kl_weight"] == pytest.approx(w, rel=1e-5)
            assert m["kl_floored"] == pytest.approx(max(m["kl"], hps.kl_tolerance), rel=1e-5)
            assert m["cost"] == pytest.approx(m["recon"] + w * m["kl_floored"], rel=1e-5)
            assert m["sketches_per_s"] > 0
        else:  # Validation / test: the reference's eval cost (its eval KL weight stays at the start).
            assert m["kl_floored"] >= m["kl"] - 1e-6 or m["kl_floored"] >= hps.kl_tolerance
            assert m["cost"] == pytest.approx(m["recon"] + hps.kl_weight_start * m["kl_floored"], rel=1e-5)
    train_and_evaluate(str(tmp_path / "d"), str(run), hps, 6, "one_device", **kw)
    second = _metrics(run)
    assert second[:len(first)] == first  # Appended, nothing rewritten.
    assert [(m["split"], m["step"]) for m in second[len(first):]] == [
        ("train", 6), ("valid", 6), ("test", 6)]
    assert second[len(first)]["wall_s"] > first[-1]["wall_s"]  # Training time adds up over runs.


def test_trimming_changes_speed_not_the_loss(tmp_path, sample_dir):
    """The same first step padded to N_max and trimmed: identical L_s and KL (both divide by N_max).
    L_p: trimming alone (decoder_end_rows=0) leaves out the cut padding rows' pen loss (small,
    positive); the default decoder_end_rows counts the last row run for every padding row after
    it, which comes back close to the padded L_p."""
    import keras
    from model.hparams import HParams
    from trainer.train import train_and_evaluate

    write_dataset(tmp_path / "d", sample_sketches(sample_dir, limit=40), shards=1)
    hps = HParams.preset("tiny").replace(batch_size=4, augment_stroke_prob=0.0, random_scale_factor=0.0,
                                         use_recurrent_dropout=False)
    got = {}
    for name, sets in (("padded", dict(trim_batches=False)), ("cut", dict(decoder_end_rows=0)),
                       ("default", {})):
        keras.utils.set_random_seed(3)
        r = train_and_evaluate(str(tmp_path / "d"), str(tmp_path / name), hps.replace(**sets),
                               1, "one_device", eval_every=0, log_every=1, export=False, test_at_end=False,
                               log=lambda s: None)
        got[name] = r["train"]
    for name in ("cut", "default"):
        assert got[name]["l_s"] == pytest.approx(got["padded"]["l_s"], rel=1e-5)
        assert got[name]["kl"] == pytest.approx(got["padded"]["kl"], rel=1e-5)
    padded = got["padded"]["l_p"]
    assert 0 < padded - got["cut"]["l_p"] < 0.5 * padded
    assert abs(got["default"]["l_p"] - padded) < 0.15 * padded


def test_validation_measures_the_decoder_as_trained(tmp_path, sample_dir):
    """With decoder_end_rows, training stops each sketch's decoder that many rows after its end and
    counts the last row's pen loss for every padding row after it up to N_max. Validation measures
    that model: its L_p (over all N_max rows) is that sum, computed here from the first
    len + decoder_end_rows rows of a decoder run over all rows, so rows no step trained do not
    count. With trim_batches=false (every row trained), the plain sum over all N_max rows, as the
    reference. Unconditional, so no z is drawn and the numbers repeat exactly."""
    import tensorflow as tf
    from model import losses
    from model.hparams import HParams
    from pipeline import schema
    from trainer import input as input_lib
    from trainer.train import load_trained_model, train_and_evaluate

    write_dataset(tmp_path / "d", sample_sketches(sample_dir, limit=80), shards=1)
    base = HParams.preset("tiny").replace(conditional=False, batch_size=8, decoder_end_rows=2,
                                          augment_stroke_prob=0.0, random_scale_factor=0.0)
    for name, hps in (("trimmed", base), ("padded", base.replace(trim_batches=False))):
        run = tmp_path / name
        train_and_evaluate(str(tmp_path / "d"), str(run), hps, 30, "one_device", checkpoint_every=30,
                           eval_every=30, log_every=30, export=False, test_at_end=False,
                           log=lambda s: None)
        logged = [m for m in _metrics(run) if m["split"] == "valid"][-1]
        model, _, metadata = load_trained_model(str(run))
        n_max = schema.n_max(metadata)
        full, as_trained, count = 0.0, 0.0, 0
        for batch in input_lib.make_dataset(str(tmp_path / "d"), "valid", hps.replace(trim_batches=False),
                                            metadata, 8, False):
            assert batch["strokes"].shape[1] == n_max
            out = model(batch, training=False)["outputs"]  # Every row run.
            rows = tf.minimum(batch["lengths"] + hps.decoder_end_rows, n_max)
            full += float(tf.reduce_sum(losses.per_example_reconstruction_loss(
                batch["strokes"], out, hps.num_mixture, max_seq_len=n_max)[1]))
            as_trained += float(tf.reduce_sum(losses.per_example_reconstruction_loss(
                batch["strokes"], out, hps.num_mixture, max_seq_len=n_max, run_lengths=rows)[1]))
            count += int(batch["lengths"].shape[0])
        full, as_trained = full / count, as_trained / count
        if name == "trimmed":
            assert abs(full - as_trained) > 1e-3 * full  # The untrained rows do differ here...
            assert logged["l_p"] == pytest.approx(as_trained, rel=1e-5)  # ...and are not counted.
        else:
            assert logged["l_p"] == pytest.approx(full, rel=1e-5)


def _check_tensorboard(model_dir):
    """The event files, read back with TensorBoard's own reader: the train scalars are the values of
    metrics.jsonl, validation has its own run, the sample grid is a PNG the images plugin shows."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    def load(run):
        acc = EventAccumulator(str(model_dir / "tensorboard" / run), size_guidance={"tensors": 0})
        acc.Reload()
        return acc

    train, valid = load("train"), load("valid")
    assert train.SummaryMetadata("cost").plugin_data.plugin_name == "scalars"
    logged = {m["step"]: m for m in map(json.loads, (model_dir / "metrics.jsonl").read_text().splitlines())
              if m["split"] == "train"}
    events = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in train.Tensors("cost")}
    assert sorted(events) == sorted(logged) and len(events) == 40
    assert all(abs(events[k] - logged[k]["cost"]) < 1e-5 for k in events)
    assert [e.step for e in valid.Tensors("recon")] == [20, 40]
    image = train.Tensors("samples_t0.5")[-1]
    assert train.SummaryMetadata("samples_t0.5").plugin_data.plugin_name == "images"
    width, height, png = tf.make_ndarray(image.tensor_proto)[:3]
    decoded = tf.io.decode_png(png).numpy()
    assert decoded.shape == (int(height), int(width), 1) and decoded.min() < 128 < decoded.max()  # ink on paper


SPLITS_SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    from trainer import train
    out = {}
    # Before TensorFlow's runtime starts its thread pools can be set again and again: each core
    # count in turn, as a fresh process with that many cores would see it.
    for cores in map(int, sys.argv[1:]):
        train.available_cores = lambda: cores
        first = train.resolve_rnn_batch_splits(0)
        pools = [tf.config.threading.get_intra_op_parallelism_threads(),
                 tf.config.threading.get_inter_op_parallelism_threads()]
        out[cores] = {"first": first, "pools": pools}
    tf.constant(1.0) + 1.0  # The runtime starts: its pools can no longer change.
    train.available_cores = lambda: 4
    out["again"] = train.resolve_rnn_batch_splits(0)
    out["set"] = train.resolve_rnn_batch_splits(3)
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture
def no_pool_env(monkeypatch):
    """TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS unset: the pools are left to the function."""
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        monkeypatch.delenv(name, raising=False)


def test_rnn_batch_splits_auto_one_loop_per_core_with_single_threaded_ops(tmp_path, no_pool_env):
    got = run_script(tmp_path, SPLITS_SCRIPT, 16, 1, 2)
    assert got["16"]["first"] == [4, "auto: 16 cores, 4 intra-op / 16 inter-op threads"]
    assert got["16"]["pools"] == [4, 16]
    assert got["1"]["first"] == [1, "auto: 1 core, 1 intra-op / 1 inter-op threads"]
    assert got["1"]["pools"] == [1, 1]
    assert got["2"]["first"] == [2, "auto: 2 cores, 1 intra-op / 2 inter-op threads"]
    assert got["2"]["pools"] == [1, 2]
    assert got["again"] == [4, "auto: 4 cores, TensorFlow's thread pools already started"]
    assert got["set"] == [3, "set"]


@pytest.mark.parametrize("env, loops", [
    ({"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}, 1),
    ({"TF_NUM_INTRAOP_THREADS": "2"}, 4),
    ({"TF_NUM_INTEROP_THREADS": "0"}, 4),  # 0: TensorFlow's default, all cores.
])
def test_rnn_batch_splits_auto_keeps_thread_pools_from_the_environment(no_pool_env, monkeypatch, env, loops):
    """Pools set through the environment are kept: the function returns before it touches them
    (so it runs here, in the test process, whose pools are long started)."""
    from trainer import train

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(train, "available_cores", lambda: 4)
    monkeypatch.setattr(train.tf.config, "list_physical_devices", lambda kind=None: [])  # No GPU.
    assert train.resolve_rnn_batch_splits(0) == (loops, "auto: 4 cores, thread pools from the environment")


STRATEGY_SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    if sys.argv[1] == "2":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from trainer.train import describe_strategy, select_strategy
    out = {}
    for name in ("mirrored", "one_device"):
        s = select_strategy(name)
        out[name] = [s is tf.distribute.get_strategy(), type(s).__name__, s.num_replicas_in_sync,
                     describe_strategy(s)]
    print("RESULT " + json.dumps(out))
''')


def test_one_cpu_device_trains_under_the_default_strategy(tmp_path):
    """One CPU and no GPU: `mirrored` and `one_device` give TensorFlow's default strategy (a
    one-replica MirroredStrategy costs ~a fifth of a CPU step); two logical CPUs stay mirrored."""
    one = run_script(tmp_path, STRATEGY_SCRIPT, 1)
    for name in ("mirrored", "one_device"):
        assert one[name][0] and one[name][2] == 1, one
        assert one[name][3] == "default (one CPU device: nothing to distribute)"
    two = run_script(tmp_path, STRATEGY_SCRIPT, 2)
    assert two["mirrored"][:3] == [False, "MirroredStrategy", 2]
    assert two["mirrored"][3].startswith("MirroredStrategy over 2 replica(s): ")
    assert two["one_device"][0]  # Still one device: the default strategy.
