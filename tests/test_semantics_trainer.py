"""What a real training step does (issue 14), read back from its checkpoints and metrics.

Adam's first moment after step 1 is m = (1 - beta_1) g: the checkpoint holds the gradient the
step applied. Starting from a checkpoint whose encoder outputs are data-independent (mu and
sigma_hat kernels 0, biases c and s) and whose decoder ignores z (z kernels 0, so no
reconstruction gradient reaches mu or sigma_hat), the gradient on the mu / sigma_hat biases is the
KL term's alone, in closed form:
    KL = -1/2 mean_j (1 + s_j - c_j^2 - exp(s_j)),   dKL/dc_j = c_j / Z,
    dKL/ds_j = -(1 - exp(s_j)) / (2 Z),   and the step applies w_0 * d max(KL, tol) / d(c, s)
with w_0 = kl_weight_start (the annealing at step 0). Also here: the learning-rate schedule in
the applied update, the evaluation pass (no dropout) against an independent computation, clipping
of the all-reduced gradient (2 replicas, active clipping) and the record-level shuffle.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from model.hparams import HParams
from model.sketch_rnn import SketchRNN
from model.strokes import stroke3_to_stroke5
from pipeline import schema
from test_input import sample_sketches, write_dataset
from test_model import np_reconstruction
from test_train import run_script

BETA_1, BETA_2, ADAM_EPS = 0.9, 0.999, 1e-8


class Run:
    """The objects train_and_evaluate checkpoints (same structure), to write a start checkpoint
    and to read the ones it writes."""

    def __init__(self, hps: HParams, metadata: dict):
        import keras

        from trainer.train import _lr_schedule_class

        self.hps = hps
        self.model = SketchRNN(hps, schema.n_max(metadata))
        self.model({"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2], tf.int32)}, training=False)
        self.opt = keras.optimizers.Adam(learning_rate=_lr_schedule_class()(hps.to_json()), epsilon=1e-8)
        self.opt.build(self.model.trainable_variables)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.ckpt = tf.train.Checkpoint(model=self.model, optimizer=self.opt, step=self.step,
                                        rng=tf.random.Generator.from_seed(0),
                                        best_cost=tf.Variable(np.inf, dtype=tf.float32, trainable=False))

    def save_start(self, run_dir: pathlib.Path) -> None:
        tf.train.CheckpointManager(self.ckpt, str(run_dir / "checkpoints"), max_to_keep=5,
                                   step_counter=self.step, checkpoint_name="ckpt").save(checkpoint_number=0)

    def load(self, run_dir: pathlib.Path, step: int) -> "Run":
        self.ckpt.restore(str(run_dir / "checkpoints" / f"ckpt-{step}")).assert_existing_objects_matched()
        assert int(self.opt.iterations.numpy()) == step
        return self

    def _index(self, var) -> int:
        return [i for i, v in enumerate(self.model.trainable_variables) if v is var][0]

    def momentum(self, var) -> np.ndarray:
        return self.opt._momentums[self._index(var)].numpy().astype(np.float64)

    def velocity(self, var) -> np.ndarray:
        return self.opt._velocities[self._index(var)].numpy().astype(np.float64)


def kl_closed_form(c, s):
    return -0.5 * np.mean(1 + s - c ** 2 - np.exp(s))


def data_independent_start(model, c, s):
    """mu = c and sigma_hat = s for every sketch; the decoder does not read z (so the
    reconstruction loss sends no gradient to mu or sigma_hat)."""
    enc = model.encoder
    enc.mu.kernel.assign(tf.zeros_like(enc.mu.kernel))
    enc.mu.bias.assign(c.astype(np.float32))
    enc.sigma_hat.kernel.assign(tf.zeros_like(enc.sigma_hat.kernel))
    enc.sigma_hat.bias.assign(s.astype(np.float32))
    model.initial_state.kernel.assign(tf.zeros_like(model.initial_state.kernel))
    kernel = model.decoder.kernel.numpy()
    kernel[5:] = 0.0  # rows 0..4 read S_{i-1}, rows 5.. read z
    model.decoder.kernel.assign(kernel)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("semantics_data")
    sketches = sample_sketches(sample_dir, limit=45)  # a test split of 5: not a multiple of 4
    metadata = write_dataset(root, sketches, shards=1)
    return root, sketches, metadata


def _train(data_dir, run_dir, hps, steps, **kw):
    from trainer.train import train_and_evaluate

    args = dict(checkpoint_every=1, eval_every=0, log_every=1, export=False, test_at_end=False,
                log=lambda s: None)
    args.update(kw)
    return train_and_evaluate(str(data_dir), str(run_dir), hps, steps, "one_device", **args)


def lr_at(step, hps):
    """The reference's schedule, written out: (lr - min_lr) * decay_rate^step + min_lr."""
    return (hps.learning_rate - hps.min_learning_rate) * hps.decay_rate ** step + hps.min_learning_rate


def test_training_step_kl_weight_lr_schedule_and_evaluation_without_dropout(data, tmp_path):
    """Above the floor: the step-1 gradient on mu / sigma_hat biases is kl_weight_start * dKL (not
    kl_weight: annealing starts at kl_weight_start); the reported KL is the closed form; each
    update is Adam's with lr_t of the schedule (t = 0, 1); the test evaluation at the end is the
    reconstruction loss of the final weights without dropout, over the whole split."""
    data_dir, sketches, metadata = data
    hps = HParams.preset("tiny").replace(
        batch_size=4, kl_weight_start=0.1, kl_weight=0.9, kl_decay_rate=0.5, kl_tolerance=0.2,
        decay_rate=0.5, recurrent_dropout_rate=0.5)
    z = hps.z_size
    c = np.linspace(0.5, 1.5, z)
    s = np.linspace(-40.0, -30.0, z)  # sigma <= exp(-15): z = mu, so the evaluation is deterministic.
    run_dir = tmp_path / "run"
    start = Run(hps, metadata)
    data_independent_start(start.model, c, s)
    start.save_start(run_dir)
    kernel0 = start.model.encoder.mu.kernel.numpy().astype(np.float64)  # zeros
    _train(data_dir, run_dir, hps, 2, test_at_end=True)

    one = Run(hps, metadata).load(run_dir, 1)
    mu_b, sig_b = one.model.encoder.mu.bias, one.model.encoder.sigma_hat.bias
    w0 = hps.kl_weight_start
    np.testing.assert_allclose(one.momentum(mu_b) / (1 - BETA_1), w0 * c / z, rtol=1e-4)
    np.testing.assert_allclose(one.momentum(sig_b) / (1 - BETA_1), w0 * -(1 - np.exp(s)) / (2 * z),
                               rtol=1e-4, atol=1e-9)
    train = [m for m in metrics(run_dir) if m["split"] == "train"]
    assert train[0]["kl"] == pytest.approx(kl_closed_form(c, s), rel=1e-5)
    assert train[0]["kl_floored"] == pytest.approx(kl_closed_form(c, s), rel=1e-5)
    assert train[0]["kl_weight"] == pytest.approx(w0, rel=1e-5)

    # The learning rate of each update t = 0, 1: Adam's step with lr_t and the moments it left,
    # on a weight that starts at exactly 0.
    kernel = one.model.encoder.mu.kernel
    kernel1 = kernel.numpy().astype(np.float64)
    m1, v1 = one.momentum(kernel), one.velocity(kernel)
    moved = np.abs(m1) > 1e-7
    assert moved.mean() > 0.5

    def adam_step(t, m, v):
        alpha = lr_at(t, hps) * np.sqrt(1 - BETA_2 ** (t + 1)) / (1 - BETA_1 ** (t + 1))
        return (-alpha * m / (np.sqrt(v) + ADAM_EPS))[moved]

    np.testing.assert_allclose((kernel1 - kernel0)[moved], adam_step(0, m1, v1), rtol=1e-4)
    two = Run(hps, metadata).load(run_dir, 2)
    kernel2 = two.model.encoder.mu.kernel.numpy().astype(np.float64)
    m2, v2 = two.momentum(two.model.encoder.mu.kernel), two.velocity(two.model.encoder.mu.kernel)
    np.testing.assert_allclose((kernel2 - kernel1)[moved], adam_step(1, m2, v2), rtol=1e-3, atol=1e-9)
    assert not np.allclose(lr_at(1, hps), lr_at(0, hps), rtol=0.1)  # The schedule is visible.

    # The test-split evaluation at the end (step 2): every test sketch (the partial last batch
    # too), padded to N_max, training=False (dropout 0.5 would change it), L_s and L_p / N_max,
    # with the decoder stopped where training stops it (each sketch's end + decoder_end_rows).
    (test,) = [m for m in metrics(run_dir) if m["split"] == "test"]
    assert test["step"] == 2
    kept = [x for x in sketches if len(x) >= 2]
    test_split = kept[int(len(kept) * 0.9):]  # write_dataset's split
    assert len(test_split) % hps.batch_size  # ...whose last batch is a partial one
    scale, n_max = metadata["scale_factor"], schema.n_max(metadata)
    strokes = np.stack([stroke3_to_stroke5(x / [scale, scale, 1], n_max) for x in test_split])
    lengths = np.array([len(x) for x in test_split], np.int32)
    out = two.model({"strokes": tf.constant(strokes), "lengths": tf.constant(lengths),
                     "decoder_lengths": tf.constant(np.minimum(lengths + hps.decoder_end_rows, n_max))},
                    training=False)
    l_s, l_p = np_reconstruction(strokes, out["outputs"].numpy(), hps.num_mixture)
    assert test["l_s"] == pytest.approx(l_s, rel=1e-4)
    assert test["l_p"] == pytest.approx(l_p, rel=1e-4)
    assert test["recon"] == pytest.approx(l_s + l_p, rel=1e-4)


def test_training_step_gives_no_kl_gradient_below_the_tolerance(data, tmp_path):
    """Below the floor max(KL, kl_tolerance) is constant: no KL gradient at all (the reference
    stops pushing the posterior to the prior there), and the step reports KL and the floor."""
    data_dir, _, metadata = data
    hps = HParams.preset("tiny").replace(batch_size=4, kl_weight_start=0.5, kl_tolerance=0.2)
    z = hps.z_size
    c, s = np.full(z, 0.2), np.linspace(-0.3, 0.3, z)
    assert kl_closed_form(c, s) < hps.kl_tolerance / 2
    run_dir = tmp_path / "run"
    start = Run(hps, metadata)
    data_independent_start(start.model, c, s)
    start.save_start(run_dir)
    _train(data_dir, run_dir, hps, 1)
    one = Run(hps, metadata).load(run_dir, 1)
    np.testing.assert_array_equal(one.momentum(one.model.encoder.mu.bias), 0.0)
    np.testing.assert_array_equal(one.momentum(one.model.encoder.sigma_hat.bias), 0.0)
    # ...while the step did train (the reconstruction's gradient reaches the decoder).
    assert np.abs(one.momentum(one.model.head.bias)).max() > 1e-4
    (m,) = metrics(run_dir)
    assert m["kl"] == pytest.approx(kl_closed_form(c, s), rel=1e-5)
    assert m["kl_floored"] == pytest.approx(hps.kl_tolerance, rel=1e-6)


CLIP_SCRIPT = '''
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from model.hparams import HParams
from trainer.train import train_and_evaluate
data, root = sys.argv[1:3]
# Nothing random in the step (no z, no dropout, no augmentation, full-length batches): one device
# with the batch of 8 and 2 replicas with 4 each see the same sketches from the same weights.
hps = HParams.preset("tiny").replace(conditional=False, use_recurrent_dropout=False, batch_size=8,
                                     augment_stroke_prob=0.0, random_scale_factor=0.0,
                                     trim_batches=False, bucket_batches=False)

def first_moments(model_dir):
    """Adam's first moments after step 1: the optimizer's variables are [iterations, then
    (momentum, velocity) per trainable variable], so the odd indices."""
    reader = tf.train.load_checkpoint(model_dir + "/checkpoints/ckpt-1")
    names = [n for n, _ in tf.train.list_variables(model_dir + "/checkpoints/ckpt-1")
             if n.startswith("optimizer/_variables/") and n.endswith("VARIABLE_VALUE")]
    return {n: reader.get_tensor(n) for n in names if int(n.split("/")[2]) % 2 == 1}

kw = dict(checkpoint_every=1, eval_every=0, log_every=1, export=False, test_at_end=False, log=lambda s: None)
keras.utils.set_random_seed(3)
train_and_evaluate(data, root + "/one", hps.replace(grad_clip=1e6), 1, "one_device", **kw)
full = first_moments(root + "/one")
grads = np.concatenate([v.ravel() for v in full.values()]) / 0.1
clip = float(np.quantile(np.abs(grads[grads != 0]), 0.6))
keras.utils.set_random_seed(3)
train_and_evaluate(data, root + "/two", hps.replace(grad_clip=clip), 1, "mirrored", **kw)
two = first_moments(root + "/two")
print("RESULT " + json.dumps({"clip": clip, "full": {k: v.tolist() for k, v in full.items()},
                              "two": {k: v.tolist() for k, v in two.items()}}))
'''


def test_two_replicas_clip_the_summed_gradient(tmp_path, data):
    """With clipping active (grad_clip at the 60th percentile of |g|), 2 replicas apply
    clip(g_0 + g_1) (the reference's clipping of the whole batch's gradient), read from Adam's
    first moment; clipping each replica's part before the all-reduce would apply
    clip(g_0) + clip(g_1), up to 2 * grad_clip."""
    data_dir, _, _ = data
    out = run_script(tmp_path, CLIP_SCRIPT, data_dir, tmp_path)
    clip, full, two = out["clip"], out["full"], out["two"]
    assert set(full) == set(two) and len(full) == 5  # decoder kernel, recurrent kernel, bias; head
    active = 0
    for name in full:
        g = np.array(full[name]) / (1 - BETA_1)  # the whole batch's gradient (clip 1e6: none)
        applied = np.array(two[name]) / (1 - BETA_1)
        # atol: float32 roundoff of gradients that are small sums of larger, cancelling terms
        # (summed in another order by two replicas and by TensorFlow's threads); clipping each
        # replica's part would be off by up to grad_clip.
        np.testing.assert_allclose(applied, np.clip(g, -clip, clip), rtol=1e-4, atol=1e-4 * clip,
                                   err_msg=name)
        active += int((np.abs(g) > clip * 1.01).sum())
    assert active > 100  # Clipping really acted on many values.


def test_training_input_shuffles_records_within_a_file(tmp_path):
    """One shard of 60 sketches of distinct lengths (so each element names its record): the
    training stream is not the file order, draws from the whole file from the first batch on
    (a shuffle buffer over the records, not just a file-order shuffle), differs by seed and
    repeats with it."""
    rng = np.random.default_rng(0)
    sketches = []
    for n in range(2, 62):
        s = np.zeros((n, 3), np.float32)
        s[:, :2] = rng.normal(0, 5, (n, 2))
        s[-1, 2] = 1
        sketches.append(s)
    order = [sketches[i] for i in rng.permutation(60)]
    metadata = write_dataset(tmp_path, order, shards=1)
    file_order = [len(s) for s in order[:48]]  # the train split, as written
    hps = HParams.preset("tiny").replace(augment_stroke_prob=0.0, random_scale_factor=0.0)
    from trainer import input as input_lib

    def stream(seed):
        ds = input_lib.make_dataset(str(tmp_path), "train", hps, metadata, 8, True, seed=seed)
        return [int(n) for b in ds.take(6) for n in b["lengths"].numpy()]

    a, b, again = stream(1), stream(2), stream(1)
    assert a == again and a != b
    assert set(a) <= set(file_order)
    pos = {n: i for i, n in enumerate(file_order)}
    first = [pos[n] for n in a[:8]]
    assert max(first) >= 24, first  # The first batch reaches the second half of the file.
    in_order = sum(pos[y] == pos[x] + 1 for x, y in zip(a, a[1:]))
    assert in_order < 0.2 * len(a), a


def test_flip_and_rotate_are_off_by_default_and_mirror_and_rotate_when_on():
    """Our two options beyond the reference: off, `augment` gives exactly the reference's output
    for the same seed; on, each sketch is mirrored (dx -> -dx) with probability p and its offsets
    rotated by U(-a, a) degrees, which keeps every offset's length and the pens unchanged."""
    from trainer import augment as augment_lib

    rng = np.random.default_rng(0)
    strokes = np.zeros([12, 5], np.float32)
    strokes[:10, :2] = rng.normal(size=[10, 2]) * 5
    strokes[:10, 2], strokes[9, 2:4] = 1.0, [0.0, 1.0]
    strokes[10:, 4] = 1.0
    for k in range(5):
        seed = tf.constant([k, 1])
        ref = augment_lib.augment(strokes, 10, 0.15, 0.3, seed)
        off = augment_lib.augment(strokes, 10, 0.15, 0.3, seed, 0.0, 0.0)
        np.testing.assert_array_equal(ref[0].numpy(), off[0].numpy())
    a, n = 20.0, 400
    angles, flips = [], 0
    for k in range(n):
        out = augment_lib.augment(strokes, 10, 0.0, 0.0, tf.constant([k, 2]), 0.5, a)[0].numpy()
        np.testing.assert_array_equal(out[:, 2:], strokes[:, 2:])
        np.testing.assert_allclose(np.hypot(out[:, 0], out[:, 1]), np.hypot(strokes[:, 0], strokes[:, 1]),
                                   rtol=1e-5, atol=1e-5)
        # The linear map taking the input offsets to the output: a rotation, or a rotation of the mirror.
        m = np.linalg.lstsq(strokes[:10, :2], out[:10, :2], rcond=None)[0].T
        flipped = np.linalg.det(m) < 0
        flips += flipped
        r = m @ np.diag([-1.0, 1.0]) if flipped else m
        angles.append(np.degrees(np.arctan2(r[1, 0], r[0, 0])))
    angles = np.array(angles)
    assert abs(flips / n - 0.5) < 5 * 0.5 / np.sqrt(n), flips
    assert angles.min() >= -a - 1e-3 and angles.max() <= a + 1e-3
    assert abs(angles.std() - a / np.sqrt(3)) < 0.15 * a / np.sqrt(3), angles.std()
    assert abs(angles.mean()) < 5 * a / np.sqrt(3 * n)


def test_random_scale_draws_one_uniform_factor_per_axis():
    """The reference's random_scale: dx *= U(1 - f, 1 + f) and dy *= U(1 - f, 1 + f), independent
    draws per axis and per sketch (400 seeds through `augment`, stroke augmentation off)."""
    from trainer import augment as augment_lib

    f, n = 0.15, 400
    strokes = np.tile(np.array([[1.0, 1.0, 1.0, 0.0, 0.0]], np.float32), [3, 1])
    factors = np.array([augment_lib.augment(strokes, 3, f, 0.0, tf.constant([k, 1]))[0].numpy()[0, :2]
                        for k in range(n)], np.float64)
    assert factors.min() >= 1 - f and factors.max() <= 1 + f
    sd = f / np.sqrt(3)  # of U(1 - f, 1 + f)
    assert np.all(np.abs(factors.mean(0) - 1) < 5 * sd / np.sqrt(n)), factors.mean(0)
    assert np.all(np.abs(factors.std(0) - sd) < 0.15 * sd), factors.std(0)
    assert abs(np.corrcoef(factors[:, 0], factors[:, 1])[0, 1]) < 5 / np.sqrt(n)
