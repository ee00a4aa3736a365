"""Does the default file (format 1.1: per-layer maps as outputs, block-sum spatial means) cost anything when only
``dist`` is asked for? Same-run pairs/s against a file exported the old way (plain ReduceMean, no layer maps),
through the runtime's own CPU session, the two files interleaved round by round so that a busy machine slows them
alike. Prints one markdown row per shape and the load average; docs/contract.md quotes it.

    python scripts/bench_default_graph.py --new models/stlpips_alex_st.onnx --old old/stlpips_alex_st.onnx \
        [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from stlpips_rt import Scorer
from stlpips_rt.io.manifest import cpu_name

SHAPES = ((16, 64, 64), (4, 256, 256))


def pairs_per_second(scorer: Scorer, in0: np.ndarray, in1: np.ndarray, seconds: float) -> float:
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
        scorer.evaluate(in0, in1)
        runs += 1
    return runs * len(in0) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=Path, required=True)
    parser.add_argument("--old", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.5, help="per file per round")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    scorers = {name: Scorer(path, providers="cpu", threads=args.threads, max_memory="64G")
               for name, path in (("new", args.new), ("old", args.old))}
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_name()}; load average before: {os.getloadavg()[0]:.2f}")
    print("| shape | default file pairs/s | old plain file pairs/s | ratio (median of rounds) |")
    print("|---|---|---|---|")
    for n, h, w in SHAPES:
        in0 = rng.uniform(-1, 1, (n, 3, h, w)).astype(np.float32)
        in1 = rng.uniform(-1, 1, (n, 3, h, w)).astype(np.float32)
        for scorer in scorers.values():  # warm up: first runs allocate
            pairs_per_second(scorer, in0, in1, 0.3)
        rates: dict[str, list[float]] = {name: [] for name in scorers}
        for round_ in range(args.rounds):
            order = list(scorers) if round_ % 2 == 0 else list(reversed(scorers))
            for name in order:
                rates[name].append(pairs_per_second(scorers[name], in0, in1, args.seconds))
        ratios = [a / b for a, b in zip(rates["new"], rates["old"], strict=True)]
        print(f"| {h}x{w} b{n} | {statistics.median(rates['new']):.1f} | {statistics.median(rates['old']):.1f} | "
              f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}) |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
