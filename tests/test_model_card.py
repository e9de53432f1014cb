"""scripts/model_card.py: a card written from a (fake) export and run records, with several classifier
reports pooled into one rate, and reports that cannot be pooled refused before anything is written."""

import importlib.util
import json
import pathlib
import sys

import pytest

from model.hparams import HParams

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "model_card.py"
_spec = importlib.util.spec_from_file_location("model_card", SCRIPT)
mc = sys.modules["model_card"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mc)


def report(seed, hits, never, num=10, temperature=0.5, export="exp/7", category="pig"):
    other = num - hits
    return {"category": category, "num": num, "recognised": hits / num,
            "histogram": {category: hits, "other": other}, "near_empty": 0, "never_ending": never,
            "source": {"export": export, "temperature": temperature, "seed": seed, "max_len": 40},
            "classifier": "/nonexistent"}


def test_pool_scores_sums_per_seed_counts():
    pooled = mc.pool_scores([report(1, 7, 2), report(2, 5, 1), report(3, 9, 0)])
    assert (pooled["hits"], pooled["num"], pooled["never_ending"]) == (21, 30, 3)
    assert [(r["seed"], r["hits"]) for r in pooled["rows"]] == [(1, 7), (2, 5), (3, 9)]


@pytest.mark.parametrize("seeds, spec", [([3], "3"), ([1, 2, 3, 4, 5], "1-5"), ([1, 2], "1,2"), ([1, 4, 5], "1,4,5")])
def test_seed_spec_redraws_the_reports_seeds(seeds, spec):
    assert mc.seed_spec([report(s, 5, 0) for s in seeds]) == spec


@pytest.mark.parametrize("other, field", [
    (report(2, 5, 1, temperature=0.8), "temperature"),
    (report(2, 5, 1, export="exp/8"), "export"),
    (report(2, 5, 1, category="face"), "category"),
    (report(1, 5, 1), "seed"),
])
def test_pool_scores_refuses_reports_that_do_not_belong_together(other, field):
    with pytest.raises(ValueError, match=field):
        mc.pool_scores([report(1, 7, 2), other])


def fake_run(tmp_path, meta_extra=None):
    """A version dir with what the card reads (no real SavedModel: the card never loads one)."""
    version = tmp_path / "export" / "7"
    (version / "assets.extra").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    (version / "assets.extra" / "hparams.json").write_text(HParams.preset("tiny").replace(kl_weight=1.0).to_json())
    (version / "assets.extra" / "metadata.json").write_text(json.dumps(
        {"counts": {"train": 20, "valid": 4, "test": 4}, "n_max": 40, "scale_factor": 12.5,
         **(meta_extra or {})}))
    run = tmp_path / "run"
    run.mkdir()
    records = []
    for step in (5, 10):
        records.append({"split": "train", "step": step, "wall_s": 3.0 * step, "cost": 1.0})
        records.append({"split": "valid", "step": step, "cost": 1.0 / step, "recon": 0.9 / step, "l_s": 0.5,
                        "l_p": 0.4, "kl": 0.1, "kl_floored": 0.2})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return version, run


def fake_stage(directory, hps, step, wall_s):
    """An earlier stage's --model-dir: its hparams.json and one train and one valid record at `step`."""
    directory.mkdir()
    (directory / "hparams.json").write_text(hps.to_json())
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"split": "train", "step": step, "wall_s": wall_s, "cost": 1.0},
        {"split": "valid", "step": step, "cost": 0.01, "recon": 0.01, "l_s": 0.0, "l_p": 0.01, "kl": 0.2,
         "kl_floored": 0.2}]))
    return directory


def run_card(monkeypatch, tmp_path, reports, extra=(), meta_extra=None):
    version, run = fake_run(tmp_path, meta_extra=meta_extra)
    paths = []
    for i, r in enumerate(reports):
        path = tmp_path / f"score_{i}.json"
        path.write_text(json.dumps(r))
        paths += ["--score", str(path)]
    out = tmp_path / "card" / "MODEL_CARD.md"
    monkeypatch.setattr(sys, "argv", ["model_card.py", "--name", "pig", "--model-dir", str(run), "--data", "d",
                                      "--export", str(version), "--source", "pig.npz", *paths, *extra,
                                      "--out", str(out)])
    return mc.main(), out


def test_card_shows_the_first_report_and_the_pooled_rate(monkeypatch, tmp_path):
    rc, out = run_card(monkeypatch, tmp_path, [report(1, 7, 2), report(2, 5, 1)],
                       ["--note", "Also tried: nothing else."])
    assert rc == 0
    card = out.read_text()
    assert "**70% recognised as pig**" in card            # seed 1 in full
    assert "**12 / 20 = 60.0% recognised**" in card       # both seeds pooled
    assert "| 2 | 5 / 10 | 1 | 0 |" in card
    assert "Also tried: nothing else." in card
    assert "preset `tiny` with `kl_weight=1.0`" in card
    assert "--version 7" in card
    assert "(lowest validation cost up to it: step 5)" in card
    # Step 7 is neither the best (5) nor the last (10) checkpoint: the export names it.
    assert "--checkpoint runs/m_pig/checkpoints/ckpt-7 --version 7" in card


def test_card_names_the_resimplification_in_data_and_reproduce(monkeypatch, tmp_path):
    rc, out = run_card(monkeypatch, tmp_path, [report(1, 7, 2)], meta_extra={"resimplify_epsilon": 6.0})
    card = out.read_text()
    assert rc == 0 and "(`--resimplify-epsilon 6`: RDP run again" in card
    assert "sketch-rnn preprocess --input pig.npz --output runs/qd/pig --resimplify-epsilon 6\n" in card
    rc, out = run_card(monkeypatch, tmp_path / "plain", [report(1, 7, 2)])
    assert rc == 0 and "resimplify" not in out.read_text()


def test_two_stage_card_picks_stage_two_best_and_shows_both_commands(monkeypatch, tmp_path):
    """Stage 1's costs (another KL floor) do not compete with stage 2's for 'lowest'."""
    first = fake_stage(tmp_path / "first", HParams.preset("tiny"), 2, 4.0)
    rc, out = run_card(monkeypatch, tmp_path, [report(1, 7, 2)],
                       ["--init-from-dir", str(first), "--init-step", "2"])
    card = out.read_text()
    assert rc == 0
    assert "(lowest validation cost of stage 2 up to it: step 5)" in card
    assert "--init-from runs/m_pig/checkpoints/ckpt-2" in card
    assert "with `kl_weight=1.0`" in card   # what stage 2 changed
    assert "--checkpoint runs/m_pig_2/checkpoints/ckpt-7 --version 7" in card


def test_card_refuses_reports_of_another_temperature_and_writes_nothing(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_card(monkeypatch, tmp_path, [report(1, 7, 2), report(2, 5, 1, temperature=0.8)])
    assert e.value.code == 2
    assert "differ in temperature" in capsys.readouterr().err
    assert not (tmp_path / "card").exists()


def test_note_without_score_is_refused(monkeypatch, tmp_path):
    with pytest.raises(SystemExit):
        run_card(monkeypatch, tmp_path, [], ["--note", "orphan"])
    assert not (tmp_path / "card").exists()


def test_three_stage_card_chains_the_commands(monkeypatch, tmp_path):
    stages = []
    for name, step, hps in (("s1", 2, HParams.preset("tiny")),
                            ("s2", 4, HParams.preset("tiny").replace(augment_flip_prob=0.5))):
        d = fake_stage(tmp_path / name, hps, step, 3600.0)
        stages += ["--init-from-dir", str(d), "--init-step", str(step)]
    rc, out = run_card(monkeypatch, tmp_path, [report(1, 7, 2)], stages)
    card = out.read_text()
    assert rc == 0
    assert "lowest validation cost of stage 3 up to it: step 5" in card
    assert "to step 2; from there" in card and "with `augment_flip_prob=0.5` to step 4; from there" in card
    assert "--model-dir runs/m_pig --preset tiny  --steps 2" in card
    assert "--model-dir runs/m_pig_2 --preset tiny --set augment_flip_prob=0.5 --init-from " \
           "runs/m_pig/checkpoints/ckpt-2 --steps 4" in card
    assert "--model-dir runs/m_pig_3 --preset tiny --set kl_weight=1.0 " \
           "--init-from runs/m_pig_2/checkpoints/ckpt-4 --steps 10" in card
    assert "--model-dir runs/m_pig_3 --export-dir deploy/pretrained/pig " \
           "--checkpoint runs/m_pig_3/checkpoints/ckpt-7" in card
    assert "in 2.01 h of wall clock" in card   # 1 h + 1 h of the earlier stages + 30 s of the last


def test_init_steps_must_increase(monkeypatch, tmp_path):
    with pytest.raises(SystemExit):
        run_card(monkeypatch, tmp_path, [report(1, 7, 2)],
                 ["--init-from-dir", "a", "--init-step", "4", "--init-from-dir", "b", "--init-step", "2"])
