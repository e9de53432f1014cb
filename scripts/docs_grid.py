"""Pictures for docs/: generated samples and test-set reconstructions of an exported model.

    .venv/bin/python scripts/docs_grid.py --model EXPORT_DIR --data DATA_DIR --name pig [--out docs]

Writes OUT/NAME_samples.svg (sketches from z ~ N(0, I) at temperatures 0.2, 0.5 and 0.8, one row
each), OUT/NAME_reconstructions.svg (pairs: a test-split sketch, then its reconstruction decoded
from z = mu at temperature 0.2) and OUT/NAME_interpolation.svg (two test sketches and the frames
decoded along the spherical interpolation between their mu, temperature 0.1). Uses only the
SavedModel's signatures and the pipeline's TFRecords. --model takes a shipped model's name too.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deploy.sample import load_export  # noqa: E402
from model.latent import slerp  # noqa: E402
from model.strokes import stroke5_to_stroke3  # noqa: E402
from model.svg import grid_svg  # noqa: E402
from pipeline import schema  # noqa: E402


def unpad(out) -> list[np.ndarray]:
    return [s[:int(n)] for s, n in zip(out["strokes"].numpy(), out["lengths"].numpy())]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="`sketch-rnn preprocess` output (test split used)")
    p.add_argument("--name", required=True)
    p.add_argument("--out", default="docs")
    p.add_argument("--per-row", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    model = load_export(args.model).module
    meta = schema.read_metadata(args.data)
    os.makedirs(args.out, exist_ok=True)

    sketches, labels = [], []
    for row, tau in enumerate((0.2, 0.5, 0.8)):
        out = model.signatures["sample"](num=tf.constant(args.per_row), temperature=tf.constant(tau),
                                         seed=tf.constant(args.seed + row))
        sketches += unpad(out)
        labels += [f"tau {tau}"] + [""] * (args.per_row - 1)
    path = os.path.join(args.out, f"{args.name}_samples.svg")
    with open(path, "w") as f:
        f.write(grid_svg(sketches, columns=args.per_row, labels=labels))
    print(path)

    files = sorted(glob.glob(schema.split_pattern(args.data, "test")))
    records = tf.data.TFRecordDataset(files, compression_type=schema.COMPRESSION).take(args.per_row)
    scale, n_max = float(meta["scale_factor"]), int(meta["max_seq_len"])
    originals = []
    for rec in records:
        parsed = schema.parse_example(rec, n_max)
        s3 = stroke5_to_stroke3(parsed[schema.STROKES].numpy(), int(parsed[schema.LENGTH]))
        originals.append(s3 * [scale, scale, 1])
    longest = max(len(s) for s in originals)
    batch = np.zeros([len(originals), longest, 3], np.float32)
    for i, s in enumerate(originals):
        batch[i, :len(s)] = s
    enc = model.signatures["encode"](strokes=tf.constant(batch),
                                     lengths=tf.constant([len(s) for s in originals], tf.int32))
    dec = model.signatures["decode"](z=enc["mu"], temperature=tf.constant(0.2), seed=tf.constant(args.seed))
    pairs, labels = [], []
    for original, recon in zip(originals, unpad(dec)):
        pairs += [original, recon]
        labels += ["test", "reconstruction"]
    path = os.path.join(args.out, f"{args.name}_reconstructions.svg")
    with open(path, "w") as f:
        f.write(grid_svg(pairs, columns=min(8, len(pairs)), labels=labels))
    print(path)

    ends, frames = (originals[0], originals[1]), 8
    ts = np.linspace(0.0, 1.0, frames)
    z = np.stack([slerp(enc["mu"][0].numpy(), enc["mu"][1].numpy(), float(t)) for t in ts]).astype(np.float32)
    dec = model.signatures["decode"](z=tf.constant(z), temperature=tf.constant(0.1), seed=tf.constant(args.seed))
    path = os.path.join(args.out, f"{args.name}_interpolation.svg")
    with open(path, "w") as f:
        f.write(grid_svg([ends[0]] + unpad(dec) + [ends[1]], columns=frames + 2,
                         labels=["A"] + [f"t={t:.2f}" for t in ts] + ["B"]))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
