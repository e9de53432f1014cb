"""Throughput of the preprocessing job: Beam (DirectRunner, multi-process) vs a plain NumPy loop.

Both do the same work on the same lines: parse the raw ndjson line, validate, simplify (align, scale,
resample, RDP), stroke-3, split by key_id hash, scale factor = std of the train offsets, normalize,
pad to stroke-5, serialize tf.train.Example, write GZIP TFRecords per split. The input is the
bundled raw sample repeated `--copies` times with distinct key_ids, so that the Beam job's fixed
cost (importing Beam, building the graph, starting the worker processes, finalizing the sinks:
about 4-5 s here) does not dominate. A second Beam run on one copy measures that fixed cost, so
the steady-state rate (drawings/s once running) is printed too. Prints drawings/s of both and the
ratio (Beam wall time including start-up vs the loop).

    .venv/bin/python benchmarks/bench_pipeline.py [--copies 40] [--workers 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import cli, records  # noqa: E402
from pipeline.schema import SPLITS  # noqa: E402


def make_input(sample_dir: pathlib.Path, copies: int, out_dir: pathlib.Path) -> list[str]:
    """Writes one file per category with `copies` copies of its lines (key_id made unique)."""
    lines = []
    for path in sorted(sample_dir.glob("*.ndjson")):
        out = []
        for copy in range(copies):
            for line in path.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                rec["key_id"] = f"{rec['key_id']}{copy:03d}"
                out.append(json.dumps(rec, separators=(",", ":")))
        (out_dir / path.name).write_text("\n".join(out) + "\n", encoding="utf-8")
        lines += out
    return lines


def numpy_loop(lines: list[str], out_dir: pathlib.Path, config: records.Config) -> dict:
    """The same conversion in one process, no Beam: returns counts and the scale factor."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawings, rejected = [], 0
    moments = (0, 0.0, 0.0)
    for line in lines:
        result = records.process_line(line, config)
        if isinstance(result, records.Rejection):
            rejected += 1
            continue
        drawings.append(result)
        if result.split == "train":
            moments = records.merge_moments(moments, records.offset_moments(result.strokes3))
    scale = records.scale_factor_from_moments(moments)
    files = {s: gzip.open(out_dir / f"{s}-00000-of-00001.tfrecord.gz", "wb") for s in SPLITS}
    for d in drawings:
        records.write_tfrecord(files[d.split], records.drawing_to_example(d, scale, config.max_seq_len))
    for f in files.values():
        f.close()
    return {"written": len(drawings), "rejected": rejected, "scale_factor": scale}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=40, help="repeats of the bundled sample")
    parser.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes")
    args = parser.parse_args()

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    try:
        in_dir = tmp / "in"
        in_dir.mkdir()
        lines = make_input(REPO / "data" / "quickdraw_sample", args.copies, in_dir)
        n = len(lines)
        print(f"input: {n} raw drawings ({args.copies} x the bundled sample), {os.cpu_count()} cores")

        start = time.perf_counter()
        loop = numpy_loop(lines, tmp / "loop", records.Config())
        loop_s = time.perf_counter() - start
        print(f"numpy loop (1 process):      {loop_s:7.2f} s  {n / loop_s:8.0f} drawings/s  "
              f"(written {loop['written']}, scale {loop['scale_factor']:.4f})")

        def beam_run(input_dir, out_dir):
            start = time.perf_counter()
            rc = cli.main(["--input", str(input_dir / "*.ndjson"), "--output", str(out_dir),
                           "--direct_running_mode", "multi_processing",
                           "--direct_num_workers", str(args.workers)])
            if rc:
                raise SystemExit(rc)
            return time.perf_counter() - start, json.loads((out_dir / "metadata.json").read_text())

        beam_s, meta = beam_run(in_dir, tmp / "beam")
        print(f"beam DirectRunner ({args.workers} proc): {beam_s:7.2f} s  {n / beam_s:8.0f} drawings/s  "
              f"(written {meta['written']}, scale {meta['scale_factor']:.4f}; wall time incl. start-up)")
        assert meta["written"] == loop["written"]
        assert abs(meta["scale_factor"] / loop["scale_factor"] - 1) < 1e-9
        one = tmp / "one"
        one.mkdir()
        n_one = len(make_input(REPO / "data" / "quickdraw_sample", 1, one))
        one_s, _ = beam_run(one, tmp / "beam_one")
        steady = (n - n_one) / max(beam_s - one_s, 1e-9)
        print(f"beam on 1 copy ({n_one} drawings): {one_s:.2f} s (~ the fixed cost); steady state "
              f"{steady:.0f} drawings/s = {steady * loop_s / n:.2f} x the loop")
        print(f"ratio beam / loop (wall, incl. start-up): {loop_s / beam_s:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
