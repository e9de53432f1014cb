"""The shipped exports under deploy/pretrained/ as a user (or an outside check) meets them: loaded with
TensorFlow alone, in a fresh process, and driven through their four signatures.

Guards the product itself, not a tiny export made for the tests: a shipped model that no longer loads
without this package, lost a signature, draws single dots or sketches that never end, or whose encoder
no longer reads what its decoder draws fails here. Samples depend on the CPU's float arithmetic, so the
bounds are loose ones that each shipped model clears with a wide margin (on an AVX2 CPU, seeds 1-3:
at most 1 of 16 never ended, no sample under 21 points or 100 px; at seed 1, 13-15 of 16 redraws found
their code), while the demo's 200-step export fails them (single dots, 1 of 16).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from deploy.sample import PRETRAINED_DIR as PRETRAINED, export_versions, shipped_models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = ("pig", "face", "alarm_clock")  # issue 11: at least these three

# Runs in a fresh interpreter: only tensorflow and numpy are imported, never this project's packages.
CHILD = r"""
import json, sys
import numpy as np
import tensorflow as tf

path = sys.argv[1]
m = tf.saved_model.load(path)
T = tf.constant
res = {"signatures": sorted(m.signatures.keys())}
s = m.signatures["sample"](num=T(16), temperature=T(0.5), seed=T(1))
again = m.signatures["sample"](num=T(16), temperature=T(0.5), seed=T(1))
other = m.signatures["sample"](num=T(16), temperature=T(0.5), seed=T(2))
strokes, lengths = s["strokes"].numpy(), s["lengths"].numpy()
res["n_max"] = int(strokes.shape[1])
res["lengths"] = lengths.tolist()
res["finite"] = bool(np.isfinite(strokes).all())
res["pen_values"] = sorted(set(np.unique(strokes[:, :, 2]).tolist()))
res["last_pen"] = [float(strokes[i, n - 1, 2]) for i, n in enumerate(lengths)]
res["padding_zero"] = all(not strokes[i, n:].any() for i, n in enumerate(lengths))
res["extent"] = [float(np.ptp(np.cumsum(strokes[i, :n, :2], 0), 0).max()) for i, n in enumerate(lengths)]
res["same_seed_same"] = bool(np.array_equal(strokes, again["strokes"].numpy()))
res["other_seed_same"] = bool(np.array_equal(strokes, other["strokes"].numpy()))

enc = m.signatures["encode"](strokes=s["strokes"], lengths=s["lengths"])
mu = enc["mu"].numpy()
res["z_size"] = int(mu.shape[1])
res["sigma_positive"] = bool((enc["sigma"].numpy() > 0).all())
zero, seed0 = T(0.0), T(0)
dec = m.signatures["decode"](z=enc["mu"], temperature=zero, seed=seed0)
mu2 = m.signatures["encode"](strokes=dec["strokes"], lengths=dec["lengths"])["mu"].numpy()
nearest = ((mu2[:, None] - mu[None]) ** 2).sum(-1).argmin(1)
res["cycle_hits"] = int((nearest == np.arange(len(mu))).sum())
# Interpolation: 5 codes on the line from sketch 0's to sketch 1's, decoded in one batch; its ends
# must be what each code alone decodes to (nothing leaks between the rows of a batch).
w = np.linspace(0.0, 1.0, 5, dtype=np.float32)[:, None]
lerp = m.signatures["decode"](z=T((1 - w) * mu[0] + w * mu[1]), temperature=zero, seed=seed0)
alone = m.signatures["decode"](z=T(mu[1:2]), temperature=zero, seed=seed0)
res["lerp_shape"] = list(lerp["strokes"].shape)
res["lerp_ends_match"] = bool(
    np.allclose(lerp["strokes"].numpy()[0], dec["strokes"].numpy()[0], atol=1e-3)
    and np.allclose(lerp["strokes"].numpy()[4], alone["strokes"].numpy()[0], atol=1e-3))

k = int(lengths[0]) // 2
prefix = s["strokes"][:1, :k]
c = m.signatures["complete"](strokes=prefix, lengths=T([k]), num=T(4), temperature=T(0.5), seed=T(1))
res["complete_prefix_err"] = float(np.abs(c["strokes"].numpy()[:, :k] - prefix.numpy()).max())
res["complete_prefix_len"] = k
res["complete_lengths"] = c["lengths"].numpy().tolist()
ours = sorted({n.split(".")[0] for n in sys.modules} & {"model", "trainer", "deploy", "pipeline"})
res["project_modules_imported"] = ours
print("RESULT " + json.dumps(res))
"""


def test_the_required_models_are_shipped_each_as_one_versioned_export_with_its_card():
    found = shipped_models()  # what `sketch-rnn sample --model NAME` accepts
    for name in REQUIRED:
        assert name in found, f"deploy/pretrained/{name} is missing"
    for name in found:
        # every numeric directory counts here, also one without saved_model.pb that the loader skips
        versions = [v for v in os.listdir(os.path.join(PRETRAINED, name)) if v.isdigit()]
        assert len(versions) == 1, f"{name}: ship exactly one version directory, found {versions}"
        vdir = os.path.join(PRETRAINED, name, versions[0])
        for rel in ("saved_model.pb", "variables/variables.index",
                    "assets.extra/hparams.json", "assets.extra/metadata.json"):
            assert os.path.isfile(os.path.join(vdir, rel)), f"{name}/{versions[0]}: {rel} missing"
        with open(os.path.join(PRETRAINED, name, "MODEL_CARD.md"), encoding="utf-8") as f:
            card = f.read()
        assert "CC BY 4.0" in card, f"{name}: the card must carry the data's attribution"
        assert f"step {versions[0]}" in card, f"{name}: the card does not name the shipped step {versions[0]}"
        assert not os.path.exists(os.path.join(PRETRAINED, name, "training")), \
            f"{name}: a training checkpoint is left beside the final export"


@pytest.mark.parametrize("name", REQUIRED)
def test_shipped_export_draws_encodes_completes_and_interpolates_with_tensorflow_alone(name):
    version = export_versions(os.path.join(PRETRAINED, name))[-1]  # the one `--model NAME` loads
    vdir = os.path.join(PRETRAINED, name, str(version))
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", CHILD, vdir], cwd=os.path.dirname(REPO), env=env,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT "):])
    with open(os.path.join(vdir, "assets.extra", "hparams.json"), encoding="utf-8") as f:
        hp = json.load(f)

    assert r["project_modules_imported"] == []
    assert {"sample", "serving_default", "encode", "decode", "complete"} <= set(r["signatures"])
    # sample: 16 sketches at temperature 0.5, the setting
    assert r["finite"] and r["padding_zero"] and r["pen_values"] == [0.0, 1.0]
    assert r["last_pen"] == [1.0] * 16  # every sketch ends with the pen lifted
    never_ended = sum(n >= r["n_max"] for n in r["lengths"])
    assert never_ended <= 3, f"{never_ended} of 16 samples never ended: {r['lengths']}"
    assert min(r["lengths"]) >= 5, f"a sample of a few points only: {r['lengths']}"
    # real Quick Draw sketches in these units span 150 px or more (1st percentile of pig's, about 155)
    assert min(r["extent"]) >= 50, f"a sample is a dot or a short dash: extents {sorted(r['extent'])[:4]}"
    assert r["same_seed_same"] and not r["other_seed_same"]
    # encode / decode: the encoder reads back what the decoder drew from its code, for most sketches
    assert r["z_size"] == hp["z_size"] and r["sigma_positive"]
    assert r["cycle_hits"] >= 10, f"only {r['cycle_hits']} of 16 greedy redraws encode nearest their own code"
    assert r["lerp_shape"] == [5, r["n_max"], 3] and r["lerp_ends_match"]
    # complete: the prefix comes back unchanged, and the model goes on past it
    assert r["complete_prefix_err"] < 1e-3
    assert min(r["complete_lengths"]) > r["complete_prefix_len"]
