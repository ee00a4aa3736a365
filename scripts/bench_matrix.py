"""Distance matrices against pair scoring, in one run (docs/matrix.md). Not a test.

For each case (256 images at 64x64: 32,640 pairs; 64 images at 256x256: 2,016 pairs) it times
``Scorer.features`` (the backbone, once per image) and ``Scorer.matrix`` on those features (the head, every pair),
and ``Scorer.score_batch`` on a random sample of the same pairs, extrapolated to all of them by its pairs/s (scoring
every pair one by one would take tens of minutes here). Baseline and matrix alternate over ``--rounds``; medians
are reported. The sampled pairs are also checked against the matrix (max relative difference).

    PYTHONPATH=runtime python scripts/bench_matrix.py --model models/stlpips_alex_st.onnx [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from stlpips_rt import Scorer


def smooth_images(n: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        coarse = rng.normal(0, 40, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
        out.append(np.clip(128 + coarse + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8))
    return out


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")),
                "unknown")


def run_case(scorer: Scorer, n: int, size: int, sample: int, rounds: int, seed: int) -> dict:
    images = smooth_images(n, size, seed)
    pairs = n * (n - 1) // 2
    rng = np.random.default_rng(seed + 1)
    flat = rng.choice(pairs, size=min(sample, pairs), replace=False)
    iu, ju = np.triu_indices(n, 1)
    pi, pj = iu[flat], ju[flat]
    base_rates, feat_times, head_times = [], [], []
    matrix = None
    for _ in range(rounds):
        start = time.perf_counter()
        baseline = scorer.score_batch([images[i] for i in pi], [images[j] for j in pj])
        base_rates.append(len(pi) / (time.perf_counter() - start))
        start = time.perf_counter()
        features = scorer.features(images)
        feat_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        matrix = scorer.matrix(features)
        head_times.append(time.perf_counter() - start)
    assert matrix is not None
    got = matrix[pi, pj].astype(np.float64)
    rel = np.abs(got - baseline) / np.maximum(np.abs(baseline), 1e-12)
    base_rate = statistics.median(base_rates)
    feat, head_s = statistics.median(feat_times), statistics.median(head_times)
    baseline_all = pairs / base_rate
    return {
        "images": n, "size": f"{size}x{size}", "pairs": pairs, "sampled_pairs": int(len(pi)),
        "score_batch_pairs_per_s": round(base_rate, 2), "score_batch_all_pairs_s_extrapolated": round(baseline_all, 1),
        "features_s": round(feat, 3), "features_per_s": round(n / feat, 2), "head_s": round(head_s, 3),
        "head_pairs_per_s": round(pairs / head_s, 1), "matrix_s": round(feat + head_s, 3),
        "speedup": round(baseline_all / (feat + head_s), 1),
        "time_in_features": round(feat / (feat + head_s), 3),
        "bytes_per_image": features.layout.bytes_per_image,
        "max_rel_vs_score_batch": float(rel.max()),
        "rounds": {"score_batch_pairs_per_s": [round(r, 2) for r in base_rates],
                   "features_s": [round(t, 3) for t in feat_times], "head_s": [round(t, 3) for t in head_times]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/stlpips_alex_st.onnx")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path("docs/matrix_bench.json"))
    args = parser.parse_args()
    scorer = Scorer(args.model, "cpu", threads=args.threads)
    load_before = os.getloadavg()
    cases = [run_case(scorer, 256, 64, 320, args.rounds, 0), run_case(scorer, 64, 256, 48, args.rounds, 10)]
    report = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()], "model": Path(args.model).name,
        "threads": args.threads, "provider": scorer.provider, "cases": cases,
        "plan_10000_at_64x64": str(scorer.matrix_plan(10_000, 64, 64)),
    }
    for case in cases:
        print(f"{case['images']} images {case['size']} ({case['pairs']:,} pairs): score_batch "
              f"{case['score_batch_pairs_per_s']} pairs/s -> {case['score_batch_all_pairs_s_extrapolated']} s for all "
              f"(extrapolated from {case['sampled_pairs']}); matrix {case['matrix_s']} s = features "
              f"{case['features_s']} s ({case['features_per_s']} images/s) + head {case['head_s']} s "
              f"({case['head_pairs_per_s']:,} pairs/s): {case['speedup']}x; max rel vs score_batch "
              f"{case['max_rel_vs_score_batch']:.1e}")
    print(f"plan for 10,000 images at 64x64: {report['plan_10000_at_64x64']}")
    print(f"cpu {report['cpu']}, load average {report['load_average_before']} -> {report['load_average_after']}")
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
