"""`sketch-rnn export`: restore a trained --model-dir and write a versioned SavedModel."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sketch-rnn export", allow_abbrev=False,
        description="Export a trained model as a SavedModel (EXPORT_DIR/<version>/saved_model.pb, "
                    "the layout TF Serving loads) with sample/encode/decode/complete signatures.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="the --model-dir of `sketch-rnn train`")
    src.add_argument("--from-export", metavar="VERSION_DIR",
                     help="instead of a --model-dir: an earlier export's version dir, written again "
                          "(e.g. with other --weights) from the weights it holds, without its checkpoint")
    p.add_argument("--export-dir", required=True, help="base directory; a numbered version is created in it")
    p.add_argument("--checkpoint", default="latest",
                   help="with --model-dir: 'latest' (default), 'best' (lowest validation cost) or a "
                        "checkpoint path")
    p.add_argument("--version", type=int, default=None, help="version number (default: Unix time)")
    p.add_argument("--weights", choices=("float32", "float16", "int8"), default="float32",
                   help="how the weights are stored: float32 (default), float16 (the kernels "
                        "rounded to float16, about half the size) or int8 (the kernels as int8 with "
                        "a float32 scale per column, about a quarter); the signatures still compute "
                        "in float32 and take and return float32")
    xla = p.add_mutually_exclusive_group()
    xla.add_argument("--xla", dest="xla", action="store_true", default=False,
                     help="XLA-compile the sample/decode signatures: about 3x faster sampling of one "
                          "sketch on CPU with `sketch-rnn serve`/`sample`, but TF Serving then needs "
                          "--xla_cpu_compilation_enabled (it refuses XLA on CPU by default)")
    xla.add_argument("--no-xla", dest="xla", action="store_false",
                     help="no XLA (the default; kept for older scripts)")
    return p


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_export and args.checkpoint != "latest":
        parser.error("--checkpoint goes with --model-dir, not --from-export")
    from trainer.export import export_saved_model, load_export
    from trainer.train import load_trained_model
    try:
        if args.from_export:
            model, hps, metadata = load_export(args.from_export)
        else:
            model, hps, metadata = load_trained_model(
                args.model_dir, None if args.checkpoint == "latest" else args.checkpoint)
        path = export_saved_model(model, hps, metadata, args.export_dir, args.version, xla=args.xla,
                                  weights=args.weights)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"sketch-rnn export: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
