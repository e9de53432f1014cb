"""The `sketch-rnn` console command: one entry point, one subcommand per step of the data flow.

Each subcommand lives in the package that owns its step and exposes `main(argv) -> int`;
it is imported only when chosen, so `sketch-rnn --help` is instant and `preprocess` does not
pay for what `serve` needs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import threading

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


def version() -> str:
    """The installed package's version (a source checkout that was never installed: setup.py's)."""
    from importlib import metadata

    try:
        return metadata.version("sketch-rnn-tf")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: sketch-rnn COMMAND [options]   (sketch-rnn COMMAND --help for its options; "
             "sketch-rnn --version)",
             "", "sketch-rnn: draw vector sketches with a sequence-to-sequence VAE (Ha & Eck 2017).",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        print(f"sketch-rnn {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"sketch-rnn: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    wants_help = any(a in ("-h", "--help") for a in rest)
    with _quiet_native_stderr() if wants_help else contextlib.nullcontext():
        module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


# TensorFlow's native start-up lines on a machine without a GPU (or with oneDNN): they are not
# about the user's command, and they bury its output. Everything else on stderr passes through.
NATIVE_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called|"
    r"^[EWI]\d{4} [\d:. ]+\s+\d+ (cuda_\w+|cudart_stub|port|cpu_feature_guard|util|"
    r"computation_placer|cuda_executor|cuda_diagnostics|gpu_device|cuda_dnn|cuda_fft|cuda_blas)"
    r"\.cc:\d+\] (failed call to cuInit|Could not find cuda drivers|oneDNN|This TensorFlow binary|"
    r"Unable to register|computation placer already registered|To enable the following|"
    r"TensorFlow was not built|retrieving CUDA diagnostic|hostname:|kernel reported version|"
    r"Ignoring visible gpu|Cannot dlopen)")


def _filter_native_stderr() -> None:
    """Routes file descriptor 2 through a thread that drops NATIVE_NOISE lines (C++ writes there
    directly, past Python and TF_CPP_MIN_LOG_LEVEL). SKETCH_RNN_TF_LOGS=1 keeps every line."""
    if os.environ.get("SKETCH_RNN_TF_LOGS") == "1":
        return
    try:
        real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        return

    def pump():
        with os.fdopen(read_end, "rb", buffering=0) as src:
            pending = b""
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = [ln for ln in lines if not NATIVE_NOISE.search(ln.decode("utf-8", "replace"))]
                if kept:
                    os.write(real, b"\n".join(kept) + b"\n")
            if pending:
                os.write(real, pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def drain():  # At exit: close our end of the pipe so the pump sees EOF and flushes the rest.
        sys.stderr.flush()
        os.dup2(real, 2)
        thread.join(timeout=2)

    import atexit

    atexit.register(drain)


def console_main() -> int:
    """The `sketch-rnn` console script: `main` with TensorFlow's native start-up noise filtered."""
    _filter_native_stderr()
    return main()


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
    sys.exit(console_main())
