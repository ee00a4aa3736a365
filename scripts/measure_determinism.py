"""Is a pair's distance a function of the pair alone? And what does each onnxruntime session setting that makes it
so cost? (docs/reproducibility.md "What it costs").

For each candidate setting of the CPU provider's session: score random pairs of several sizes one at a time, then
in shuffled mixed batches (other pairs beside them, other positions), then with another intra-op thread count, and
count the pairs whose float32 distance changed bit-wise; then time pairs/s (64x64 in batches of 16, 256x256 in
batches of 4), the candidates interleaved round by round so that a busy machine slows them alike. Prints a
markdown table and writes JSON with the load average and the CPU.

    python scripts/measure_determinism.py --model models/stlpips_alex_st.onnx [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from stlpips_rt.engine.options import SessionConfig
from stlpips_rt.engine.providers import session_options
from stlpips_rt.io.manifest import cpu_name

LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
#: name -> (graph optimisation level, session config entries, one pair per graph run)
CANDIDATES: dict[str, tuple[str, dict[str, str], bool]] = {
    "ENABLE_ALL (0.2 default)": ("all", {}, False),
    "ENABLE_ALL, NchwcTransformer off": ("all", {"optimization.disable_specified_optimizers": "NchwcTransformer"},
                                         False),
    "ENABLE_EXTENDED": ("extended", {}, False),
    "ENABLE_BASIC": ("basic", {}, False),
    "ENABLE_ALL, no spinning": ("all", {"session.intra_op.allow_spinning": "0"}, False),
    "ENABLE_ALL, one pair per graph run": ("all", {}, True),
}
SIZES = ((64, 64), (48, 80), (96, 96), (128, 72))


def session(path: Path, level: str, entries: dict[str, str], threads: int | None) -> ort.InferenceSession:
    opts = session_options(SessionConfig.build(threads, "exact"))
    opts.graph_optimization_level = LEVELS[level]
    for k, v in entries.items():
        opts.add_session_config_entry(k, v)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def random_pairs(rng: np.random.Generator, n: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Photo-like pairs as the tests write them (tests/sample_images.py): two independent smooth random images
    (8x bicubic-upsampled noise, through 8-bit pixels), distances around 0.3-0.5."""
    from PIL import Image

    def image() -> np.ndarray:
        coarse = rng.integers(0, 256, (max(1, hw[0] // 8), max(1, hw[1] // 8), 3), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(coarse).resize((hw[1], hw[0]), Image.Resampling.BICUBIC))
        return (pixels.astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)

    return np.stack([image() for _ in range(n)]), np.stack([image() for _ in range(n)])


def run(sess: ort.InferenceSession, a: np.ndarray, b: np.ndarray, one_by_one: bool = False) -> np.ndarray:
    if one_by_one:  # each pair in its own graph run (a batch of one), as a mitigation would score them
        return np.concatenate([sess.run(["dist"], {"in0": a[i:i + 1], "in1": b[i:i + 1]})[0].reshape(-1)
                               for i in range(len(a))])
    return sess.run(["dist"], {"in0": a, "in1": b})[0].reshape(-1)


def invariance(path: Path, level: str, entries: dict[str, str], one_by_one: bool, pairs: int,
               seed: int) -> dict[str, Any]:
    """Pairs whose distance changes with batch size / position / companions, and with the thread count."""
    rng = np.random.default_rng(seed)
    one = session(path, level, entries, None)
    single_thread = session(path, level, entries, 1)
    changed_batch = changed_threads = total = 0
    worst = 0.0
    for hw in SIZES:
        a, b = random_pairs(rng, pairs, hw)
        alone = np.array([run(one, a[i:i + 1], b[i:i + 1])[0] for i in range(pairs)], dtype=np.float32)
        for _ in range(3):  # shuffled batches of random sizes: other positions, other companions
            order = rng.permutation(pairs)
            cuts = np.sort(rng.choice(np.arange(1, pairs), size=2, replace=False))
            for chunk in np.split(order, cuts):
                got = run(one, a[chunk], b[chunk], one_by_one)
                changed_batch += int(np.sum(got.view(np.uint32) != alone[chunk].view(np.uint32)))
                worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - alone[chunk]))))
        got1 = run(single_thread, a, b, one_by_one)
        batched = run(one, a, b, one_by_one)
        changed_threads += int(np.sum(got1.view(np.uint32) != batched.view(np.uint32)))
        total += pairs
    return {"pairs": total, "changed_by_batch": changed_batch, "batch_checks": total * 3,
            "changed_by_threads": changed_threads, "max_abs_change": worst}


def speed(sessions: dict[str, tuple[ort.InferenceSession, bool]], rounds: int,
          seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    shapes = {"64x64 b16": (16, (64, 64)), "256x256 b4": (4, (256, 256))}
    times: dict[str, dict[str, list[float]]] = {n: {s: [] for s in shapes} for n in sessions}
    feeds = {s: random_pairs(rng, n, hw) for s, (n, hw) in shapes.items()}
    for sess, one_by_one in sessions.values():  # warm-up
        for a, b in feeds.values():
            run(sess, a, b, one_by_one)
    for _ in range(rounds):
        for name, (sess, one_by_one) in sessions.items():
            for s, (a, b) in feeds.items():
                t = time.perf_counter()
                for _ in range(3):
                    run(sess, a, b, one_by_one)
                times[name][s].append(3 * len(a) / (time.perf_counter() - t))
    return {n: {s: statistics.median(v) for s, v in per.items()} for n, per in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=12, help="pairs per image size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--default-only", action="store_true",
                        help="only the runtime's own setting (e.g. to check a newly exported file)")
    args = parser.parse_args()
    candidates = dict(list(CANDIDATES.items())[:1]) if args.default_only else CANDIDATES
    load_before = os.getloadavg()
    result: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "onnxruntime": ort.__version__,
                              "model": args.model.name, "candidates": {}}
    for name, (level, entries, one_by_one) in candidates.items():
        result["candidates"][name] = {"level": level, "entries": entries, "one_pair_per_run": one_by_one,
                                      **invariance(args.model, level, entries, one_by_one, args.pairs, seed=1)}
    sessions = {n: (session(args.model, lvl, e, None), one) for n, (lvl, e, one) in candidates.items()}
    for name, figures in speed(sessions, args.rounds, seed=2).items():
        result["candidates"][name]["pairs_per_s"] = figures
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    base = result["candidates"]["ENABLE_ALL (0.2 default)"]["pairs_per_s"]
    print(f"CPU: {result['cpu']} ({result['cores']} cores), onnxruntime {ort.__version__}, load "
          f"{load_before[0]:.1f} -> {result['load_average']['after'][0]:.1f}")
    print("| setting | pairs changed by batch / position / companions | by thread count | max abs change | "
          "64x64 b16 pairs/s | 256x256 b4 pairs/s |")
    print("|---|---|---|---|---|---|")
    for name, c in result["candidates"].items():
        sp = c["pairs_per_s"]
        rel = "; ".join(f"{sp[s]:.1f} ({sp[s] / base[s] - 1:+.1%})" for s in sp)
        a, b = rel.split("; ")
        print(f"| {name} | {c['changed_by_batch']} of {c['batch_checks']} | {c['changed_by_threads']} of "
              f"{c['pairs']} | {c['max_abs_change']:.1e} | {a} | {b} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
