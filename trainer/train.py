"""The training loop: strategy, distributed step, checkpoints/resume, validation, summaries, export.

Entry point: `train_and_evaluate(data_dir, model_dir, hps, steps, ...)`; `sketch-rnn train` parses
flags and calls it.

Loss under a strategy (global batch G split into replicas of b = G / R sketches):
  * reconstruction: per-example L_s + L_p `[b]` scaled by `tf.nn.compute_average_loss(...,
    global_batch_size=G)`, so the sum over replicas is the mean over the global batch;
  * KL: the reference floors the *batch* KL, max(mean KL, kl_tolerance). Each replica floors the
    mean KL of its own b sketches and weights it by b / G; with one replica this is exactly the
    reference; with R replicas it is the mean of R floored sub-batch KLs (>= the floored global
    mean, equal whenever every sub-batch KL is above the tolerance, which is the regime after
    the first few hundred steps);
  * gradients are summed across replicas (all-reduce) BEFORE the per-value clipping to
    [-grad_clip, grad_clip], so clipping acts on the global-batch gradient as in the reference.
Metrics are summed across replicas (each replica reports its share of the global mean).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from model.hparams import HParams
from pipeline import schema
from trainer import checkpoints as checkpoints_lib
from trainer import input as input_lib
from trainer import interrupts

STRATEGIES = ("mirrored", "multiworker", "one_device")
FLOAT16_LOSS_SCALE = 1024.0  # Static loss scale for mixed_float16 (gradients are unscaled before clipping).
METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; the message names the step and the last good checkpoint."""


def select_strategy(name: str) -> tf.distribute.Strategy:
    """`mirrored` (all local GPUs, else all logical CPUs), `multiworker` (TF_CONFIG), `one_device`.

    Where `mirrored` or `one_device` comes down to a single CPU device (no GPU, one logical CPU),
    there is nothing to distribute and TensorFlow's default strategy runs the step: the same math
    on the same device without a one-replica MirroredStrategy/OneDeviceStrategy around it, which
    costs about a fifth of a CPU training step (paper preset on 2 cores: 2.25 -> 1.80 s per step,
    README "Benchmarks")."""
    if name == "multiworker":  # Before anything lists devices: that would start the runtime.
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker needs TF_CONFIG (cluster and task) in the environment; "
                             "see the README's trainer section for an example")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        if len(devices) == 1 and not gpus:
            return tf.distribute.get_strategy()
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.OneDeviceStrategy(gpus[0].name) if gpus else tf.distribute.get_strategy()


def describe_strategy(strategy: tf.distribute.Strategy) -> str:
    """One log line: the strategy's class and its replica devices."""
    if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
        # Ops go where TensorFlow places them: the first GPU if there is one (only a caller that
        # passes the default strategy itself gets here with a GPU; select_strategy does not).
        gpus = tf.config.list_logical_devices("GPU")
        return f"default ({gpus[0].name if gpus else 'one CPU device'}: nothing to distribute)"
    devices = ", ".join(strategy.extended.worker_devices)
    return f"{type(strategy).__name__} over {strategy.num_replicas_in_sync} replica(s): {devices}"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str, fused_lstm: bool = False) -> tuple[str, str]:
    """`hps.precision` -> (Keras policy, why). "auto": float32 with the fused LSTM kernel (it
    computes in float32); else bfloat16 compute (float32 weights and mixture math) where the CPU
    has AMX bf16 tile units and no GPU is used, else float32 (AVX-512/AVX2 CPUs run bf16 matmuls
    slower than float32: measured, see the README)."""
    if precision != "auto":
        return precision, "set"
    if fused_lstm:
        return "float32", "auto: the fused LSTM kernel computes in float32"
    if tf.config.list_logical_devices("GPU"):
        return "float32", "auto: GPU (cuDNN runs float32)"
    if "amx_bf16" in cpu_flags():
        return "mixed_bfloat16", "auto: the CPU has AMX bf16"
    return "float32", "auto: no AMX bf16 on this CPU"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # Not Linux.
        return max(1, os.cpu_count() or 1)


def resolve_lstm_kernel(hps: HParams, log: Callable[[str], None] | None = None):
    """`hps.lstm_kernel` -> (op library of the fused CPU kernel or None, why).

    "auto" uses the kernel (trainer/kernels: built for this CPU at first use, then cached) when
    training runs on CPUs only, some LSTM is a plain cell, the precision is float32 (or auto) and
    it builds; otherwise, and for "loop", TensorFlow's while loop runs (the same math). "fused"
    raises where the kernel cannot be used. Call it before TensorFlow runs its first op.
    """
    from trainer import kernels

    if hps.lstm_kernel == "loop":
        return None, "set"
    reason = None
    if tf.config.list_physical_devices("GPU"):  # Lists without starting the runtime.
        reason = "a GPU is visible (the kernel is CPU-only; cuDNN or the loop runs there)"
    elif hps.jit_compile:
        reason = "jit_compile (XLA cannot compile a custom op)"
    elif hps.precision not in ("auto", "float32"):
        reason = f"precision {hps.precision} (the kernel computes in float32)"
    elif hps.dec_model != "lstm" and (not hps.conditional or hps.enc_model != "lstm"):
        reason = "layer-norm or HyperLSTM cells only (the kernel implements the plain LSTM cell)"
    if reason is None:
        ops = kernels.load(log)
        if ops is not None:
            return ops, f"{hps.lstm_kernel}: fused CPU kernel, {kernels.why()}"
        reason = f"the kernel is not available ({kernels.why()})"
    if hps.lstm_kernel == "fused":
        raise RuntimeError(f"lstm_kernel=fused cannot be used: {reason}; use lstm_kernel=auto or loop")
    return None, f"auto: TensorFlow loop, {reason}"


MAX_RNN_BATCH_SPLITS = 4


def resolve_rnn_batch_splits(splits: int) -> tuple[int, str]:
    """`hps.rnn_batch_splits` -> (loops per LSTM, why), and the thread pools that go with it.

    0 (auto) on a CPU-only machine with C cores: min(C, 4) loops, each over a slice of the batch,
    with C // loops intra-op threads and C inter-op threads, so that each core runs its own loop of
    small single-threaded ops (on 2 cores: 1.1x the sketches/s of one loop with TensorFlow's default
    pools, paper preset, aaron_sheep; see the README). A GPU, or a set value: nothing changes.
    Thread pools set through TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS are kept (the loops
    then never outnumber the inter-op threads), as are pools TensorFlow has already started.
    Call it before TensorFlow runs its first op.
    """
    if splits:
        return splits, "set"
    if tf.config.list_physical_devices("GPU"):  # Lists without starting the runtime.
        return 1, "auto: GPU"
    cores = available_cores()
    label = f"auto: {cores} core{'s' if cores != 1 else ''}"
    loops = min(cores, MAX_RNN_BATCH_SPLITS)
    if "TF_NUM_INTRAOP_THREADS" in os.environ or "TF_NUM_INTEROP_THREADS" in os.environ:
        # 0 or unset: TensorFlow sizes the inter-op pool to the cores.
        inter = int(os.environ.get("TF_NUM_INTEROP_THREADS") or 0) or cores
        loops = max(1, min(loops, inter))
        return loops, f"{label}, thread pools from the environment"
    intra, inter = max(1, cores // loops), cores
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:  # The runtime is up (an earlier run in this process): its pools stay.
        return loops, f"{label}, TensorFlow's thread pools already started"
    return loops, f"{label}, {intra} intra-op / {inter} inter-op threads"


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def _write_dir(model_dir: str, strategy: tf.distribute.Strategy, name: str) -> str:
    """Chief writes under model_dir; other workers write to a throwaway temp dir (all must save)."""
    if is_chief(strategy):
        return os.path.join(model_dir, name)
    resolver = strategy.cluster_resolver
    return os.path.join(model_dir, "workertemp", f"{resolver.task_type}_{resolver.task_id}", name)


def _write_json_files(model_dir: str, hps: HParams, metadata: dict[str, Any]) -> None:
    tf.io.gfile.makedirs(model_dir)
    path = os.path.join(model_dir, "hparams.json")
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            saved = HParams.from_json(f.read())
        if saved != hps:
            diff = saved.diff(hps)
            raise ValueError(f"{model_dir} holds a run with other hyperparameters {diff} "
                             "(saved, requested): use a new --model-dir or the same --preset/--set")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(hps.to_json())
    with tf.io.gfile.GFile(os.path.join(model_dir, schema.METADATA_FILE), "w") as f:
        f.write(json.dumps(metadata, indent=2, sort_keys=True))


# Hyperparameters that decide the variables' shapes: an --init-from checkpoint must agree on them.
ARCHITECTURE_FIELDS = ("conditional", "enc_model", "dec_model", "enc_rnn_size", "dec_rnn_size",
                       "z_size", "num_mixture")


def check_init_from(prefix: str, hps: HParams) -> None:
    """Checks an --init-from checkpoint before anything is written: the prefix exists, and the
    other run's hparams.json (two levels up, when there) agrees on the `ARCHITECTURE_FIELDS`, so
    that a mismatch says which hyperparameter differs. Raises FileNotFoundError / ValueError."""
    if not tf.io.gfile.exists(prefix + ".index"):
        raise FileNotFoundError(f"--init-from {prefix}: no checkpoint there ({prefix}.index is "
                                "missing); give a prefix such as OTHER_RUN/checkpoints/ckpt-4500")
    hp_path = os.path.join(os.path.dirname(os.path.dirname(prefix)), "hparams.json")
    if tf.io.gfile.exists(hp_path):
        with tf.io.gfile.GFile(hp_path) as f:
            other = HParams.from_json(f.read())
        diff = other.diff(hps, ARCHITECTURE_FIELDS)
        if diff:
            raise ValueError(f"--init-from {prefix}: that run's model has another shape {diff} "
                             "(there, here): use the same --preset and size --set values")


def init_from_checkpoint(ckpt: tf.train.Checkpoint, prefix: str) -> None:
    """Restores everything of a training checkpoint `ckpt` from another run's checkpoint `prefix`.

    The run then goes on from that step as a resume would (same step, optimizer moments, data-order
    state) under this run's hparams, which may differ from the other run's in anything but the
    `ARCHITECTURE_FIELDS` (`check_init_from`): e.g. more augmentation or dropout for the rest of
    the run. The caller resets the best validation cost, so that MODEL_DIR/best holds the best of
    the new run's own checkpoints. Raises ValueError when it does not restore.
    """
    try:
        ckpt.restore(prefix).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise ValueError(f"--init-from {prefix} does not restore into this model: "
                         f"{' '.join(str(e).split())[:300]}") from e


def render_grid(sketches3: list[np.ndarray], cell: int = 96, columns: int = 3) -> np.ndarray:
    """Stroke-3 sketches -> uint8 grayscale grid `[H, W, 1]` drawn like the SVGs (Pillow lines, each
    sketch fitted to its cell with its aspect ratio kept): TensorBoard images and `sample --png`."""
    from PIL import Image, ImageDraw

    from model.strokes import to_polylines

    rows = max(1, math.ceil(len(sketches3) / columns))
    scale = 4  # drawn 4x larger, then box-filtered down: smooth lines of about 1.5 px
    big = Image.new("L", (columns * cell * scale, rows * cell * scale), 255)
    draw = ImageDraw.Draw(big)
    margin = 4 * scale
    for i, s in enumerate(sketches3):
        lines = [p for p in to_polylines(np.asarray(s, np.float32)) if len(p)]
        if not lines:
            continue
        pts = np.concatenate(lines)
        lo, size = pts.min(0), pts.max(0) - pts.min(0)
        span = max(float(size.max()), 1e-6)
        inner = cell * scale - 2 * margin
        offset = np.array([(i % columns) * cell * scale, (i // columns) * cell * scale]) + margin \
            + (inner - size / span * inner) / 2
        for line in lines:
            xy = [tuple(p) for p in ((line - lo) / span * inner + offset).tolist()]
            if len(xy) == 1:
                x, y = xy[0]
                draw.ellipse([x - scale, y - scale, x + scale, y + scale], fill=0)
            else:
                draw.line(xy, fill=0, width=int(1.5 * scale), joint="curve")
    img = np.asarray(big.resize((columns * cell, rows * cell), Image.BOX), np.uint8)
    return img[..., None]


def write_scalar(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar (`tf.summary.scalar`: the tensorboard package's scalars plugin)."""
    tf.summary.scalar(name, value, step=step)


def write_image(name: str, image: np.ndarray, step: int) -> None:
    """A TensorBoard image (uint8 `[H, W, C]`), `tf.summary.image` (the images plugin)."""
    tf.summary.image(name, image[None], step=step, max_outputs=1)


def _lr_schedule_class():
    import keras
    from model import schedules

    class ReferenceLearningRate(keras.optimizers.schedules.LearningRateSchedule):
        """lr_t = (lr - min_lr) * decay_rate^t + min_lr (model.schedules.learning_rate)."""

        def __init__(self, hps_json: str):
            self.hps_json = hps_json
            self.hps = HParams.from_json(hps_json)

        def __call__(self, step):
            return tf.cast(schedules.learning_rate(tf.cast(step, tf.float32), self.hps), tf.float32)

        def get_config(self):
            return {"hps_json": self.hps_json}

    return ReferenceLearningRate


def train_and_evaluate(data_dir: str, model_dir: str, hps: HParams, steps: int,
                       strategy: str | tf.distribute.Strategy = "mirrored", *,
                       checkpoint_every: int = 500, keep_checkpoints: int = 5,
                       eval_every: int = 1000, log_every: int = 100, num_samples: int = 9,
                       seed: int = 0, export_dir: str | None = None, export: bool = True,
                       test_at_end: bool = True, follow_interval_s: float | None = None,
                       export_every: int = 0, init_from: str | None = None,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Trains until the global step reaches `steps` (resuming from `model_dir` if it holds a run).

    `follow_interval_s`: follow a directory a streaming job keeps adding shards to
    (`sketch-rnn train --follow`): the train shards are re-listed at this interval and new ones
    join the input without a restart (`input.ShardFollower`; the train lines of metrics.jsonl
    count them in `train_shards`); validation and test read the split's shards listed at that
    moment. It waits for the first train shard. `export_every`: also export a new version every
    N steps (0: only at the end), for a server that polls the export base directory.
    `init_from`: another run's checkpoint prefix to start from when `model_dir` holds no checkpoint
    yet (`init_from_checkpoint`); ignored, with a line in the log, once it does.

    Returns {"step", "train": last train metrics, "valid": best/last valid metrics, "test",
    "export_path", "checkpoint"} (floats).
    """
    import keras
    from model import losses, schedules
    from model.sketch_rnn import SketchRNN

    log = log or (lambda s: print(s, flush=True))
    metadata = schema.read_metadata(data_dir)
    max_len = schema.n_max(metadata)  # N_max: padding, loss divisor and sampling length.
    rnn_ops, kernel_why = resolve_lstm_kernel(hps, log)  # Before any op runs.
    if rnn_ops is not None:  # The kernel spreads each LSTM over the intra-op threads itself.
        splits, splits_why = 1, "the fused LSTM kernel runs one op per LSTM"
    else:
        splits, splits_why = resolve_rnn_batch_splits(hps.rnn_batch_splits)
    if isinstance(strategy, str):
        strategy = select_strategy(strategy)
    chief = is_chief(strategy)
    if init_from and not checkpoints_lib.candidates(os.path.join(model_dir, "checkpoints")):
        check_init_from(init_from, hps)  # Before hparams.json is written: a mistake leaves nothing.
    if chief:
        _write_json_files(model_dir, hps, metadata)
    policy, why = resolve_precision(hps.precision, fused_lstm=rnn_ops is not None)
    keras.mixed_precision.set_global_policy(policy)
    loss_scale = FLOAT16_LOSS_SCALE if policy == "mixed_float16" else 1.0
    global_batch = hps.batch_size
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"batch_size={global_batch} must be divisible by the {replicas} replicas")

    with strategy.scope():
        # hparams.json keeps rnn_batch_splits as given (0 re-resolves on the next machine).
        model = SketchRNN(hps.replace(rnn_batch_splits=splits), max_len, rnn_ops=rnn_ops)
        dummy = {"strokes": tf.zeros([1, 2, 5]), "lengths": tf.constant([2], tf.int32)}
        model(dummy, training=False)  # Creates the (mirrored) variables before any tf.function.
        # epsilon 1e-8: TF1 AdamOptimizer's default, which the reference uses (Keras defaults to 1e-7).
        optimizer = keras.optimizers.Adam(learning_rate=_lr_schedule_class()(hps.to_json()), epsilon=1e-8)
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        best_cost = tf.Variable(np.inf, dtype=tf.float32, trainable=False, name="best_valid_cost",
                                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    # Data-order RNG: drawn once per (re)start to seed the input pipeline; its state is
    # checkpointed so a resumed run does not replay the augmentations of the first segment.
    rng = tf.random.Generator.from_seed(seed)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, rng=rng,
                               best_cost=best_cost)
    manager = tf.train.CheckpointManager(ckpt, _write_dir(model_dir, strategy, "checkpoints"),
                                         max_to_keep=keep_checkpoints, step_counter=step,
                                         checkpoint_name="ckpt")
    best_manager = tf.train.CheckpointManager(ckpt, _write_dir(model_dir, strategy, "best"),
                                              max_to_keep=1, checkpoint_name="best")
    # Every worker restores from the chief's directory (the others' temp copies may be gone).
    # The newest checkpoint that restores: a lost `.index` or a truncated `.data` file is reported
    # and skipped, never a silent restart from step 0 (trainer/checkpoints.py).
    latest = checkpoints_lib.restore_newest(ckpt, os.path.join(model_dir, "checkpoints"), log=log)
    if latest:
        log(f"resumed from {latest} at step {int(step.numpy())}")
        if init_from:
            log(f"--init-from {init_from} ignored: {model_dir} already holds this run's checkpoints")
    elif init_from:
        init_from_checkpoint(ckpt, init_from)
        best_cost.assign(np.inf)  # MODEL_DIR/best: the best of this run's own checkpoints.
        log(f"initialised from {init_from} at step {int(step.numpy())} (weights, optimizer state, "
            "step and data-order state; schedules continue from that step)")
    log(f"strategy {describe_strategy(strategy)}")
    if hps.precision == "auto":
        log(f"precision {policy} ({why})")
    log(f"lstm_kernel {'fused' if rnn_ops is not None else 'loop'} ({kernel_why})")
    if hps.rnn_batch_splits == 0 and rnn_ops is None:
        log(f"rnn_batch_splits {splits} ({splits_why})")
    start_step = int(step.numpy())
    data_seed = int(rng.uniform_full_int([], tf.int32).numpy()) & 0x7FFFFFF
    follower = None
    if follow_interval_s is not None:
        follower = input_lib.ShardFollower(schema.split_pattern(data_dir, "train"),
                                           follow_interval_s, seed=data_seed, log=log)
        follower.wait_for_first()
        log(f"follow: training on the {len(follower.known)} train shard(s) of {data_dir}, "
            f"re-listing every {follow_interval_s:g} s")

    def train_input(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return input_lib.make_dataset(data_dir, "train", hps, metadata,
                                      ctx.get_per_replica_batch_size(global_batch), True,
                                      seed=data_seed, input_context=ctx, follow=follower)

    # On CPUs only, batches stay where tf.data made them: fetching them "to the device" goes through
    # a per-device generator (measured: paper-preset step 2.55 -> 2.37 s on 2 cores without it).
    options = None
    if not tf.config.list_logical_devices("GPU"):
        options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    train_ds = strategy.distribute_datasets_from_function(train_input, options=options)
    conditional = hps.conditional
    variables = model.trainable_variables

    def with_run_lengths(batch: dict[str, tf.Tensor]):
        """(batch, run): with trimming and decoder_end_rows, each sketch's decoder stops
        decoder_end_rows rows after its end (see HParams); run `[b]` is None otherwise."""
        if not (hps.trim_batches and hps.decoder_end_rows > 0):
            return batch, None
        run = tf.minimum(batch["lengths"] + hps.decoder_end_rows, tf.shape(batch["strokes"])[1])
        return {**batch, "decoder_lengths": run}, run

    def forward(batch: dict[str, tf.Tensor], kl_w: tf.Tensor):
        """Per-replica scaled loss and grads; `[b, T, 5]` strokes, `[b]` lengths."""
        batch, run = with_run_lengths(batch)
        with tf.GradientTape() as tape:
            out = model(batch, training=True)
            l_s, l_p = losses.per_example_reconstruction_loss(
                batch["strokes"], tf.cast(out["outputs"], tf.float32), hps.num_mixture,
                max_seq_len=max_len, run_lengths=run)
            recon = tf.nn.compute_average_loss(l_s + l_p, global_batch_size=global_batch)
            local = tf.cast(tf.shape(l_s)[0], tf.float32) / global_batch
            if conditional:
                kl = tf.reduce_mean(losses.per_example_kl_loss(
                    tf.cast(out["mu"], tf.float32), tf.cast(out["sigma_hat"], tf.float32)))
                kl_term = losses.floored_kl(kl, hps.kl_tolerance) * local
            else:
                kl = kl_term = tf.constant(0.0)
                local = tf.constant(0.0)
            loss = recon + kl_w * kl_term
            scaled = loss * loss_scale  # Inside the tape: a product taken outside has no gradient.
        grads = tape.gradient(scaled, variables)
        missing = [v.path for g, v in zip(grads, variables) if g is None]
        if missing:  # Caught at trace time: a broken gradient path must not train silently.
            raise ValueError(f"no gradient reaches {missing}: the loss does not depend on them")
        metrics = {"cost": loss, "recon": recon, "l_s": tf.nn.compute_average_loss(
            l_s, global_batch_size=global_batch), "l_p": tf.nn.compute_average_loss(
            l_p, global_batch_size=global_batch), "kl": kl * local, "kl_floored": kl_term,
            "kl_weight": kl_w * local}
        return grads, metrics

    forward_fn = tf.function(forward, jit_compile=True) if hps.jit_compile else forward

    def replica_step(batch):
        kl_w = tf.cast(schedules.kl_weight(tf.cast(step, tf.float32), hps), tf.float32)
        grads, metrics = forward_fn(batch, kl_w)
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        n = tf.cast(ctx.num_replicas_in_sync, tf.float32)
        # Clip the global gradient per value, then divide by the replica count because the
        # optimizer sums the (identical) per-replica gradients again.
        grads = [tf.clip_by_value(g / loss_scale, -hps.grad_clip, hps.grad_clip) / n for g in grads]
        optimizer.apply_gradients(zip(grads, variables))
        return metrics

    @tf.function
    def train_step(iterator):
        metrics = strategy.run(replica_step, args=(next(iterator),))
        step.assign_add(1)
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in metrics.items()}

    def eval_replica(batch):
        # The decoder stops where it stopped in training, so the padding rows after that repeat
        # the prediction of the last row run, the one training fits for them; left to run on, the
        # state drifts on rows no step ever trained (pig, step 4,500, random batches: valid L_p
        # 0.33 instead of 0.15, half of it from rows past the 16th end row). Over all N_max rows
        # (the batch is padded), so L_p is the reference's sum of the model as trained.
        batch, _ = with_run_lengths(batch)
        out = model(batch, training=False)
        l_s, l_p = losses.per_example_reconstruction_loss(
            batch["strokes"], tf.cast(out["outputs"], tf.float32), hps.num_mixture,
            max_seq_len=max_len)
        count = tf.cast(tf.shape(l_s)[0], tf.float32)
        sums = {"recon": tf.reduce_sum(l_s + l_p), "l_s": tf.reduce_sum(l_s),
                "l_p": tf.reduce_sum(l_p), "count": count}
        if conditional:
            kl = losses.per_example_kl_loss(tf.cast(out["mu"], tf.float32),
                                            tf.cast(out["sigma_hat"], tf.float32))
            sums["kl"] = tf.reduce_sum(kl)
            # The reference floors each batch's mean KL (weighted here by the batch's size).
            sums["kl_floored"] = losses.floored_kl(tf.reduce_mean(kl), hps.kl_tolerance) * count
        return sums

    # Evaluation runs outside the replicas on each worker's primary copy of the weights, over
    # the whole split in order (no collectives: workers cannot deadlock on uneven shards, and
    # partial last batches are fine; the chief's numbers are logged).
    eval_step = tf.function(eval_replica, input_signature=[{
        "strokes": tf.TensorSpec([None, None, 5], tf.float32),
        "lengths": tf.TensorSpec([None], tf.int32)}])

    def evaluate(split: str) -> dict[str, float]:
        """Mean L_s, L_p, L_R (all / N_max), raw KL, floored KL (per batch, as the reference) over
        the split; cost = L_R + kl_weight_start * kl_floored, the reference's validation cost
        (its eval graph's KL weight is a variable that is never fed, so it stays at
        kl_weight_start); the best checkpoint is the one with the lowest cost."""
        if follower is not None or metadata.get("streaming"):
            # A stream's metadata.json counts nothing: the shards there now are the split.
            if not tf.io.gfile.glob(schema.split_pattern(data_dir, split)):
                return {}
        elif int(metadata["counts"].get(split, 0)) == 0:
            return {}
        # Always padded to N_max: L_p over all N_max slots, the reference's definition (trimming
        # would leave out the pen loss of the cut padding rows).
        batches = input_lib.make_dataset(data_dir, split, hps.replace(trim_batches=False),
                                         metadata, global_batch, False)
        totals: dict[str, float] = {}
        for batch in batches:
            for k, v in eval_step(batch).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        n = max(totals.pop("count", 0.0), 1.0)
        result = {k: v / n for k, v in totals.items()}
        result["cost"] = result["recon"] + hps.kl_weight_start * result.get("kl_floored", 0.0)
        return result

    writers = {}
    if chief:
        writers = {k: tf.summary.create_file_writer(os.path.join(model_dir, "tensorboard", k))
                   for k in ("train", "valid", "test")}

    metrics_path = os.path.join(model_dir, METRICS_FILE)
    wall_offset = _last_wall_s(metrics_path) if chief else 0.0
    process_start = time.time()

    def record(split: str, values: dict[str, float], at: int, **extra) -> None:
        """One line of MODEL_DIR/metrics.jsonl (appended; a resumed run continues the file)."""
        if not chief:
            return
        line = {"split": split, "step": int(at), **{k: float(v) for k, v in values.items()},
                **extra, "wall_s": round(wall_offset + time.time() - process_start, 3)}
        with tf.io.gfile.GFile(metrics_path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")

    def summarize(kind: str, values: dict[str, float], at: int) -> None:
        if not chief:
            return
        with writers[kind].as_default(step=at):
            for k, v in values.items():
                write_scalar(k, v, at)

    def summarize_samples(at: int) -> None:
        if not chief:
            return
        from model.strokes import stroke5_to_stroke3
        strokes5, lengths = model.sample(num_samples, tf.constant(0.5), tf.constant(at % 2**31, tf.int32))
        scale = float(metadata["scale_factor"])
        sketches = [stroke5_to_stroke3(s, int(n)) * [scale, scale, 1]
                    for s, n in zip(strokes5.numpy(), lengths.numpy())]
        with writers["train"].as_default(step=at):
            write_image("samples_t0.5", render_grid(sketches), at)

    iterator = iter(train_ds)
    last: dict[str, float] = {}
    valid: dict[str, float] = {}
    t0, s0 = time.time(), start_step
    current = start_step

    def save(reason: str) -> str | None:
        # Named by the step variable it holds: an interrupt can land after the step's update
        # and before `current` counts it. Ctrl-C / SIGTERM during the write wait for its end.
        with interrupts.deferred():
            return manager.save(checkpoint_number=int(step.numpy()))

    try:
        while current < steps:
            metrics = train_step(iterator)
            current += 1
            cost = float(metrics["cost"])
            if not math.isfinite(cost):
                raise NonFiniteLossError(
                    f"non-finite training loss ({cost}) at step {current}: stopping; the last good "
                    f"checkpoint is {manager.latest_checkpoint} (not overwritten). Lower "
                    "learning_rate or grad_clip, or check the data (--set NAME=VALUE).")
            if current == s0 + 1 and log_every > 1:  # Tracing takes a while: say it is running.
                log(f"step {current}/{steps}: first step took {time.time() - t0:.1f} s (building the "
                    f"graph); losses every {log_every} steps")
            if current % log_every == 0 or current == steps:
                last = {k: float(v) for k, v in metrics.items()}
                last["lr"] = float(optimizer.learning_rate)
                elapsed = time.time() - t0
                rate = (current - s0) * global_batch / max(elapsed, 1e-9)
                eta = (steps - current) * global_batch / max(rate, 1e-9)
                log(f"step {current}/{steps} cost {last['cost']:.4f} recon {last['recon']:.4f} "
                    f"(Ls {last['l_s']:.4f} Lp {last['l_p']:.4f}) kl {last['kl']:.4f} "
                    f"w_kl {last['kl_weight']:.4f} lr {last['lr']:.2e} {rate:.1f} sketches/s "
                    f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
                summarize("train", {**last, "sketches_per_s": rate}, current)
                shards = {"train_shards": follower.shards} if follower is not None else {}
                record("train", last, current, sketches_per_s=round(rate, 3), **shards)
            if current % checkpoint_every == 0:
                save("periodic")
            if eval_every and current % eval_every == 0:
                valid = evaluate("valid")
                if valid:
                    log(f"valid step {current}: cost {valid['cost']:.4f} recon {valid['recon']:.4f} "
                        f"kl {valid.get('kl_floored', 0.0):.4f} (raw {valid.get('kl', 0.0):.4f})")
                    summarize("valid", valid, current)
                    record("valid", valid, current)
                    if valid["cost"] < float(best_cost.numpy()):
                        with interrupts.deferred():
                            best_cost.assign(valid["cost"])
                            best_manager.save(checkpoint_number=current)
                summarize_samples(current)
            if export_every and export and chief and current % export_every == 0 and current < steps:
                path = export_version(model, hps, metadata, export_dir or os.path.join(model_dir, "export"))
                log(f"exported SavedModel to {path}")
    except NonFiniteLossError:
        raise
    except KeyboardInterrupt:
        save("interrupt")
        log(f"interrupted at step {current}; checkpoint saved, rerun the same command to resume")
        raise
    latest_saved = manager.latest_checkpoint
    if latest_saved is None or int(step.numpy()) != checkpoints_lib.step_of(latest_saved):
        save("exit")
    result: dict[str, Any] = {"step": current, "train": last, "valid": valid,
                              "checkpoint": manager.latest_checkpoint}
    if test_at_end and current > start_step:
        result["test"] = evaluate("test")
        if result["test"]:
            log(f"test: cost {result['test']['cost']:.4f} recon {result['test']['recon']:.4f} "
                f"kl {result['test'].get('kl_floored', 0.0):.4f} (raw {result['test'].get('kl', 0.0):.4f})")
            summarize("test", result["test"], current)
            record("test", result["test"], current)
    for w in writers.values():
        w.flush()
    if export and chief:
        result["export_path"] = export_version(model, hps, metadata,
                                               export_dir or os.path.join(model_dir, "export"))
        log(f"exported SavedModel to {result['export_path']}")
    return result


def export_version(model, hps: HParams, metadata: dict[str, Any], export_base: str) -> str:
    """Exports the next version into `export_base`: the Unix time in seconds, or one more than the
    highest version there (two exports within a second, or a clock set back)."""
    from trainer.export import export_saved_model

    versions = [int(n.rstrip("/")) for n in (tf.io.gfile.listdir(export_base)
                                             if tf.io.gfile.isdir(export_base) else [])
                if n.rstrip("/").isdigit()]
    version = max([int(time.time())] + [v + 1 for v in versions])
    with interrupts.deferred():  # Ctrl-C / SIGTERM: stop once the version is written.
        return export_saved_model(model, hps, metadata, export_base, version=version)


def _last_wall_s(path: str) -> float:
    """The training wall time already spent by earlier runs of this model dir (metrics.jsonl)."""
    if not tf.io.gfile.exists(path):
        return 0.0
    last = 0.0
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            try:
                last = max(last, float(json.loads(line).get("wall_s", 0.0)))
            except (ValueError, AttributeError):
                continue  # A line cut by a crash: the others still count.
    return last


def load_trained_model(model_dir: str, checkpoint: str | None = None):
    """Rebuilds the model from model_dir's hparams.json/metadata.json and restores weights.

    Returns (model, hps, metadata). `checkpoint`: a path, "best", or None for the latest.
    """
    from trainer.export import build_model

    hp_path = os.path.join(model_dir, "hparams.json")
    if not tf.io.gfile.exists(hp_path):
        raise FileNotFoundError(f"{hp_path} not found: is {model_dir!r} a `sketch-rnn train` --model-dir?")
    model, hps, metadata = build_model(model_dir)
    restorer = tf.train.Checkpoint(model=model)
    if checkpoint in (None, "best"):
        sub = os.path.join(model_dir, "best" if checkpoint == "best" else "checkpoints")
        if checkpoints_lib.restore_newest(restorer, sub, partial=True,
                                          log=lambda s: print(s, file=sys.stderr)) is None:
            raise FileNotFoundError(f"no checkpoint in {sub}")
    else:
        restorer.restore(checkpoint).expect_partial()
    return model, hps, metadata
