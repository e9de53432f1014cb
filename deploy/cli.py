"""The `sketch-rnn` console command: one entry point, one subcommand per step of the data flow.

Each subcommand lives in the package that owns its step and exposes `main(argv) -> int`;
it is imported only when chosen, so `sketch-rnn --help` is instant and `preprocess` does not
pay for what `serve` needs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

# Before any subcommand imports TensorFlow: keep its C++ INFO/WARNING lines out of the output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# name -> (module with main(argv), one-line help)
COMMANDS = {
    "preprocess": ("pipeline.cli", "Quick Draw ndjson / sketch-rnn .npz -> stroke-5 TFRecords (Apache Beam)"),
    "train": ("trainer.cli", "train sketch-rnn on the preprocessed TFRecords (tf.distribute)"),
    "export": ("trainer.export_cli", "export a trained model dir as a versioned SavedModel"),
    "sample": ("deploy.sample", "draw sketches from an exported SavedModel (SVG, ndjson, PNG)"),
    "serve": ("deploy.server", "serve an exported SavedModel over TF Serving's REST API, with a demo page"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: sketch-rnn COMMAND [options]   (sketch-rnn COMMAND --help for its options)",
             "", "sketch-rnn: draw vector sketches with a sequence-to-sequence VAE (Ha & Eck 2017).",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sketch-rnn: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    wants_help = any(a in ("-h", "--help") for a in rest)
    with _quiet_native_stderr() if wants_help else contextlib.nullcontext():
        module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silences file descriptor 2 while a subcommand's module is imported for `--help`.

    TensorFlow's import prints lines such as `cudart_stub.cc: Could not find cuda drivers` from C++
    before its logging is initialized, ignoring TF_CPP_MIN_LOG_LEVEL; they would bury the help text.
    Only the import is silenced: argparse's help (stdout) and errors (stderr) come after it, and an
    import error's traceback is printed once stderr is back.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


if __name__ == "__main__":
    sys.exit(main())
