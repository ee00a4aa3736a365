"""Distance matrices against pair scoring, in one run (docs/matrix.md). Not a test.

**Cases** (default: 256 images at 64x64, 32,640 pairs; 64 images at 256x256, 2,016 pairs). Each round times, one
after another: ``Scorer.score_batch`` on a random sample of the pairs (extrapolated to all of them by its pairs/s:
scoring every pair one by one would take tens of minutes here), ``Scorer.features`` (the backbone once per image),
``Scorer.matrix`` on those features (the head, every pair) and a one-thread float64 matrix product (the machine's
DGEMM rate, the head's ceiling). Medians over ``--rounds``. Every figure is given per wall second and per CPU
second of this process (``getrusage``: all its threads), since a shared machine's load slows wall time:

- features against the pair graph's backbone: images/s of ``Scorer.features`` against 2 x the pairs/s of
  ``score_batch`` (two images through the backbone per pair);
- the head: pairs/s, its work per pair (``2 D`` flops: one multiply-add per feature value in the Gram product)
  and that rate per thread as a fraction of the one-thread DGEMM rate; and the head alone on ``--head-images``
  (default 2048) images' random rows of the 64x64 layout, where it does more work per image converted;
- the matrix against ``score_batch`` (the speedup), and the sampled pairs against the matrix (max relative
  difference).

**``--large N``**: a matrix of N images end to end, as a user runs it: N 64x64 PNGs written to a folder, then
``stlpips-score --matrix DIR -o matrix.npy`` in a child process with default options, computing every image's
features and filling the feature cache (``$STLPIPS_CACHE_DIR`` pointed into the run's folder; ``--again``: then a
second time, from the cache), with its wall and CPU time, when the head started (the output
file appears), peak memory (``ru_maxrss``; and peak anonymous and file-backed resident memory, sampled from
``/proc``: the spilled features and the output are memory-mapped files) and peak disk (the spill file in the
child's TMPDIR, the features cache, the output), then a sample of its entries against ``Scorer.score``.

    PYTHONPATH=runtime python scripts/bench_matrix.py --model models/stlpips_alex_st.onnx [--rounds 3]
    PYTHONPATH=runtime python scripts/bench_matrix.py --model models/stlpips_alex_st.onnx --large 10000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from stlpips_rt import Scorer
from stlpips_rt.engine.cpus import available_cpus


def smooth_image(size: int, rng: np.random.Generator) -> np.ndarray:
    coarse = rng.normal(0, 40, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
    return np.clip(128 + coarse + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)


def smooth_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [smooth_image(size, rng) for _ in range(n)]


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")),
                "unknown")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


#: Idle time before each timed phase: onnxruntime's intra-op threads spin for a while after a run, and a phase
#: started at once shares the cores with the previous phase's spinning threads (features right after score_batch:
#: 268-283 images/s; after 0.5 s idle: 377-409, alex-st 64x64, quiet Zen 4).
SETTLE_S = 0.5


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """``fn()`` after :data:`SETTLE_S` of idle, its wall seconds and this process's CPU seconds."""
    time.sleep(SETTLE_S)
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - wall, cpu_seconds() - cpu


def dgemm_rate(rng: np.random.Generator, n: int = 1024, k: int = 4096) -> tuple[float, float]:
    """One-thread float64 matrix product ``[n, k] x [k, n]``: GFLOP/s per wall second and per CPU second."""
    a, b = rng.standard_normal((n, k)), rng.standard_normal((n, k))
    with threadpool_limits(limits=1, user_api="blas"):
        a[:64] @ b[:64].T  # warm up
        _, wall, cpu = timed(lambda: a @ b.T)
    flops = 2.0 * n * n * k
    return flops / wall / 1e9, flops / max(cpu, 1e-9) / 1e9


def median(values: list[float], digits: int = 3) -> float:
    return round(statistics.median(values), digits)


def run_case(scorer: Scorer, threads: int, n: int, size: int, sample: int, rounds: int, seed: int) -> dict:
    images = smooth_images(n, size, seed)
    pairs = n * (n - 1) // 2
    rng = np.random.default_rng(seed + 1)
    flat = rng.choice(pairs, size=min(sample, pairs), replace=False)
    iu, ju = np.triu_indices(n, 1)
    pi, pj = iu[flat], ju[flat]
    runs: dict[str, list[float]] = {}
    matrix = baseline = features = None

    def add(name: str, value: float) -> None:
        runs.setdefault(name, []).append(value)

    for _ in range(rounds):
        baseline, wall, cpu = timed(lambda: scorer.score_batch([images[i] for i in pi], [images[j] for j in pj]))
        add("score_batch_wall_s", wall)
        add("score_batch_cpu_s", cpu)
        features, wall, cpu = timed(lambda: scorer.features(images))
        add("features_wall_s", wall)
        add("features_cpu_s", cpu)
        matrix, wall, cpu = timed(lambda done=features: scorer.matrix(done))
        add("head_wall_s", wall)
        add("head_cpu_s", cpu)
        wall_rate, cpu_rate = dgemm_rate(rng)
        add("dgemm_1thread_gflops_wall", wall_rate)
        add("dgemm_1thread_gflops_cpu", cpu_rate)
    assert matrix is not None and baseline is not None and features is not None
    got = matrix[pi, pj].astype(np.float64)
    rel = np.abs(got - baseline) / np.maximum(np.abs(baseline), 1e-12)
    m = {k: statistics.median(v) for k, v in runs.items()}
    dim = features.layout.dim
    flops_per_pair = 2 * dim
    head_gflops_wall = pairs * flops_per_pair / m["head_wall_s"] / 1e9
    head_gflops_cpu = pairs * flops_per_pair / m["head_cpu_s"] / 1e9
    sampled = len(pi)
    pair_backbone_wall = 2 * sampled / m["score_batch_wall_s"]
    pair_backbone_cpu = 2 * sampled / m["score_batch_cpu_s"]
    baseline_all = pairs / (sampled / m["score_batch_wall_s"])
    matrix_s = m["features_wall_s"] + m["head_wall_s"]
    return {
        "images": n, "size": f"{size}x{size}", "pairs": pairs, "sampled_pairs": sampled, "threads": threads,
        "score_batch_pairs_per_s": round(sampled / m["score_batch_wall_s"], 2),
        "score_batch_all_pairs_s_extrapolated": round(baseline_all, 1),
        "features_s": round(m["features_wall_s"], 3), "features_per_s": round(n / m["features_wall_s"], 2),
        "features_per_cpu_s": round(n / m["features_cpu_s"], 2),
        "pair_backbone_images_per_s": round(pair_backbone_wall, 2),
        "pair_backbone_images_per_cpu_s": round(pair_backbone_cpu, 2),
        "features_vs_pair_backbone": round(n / m["features_wall_s"] / pair_backbone_wall, 3),
        "features_vs_pair_backbone_cpu": round(n / m["features_cpu_s"] / pair_backbone_cpu, 3),
        "head_s": round(m["head_wall_s"], 3), "head_pairs_per_s": round(pairs / m["head_wall_s"], 1),
        "head_flops_per_pair": flops_per_pair,
        "head_gflops_per_thread": round(head_gflops_wall / threads, 2),
        "head_gflops_per_cpu_s": round(head_gflops_cpu, 2),
        "dgemm_1thread_gflops": round(m["dgemm_1thread_gflops_wall"], 2),
        "dgemm_1thread_gflops_per_cpu_s": round(m["dgemm_1thread_gflops_cpu"], 2),
        "head_fraction_of_dgemm_per_thread": round(head_gflops_wall / threads / m["dgemm_1thread_gflops_wall"], 3),
        "head_fraction_of_dgemm_per_cpu_s": round(head_gflops_cpu / m["dgemm_1thread_gflops_cpu"], 3),
        "matrix_s": round(matrix_s, 3), "speedup": round(baseline_all / matrix_s, 1),
        "time_in_features": round(m["features_wall_s"] / matrix_s, 3),
        "bytes_per_image": features.layout.bytes_per_image,
        "max_rel_vs_score_batch": float(rel.max()),
        "rounds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
    }


def run_head(scorer: Scorer, threads: int, n: int, rounds: int) -> dict:
    """The head alone on ``n`` images' worth of random feature rows of the 64x64 layout (the head does not look at
    what the numbers are), against the one-thread DGEMM rate, interleaved over ``rounds``."""
    from stlpips_rt.matrix import FeatureSet

    layout = scorer.features(smooth_images(1, 64, 0)).layout
    runner, model = scorer._features()
    rng = np.random.default_rng(7)
    data = rng.normal(0, 0.05, (n, layout.dim)).astype(np.float32)
    features = FeatureSet(data, [f"random{i}" for i in range(n)], (64, 64), layout, model.weights, model.sha256,
                          model.name)
    pairs, runs = n * (n - 1) // 2, {}
    for _ in range(rounds):
        _, wall, cpu = timed(lambda: scorer.matrix(features))
        runs.setdefault("head_wall_s", []).append(wall)
        runs.setdefault("head_cpu_s", []).append(cpu)
        wall_rate, cpu_rate = dgemm_rate(rng)
        runs.setdefault("dgemm_1thread_gflops_wall", []).append(wall_rate)
        runs.setdefault("dgemm_1thread_gflops_cpu", []).append(cpu_rate)
    m = {k: statistics.median(v) for k, v in runs.items()}
    flops = pairs * 2.0 * layout.dim
    return {
        "images": n, "size": "64x64 (random rows)", "pairs": pairs, "threads": threads,
        "head_flops_per_pair": 2 * layout.dim, "head_s": round(m["head_wall_s"], 3),
        "head_pairs_per_s": round(pairs / m["head_wall_s"], 1),
        "head_gflops_per_thread": round(flops / m["head_wall_s"] / threads / 1e9, 2),
        "head_gflops_per_cpu_s": round(flops / m["head_cpu_s"] / 1e9, 2),
        "dgemm_1thread_gflops": round(m["dgemm_1thread_gflops_wall"], 2),
        "dgemm_1thread_gflops_per_cpu_s": round(m["dgemm_1thread_gflops_cpu"], 2),
        "head_fraction_of_dgemm_per_thread": round(flops / m["head_wall_s"] / threads / 1e9
                                                   / m["dgemm_1thread_gflops_wall"], 3),
        "head_fraction_of_dgemm_per_cpu_s": round(flops / m["head_cpu_s"] / 1e9 / m["dgemm_1thread_gflops_cpu"], 3),
        "rounds": {k: [round(x, 3) for x in v] for k, v in runs.items()},
    }


# --- the end-to-end run ------------------------------------------------------------------------------------------
def allocated_bytes(path: Path, pattern: str = "*") -> int:
    """Disk blocks in use by the files under ``path`` matching ``pattern`` (a sparse spill file counts what was
    written)."""
    if not path.exists():
        return 0
    files = [path] if path.is_file() else [p for p in path.rglob(pattern) if p.is_file()]
    total = 0
    for f in files:
        with contextlib.suppress(OSError):  # removed while we looked
            total += f.stat().st_blocks * 512
    return total


def resident(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of ``pid`` in bytes (empty once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def cli_run(command: list[str], env: dict[str, str], watch: dict[str, tuple[Path, str]], output: Path) -> dict:
    """Run ``command``; sample its resident memory and the disk of ``watch`` (folder, file pattern) twice a
    second."""
    peaks = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0, **{f"disk_{k}": 0 for k in watch}}
    head_started: list[float] = []
    loads: list[float] = []  # the one-minute load average, twice a second: how quiet the machine was
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for key, value in resident(proc.pid).items():
                peaks[key] = max(peaks[key], value)
            for key, (path, pattern) in watch.items():
                peaks[f"disk_{key}"] = max(peaks[f"disk_{key}"], allocated_bytes(path, pattern))
            if not head_started and output.exists():
                head_started.append(time.perf_counter() - start)
            loads.append(os.getloadavg()[0])
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}:\n{stderr}")
    return {
        "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "features_s": round(head_started[0], 1) if head_started else None,
        "head_and_output_s": round(wall - head_started[0], 1) if head_started else None,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "peak_rss_anon_bytes": peaks["RssAnon"], "peak_rss_file_bytes": peaks["RssFile"],
        **{k: v for k, v in peaks.items() if k.startswith("disk_")},
        "load_average_1min_range": [round(min(loads), 2), round(max(loads), 2)] if loads else None,
        "summary": stderr.strip().splitlines()[-1] if stderr.strip() else "",
    }


def run_large(model: str, n: int, size: int, threads: int | None, workdir: Path, check: int, again: bool) -> dict:
    images_dir, tmp, out = workdir / "images", workdir / "tmp", workdir / "matrix.npy"
    images_dir.mkdir(parents=True)
    tmp.mkdir()
    from PIL import Image

    rng = np.random.default_rng(100)
    for i in range(n):
        Image.fromarray(smooth_image(size, rng)).save(images_dir / f"img{i:06d}.png")
    cli = Path(sys.executable).with_name("stlpips-score")
    command = [str(cli) if cli.exists() else "stlpips-score", "--matrix", str(images_dir), "-o", str(out),
               "--model", model, "--providers", "cpu"] + (["--threads", str(threads)] if threads else [])
    cache = workdir / "cache"  # the feature cache (default size limit), here rather than in the user's cache folder
    env = {**os.environ, "TMPDIR": str(tmp), "STLPIPS_CACHE_DIR": str(cache)}
    watch = {"spill": (tmp, "*"), "cache": (cache, "*"), "output": (workdir, "matrix*")}
    runs: dict = {}
    scorer = Scorer(model, "cpu", threads=threads)
    head_threads = scorer.config.threads or available_cpus()
    flops_per_pair = 2 * scorer.features([smooth_image(size, rng)]).layout.dim
    dgemm = [dgemm_rate(rng)[0]]
    for name in ("computed", "from_cache")[:2 if again else 1]:
        for f in workdir.glob("matrix*"):
            f.unlink()
        print(f"[large] {name}: {' '.join(command)}", flush=True)
        run = runs[name] = cli_run(command, env, watch, out)
        dgemm.append(dgemm_rate(rng)[0])
        if run["head_and_output_s"]:
            # the head's phase also reads the spilled rows and writes the output; its rate against the one-thread
            # DGEMM rate measured before and after, per thread
            gflops = n * (n - 1) // 2 * flops_per_pair / run["head_and_output_s"] / head_threads / 1e9
            run["head_gflops_per_thread"] = round(gflops, 2)
            run["head_fraction_of_dgemm_per_thread"] = round(gflops / statistics.median(dgemm), 3)
        print(f"[large] {name}: {run}", flush=True)
    runs["dgemm_1thread_gflops"] = [round(v, 2) for v in dgemm]
    runs["head_threads"], runs["head_flops_per_pair"] = head_threads, flops_per_pair
    runs["output_bytes"] = sum(f.stat().st_size for f in workdir.glob("matrix*"))
    runs["cache_bytes"] = allocated_bytes(cache)
    runs["images_bytes"] = allocated_bytes(images_dir)
    matrix = np.load(out, mmap_mode="r")
    names = out.with_suffix(".rows.txt").read_text().splitlines()
    pick = np.random.default_rng(5).choice(n, size=(check, 2), replace=check * 2 > n)
    pick = pick[pick[:, 0] != pick[:, 1]]
    expected = scorer.score_batch([names[i] for i in pick[:, 0]], [names[j] for j in pick[:, 1]])
    got = np.array([matrix[i, j] for i, j in pick], dtype=np.float64)
    rows = np.array(matrix[:64])
    runs["check"] = {
        "pairs_against_score_batch": len(pick),
        "max_rel": float((np.abs(got - expected) / np.maximum(np.abs(expected), 1e-12)).max()),
        "symmetric_sample": bool(np.array_equal(rows[:, :64], rows[:, :64].T)),
        "zero_diagonal_sample": bool(np.all(np.diag(rows[:, :64]) == 0)),
    }
    runs["plan"] = str(scorer.matrix_plan(n, size, size))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/stlpips_alex_st.onnx")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None,
                        help="[default: docs/matrix_bench.json, docs/matrix_bench_large.json with --large]")
    parser.add_argument("--large", type=int, default=None, metavar="N",
                        help="instead of the cases: a matrix of N 64x64 images end to end (stlpips-score --matrix)")
    parser.add_argument("--large-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="--large: where the images, spill, cache and output go (default: a temporary folder, "
                             "removed afterwards)")
    parser.add_argument("--check", type=int, default=50, help="--large: entries checked against score_batch")
    parser.add_argument("--again", action="store_true", help="--large: run a second time, from the cache")
    parser.add_argument("--head-images", type=int, default=2048,
                        help="also time the head alone on this many images' random 64x64 rows (0: skip)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    report: dict = {"cpu": cpu_model(), "cores": os.cpu_count(), "model": Path(args.model).name,
                    "threads": args.threads, "load_average_before": [round(v, 2) for v in load_before]}
    if args.large:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="stlpips-bench-matrix-"))
        try:
            report["large"] = {"images": args.large, "size": f"{args.large_size}x{args.large_size}",
                               **run_large(args.model, args.large, args.large_size, args.threads, workdir,
                                           args.check, args.again)}
        finally:
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    else:
        scorer = Scorer(args.model, "cpu", threads=args.threads)
        threads = scorer.config.threads or available_cpus()
        report["provider"] = scorer.provider
        report["cases"] = [run_case(scorer, threads, 256, 64, 320, args.rounds, 0),
                           run_case(scorer, threads, 64, 256, 48, args.rounds, 10)]
        if args.head_images:
            report["head_alone"] = run_head(scorer, threads, args.head_images, args.rounds)
        report["plan_10000_at_64x64"] = str(scorer.matrix_plan(10_000, 64, 64))
        for case in report["cases"]:
            print(f"{case['images']} images {case['size']} ({case['pairs']:,} pairs), {case['threads']} threads: "
                  f"score_batch {case['score_batch_pairs_per_s']} pairs/s -> "
                  f"{case['score_batch_all_pairs_s_extrapolated']} s for all (extrapolated from "
                  f"{case['sampled_pairs']}); matrix {case['matrix_s']} s = features {case['features_s']} s "
                  f"({case['features_per_s']} images/s, {case['features_vs_pair_backbone']}x the pair graph's "
                  f"backbone; per CPU second {case['features_vs_pair_backbone_cpu']}x) + head {case['head_s']} s "
                  f"({case['head_pairs_per_s']:,} pairs/s, {case['head_flops_per_pair']:,} flops a pair: "
                  f"{case['head_fraction_of_dgemm_per_thread']} of the one-thread DGEMM rate "
                  f"{case['dgemm_1thread_gflops']} GFLOP/s per thread; per CPU second "
                  f"{case['head_fraction_of_dgemm_per_cpu_s']} of {case['dgemm_1thread_gflops_per_cpu_s']}): "
                  f"{case['speedup']}x; max rel vs score_batch {case['max_rel_vs_score_batch']:.1e}")
        if args.head_images:
            h = report["head_alone"]
            print(f"head alone, {h['images']} images of random 64x64 rows ({h['pairs']:,} pairs), {h['threads']} "
                  f"threads: {h['head_s']} s, {h['head_pairs_per_s']:,} pairs/s: "
                  f"{h['head_fraction_of_dgemm_per_thread']} of the one-thread DGEMM rate "
                  f"{h['dgemm_1thread_gflops']} GFLOP/s per thread; per CPU second "
                  f"{h['head_fraction_of_dgemm_per_cpu_s']} of {h['dgemm_1thread_gflops_per_cpu_s']}")
        print(f"plan for 10,000 images at 64x64: {report['plan_10000_at_64x64']}")
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(f"cpu {report['cpu']}, load average {report['load_average_before']} -> {report['load_average_after']}")
    out = args.json or Path("docs/matrix_bench_large.json" if args.large else "docs/matrix_bench.json")
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
