"""An independent sketch classifier that scores how recognisable a model's samples are (issue 11).

    .venv/bin/python scripts/sketch_classifier.py train [--out DIR] [--epochs 20] [--threads 1]
    .venv/bin/python scripts/sketch_classifier.py score --export EXPORT_DIR --category pig \\
        [--num 100 --temperature 0.5 --seed 1]   (--seed 1-5: 500 samples, pooled)
    .venv/bin/python scripts/sketch_classifier.py score --ndjson samples.ndjson --category pig
    .venv/bin/python scripts/sketch_classifier.py score --real --category pig

Sketches are rasterised the same way for training and scoring (`rasterize`): stroke-3 -> absolute
points (`model.strokes.to_polylines`, so only pen-down segments are joined) -> fitted into the
canvas by their bounding box with the aspect ratio kept and the drawing centred -> lines drawn with
PIL at `supersample` x the size and box-filtered down to a `size` x `size` grayscale image
(ink = 255).

`train` fits a small Keras CNN with four classes: `pig`, `face`, `alarm_clock` (the sketch-rnn
.npz sets of ../shared/data/quickdraw_npz) and `other`: every drawing of
../shared/data/quickdraw_raw except those three categories (about 280 categories, simplified to
stroke-3 by the pipeline's own `pipeline.records.process_line`). It trains on the .npz `train`
splits and about 85 % of `other`, watches the .npz `valid` splits plus 5 % of `other`, and reports
per-class accuracy on data it never saw: the .npz `test` splits and 10 % of `other` (split by a
hash of each drawing's key_id, `pipeline.records.assign_split`), plus the raw Quick Draw drawings
of the target categories present there (through the simplifier, as the pipeline sees them). The
classes are balanced with class weights; training uses small random rotations, zooms and shifts of
the rasters, Adam with a cosine learning-rate decay to 0 (the last epoch's weights are kept) and
fixed seeds: about 4 minutes of one CPU thread. It writes DIR/classifier.keras and
DIR/classifier.json (classes, raster settings, held-out figures); DIR defaults to
$XDG_CACHE_HOME/sketch-rnn/classifier (~/.cache/sketch-rnn/classifier), never inside the repo.

`score` classifies sketches and prints one JSON report: the rate recognised as `--category`, the
class histogram, and the degenerate samples: `near_empty` (fewer than 2 points, or a bounding box
under `--min-extent` pixels in both directions: single dots) and `never_ending` (length == T, the
sampling cap: the model never emitted end-of-sketch). With several seeds (`--seed 1-5` or `1,2,7`,
`--export` only) it samples and scores each, prints `seed N: hits / num` as it goes, and reports the
pooled counts (500 samples for 1-5) with each seed's own report under `per_seed`. Sources:

* `--export DIR`: a SavedModel export loaded with TensorFlow alone (`tf.saved_model.load`); DIR is a
  version dir (holding saved_model.pb) or a base dir whose highest numeric version wins. Its
  `sample` signature is called with `num`, `temperature`, `seed` and returns stroke-3 pixels
  `strokes [num, T, 3]` and `lengths [num]`.
* `--ndjson FILE`: lines of `{"strokes": [[dx, dy, pen], ...]}` (what `sketch-rnn sample` writes) or
  Quick Draw lines; `never_ending` is counted only with `--max-len T`.
* `--real`: the held-out .npz `test` split of `--category` (the sanity baseline: about 95 %).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from deploy.sample import UsageError, read_sketches, resolve_export_dir, unpad  # noqa: E402
from model.strokes import bounds, to_polylines  # noqa: E402
from pipeline import records, safe_npz  # noqa: E402
from pipeline.schema import SPLITS  # noqa: E402

TARGETS = ("pig", "face", "alarm_clock")
OTHER = "other"
CLASSES = TARGETS + (OTHER,)
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
               / "sketch-rnn" / "classifier")
MODEL_FILE = "classifier.keras"
CONFIG_FILE = "classifier.json"
# Fractions of the `other` drawings held out (by key_id hash) for epoch selection and for the report.
OTHER_VALID_FRACTION = 0.05
OTHER_TEST_FRACTION = 0.10
# Raw drawings are simplified without the pipeline's length filter: the classifier sees them all.
RAW_CONFIG = records.Config(max_seq_len=100_000)
# A sample whose bounding box is under this many pixels in both directions is a dot (the data's
# drawings span about 255 px).
DEFAULT_MIN_EXTENT = 10.0
BATCH_SIZE = 64


# --- rasterising -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RasterConfig:
    """How sketches become images; saved with the classifier so scoring draws exactly as training."""

    size: int = 48            # output image: size x size, grayscale uint8, ink = 255
    line_width: float = 2.0   # stroke width in output pixels
    padding: float = 2.0      # blank margin in output pixels (plus half the line width)
    supersample: int = 4      # drawn at size * supersample, then box-filtered down (antialiasing)


def rasterize(strokes3, cfg: RasterConfig = RasterConfig()) -> np.ndarray:
    """A stroke-3 sketch `[n, 3]` -> uint8 image `[size, size]` (0 background, 255 ink).

    Only pen-down segments are drawn (a pen-up move starts a new polyline); the drawing is scaled
    uniformly so that its bounding box fits the canvas inside the margin, and centred. A polyline of
    a single point (or one whose points coincide) is drawn as a dot; an empty sketch gives a blank
    image. y grows downwards, as in Quick Draw.
    """
    strokes3 = np.asarray(strokes3, dtype=np.float64).reshape(-1, 3)
    big = cfg.size * cfg.supersample
    image = Image.new("L", (big, big), 0)
    lines = to_polylines(strokes3)
    if lines:
        points = np.concatenate(lines)
        lo, hi = points.min(axis=0), points.max(axis=0)
        extent = hi - lo
        width = cfg.line_width * cfg.supersample
        margin = (cfg.padding + cfg.line_width / 2) * cfg.supersample
        span = float(extent.max())
        scale = (big - 2 * margin) / span if span > 1e-9 else 0.0
        offset = (big - extent * scale) / 2  # centres the shorter side
        draw = ImageDraw.Draw(image)
        radius = width / 2
        for line in lines:
            xy = (line - lo) * scale + offset
            if len(xy) > 1 and np.ptp(xy, axis=0).max() > 0:
                draw.line([tuple(p) for p in xy], fill=255, width=max(1, round(width)), joint="curve")
            else:
                x, y = xy[0]
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    if cfg.supersample > 1:
        image = image.resize((cfg.size, cfg.size), Image.BOX)
    return np.asarray(image, dtype=np.uint8)


def rasterize_all(sketches, cfg: RasterConfig) -> np.ndarray:
    """A list of stroke-3 sketches -> uint8 `[N, size, size, 1]`, the classifier's input."""
    out = np.zeros((len(sketches), cfg.size, cfg.size, 1), dtype=np.uint8)
    for i, sketch in enumerate(sketches):
        out[i, ..., 0] = rasterize(sketch, cfg)
    return out


# --- degenerate samples --------------------------------------------------------------------------


def is_near_empty(strokes3, min_extent: float = DEFAULT_MIN_EXTENT) -> bool:
    """Fewer than 2 points, or a bounding box under `min_extent` pixels in both directions (a dot)."""
    strokes3 = np.asarray(strokes3, dtype=np.float64).reshape(-1, 3)
    if strokes3.shape[0] < 2:
        return True
    min_x, max_x, min_y, max_y = bounds(strokes3)
    return max(max_x - min_x, max_y - min_y) < min_extent


def degenerate_counts(sketches, lengths=None, max_len: int | None = None,
                      min_extent: float = DEFAULT_MIN_EXTENT) -> dict:
    """Counts of `near_empty` sketches and of `never_ending` ones (length >= `max_len`, the sampling
    cap T); `never_ending` is None when there is no cap to compare with."""
    if lengths is None:
        lengths = [len(s) for s in sketches]
    never = None if max_len is None else int(sum(int(n) >= max_len for n in lengths))
    return {"near_empty": int(sum(is_near_empty(s, min_extent) for s in sketches)),
            "never_ending": never}


# --- data -------------------------------------------------------------------------------------


def load_npz(path: Path) -> dict[str, list[np.ndarray]]:
    """A sketch-rnn .npz -> {split: [stroke-3 float32]}, read with the project's safe reader."""
    out = {}
    with open(path, "rb") as f:
        for split, arr in safe_npz.iter_members(f, SPLITS):
            if isinstance(arr, safe_npz.NpzError):
                raise arr
            out[split] = [np.asarray(s, dtype=np.float32) for s in arr]
    return out


def load_raw(path: Path) -> list[records.Drawing]:
    """A raw Quick Draw ndjson file -> its drawings as stroke-3 (rejected lines are skipped)."""
    with open(path, "rb") as f:
        results = [records.process_line(line, RAW_CONFIG) for line in f]
    return [r for r in results if isinstance(r, records.Drawing)]


def category_of(path: Path) -> str:
    """`alarm_clock.ndjson` -> `alarm_clock`."""
    return path.name.rsplit(".", 1)[0]


def load_dataset(data_dir: Path) -> tuple[dict[str, tuple[list, list]], dict[str, list]]:
    """-> ({split: (sketches, class indices)}, {target: raw drawings of that category}).

    Targets come from quickdraw_npz (their own splits); `other` from every quickdraw_raw file but
    the targets, split by key_id hash. The raw drawings of the targets are returned apart, as an
    extra held-out check.
    """
    splits = {s: ([], []) for s in SPLITS}
    for label, name in enumerate(TARGETS):
        path = data_dir / "quickdraw_npz" / f"{name}.npz"
        if not path.exists():
            raise UsageError(f"{path}: missing (the three target .npz sets are needed to train)")
        for split, sketches in load_npz(path).items():
            splits[split][0].extend(sketches)
            splits[split][1].extend([label] * len(sketches))
    raw_files = sorted(Path(p) for p in glob.glob(str(data_dir / "quickdraw_raw" / "*.ndjson")))
    if not raw_files:
        raise UsageError(f"{data_dir / 'quickdraw_raw'}: no *.ndjson files (the `other` class)")
    raw_targets = {}
    for path in raw_files:
        drawings = load_raw(path)
        if category_of(path) in TARGETS:
            raw_targets[category_of(path)] = [d.strokes3 for d in drawings]
            continue
        for d in drawings:
            split = records.assign_split(d.key_id, OTHER_VALID_FRACTION, OTHER_TEST_FRACTION)
            splits[split][0].append(d.strokes3)
            splits[split][1].append(CLASSES.index(OTHER))
    return splits, raw_targets


# --- the classifier ---------------------------------------------------------------------------


def build_cnn(size: int, num_classes: int = len(CLASSES), seed: int = 1):
    """A small CNN over uint8 `[size, size, 1]` rasters: four conv + max-pool blocks, one hidden dense
    layer (about 0.25 M parameters at size 48).

    Small random rotations, zooms and shifts (active only while training) keep it from learning the
    exact drawings: without them it fits the training set and recognises fewer held-out targets.
    """
    import keras

    layers = keras.layers
    return keras.Sequential([
        keras.Input((size, size, 1)),
        layers.Rescaling(1.0 / 255),
        layers.RandomRotation(0.03, fill_mode="constant", seed=seed),  # +-11 degrees
        layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 1),
        layers.RandomTranslation(0.06, 0.06, fill_mode="constant", seed=seed + 2),
        layers.Conv2D(16, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(128, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dropout(0.3),
        layers.Dense(128, activation="relu"),
        layers.Dense(num_classes, activation="softmax"),
    ], name="sketch_classifier")


def predict(model, cfg: RasterConfig, sketches) -> np.ndarray:
    """Class index of each stroke-3 sketch `[N]` int."""
    if not len(sketches):
        return np.zeros(0, dtype=np.int64)
    probs = model.predict(rasterize_all(sketches, cfg), batch_size=256, verbose=0)
    return np.argmax(probs, axis=1)


def per_class_accuracy(labels, predicted, classes=CLASSES) -> dict[str, dict]:
    """{class: {"n", "accuracy", "predicted": {class: count}}} for each class present in `labels`."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    out = {}
    for i, name in enumerate(classes):
        mask = labels == i
        if mask.any():
            counts = np.bincount(predicted[mask], minlength=len(classes))
            out[name] = {"n": int(mask.sum()), "accuracy": round(float(counts[i] / mask.sum()), 4),
                         "predicted": {c: int(k) for c, k in zip(classes, counts) if k}}
    return out


def save_classifier(model, cfg: RasterConfig, out_dir: Path, info: dict | None = None) -> Path:
    """Writes OUT/classifier.keras and OUT/classifier.json (classes, raster settings, `info`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / MODEL_FILE)
    config = {"classes": list(CLASSES), "raster": dataclasses.asdict(cfg), **(info or {})}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def load_classifier(out_dir: Path):
    """-> (keras model, RasterConfig, classes) from a `train --out` directory."""
    import keras

    config_path, model_path = out_dir / CONFIG_FILE, out_dir / MODEL_FILE
    if not (config_path.exists() and model_path.exists()):
        raise UsageError(f"{out_dir}: no trained classifier ({MODEL_FILE} + {CONFIG_FILE}); run "
                         f"`{Path(__file__).name} train --out {out_dir}` first")
    config = json.loads(config_path.read_text())
    return keras.models.load_model(model_path), RasterConfig(**config["raster"]), config["classes"]


def set_threads(threads: int) -> None:
    """Limits TensorFlow to `threads` CPU threads; a no-op once its runtime has started (as when
    `main` is called in-process, e.g. by the tests)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # "cannot be modified after initialization"
        pass


def class_counts(labels) -> dict[str, int]:
    """{class name: number of `labels` (class indices) of that class}."""
    return {c: int(n) for c, n in zip(CLASSES, np.bincount(labels, minlength=len(CLASSES)))}


def train(args) -> dict:
    """`train`: fits, evaluates and saves the classifier; returns what classifier.json records."""
    import keras
    import tensorflow as tf

    start = time.time()
    set_threads(args.threads)
    keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    cfg = RasterConfig(size=args.size)
    splits, raw_targets = load_dataset(Path(args.data))
    x = {s: rasterize_all(splits[s][0], cfg) for s in SPLITS}
    y = {s: np.asarray(splits[s][1], dtype=np.int64) for s in SPLITS}
    counts = class_counts(y["train"])
    print(f"data ({time.time() - start:.0f} s): "
          + "; ".join(f"{s} {len(y[s])} {class_counts(y[s])}" for s in SPLITS), flush=True)
    # Balanced classes: each class carries the same total weight.
    class_weight = {i: len(y["train"]) / (len(CLASSES) * n) for i, n in enumerate(counts.values())}
    model = build_cnn(cfg.size, seed=args.seed)
    steps = args.epochs * -(-len(y["train"]) // BATCH_SIZE)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # The weights after the last epoch are kept (the learning rate has decayed to 0 by then); the
    # valid split is only watched.
    history = model.fit(x["train"], y["train"], batch_size=BATCH_SIZE, epochs=args.epochs, shuffle=True,
                        class_weight=class_weight, validation_data=(x["valid"], y["valid"]), verbose=2)
    held_out = per_class_accuracy(y["test"], predict(model, cfg, splits["test"][0]))
    raw = {name: per_class_accuracy([CLASSES.index(name)] * len(s), predict(model, cfg, s))[name]
           for name, s in raw_targets.items() if s}
    wall = time.time() - start
    info = {"seed": args.seed, "epochs": args.epochs,
            "valid_accuracy": round(float(history.history["val_accuracy"][-1]), 4),
            "train_counts": counts,
            "held_out_test": held_out, "raw_quickdraw_targets": raw,
            "wall_s": round(wall, 1), "threads": args.threads}
    save_classifier(model, cfg, Path(args.out).expanduser(), info)
    print("held-out accuracy (quickdraw_npz test splits, other: 10% of quickdraw_raw):")
    for name, r in held_out.items():
        print(f"  {name:12s} {r['accuracy']:.1%} of {r['n']}  predicted {r['predicted']}")
    print("raw Quick Draw drawings of the targets (simplified by the pipeline, never trained on):")
    for name, r in raw.items():
        print(f"  {name:12s} {r['accuracy']:.1%} of {r['n']}  predicted {r['predicted']}")
    print(f"saved {Path(args.out).expanduser()}/{{{MODEL_FILE},{CONFIG_FILE}}} in {wall:.0f} s")
    return info


# --- scoring ----------------------------------------------------------------------------------


def load_sampler(export_dir: str):
    """Loads an export's `sample` signature once -> (version dir, draw) where
    `draw(num, temperature, seed)` -> (sketches, lengths `[num]`, T = the sampling cap)."""
    import tensorflow as tf

    path, _ = resolve_export_dir(export_dir)
    module = tf.saved_model.load(path)
    if "sample" not in module.signatures:
        raise UsageError(f"{path}: the SavedModel has no `sample` signature "
                         f"(it has {', '.join(sorted(module.signatures)) or 'none'})")
    signature = module.signatures["sample"]

    def draw(num: int, temperature: float, seed: int):
        out = signature(num=tf.constant(num, tf.int32),
                        temperature=tf.constant(temperature, tf.float32),
                        seed=tf.constant(seed, tf.int32))
        strokes, lengths = out["strokes"].numpy(), out["lengths"].numpy()
        return unpad(strokes, lengths), lengths, int(strokes.shape[1])

    return path, draw


def score_sketches(model, cfg: RasterConfig, classes, sketches, category: str, lengths=None,
                   max_len: int | None = None, min_extent: float = DEFAULT_MIN_EXTENT) -> dict:
    """The report for `sketches` that should be `category`: rate, histogram, degenerate counts."""
    predicted = predict(model, cfg, sketches)
    histogram = {c: int(n) for c, n in zip(classes, np.bincount(predicted, minlength=len(classes)))}
    n = len(sketches)
    return {"category": category, "num": n,
            "recognised": round(histogram.get(category, 0) / n, 4) if n else None,
            "histogram": histogram,
            **degenerate_counts(sketches, lengths, max_len, min_extent)}


def pool_scores(reports: list[dict]) -> dict:
    """Classifier reports for one export, category and temperature at different seeds -> per-seed
    rows and the pooled counts. Reports that disagree on any of those, or repeat a seed, would make
    the pooled rate mean nothing: ValueError naming the field."""
    if not reports:
        raise ValueError("no classifier reports to pool")
    first = reports[0]
    keys = {"category": lambda r: r["category"], "export": lambda r: r["source"]["export"],
            "temperature": lambda r: r["source"]["temperature"]}
    for r in reports[1:]:
        for name, get in keys.items():
            if get(r) != get(first):
                raise ValueError(f"the classifier reports differ in {name} ({get(first)!r} vs {get(r)!r}); "
                                 f"pool only reports of one export at one temperature")
    if any("seed" not in r["source"] for r in reports):
        raise ValueError("a classifier report without one seed (pooled already?): give one report per seed")
    seeds = [r["source"]["seed"] for r in reports]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"a seed is repeated among the classifier reports ({seeds}): each seed once")
    rows = [{"seed": r["source"]["seed"], "num": r["num"], "hits": r["histogram"].get(r["category"], 0),
             "never_ending": r["never_ending"], "near_empty": r["near_empty"]} for r in reports]
    return {"rows": rows, **{k: sum(row[k] for row in rows) for k in ("num", "hits", "never_ending", "near_empty")}}


def score(args) -> dict:
    set_threads(args.threads)
    model, cfg, classes = load_classifier(Path(args.classifier).expanduser())
    if args.category not in classes:
        raise UsageError(f"--category {args.category}: the classifier knows {', '.join(classes)}")
    if args.export:
        report = score_export(args, model, cfg, classes)
    else:
        if args.ndjson:
            sketches = [s for _, s in read_sketches(args.ndjson)]
            source = {"ndjson": args.ndjson, "max_len": args.max_len}
        else:
            path = Path(args.data) / "quickdraw_npz" / f"{args.category}.npz"
            if not path.exists():
                raise UsageError(f"--real: {path} is missing")
            sketches = load_npz(path)["test"]
            source = {"real": str(path), "split": "test"}
        report = {**score_sketches(model, cfg, classes, sketches, args.category, None, args.max_len,
                                   args.min_extent), "source": source}
    report["classifier"] = str(Path(args.classifier).expanduser())
    print(json.dumps(report, indent=2))
    return report


def score_export(args, model, cfg, classes) -> dict:
    """`score --export`: the report of one seed; with several (`--seed 1-5`) each seed's report under
    `per_seed` and the pooled counts (500 samples for 1-5: a standard error sqrt(5) times smaller)."""
    path, draw = load_sampler(args.export)
    reports = []
    for seed in args.seed:
        sketches, lengths, max_len = draw(args.num, args.temperature, seed)
        reports.append({**score_sketches(model, cfg, classes, sketches, args.category, lengths, max_len,
                                         args.min_extent),
                        "source": {"export": path, "temperature": args.temperature, "seed": seed,
                                   "max_len": max_len}})
        if len(args.seed) > 1:
            print(f"seed {seed}: {reports[-1]['histogram'].get(args.category, 0)} / {reports[-1]['num']} "
                  f"recognised as {args.category}", file=sys.stderr)
    if len(reports) == 1:
        return reports[0]
    pooled = pool_scores(reports)
    return {"category": args.category, "num": pooled["num"],
            "recognised": round(pooled["hits"] / pooled["num"], 4) if pooled["num"] else None,
            "histogram": {c: sum(r["histogram"][c] for r in reports) for c in classes},
            "near_empty": pooled["near_empty"], "never_ending": pooled["never_ending"],
            "source": {"export": path, "temperature": args.temperature, "seeds": list(args.seed),
                       "max_len": reports[0]["source"]["max_len"]},
            "per_seed": reports}


def seed_list(text: str) -> list[int]:
    """`--seed` values: `3`, `1-5` or `1,2,7` -> distinct ints in order."""
    seeds = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a seed (3), a range (1-5) or a list (1,2,7)")
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give each seed once (e.g. 1-5)")
    return seeds


# --- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sketch_classifier.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train the classifier and print its held-out accuracy")
    t.add_argument("--data", default=str(DEFAULT_DATA), help="shared data dir (default %(default)s)")
    t.add_argument("--out", default=str(DEFAULT_OUT), help="where to save it (default %(default)s)")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--size", type=int, default=RasterConfig.size, help="raster size in pixels")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=int, default=1, help="TensorFlow CPU threads (default 1)")

    s = sub.add_parser("score", help="classify sketches of one category and print a JSON report")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--export", help="SavedModel export (version dir or base dir)")
    src.add_argument("--ndjson", help='file of {"strokes": [[dx, dy, pen], ...]} lines')
    src.add_argument("--real", action="store_true", help="the held-out real .npz test split")
    s.add_argument("--category", required=True, choices=TARGETS, help="what the sketches should be")
    s.add_argument("--num", type=int, default=100, help="samples to draw from --export")
    s.add_argument("--temperature", type=float, default=0.5)
    s.add_argument("--seed", type=seed_list, default=[1],
                   help="--export: sampling seed, or several (1-5, 1,2,7): one report per seed and "
                        "the pooled rate (default 1)")
    s.add_argument("--max-len", type=int, help="--ndjson: the sampling cap T (for never_ending)")
    s.add_argument("--min-extent", type=float, default=DEFAULT_MIN_EXTENT,
                   help="near_empty: bounding box under this many pixels (default %(default)s)")
    s.add_argument("--classifier", default=str(DEFAULT_OUT), help="train --out dir (default %(default)s)")
    s.add_argument("--data", default=str(DEFAULT_DATA), help="shared data dir, for --real")
    s.add_argument("--threads", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args) if args.command == "train" else score(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
