"""`sketch-rnn train`: parse flags, call `trainer.train.train_and_evaluate`."""

from __future__ import annotations

import argparse
import sys

from model.hparams import PRESETS, HParams
from trainer.train import STRATEGIES, NonFiniteLossError


class _DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to the help of options that have a default worth saying."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if not (default is None or default is False or default == [] or default == argparse.SUPPRESS
                or action.required or "default" in text):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sketch-rnn train", allow_abbrev=False, formatter_class=_DefaultsFormatter,
        description="Train sketch-rnn on the TFRecords written by `sketch-rnn preprocess`. "
                    "Rerunning with the same --model-dir resumes from its latest checkpoint.")
    p.add_argument("--data", required=True, help="directory (or gs:// prefix) with metadata.json and "
                   "{train,valid,test}-*.tfrecord.gz from `sketch-rnn preprocess`")
    p.add_argument("--model-dir", required=True, help="checkpoints, TensorBoard logs, hparams.json, export/")
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS), help="hyperparameter preset")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override one hyperparameter, e.g. --set batch_size=64 (repeatable)")
    p.add_argument("--steps", type=int, default=100_000, help="train until this global step")
    p.add_argument("--strategy", default="mirrored", choices=STRATEGIES,
                   help="mirrored: all local GPUs (one CPU, no GPU: TensorFlow's default strategy, nothing to "
                        "distribute); multiworker: from TF_CONFIG; one_device")
    p.add_argument("--checkpoint-every", type=int, default=500, help="save a checkpoint every N steps")
    p.add_argument("--keep-checkpoints", type=int, default=5, help="how many recent checkpoints to keep")
    p.add_argument("--eval-every", type=int, default=1000, help="validate (and save the best) every N steps")
    p.add_argument("--log-every", type=int, default=100,
                   help="print and record (metrics.jsonl, TensorBoard) the training losses every N steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the data order")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start a new --model-dir from another run's checkpoint (e.g. "
                        "OTHER/checkpoints/ckpt-4500): its weights, optimizer state and step, so the "
                        "schedules continue, with this command's hyperparameters from there on (the "
                        "model's sizes must match). Ignored when --model-dir already has checkpoints")
    p.add_argument("--export-dir", default=None, help="default: MODEL_DIR/export")
    p.add_argument("--no-export", action="store_true", help="skip the SavedModel export at the end")
    p.add_argument("--export-every", type=int, default=0, metavar="STEPS",
                   help="also export a new version every STEPS steps (0: only at the end); a server "
                        "polling the export dir picks each one up")
    st = p.add_argument_group("following a stream")
    st.add_argument("--follow", action="store_true",
                    help="--data is the --output of `sketch-rnn preprocess --streaming`: re-list its "
                         "train shards every --follow-interval seconds and add new windows to the "
                         "input without restarting; validate on the valid shards there at each "
                         "--eval-every (waits for the first train shard)")
    st.add_argument("--follow-interval", type=float, default=30.0, metavar="SECONDS",
                    help="how often --follow re-lists the shards")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        hps = HParams.preset(args.preset).with_overrides(args.set)
    except ValueError as e:
        print(f"sketch-rnn train: {e}", file=sys.stderr)
        return 2
    for name in ("steps", "checkpoint_every", "keep_checkpoints", "log_every"):
        if getattr(args, name) < 1:
            print(f"sketch-rnn train: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.export_every < 0 or not args.follow_interval > 0:
        print("sketch-rnn train: --export-every must be >= 0 and --follow-interval > 0", file=sys.stderr)
        return 2
    import signal

    from trainer.train import train_and_evaluate

    def _on_sigterm(signum, frame):  # Preemption / `kill`: save a checkpoint like Ctrl-C does.
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        train_and_evaluate(args.data, args.model_dir, hps, args.steps, args.strategy,
                           checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
                           eval_every=args.eval_every, log_every=args.log_every, seed=args.seed,
                           export_dir=args.export_dir, export=not args.no_export,
                           follow_interval_s=args.follow_interval if args.follow else None,
                           export_every=args.export_every, init_from=args.init_from)
    except (FileNotFoundError, ValueError, NonFiniteLossError) as e:
        print(f"sketch-rnn train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
