"""The README's main command: the whole sketch-rnn chain on the bundled Quick Draw sample.

    preprocess (Beam, DirectRunner) -> train the `small` preset briefly -> export a SavedModel
    -> sample sketches to SVG and PNG

Each step runs the `sketch-rnn` command as a user would type it (printed before it runs).
Every run starts clean: the demo first deletes what an earlier demo wrote in the output folder
(data/, model/, export/, samples.*), and nothing else there.

Usage: python scripts/demo.py [--out DIR] [--steps N]   (or: bash scripts/dev.sh demo [...])
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args: list[str]) -> None:
    """Runs `sketch-rnn ARGS` with this interpreter (the venv's), from the repository root."""
    print(f"\n$ sketch-rnn {shlex.join(args)}", flush=True)
    start = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "deploy.cli", *args], cwd=REPO, env=env)
    if result.returncode != 0:
        sys.exit(f"demo: `sketch-rnn {args[0]}` failed with exit code {result.returncode}")
    print(f"   ({time.time() - start:.0f} s)", flush=True)


def rel(path: str) -> str:
    """`path` relative to the repository root when inside it (shorter commands to copy)."""
    r = os.path.relpath(path, REPO)
    return path if r.startswith("..") else r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT_DIR", os.path.join(REPO, "out", "demo")),
                        help="output folder (default out/demo, or $OUT_DIR)")
    parser.add_argument("--steps", type=int, default=200,
                        help="training steps of the small preset (default 200: a few minutes on 2 CPU cores)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    out = os.path.abspath(args.out)
    data, model_dir, export_dir, samples = (rel(os.path.join(out, name))
                                            for name in ("data", "model", "export", "samples"))

    # A fresh start: train would otherwise resume an earlier run (already at --steps: no training).
    for name in ("data", "model", "export"):
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    for ext in (".svg", ".ndjson", ".png"):
        if os.path.exists(os.path.join(out, "samples" + ext)):
            os.remove(os.path.join(out, "samples" + ext))

    start = time.time()
    run(["preprocess", "--input", "data/quickdraw_sample/*.ndjson", "--output", data])
    every = max(1, args.steps // 2)
    run(["train", "--data", data, "--model-dir", model_dir, "--preset", "small", "--steps", str(args.steps),
         "--log-every", str(max(1, args.steps // 8)), "--eval-every", str(every),
         "--checkpoint-every", str(every), "--no-export"])  # Exported explicitly below.
    run(["export", "--model-dir", model_dir, "--export-dir", export_dir])
    run(["sample", "--model", export_dir, "--num", "16", "--temperature", "0.5", "--seed", "1",
         "--output", samples, "--png"])
    # What the same command draws with a model that trained for hours (shipped in deploy/pretrained/).
    from deploy.sample import shipped_models

    shipped = shipped_models()
    for name in shipped:
        run(["sample", "--model", name, "--num", "16", "--temperature", "0.5", "--seed", "1",
             "--output", rel(os.path.join(out, f"shipped_{name}")), "--png"])
    print(f"\nDone in {time.time() - start:.0f} s. Outputs under {out}/:")
    print(f"  pictures:                  {samples}.svg and {samples}.png (16 samples, temperature 0.5)")
    print(f"  the same as stroke-3:      {samples}.ndjson")
    print(f"  TFRecords + metadata.json: {data}/")
    print(f"  checkpoints + TensorBoard: {model_dir}/   (tensorboard --logdir {model_dir})")
    print(f"  SavedModel:                {export_dir}/<version>/")
    for name in shipped:
        print(f"  a shipped model, to compare: {rel(os.path.join(out, 'shipped_' + name))}.svg/.png ({name})")
    models = " ".join(f"--model {name}" for name in shipped)
    print(f"\nServe them with the browser demo: sketch-rnn serve {models} --model demo={export_dir}"
          "  (then open http://localhost:8501/ and pick a model)")
    print("The model trained only a few minutes on ~230 drawings of 10 categories: expect short scribbles,"
          " not recognizable pictures (the README's trainer section trains real models).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
