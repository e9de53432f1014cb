"""Throughput and latency of `sketch-rnn serve` on CPU: the `sample` signature under concurrent load.

Starts the server in a subprocess on loopback, then for each sketch count (1 and 16 by default)
keeps `--clients` client threads sending columnar `sample` requests (a new seed each time) for
`--seconds`, after a short warm-up. Prints requests/s, sketches/s, p50/p99 latency and the mean
length of the sketches drawn (the sampling loop stops at the end of the longest sketch of a request,
so the cost follows the lengths: an untrained model draws short sketches).
The default model is an untrained `tiny` export built on the fly whose end-of-sketch logit is pinned
low, so every sketch runs the full N_max = 64 steps (`--short`: as initialized, ~2 points, which
measures the HTTP/JSON overhead); pass `--model EXPORT_DIR` for a real export. Default run: under a
minute.

    .venv/bin/python benchmarks/bench_serving.py [--model EXPORT_DIR] [--clients 8] [--seconds 8]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def post(url: str, body: dict) -> tuple[int, float, bytes]:
    data = json.dumps(body).encode()
    start = time.perf_counter()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            text = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status, text = e.code, b""
    return status, time.perf_counter() - start, text


def load(url: str, num: int, clients: int, seconds: float, temperature: float) -> dict:
    latencies, lengths, errors, lock = [], [], [0], threading.Lock()
    deadline = time.perf_counter() + seconds
    seeds = iter(range(10**9))

    def client():
        while time.perf_counter() < deadline:
            with lock:
                seed = next(seeds)
            status, took, text = post(url, {"signature_name": "sample",
                                            "inputs": {"num": num, "temperature": temperature, "seed": seed}})
            with lock:
                if status == 200:
                    latencies.append(took)
                    if len(lengths) < 2000:  # parse a sample of the answers, off the clock
                        lengths.extend(json.loads(text)["outputs"]["lengths"])
                else:
                    errors[0] += 1

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"num": num, "clients": clients, "requests": len(latencies), "errors": errors[0],
            "rps": len(latencies) / wall, "sketches_s": len(latencies) * num / wall,
            "p50": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99": float(np.percentile(ms, 99)) if len(ms) else float("nan"),
            "points": float(np.mean(lengths)) if lengths else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="export dir (default: a tiny untrained export built now)")
    parser.add_argument("--nums", default="1,16", help="sketches per request, comma-separated (default 1,16)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per case (default 8)")
    parser.add_argument("--server-threads", type=int, default=8, help="server worker threads (default 8)")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--short", action="store_true",
                        help="tiny model as initialized (sketches of ~2 points: measures HTTP/JSON overhead)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tmp = None
    model = args.model
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-serving-")
        sys.path.insert(0, str(REPO))
        sys.path.insert(0, str(REPO / "tests"))
        from deploy_fixtures import build_tiny_export

        t0 = time.time()
        model = build_tiny_export(tmp.name, full_length=not args.short)
        print(f"built a tiny untrained export in {time.time() - t0:.1f} s: {model}"
              + ("" if args.short else " (end-of-sketch disabled: every sketch runs to N_max = 64)"))
    proc = subprocess.Popen([sys.executable, "-m", "deploy.cli", "serve", "--model", model, "--port", "0",
                             "--threads", str(args.server_threads), "--max-num", "64"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        if "serving" not in line:
            print(f"the server did not start: {line!r}", file=sys.stderr)
            return 1
        base = line.split(" at ")[1].split("/ ")[0].strip()
        url = f"{base}/v1/models/sketch_rnn:predict"
        print(line.strip())
        results = []
        for num in [int(n) for n in args.nums.split(",")]:
            load(url, num, args.clients, min(2.0, args.seconds), args.temperature)  # warm-up
            results.append(load(url, num, args.clients, args.seconds, args.temperature))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if tmp is not None:
            tmp.cleanup()
    cores = os.cpu_count()
    print(f"\n`sample` on CPU ({cores} cores), {args.clients} client threads, {args.server_threads} server "
          f"threads, {args.seconds:g} s per case, loopback HTTP, columnar JSON")
    print(f"{'sketches/request':>16} {'requests':>9} {'req/s':>8} {'sketches/s':>11} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'errors':>7} {'mean points':>12}")
    for r in results:
        print(f"{r['num']:>16} {r['requests']:>9} {r['rps']:>8.1f} {r['sketches_s']:>11.1f} {r['p50']:>8.1f} "
              f"{r['p99']:>8.1f} {r['errors']:>7} {r['points']:>12.1f}")
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
