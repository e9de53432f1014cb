"""`sketch-rnn sample`: draw sketches from an exported SavedModel into SVG, stroke-3 ndjson and PNG.

Four modes, one signature each (see trainer/export.py):

    sketch-rnn sample --model EXPORT --num 16 --temperature 0.5 --seed 1 --output out/samples
        unconditional samples (`sample`); EXPORT may be a shipped model's name: --model pig
    sketch-rnn sample --model EXPORT --input cat.ndjson [--index 3] --num 8 --output out/recon
        encode one input sketch, decode `--num` times from z = mu (`encode` + `decode`)
    sketch-rnn sample --model EXPORT --complete partial.json --num 8 --output out/done
        `--num` endings of a partial sketch, the prefix included (`complete`)
    sketch-rnn sample --model EXPORT --interpolate two.ndjson [--index 0,1] --num 9 --output out/lerp
        `--num` frames decoded along the spherical interpolation between the two sketches' mu

Writes OUTPUT.svg (a grid), OUTPUT.ndjson (one JSON object per generated sketch, `strokes` in
stroke-3 pixel units) and, with `--png`, OUTPUT.png. EXPORT is the versioned base directory (its
highest numeric version is used), one version directory, or the name of a model shipped under
deploy/pretrained/ (pig, face, alarm_clock; a path that exists wins over a name).

Input sketches (`--input`, `--complete`, `--interpolate`): a Quick Draw ndjson file (lines with a
`drawing` field, raw `[x, y, t]` strokes are simplified as the pipeline does, `[x, y]` strokes taken
as Quick Draw's simplified 0..255 drawings), an ndjson file of `{"strokes": [[dx, dy, pen], ...]}`
lines (what this command writes), or a JSON file holding one stroke-3 list, a list of them, or an
object with `strokes`.

Exit codes: 0 ok; 2 the command line or an input is wrong (bad flag, missing model dir, unreadable
or malformed sketch file); 1 a failure while running (model does not load, TensorFlow error, output
cannot be written). Messages go to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any

import numpy as np

from model.latent import slerp  # noqa: F401  (re-exported for callers of deploy.sample)

# Quick Draw canvases are at most a few thousand pixels; anything beyond this is corrupt input.
MAX_ABS_OFFSET = 1e5


class UsageError(Exception):
    """The user passed something wrong (exit code 2): the message says what."""


# --- the exported model ------------------------------------------------------------------------


PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")


def export_versions(base: str) -> list[int]:
    """The versions of an export base dir, ascending: its numeric subdirectories that hold a
    saved_model.pb (TF Serving's layout). Local paths use `os` (no TensorFlow import, so `--help`
    stays fast); URLs (gs://...) go through tf.io.gfile. A missing base has no versions."""
    if "://" in base:
        import tensorflow as tf

        isdir, listdir, isfile = tf.io.gfile.isdir, tf.io.gfile.listdir, tf.io.gfile.exists
    else:
        isdir, listdir, isfile = os.path.isdir, os.listdir, os.path.isfile
    if not isdir(base):
        return []
    names = (n.rstrip("/") for n in listdir(base))
    return sorted(int(n) for n in names if n.isdigit() and isfile(os.path.join(base, n, "saved_model.pb")))


def shipped_models() -> list[str]:
    """Names of the models shipped under deploy/pretrained/ (each NAME/<version>/saved_model.pb)."""
    if not os.path.isdir(PRETRAINED_DIR):
        return []
    return [name for name in sorted(os.listdir(PRETRAINED_DIR))
            if export_versions(os.path.join(PRETRAINED_DIR, name))]


def resolve_model(spec: str) -> tuple[str | None, str]:
    """`--model` value -> (shipped name or None, export path). A path that exists wins; otherwise a
    bare name (no `/`) is looked up among the shipped models (`sketch-rnn sample --model pig`)."""
    if os.path.exists(spec) or "/" in spec or "://" in spec:
        return None, spec
    shipped = shipped_models()
    if spec in shipped:
        return spec, os.path.join(PRETRAINED_DIR, spec)
    raise UsageError(f"--model {spec}: no such directory, and not a shipped model "
                     f"(shipped: {', '.join(shipped) or 'none installed'})")


def resolve_export_dir(path: str) -> tuple[str, int | None]:
    """EXPORT_DIR -> (version dir, version). Accepts a version dir (has saved_model.pb) or the base
    dir, where the highest numeric subdirectory holding a saved_model.pb wins (as TF Serving does)."""
    import tensorflow as tf

    path = path.rstrip("/") or "/"
    if not tf.io.gfile.isdir(path):
        raise UsageError(f"--model {path}: no such directory")
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        base = os.path.basename(path)
        return path, int(base) if base.isdigit() else None
    versions = export_versions(path)
    if not versions:
        raise UsageError(f"--model {path}: neither a SavedModel (no saved_model.pb) nor an export base "
                         "directory with numeric version subdirectories (BASE/<version>/saved_model.pb)")
    return os.path.join(path, str(versions[-1])), versions[-1]


@dataclasses.dataclass
class Export:
    """A loaded export: its signatures plus what assets.extra says about the data and the model."""

    path: str
    version: int | None
    module: Any
    metadata: dict[str, Any]
    hparams: dict[str, Any]

    @property
    def signatures(self):
        return self.module.signatures

    @property
    def max_seq_len(self) -> int:
        """The model's N_max (exports before `n_max` was recorded: the records' max_seq_len)."""
        return int(self.metadata.get("n_max", self.metadata["max_seq_len"]))

    @property
    def resimplify_epsilon(self) -> float:
        """The pipeline's --resimplify-epsilon for the training data (0: none)."""
        return float(self.metadata.get("resimplify_epsilon") or 0.0)

    def like_training_data(self, strokes3: np.ndarray, where: str) -> np.ndarray:
        """A user's stroke-3 simplified again as the training data was (--resimplify-epsilon)."""
        if not self.resimplify_epsilon > 0:
            return strokes3
        from pipeline import simplify

        try:
            return simplify.resimplify_stroke3(strokes3, self.resimplify_epsilon)
        except simplify.TooComplex as e:
            raise UsageError(f"{where}: drawing too complex to simplify: {e}") from None

    @property
    def z_size(self) -> int | None:
        z = self.hparams.get("z_size")
        return int(z) if z is not None else None

    def call(self, name: str, **inputs) -> dict[str, np.ndarray]:
        """Runs signature `name` on NumPy/scalar inputs (cast to the signature's dtypes)."""
        import tensorflow as tf

        fn = self.signatures[name]
        specs = fn.structured_input_signature[1]
        kwargs = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()}
        return {k: v.numpy() for k, v in fn(**kwargs).items()}


def _read_json_asset(path: str, name: str) -> dict[str, Any]:
    import tensorflow as tf

    file = os.path.join(path, "assets.extra", name)
    if not tf.io.gfile.exists(file):
        return {}
    with tf.io.gfile.GFile(file) as f:
        return json.loads(f.read())


def load_export(model_dir: str) -> Export:
    """Loads EXPORT_DIR (base or version dir, or a shipped model's name) with `tf.saved_model.load`."""
    import tensorflow as tf

    path, version = resolve_export_dir(resolve_model(model_dir)[1])
    module = tf.saved_model.load(path)
    metadata = _read_json_asset(path, "metadata.json")
    hparams = _read_json_asset(path, "hparams.json")
    if "max_seq_len" not in metadata:
        # Older exports without assets.extra: N_max is the length of a sample's output.
        out = module.signatures["sample"](num=tf.constant(1), temperature=tf.constant(0.0),
                                          seed=tf.constant(0))
        metadata["max_seq_len"] = int(out["strokes"].shape[1])
    if "z_size" not in hparams and "decode" in module.signatures:
        hparams["z_size"] = int(module.signatures["decode"].structured_input_signature[1]["z"].shape[-1] or 0) or None
    return Export(path, version, module, metadata, hparams)


# --- input sketches ----------------------------------------------------------------------------


def check_stroke3(strokes, where: str, max_len: int | None = None) -> np.ndarray:
    """Validates a stroke-3 sketch (list or array `[n, 3]`) -> float32 `[n, 3]`, last row pen-lifted."""
    try:
        arr = np.asarray(strokes, dtype=np.float64)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: stroke-3 must be a list of [dx, dy, pen_lifted] number rows") from None
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise UsageError(f"{where}: stroke-3 must have shape [n, 3], got {list(arr.shape)}")
    if arr.shape[0] < 1:
        raise UsageError(f"{where}: the sketch has no points")
    if not np.isfinite(arr).all():
        raise UsageError(f"{where}: the sketch holds NaN or Infinity")
    if np.abs(arr[:, :2]).max() > MAX_ABS_OFFSET:
        raise UsageError(f"{where}: offsets beyond +-{MAX_ABS_OFFSET:g} pixels")
    if not np.isin(arr[:, 2], (0.0, 1.0)).all():
        raise UsageError(f"{where}: pen_lifted (third column) must be 0 or 1")
    if max_len is not None and arr.shape[0] > max_len:
        raise UsageError(f"{where}: {arr.shape[0]} points, more than the model's N_max = {max_len}")
    out = arr.astype(np.float32)
    out[-1, 2] = 1.0
    return out


def quickdraw_to_stroke3(drawing, where: str) -> np.ndarray:
    """A Quick Draw `drawing` field -> stroke-3 pixels (raw drawings simplified like the pipeline)."""
    from pipeline import records, simplify

    parsed = records.parse_strokes(drawing, "auto")
    if isinstance(parsed, records.Rejection):
        raise UsageError(f"{where}: bad Quick Draw drawing ({parsed.reason}): {parsed.detail}")
    xy, lengths, is_raw = parsed
    if is_raw:
        try:
            xy, lengths = simplify.simplify(xy, lengths)
        except simplify.TooComplex as e:  # Bounded work per drawing, as in the pipeline.
            raise UsageError(f"{where}: drawing too complex to simplify: {e}") from None
    return simplify.to_stroke3(xy, lengths)


def _sketch_from_value(value, where: str) -> list[tuple[str, np.ndarray]]:
    """A parsed JSON value -> [(label, stroke-3)]."""
    if isinstance(value, dict):
        label = str(value.get("word") or value.get("key_id") or value.get("label") or "")
        if "drawing" in value:
            return [(label, quickdraw_to_stroke3(value["drawing"], where))]
        if "strokes" in value:
            return [(label, check_stroke3(value["strokes"], where))]
        raise UsageError(f"{where}: a JSON object needs a `drawing` (Quick Draw) or `strokes` (stroke-3) "
                         f"field, got keys {sorted(value)[:8]}")
    if isinstance(value, list) and value and all(isinstance(v, (dict, list)) for v in value) \
            and (isinstance(value[0], dict) or (value[0] and isinstance(value[0][0], list))):
        # A list of sketches (objects or stroke-3 lists).
        out = []
        for i, v in enumerate(value):
            out += _sketch_from_value(v, f"{where} item {i}")
        return out
    if isinstance(value, list):
        return [("", check_stroke3(value, where))]
    raise UsageError(f"{where}: expected a sketch (JSON object or stroke-3 list), got {type(value).__name__}")


def read_sketches(path: str) -> list[tuple[str, np.ndarray]]:
    """Reads every sketch of a JSON or ndjson file -> [(label, stroke-3 `[n, 3]` float32)]."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text (expected JSON or ndjson)") from None
    if not text.strip():
        raise UsageError(f"{path}: the file is empty")
    try:
        whole = json.loads(text)
    except ValueError:
        whole = None
    if whole is not None:
        sketches = _sketch_from_value(whole, path)
    else:
        sketches = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError as e:
                raise UsageError(f"{path} line {number}: not JSON ({e.msg}); expected one sketch per line") from None
            sketches += _sketch_from_value(value, f"{path} line {number}")
    if not sketches:
        raise UsageError(f"{path}: no sketches found")
    return sketches


# --- generation ---------------------------------------------------------------------------------


def to_rows(strokes3: np.ndarray) -> list[list[float]]:
    """stroke-3 -> JSON rows, offsets rounded to 1/1000 pixel (float32 noise digits dropped)."""
    return np.round(np.asarray(strokes3, np.float64), 3).tolist()


def unpad(strokes: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """`[B, N, 3]` + `[B]` -> B arrays `[length, 3]`."""
    return [np.asarray(s[: int(n)], np.float32) for s, n in zip(strokes, lengths)]


def _need(export: Export, *names: str) -> None:
    missing = [n for n in names if n not in export.signatures]
    if missing:
        raise UsageError(f"the export has no {', '.join(missing)} signature (it has "
                         f"{', '.join(sorted(export.signatures))}; unconditional models cannot encode)")


def _pick(sketches, indices: list[int], path: str):
    for i in indices:
        if not 0 <= i < len(sketches):
            raise UsageError(f"--index {i}: {path} holds {len(sketches)} sketch(es) (0-based index)")
    return [sketches[i] for i in indices]


def generate(export: Export, args) -> tuple[list[dict[str, Any]], list[np.ndarray], list[str]]:
    """Runs the chosen mode. Returns (ndjson records, sketches for the grid, grid labels)."""
    t, seed, num = args.temperature, args.seed, args.num
    common = {"temperature": t, "seed": seed}
    if args.input or args.complete or args.interpolate:
        path = args.input or args.complete or args.interpolate
        sketches = read_sketches(path)
        want = 2 if args.interpolate else 1
        indices = args.index if args.index is not None else list(range(want))
        if len(indices) != want:
            raise UsageError(f"--index takes {want} number(s) in this mode, got {len(indices)}")
        chosen = [(label, export.like_training_data(s, f"{path} sketch {i}"))
                  for (label, s), i in zip(_pick(sketches, indices, path), indices)]
        for (label, s), i in zip(chosen, indices):
            if s.shape[0] > export.max_seq_len:
                raise UsageError(f"{path} sketch {i}: {s.shape[0]} points, more than the model's "
                                 f"N_max = {export.max_seq_len}")
    if args.complete:
        _need(export, "complete")
        (_, prefix), = chosen
        out = export.call("complete", strokes=prefix[None], lengths=[prefix.shape[0]], num=num, **common)
        made = unpad(out["strokes"], out["lengths"])
        records = [{"mode": "complete", "index": i, "prefix_length": int(prefix.shape[0]), **common,
                    "strokes": to_rows(s)} for i, s in enumerate(made)]
        return records, [prefix] + made, ["partial"] + [f"ending {i}" for i in range(num)]
    if args.input:
        _need(export, "encode", "decode")
        (_, sketch), = chosen
        mu = export.call("encode", strokes=sketch[None], lengths=[sketch.shape[0]])["mu"]
        out = export.call("decode", z=np.repeat(mu, num, axis=0), **common)
        made = unpad(out["strokes"], out["lengths"])
        records = [{"mode": "reconstruct", "index": i, **common, "strokes": to_rows(s)}
                   for i, s in enumerate(made)]
        return records, [sketch] + made, ["input"] + [f"decoded {i}" for i in range(num)]
    if args.interpolate:
        _need(export, "encode", "decode")
        if num < 2:
            raise UsageError("--interpolate needs --num >= 2 (frames, both ends included)")
        (_, a), (_, b) = chosen
        n = max(a.shape[0], b.shape[0])
        batch = np.zeros((2, n, 3), np.float32)
        batch[0, : a.shape[0]], batch[1, : b.shape[0]] = a, b
        mu = export.call("encode", strokes=batch, lengths=[a.shape[0], b.shape[0]])["mu"]
        ts = np.linspace(0.0, 1.0, num)
        z = np.stack([slerp(mu[0], mu[1], float(x)) for x in ts]).astype(np.float32)
        out = export.call("decode", z=z, **common)
        made = unpad(out["strokes"], out["lengths"])
        records = [{"mode": "interpolate", "index": i, "t": round(float(x), 6), **common,
                    "strokes": to_rows(s)} for i, (x, s) in enumerate(zip(ts, made))]
        return records, [a] + made + [b], ["A"] + [f"t={x:.2f}" for x in ts] + ["B"]
    out = export.call("sample", num=num, **common)
    made = unpad(out["strokes"], out["lengths"])
    records = [{"mode": "sample", "index": i, **common, "strokes": to_rows(s)} for i, s in enumerate(made)]
    return records, made, [str(i) for i in range(num)]


def write_outputs(prefix: str, records, sketches, labels, columns: int | None, png: bool) -> list[str]:
    from model.svg import grid_svg

    columns = columns or max(1, math.ceil(math.sqrt(len(sketches))))
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    written = []
    with open(prefix + ".svg", "w", encoding="utf-8") as f:
        f.write(grid_svg(sketches, columns=columns, labels=labels))
    written.append(prefix + ".svg")
    with open(prefix + ".ndjson", "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    written.append(prefix + ".ndjson")
    if png:
        import tensorflow as tf

        from trainer.train import render_grid

        image = render_grid(sketches, cell=128, columns=columns)
        with open(prefix + ".png", "wb") as f:
            f.write(tf.io.encode_png(image).numpy())
        written.append(prefix + ".png")
    return written


# --- command line -------------------------------------------------------------------------------


def _indices(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I or I,J (0-based sketch numbers), got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sketch-rnn sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--model", required=True, metavar="NAME|EXPORT_DIR",
                   help="a shipped model (" + (", ".join(shipped_models()) or "none installed") +
                        "), an export base dir (highest version used) or one version dir")
    p.add_argument("--output", required=True, metavar="PREFIX",
                   help="writes PREFIX.svg, PREFIX.ndjson (and PREFIX.png with --png)")
    p.add_argument("--num", type=int, default=16, help="sketches to draw (interpolation: frames) (default 16)")
    p.add_argument("--temperature", type=float, default=0.5, help="sampling temperature tau, 0 = greedy (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same sketches (default 0)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--input", metavar="FILE", help="encode a sketch of FILE, decode it --num times")
    mode.add_argument("--complete", metavar="FILE", help="--num endings of a partial sketch of FILE")
    mode.add_argument("--interpolate", metavar="FILE", help="--num frames between two sketches of FILE")
    p.add_argument("--index", type=_indices, metavar="I[,J]",
                   help="which sketch(es) of FILE, 0-based (default 0, or 0,1 for --interpolate)")
    p.add_argument("--columns", type=int, help="grid columns (default: about the square root)")
    p.add_argument("--png", action="store_true", help="also write PREFIX.png")
    return p


MAX_NUM = 1024


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # argparse printed the message; 0 for --help, 2 for usage errors.
        return int(e.code or 0)
    prog = "sketch-rnn sample"
    problems = []
    if not 1 <= args.num <= MAX_NUM:
        problems.append(f"--num must be in 1..{MAX_NUM}, got {args.num}")
    if not (math.isfinite(args.temperature) and 0 <= args.temperature <= 10):
        problems.append(f"--temperature must be in [0, 10], got {args.temperature}")
    if not -2**31 <= args.seed < 2**31:
        problems.append(f"--seed must fit in int32, got {args.seed}")
    if args.columns is not None and args.columns < 1:
        problems.append(f"--columns must be >= 1, got {args.columns}")
    if args.index is not None and not (args.input or args.complete or args.interpolate):
        problems.append("--index needs --input, --complete or --interpolate")
    for ext in (".svg", ".ndjson", ".png"):
        if args.output.endswith(ext):
            args.output = args.output[: -len(ext)]
    if problems:
        parser.print_usage(sys.stderr)
        for message in problems:
            print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    try:
        for path in (args.input, args.complete, args.interpolate):
            if path and not os.path.isfile(path):
                raise UsageError(f"{path}: no such file")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        export = load_export(args.model)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # A directory that exists but does not load.
        print(f"{prog}: error: cannot load the model from {args.model}: {type(e).__name__}: {e}",
              file=sys.stderr)
        return 1
    try:
        records, sketches, labels = generate(export, args)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        print(f"{prog}: error: generation failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    try:
        written = write_outputs(args.output, records, sketches, labels, args.columns, args.png)
    except OSError as e:
        print(f"{prog}: error: cannot write {args.output}.*: {e}", file=sys.stderr)
        return 1
    version = f" version {export.version}" if export.version is not None else ""
    print(f"{len(records)} sketch(es) from {export.path}{version}: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
