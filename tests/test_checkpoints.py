"""A lost or damaged checkpoint: resume from the newest one that restores, say which and why,
never restart from step 0 silently (trainer/checkpoints.py and the trainer's resume)."""

from __future__ import annotations

import hashlib
import os
import pathlib

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from test_input import sample_sketches, write_dataset  # noqa: E402
from trainer import checkpoints  # noqa: E402


def _save_three(directory: pathlib.Path):
    """Checkpoints at steps 1, 2, 3 of a variable that holds its step in every entry."""
    v = tf.Variable(tf.zeros([256]))
    ckpt = tf.train.Checkpoint(v=v)
    manager = tf.train.CheckpointManager(ckpt, str(directory), max_to_keep=5, checkpoint_name="ckpt")
    for i in (1, 2, 3):
        v.assign(tf.fill([256], float(i)))
        manager.save(checkpoint_number=i)
    v.assign(tf.zeros([256]))
    return v, ckpt


def _data(directory: pathlib.Path, step: int) -> pathlib.Path:
    return directory / f"ckpt-{step}.data-00000-of-00001"


@pytest.mark.parametrize("damage", ["index_deleted", "data_truncated", "data_corrupted",
                                    "data_deleted"])
def test_falls_back_to_the_previous_checkpoint(tmp_path, damage):
    v, ckpt = _save_three(tmp_path)
    if damage == "index_deleted":
        (tmp_path / "ckpt-3.index").unlink()
    elif damage == "data_truncated":
        data = _data(tmp_path, 3).read_bytes()
        _data(tmp_path, 3).write_bytes(data[: len(data) // 2])
    elif damage == "data_corrupted":
        data = bytearray(_data(tmp_path, 3).read_bytes())
        data[100] ^= 0xFF
        _data(tmp_path, 3).write_bytes(bytes(data))
    else:
        _data(tmp_path, 3).unlink()
    logs = []
    restored = checkpoints.restore_newest(ckpt, str(tmp_path), log=logs.append)
    assert restored == str(tmp_path / "ckpt-2")
    np.testing.assert_array_equal(v.numpy(), np.full([256], 2.0))
    assert len(logs) == 1 and "skipped checkpoint" in logs[0] and "ckpt-3" in logs[0]
    expected = {"index_deleted": "missing", "data_deleted": "missing", "data_truncated": "truncated",
                "data_corrupted": "checksum"}[damage]
    assert expected in logs[0]


def test_state_file_lost_still_finds_checkpoints(tmp_path):
    v, ckpt = _save_three(tmp_path)
    (tmp_path / "checkpoint").unlink()
    assert checkpoints.restore_newest(ckpt, str(tmp_path), log=lambda s: None) == str(tmp_path / "ckpt-3")
    np.testing.assert_array_equal(v.numpy(), np.full([256], 3.0))


def test_none_restores_is_an_error_and_empty_is_a_fresh_start(tmp_path):
    v, ckpt = _save_three(tmp_path)
    for step in (1, 2, 3):
        (tmp_path / f"ckpt-{step}.index").unlink()
    with pytest.raises(checkpoints.NoRestorableCheckpointError, match="no checkpoint in .* restores"):
        checkpoints.restore_newest(ckpt, str(tmp_path), log=lambda s: None)
    assert checkpoints.restore_newest(ckpt, str(tmp_path / "nothing"), log=lambda s: None) is None


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_resumes_from_the_previous_checkpoint(tmp_path, sample_dir):
    """The issue's check: delete the newest checkpoint's .index and rerun the same training."""
    from model.hparams import HParams
    from trainer.train import train_and_evaluate

    write_dataset(tmp_path / "d", sample_sketches(sample_dir, limit=40), shards=1)
    hps = HParams.preset("tiny").replace(batch_size=4)
    run = tmp_path / "run"
    kw = dict(checkpoint_every=2, eval_every=0, log_every=1, export=False, test_at_end=False)
    train_and_evaluate(str(tmp_path / "d"), str(run), hps, 4, "one_device", log=lambda s: None, **kw)
    ckpts = run / "checkpoints"
    (ckpts / "ckpt-4.index").unlink()
    before = {p.name: _digest(p) for p in ckpts.glob("ckpt-2.*")}
    logs = []
    result = train_and_evaluate(str(tmp_path / "d"), str(run), hps, 6, "one_device", log=logs.append, **kw)
    assert logs[0].startswith(f"skipped checkpoint {ckpts / 'ckpt-4'}: its .index or .data file is missing")
    assert logs[1] == f"resumed from {ckpts / 'ckpt-2'} at step 2"
    steps = [int(x.split()[1].split("/")[0]) for x in logs if x.startswith("step ")]
    assert steps == [3, 4, 5, 6]
    assert result["step"] == 6
    # The good checkpoint was not overwritten; the lost one is written anew from the resumed model.
    assert {p.name: _digest(p) for p in ckpts.glob("ckpt-2.*")} == before
    assert (ckpts / "ckpt-4.index").exists()
    assert tf.train.latest_checkpoint(str(ckpts)) == str(ckpts / "ckpt-6")


def test_cli_refuses_a_run_whose_checkpoints_are_all_broken(tmp_path, sample_dir, capsys):
    from trainer import cli
    from model.hparams import HParams
    from trainer.train import train_and_evaluate

    write_dataset(tmp_path / "d", sample_sketches(sample_dir, limit=40), shards=1)
    run = tmp_path / "run"
    train_and_evaluate(str(tmp_path / "d"), str(run), HParams.preset("tiny").replace(batch_size=4), 2,
                       "one_device", checkpoint_every=1, eval_every=0, export=False, test_at_end=False,
                       log=lambda s: None)
    for data in (run / "checkpoints").glob("ckpt-*.data-*"):
        data.write_bytes(data.read_bytes()[:10])
    kept = sorted(os.listdir(run / "checkpoints"))
    rc = cli.main(["--data", str(tmp_path / "d"), "--model-dir", str(run), "--preset", "tiny",
                   "--set", "batch_size=4", "--steps", "4", "--strategy", "one_device", "--no-export"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "restores" in err and "truncated" in err
    assert sorted(os.listdir(run / "checkpoints")) == kept  # Nothing saved over them.


def test_init_from_continues_another_run_with_new_hparams(tmp_path, sample_dir):
    """--init-from: a new model dir starts from another run's checkpoint (weights, optimizer state,
    step), under other training hparams; the first run's files are untouched; a shape mismatch
    and a missing prefix are refused before anything is written."""
    from model.hparams import HParams
    from trainer.train import load_trained_model, train_and_evaluate

    write_dataset(tmp_path / "d", sample_sketches(sample_dir, limit=40), shards=1)
    hps = HParams.preset("tiny").replace(batch_size=4)
    kw = dict(checkpoint_every=2, eval_every=0, log_every=1, export=False, test_at_end=False)
    first = tmp_path / "first"
    train_and_evaluate(str(tmp_path / "d"), str(first), hps, 4, "one_device", log=lambda s: None,
                       **{**kw, "eval_every": 2})
    source = str(first / "checkpoints" / "ckpt-4")
    before = {p.name: _digest(p) for p in (first / "checkpoints").iterdir()}
    restored, _, _ = load_trained_model(str(first), source)

    second = tmp_path / "second"
    changed = hps.replace(augment_flip_prob=0.5, recurrent_dropout_rate=0.3)
    logs = []
    # Zero learning rate floor and decay 1: the weights after init equal the source's at step 4.
    frozen = changed.replace(learning_rate=1e-30, min_learning_rate=0.0)
    result = train_and_evaluate(str(tmp_path / "d"), str(second), frozen, 5, "one_device",
                                log=logs.append, init_from=source, **kw)
    assert f"initialised from {source} at step 4" in logs[0]
    assert [int(x.split()[1].split("/")[0]) for x in logs if x.startswith("step ")] == [5]
    assert result["step"] == 5
    after, saved_hps, _ = load_trained_model(str(second))
    assert saved_hps.augment_flip_prob == 0.5
    for a, b in zip(restored.weights, after.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.name)
    assert {p.name: _digest(p) for p in (first / "checkpoints").iterdir()} == before
    # The new run's `best` is the best of its own checkpoints: the first run's best cost is not carried.
    best_key = "best_cost/.ATTRIBUTES/VARIABLE_VALUE"
    assert np.isfinite(tf.train.load_checkpoint(source).get_tensor(best_key))
    assert np.isinf(tf.train.load_checkpoint(str(second / "checkpoints" / "ckpt-5")).get_tensor(best_key))

    # A rerun resumes its own checkpoint and says the flag is ignored.
    logs = []
    train_and_evaluate(str(tmp_path / "d"), str(second), frozen, 6, "one_device", log=logs.append,
                       init_from=source, **kw)
    assert logs[0] == f"resumed from {second / 'checkpoints' / 'ckpt-5'} at step 5"
    assert "ignored" in logs[1]

    with pytest.raises(ValueError, match="dec_rnn_size"):
        train_and_evaluate(str(tmp_path / "d"), str(tmp_path / "wide"), hps.replace(dec_rnn_size=48), 5,
                           "one_device", log=lambda s: None, init_from=source, **kw)
    assert not (tmp_path / "wide").exists()
    with pytest.raises(FileNotFoundError, match="ckpt-99.index is missing"):
        train_and_evaluate(str(tmp_path / "d"), str(tmp_path / "none"), hps, 5, "one_device",
                           log=lambda s: None, init_from=str(first / "checkpoints" / "ckpt-99"), **kw)
