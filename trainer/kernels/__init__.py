"""The fused CPU LSTM kernel (`lstm_kernel.cc`): built at first use, cached, loaded as a TF op library.

`load()` compiles `lstm_kernel.cc` against the installed TensorFlow with the host C++ compiler
(`$CXX`, else `g++`/`c++`), for this machine's CPU (`-march=native`: AVX2, AVX-512, ... as the
compiler finds them), into a cache directory keyed by the source, the TensorFlow version, the
compiler flags and the CPU's model and feature flags, so another machine (or a new TensorFlow)
builds its own copy. The build takes about a minute once; later runs load the cached library.
Concurrent builds are safe (each writes a temporary file and renames it into place).

Cache: `$SKETCH_RNN_KERNEL_CACHE`, else `$XDG_CACHE_HOME/sketch-rnn/kernels`, else
`~/.cache/sketch-rnn/kernels`. `SKETCH_RNN_FUSED_LSTM=0` turns the kernel off (the trainer then
runs the TensorFlow loop of `model.rnn.scan`).

When anything fails (no compiler, no TensorFlow headers, a failed build or load), `load()`
returns None and `why()` says what happened: the trainer logs it and falls back to the
TensorFlow loop, which computes the same thing more slowly.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

SOURCE = pathlib.Path(__file__).with_name("lstm_kernel.cc")
_LOCK = threading.Lock()
_STATE: dict = {}


def cache_dir() -> pathlib.Path:
    if os.environ.get("SKETCH_RNN_KERNEL_CACHE"):
        return pathlib.Path(os.environ["SKETCH_RNN_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "sketch-rnn" / "kernels"


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++", "clang++")):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_signature() -> str:
    """The CPU model and feature flags (what -march=native compiles for)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _command(cxx: str, out: str) -> list[str]:
    import tensorflow as tf

    flags = list(tf.sysconfig.get_compile_flags())
    if not any(f.startswith("-std=") for f in flags):
        flags.append("-std=c++17")
    arch = ["-march=native"]
    if "avx512_fp16" in _cpu_signature().split():
        # CPUs with AVX-512 FP16 (Intel Sapphire Rapids and later): the Eigen that TensorFlow ships
        # enables its half-precision packet math there, which g++ 12 cannot compile ("expected
        # initializer before '<' token" in PacketMathFP16.h). The kernel computes in float32 only.
        arch.append("-mno-avx512fp16")
    return [cxx, "-shared", "-fPIC", "-O3", *arch, "-DNDEBUG", str(SOURCE), "-o", out,
            *flags, *tf.sysconfig.get_link_flags()]


def build(log=None) -> pathlib.Path:
    """Compiles the kernel (or finds it in the cache); returns the shared library's path.
    Raises RuntimeError with the compiler's message when it cannot be built."""
    import tensorflow as tf

    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++, or set CXX)")
    cmd = _command(cxx, "OUT")
    key = hashlib.sha256("\0".join([SOURCE.read_text(), tf.__version__, tf.__file__, " ".join(cmd[1:]),
                                    _cpu_signature()]).encode()).hexdigest()[:16]
    target = cache_dir() / key / "sketch_lstm_kernel.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if log:
        log(f"building the fused LSTM kernel for this CPU into {target.parent} (once, about a minute)")
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run(_command(cxx, tmp), capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{os.path.basename(cxx)} failed (exit {proc.returncode}):\n"
                               f"{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def load(log=None):
    """The loaded op library (ops `sketch_lstm_forward`, `sketch_lstm_backward`, their gradient
    registered), or None when it is turned off or cannot be built (see `why()`)."""
    with _LOCK:
        if "ops" in _STATE:
            return _STATE["ops"]
        ops = None
        if os.environ.get("SKETCH_RNN_FUSED_LSTM", "1").strip().lower() in ("0", "false", "off", "no"):
            _STATE["why"] = "turned off by SKETCH_RNN_FUSED_LSTM=0"
        else:
            try:
                import tensorflow as tf

                from model import rnn

                ops = tf.load_op_library(str(build(log)))
                rnn.register_fused_gradient(ops)
                _STATE["why"] = "built for this CPU"
            except Exception as e:  # noqa: BLE001 - any failure means: use the TensorFlow loop
                ops = None
                _STATE["why"] = f"{type(e).__name__}: {e}".strip()
        _STATE["ops"] = ops
        return ops


def why() -> str:
    """Why `load()` returned what it did ('' before the first call)."""
    return _STATE.get("why", "")
