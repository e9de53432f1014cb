"""Validation curves of our trainer and of the reference, side by side, with the same definitions.

Ours: `MODEL_DIR/metrics.jsonl` (`split == "valid"`: `recon` = L_R over all N_max slots, `kl_floored` =
each batch's KL floored at kl_tolerance, what the reference reports). The reference: the output of
`../shared/reference/bench_reference.py --eval-at ...` (lines `reference valid step=S L_R=... KL=...`).

    python benchmarks/compare_curves.py --model-dir runs/sheep_paper --reference-log ref.log

Prints a markdown table: step, L_R and KL of each, and the differences.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys


def ours(model_dir: pathlib.Path) -> dict[int, tuple[float, float]]:
    out = {}
    for line in (model_dir / "metrics.jsonl").read_text().splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if m.get("split") == "valid":
            out[int(m["step"])] = (float(m["recon"]), float(m.get("kl_floored", 0.0)))
    return out


def reference(log: pathlib.Path) -> dict[int, tuple[float, float]]:
    pattern = re.compile(r"reference valid step=(\d+) L_R=([\d.]+) KL=([\d.]+)")
    return {int(m[1]): (float(m[2]), float(m[3])) for m in pattern.finditer(log.read_text())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", required=True, type=pathlib.Path)
    parser.add_argument("--reference-log", required=True, type=pathlib.Path)
    args = parser.parse_args(argv)
    a, b = ours(args.model_dir), reference(args.reference_log)
    steps = sorted(set(a) & set(b))
    if not steps:
        print(f"no common validation steps (ours: {sorted(a)}, reference: {sorted(b)})", file=sys.stderr)
        return 1
    print("| step | ours L_R | reference L_R | diff | ours KL | reference KL |")
    print("|---|---|---|---|---|---|")
    for s in steps:
        print(f"| {s} | {a[s][0]:.4f} | {b[s][0]:.4f} | {a[s][0] - b[s][0]:+.4f} | {a[s][1]:.4f} | {b[s][1]:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
