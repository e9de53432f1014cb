import json

import pytest

from model.hparams import PRESETS, HParams


def test_paper_preset_matches_reference_defaults():
    hps = HParams.preset("paper")
    assert (hps.enc_rnn_size, hps.dec_rnn_size, hps.z_size, hps.num_mixture) == (256, 512, 128, 20)
    assert (hps.batch_size, hps.learning_rate, hps.decay_rate, hps.min_learning_rate) == (100, 1e-3, 0.9999, 1e-5)
    assert (hps.kl_weight, hps.kl_weight_start, hps.kl_decay_rate, hps.kl_tolerance) == (0.5, 0.01, 0.99995, 0.2)
    assert hps.grad_clip == 1.0 and hps.recurrent_dropout_rate == 0.1 and hps.use_recurrent_dropout
    assert hps.random_scale_factor == 0.15 and hps.augment_stroke_prob == 0.10 and hps.conditional


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    hps = HParams.preset(name)
    assert HParams.from_json(hps.to_json()) == hps
    assert set(json.loads(hps.to_json())) == set(HParams.field_names())


def test_overrides_parse_by_type_and_reject_unknown_names():
    hps = HParams.preset("tiny").with_overrides(["z_size=4", "use_recurrent_dropout=false", "kl_weight=0.25"])
    assert hps.z_size == 4 and hps.use_recurrent_dropout is False and hps.kl_weight == 0.25
    with pytest.raises(ValueError, match="unknown hyperparameter 'zsize'"):
        hps.with_overrides(["zsize=4"])
    with pytest.raises(ValueError, match="expects int"):
        hps.with_overrides(["z_size=four"])
    with pytest.raises(ValueError, match="expected NAME=VALUE"):
        hps.with_overrides(["z_size"])
    with pytest.raises(ValueError, match="unknown preset"):
        HParams.preset("huge")


def test_invalid_values_are_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="recurrent_dropout_rate"):
        HParams(recurrent_dropout_rate=1.5)
    with pytest.raises(ValueError, match="dec_model"):
        HParams(dec_model="gru")
    assert HParams(dec_model="hyper").dec_model == "hyper"
    with pytest.raises(ValueError, match="enc_model.*HyperLSTM encoder is not implemented"):
        HParams(enc_model="hyper")
    with pytest.raises(ValueError, match="z_size"):
        HParams(z_size=0)
    with pytest.raises(AttributeError):
        HParams().z_size = 3  # frozen


def test_diff_lists_the_differing_fields_with_both_values():
    a = HParams.preset("paper")
    b = a.replace(z_size=64, augment_flip_prob=0.5)
    assert a.diff(b) == {"z_size": (128, 64), "augment_flip_prob": (0.0, 0.5)}
    assert b.diff(a) == {"z_size": (64, 128), "augment_flip_prob": (0.5, 0.0)}
    assert a.diff(b, ["z_size", "dec_rnn_size"]) == {"z_size": (128, 64)}
    assert a.diff(a) == {}
    assert a.diff(b, []) == {}   # no names: nothing compared
