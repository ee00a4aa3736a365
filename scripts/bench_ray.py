"""Benchmark of the Ray paths (docs/at_scale.md): batch scoring against plain ``stlpips-score``, and the
``stlpips-serve`` service at 1, 8 and 32 concurrent clients with and without dynamic batching.

    PYTHONPATH=runtime:export python scripts/bench_ray.py --model models/stlpips_alex_st.onnx --out /tmp/bench

Batch: the same N generated 64x64 pairs (a CSV) scored by plain ``stlpips-score`` and by the Ray path, in
alternating rounds in one process (each timed run builds its Scorer(s) and reads every image; the Ray runs use a
cluster started once, as a user with a running cluster would), plus one cold end-to-end
``stlpips-score --engine ray`` that starts its own local cluster. Every Ray distance is checked against the
plain run's (== at 7 decimals: the CSV's precision). Service: closed-loop clients on 127.0.0.1, a fixed number
of requests per level; answers are checked against Scorer.score. Not a test: numbers depend on the machine and
on what else runs on it.
"""

from __future__ import annotations

import argparse
import csv
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def make_pairs(folder: Path, n: int, size: int = 64) -> Path:
    """n distinct smooth random pairs (coarse noise upsampled, as the tests' images) and pairs.csv."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    pairs_csv = folder / "pairs.csv"
    if pairs_csv.exists() and sum(1 for _ in pairs_csv.open()) == n + 1:
        return pairs_csv
    rng = np.random.default_rng(0)
    with pairs_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "dist"])
        for i in range(n):
            for kind in ("r", "d"):
                coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
                Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC).save(
                    folder / "img" / f"{kind}{i:05d}.png")
            w.writerow([f"img/r{i:05d}.png", f"img/d{i:05d}.png"])
    return pairs_csv


def read_csv_distances(path: Path) -> dict[tuple[str, str], str]:
    with path.open(newline="") as f:
        return {(r["ref"], r["dist"]): r["distance"] for r in csv.DictReader(f)}


def bench_batch(args: argparse.Namespace, pairs_csv: Path) -> dict:
    import pyarrow.parquet as pq
    import ray
    from click.testing import CliRunner

    from stlpips_rt.cli.score import main as score_cli
    from stlpips_rt.io.pairs import from_csv
    from stlpips_rt.scale.batch import ScoringOptions
    from stlpips_rt.scale.job import run_job

    out = args.out / "batch"
    out.mkdir(parents=True, exist_ok=True)
    pairs = from_csv(pairs_csv)
    runner = CliRunner()

    def plain(threads: int) -> float:
        target = out / f"plain_t{threads}.csv"
        t0 = time.perf_counter()
        result = runner.invoke(score_cli, ["--model", str(args.model), "--providers", "cpu", "--threads",
                                           str(threads), "--pairs", str(pairs_csv), "-o", str(target), "-q"])
        elapsed = time.perf_counter() - t0
        assert result.exit_code == 0, result.output
        return elapsed

    def on_ray(workers: int) -> float:
        target = out / f"ray_w{workers}.parquet"
        t0 = time.perf_counter()
        result = run_job(pairs, target, ScoringOptions(model=args.model, providers="cpu", threads=1,
                                                       workers=workers), quiet=True)
        elapsed = time.perf_counter() - t0
        assert result.failed == 0
        return elapsed

    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)  # 2 actors + 1 CPU left for Ray Data
    ray.data.DataContext.get_current().enable_progress_bars = False
    configs = {"plain --threads 1": lambda: plain(1), "ray 1 worker x 1 thread": lambda: on_ray(1),
               "plain --threads 2": lambda: plain(2), "ray 2 workers x 1 thread": lambda: on_ray(2)}
    times: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]  # alternate, so drift in the machine's load evens out
        for name in order:
            times[name].append(configs[name]())
            print(f"  round {r + 1} {name}: {times[name][-1]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    ray.shutdown()

    reference = read_csv_distances(out / "plain_t1.csv")
    for workers in (1, 2):
        rows = pq.read_table(out / f"ray_w{workers}.parquet").to_pylist()
        assert len(rows) == len(pairs)
        assert all(round(r["distance"], 7) == float(reference[(r["ref"], r["dist"])]) for r in rows), \
            "Ray distances differ from the plain run's"

    cold_target = out / "ray_cold.parquet"
    t0 = time.perf_counter()
    command = str(Path(sys.executable).parent / "stlpips-score")
    subprocess.run([command, "--engine", "ray", "--workers", "1", "--threads", "1", "--model", str(args.model),
                    "--providers", "cpu", "--pairs", str(pairs_csv), "-o", str(cold_target), "-q"], check=True)
    cold = time.perf_counter() - t0
    result = {"pairs": len(pairs), "rounds": args.rounds, "seconds": times,
              "median_s": {k: statistics.median(v) for k, v in times.items()},
              "cold_end_to_end_ray_1_worker_s": cold}
    med = result["median_s"]
    result["overhead_1_worker"] = med["ray 1 worker x 1 thread"] / med["plain --threads 1"] - 1
    result["speedup_2_vs_1_workers"] = med["ray 1 worker x 1 thread"] / med["ray 2 workers x 1 thread"]
    result["ray_2_workers_vs_plain_2_threads"] = med["ray 2 workers x 1 thread"] / med["plain --threads 2"] - 1
    return result


# --- service -----------------------------------------------------------------------------------------------------
def png_bytes(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def post_pair(port: int, a: bytes, b: bytes) -> tuple[float, dict]:
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"; filename="{n}.png"\r\n\r\n'
                    .encode() + d + b"\r\n" for n, d in (("ref", a), ("dist", b))) + f"--{boundary}--\r\n".encode()
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/v1/score", body=body,
                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    assert response.status == 200, answer
    return time.perf_counter() - t0, answer


def bench_service(args: argparse.Namespace) -> dict:
    import ray

    from stlpips_rt import Scorer
    from stlpips_rt.scale import service

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pool = [(png_bytes(2 * i), png_bytes(2 * i + 1)) for i in range(64)]
    scorer = Scorer(args.model, providers="cpu", threads=1)
    expected = [scorer.score(Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))) for a, b in pool]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    modes = {"no batching (max_batch 1)": dict(max_batch=1),
             "dynamic batching (max_batch 16, 5 ms)": dict(max_batch=16, batch_wait_ms=5.0),
             "dynamic batching, stacked runs": dict(max_batch=16, batch_wait_ms=5.0, stack=True)}
    results: dict[str, dict] = {}
    for mode, kwargs in modes.items():
        service.start(service.ServiceConfig(model=str(args.model), providers="cpu", threads=1, **kwargs), port=port)
        post_pair(port, *pool[0])  # warm-up
        results[mode] = {}
        for clients in (1, 8, 32):
            total = args.requests * clients if clients == 1 else args.requests * 8
            jobs = [i % len(pool) for i in range(total)]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=clients) as ex:
                done = list(ex.map(lambda i: (i, *post_pair(port, *pool[i])), jobs))
            wall = time.perf_counter() - t0
            lat = sorted(d[1] for d in done)
            diffs = [abs(d[2]["distance"] - expected[d[0]]) for d in done]
            results[mode][str(clients)] = {
                "requests": total, "throughput_rps": total / wall, "p50_ms": 1000 * lat[len(lat) // 2],
                "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], "max_abs_diff": max(diffs),
                "exact": max(diffs) == 0.0}
            print(f"  {mode}, {clients} clients: {results[mode][str(clients)]}", flush=True)
        service.stop()
    ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("/tmp/stlpips-bench-ray"))
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=20, help="per client at 1 client; x8 at 8 and 32")
    parser.add_argument("--only", choices=["batch", "service"], default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    if args.only in (None, "batch"):
        report["batch"] = bench_batch(args, make_pairs(args.out, args.pairs))
    if args.only in (None, "service"):
        report["service"] = bench_service(args)
    report["load_average_at_end"] = os.getloadavg()
    (args.out / "bench_ray.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
