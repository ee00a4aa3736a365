"""Measurements behind docs/tiling.md: memory of large pairs under a budget, the halo's time overhead, and
exactness on every variant at sizes too large for the test suite. Run once by hand (each memory figure comes from
a fresh process); the machine should have several GB free.

    python scripts/measure_tiling.py memory --size 4096x3072 --max-memory 1G
    python scripts/measure_tiling.py memory --size 4000x3000              # 12 MP, default budget
    python scripts/measure_tiling.py overhead --size 2048x2048 --max-memory 1G --rounds 3
    python scripts/measure_tiling.py exactness --models models
    python scripts/measure_tiling.py check --size 4000x3000 --budgets default,1G --providers auto

Models are looked up as usual (--models, $STLPIPS_MODEL_DIR, ./models); the default export is all tiling needs
(format 1.1 files carry their layer maps). ``check`` scores the pair in a fresh process per budget with the default
Scorer and compares each result with the float64 mean of the full frame's own layer maps (computed in one more
process, untiled: ~10 GB for a 12 MP alex-st pair).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stlpips_rt import Scorer, resolve_model
from stlpips_rt.precision import float64_distance
from stlpips_rt.tiling import format_bytes, parse_memory


def find(model: str, args: argparse.Namespace) -> Path:
    return resolve_model(model, [args.models] if args.models else [])


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def random_pair(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    noise = rng.integers(-30, 31, (h, w, 3), dtype=np.int16)
    b = np.clip(a + noise, 0, 255).astype(np.uint8)
    return a, b


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def reference_child(args: argparse.Namespace) -> dict:
    """In a fresh process: the full frame of the pair, untiled, and the float64 mean of its own layer maps."""
    h, w = parse_size(args.size)
    full = Scorer(find(args.model, args), args.providers, max_memory="1T")
    a, b = random_pair(h, w)
    x0, x1 = full.load(a), full.load(b)
    whole = full.run_arrays(x0[None], x1[None], ["dist", *full.info.layer_maps])
    return {"full_frame_dist": float(whole[0][0]),
            "float64_mean_of_layer_maps": float64_distance(whole[1:])}


def memory_child(args: argparse.Namespace) -> dict:
    """In a fresh process: model loaded, images decoded, then one pair scored; the peak resident set of the
    scoring alone is compared with the budget."""
    h, w = parse_size(args.size)
    scorer = Scorer(find(args.model, args), args.providers, max_memory=args.max_memory)
    plan = scorer.plan(h, w)  # loads the -tiles graph when tiling is needed: it belongs to "the model"
    rss_model = status("VmRSS")
    a, b = random_pair(h, w)
    x0, x1 = scorer.load(a), scorer.load(b)
    del a, b
    decoded = x0.nbytes + x1.nbytes
    rss_ready = status("VmRSS")
    reset_peak()
    start = time.perf_counter()
    dist = float(scorer.evaluate([x0], [x1])["dist"][0])
    seconds = time.perf_counter() - start
    peak = status("VmHWM")
    return {"model": args.model, "size": f"{h}x{w}", "plan": str(plan), "budget": scorer.max_memory,
            "rss_model": rss_model, "decoded_images": decoded, "rss_before_scoring": rss_ready, "peak_rss": peak,
            "scoring_working_memory": peak - rss_ready, "within_budget": peak <= rss_ready + scorer.max_memory,
            "seconds": round(seconds, 2), "dist": dist}


def child(command: str, args: argparse.Namespace, max_memory: str | None) -> dict:
    argv = [sys.executable, __file__, command, "--size", args.size, "--model", args.model, "--providers",
            args.providers]
    argv += ["--max-memory", max_memory] if max_memory else []
    argv += ["--models", args.models] if args.models else []
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(done.stderr)
    return json.loads(done.stdout.splitlines()[-1])


def readable(result: dict) -> dict:
    mib = {k: format_bytes(v) for k, v in result.items()
           if k in ("budget", "rss_model", "decoded_images", "rss_before_scoring", "peak_rss",
                    "scoring_working_memory")}
    return {**result, "readable": mib}


def run_memory(args: argparse.Namespace) -> None:
    print(json.dumps(readable(child("_memory", args, args.max_memory)), indent=2))


def run_check(args: argparse.Namespace) -> None:
    """Each budget in a fresh process, then the untiled float64 reference: the relative error of each result."""
    runs = {budget: child("_memory", args, None if budget == "default" else budget)
            for budget in args.budgets.split(",")}
    reference = child("_reference", args, None)
    exact = reference["float64_mean_of_layer_maps"]
    for result in runs.values():
        result["relative_error_vs_float64"] = abs(result["dist"] - exact) / exact
    print(json.dumps({"size": args.size, "model": args.model, "reference": reference,
                      "runs": {budget: readable(result) for budget, result in runs.items()}}, indent=2))


def run_overhead(args: argparse.Namespace) -> None:
    """Full frame and tiled in alternating rounds in one process (each round in turn goes first); the best and the
    median round of each are reported."""
    h, w = parse_size(args.size)
    full = Scorer(find(args.model, args), args.providers, max_memory="1T")
    tiled = Scorer(find(args.model, args), args.providers, max_memory=args.max_memory)
    plan = tiled.plan(h, w)
    a, b = random_pair(h, w)
    x0, x1 = full.load(a), full.load(b)
    times: dict[str, list[float]] = {"full": [], "tiled": []}
    values = {}
    for round_ in range(args.rounds):
        order = [("full", full), ("tiled", tiled)]
        for name, scorer in order if round_ % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            values[name] = float(scorer.evaluate([x0], [x1])["dist"][0])
            times[name].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    median = {k: float(np.median(v)) for k, v in times.items()}
    print(json.dumps({"size": f"{h}x{w}", "model": args.model, "plan": str(plan),
                      "halo_pixels": round(plan.overhead, 4), "seconds": times,
                      "tiled_over_full_best": round(best["tiled"] / best["full"], 3),
                      "tiled_over_full_median": round(median["tiled"] / median["full"], 3), "dist": values,
                      "relative_difference": abs(values["tiled"] - values["full"]) / values["full"]}, indent=2))


def run_exactness(args: argparse.Namespace) -> None:
    """Every released variant at sizes beyond the test suite's: tiled against full frame (both through the
    same graph), and both against the float64 mean of the full frame's own layer maps."""
    cases = [(*parse_size(size), int(pixels)) for size, pixels in (c.split("@") for c in args.cases.split(","))]
    for key in args.variants.split(","):
        model = key
        full = Scorer(find(model, args), args.providers, max_memory="1T")
        bpp = full.geometry.bytes_per_pixel
        for h, w, tile_pixels in cases:
            tiled = Scorer(find(model, args), args.providers, max_memory=bpp * tile_pixels)
            plan = tiled.plan(h, w)
            a, b = random_pair(h, w, seed=h)
            x0, x1 = full.load(a), full.load(b)
            names = ["dist", *full.geometry.layer_maps]
            whole = full.run_arrays(x0[None], x1[None], names)
            float64 = float64_distance(whole[1:])
            got = float(tiled.evaluate([x0], [x1])["dist"][0])
            ref = float(whole[0][0])
            print(f"{key:<10} {h}x{w:<5} {len(plan.tiles):>3} tiles  tiled vs full {abs(got - ref) / ref:.2e}  "
                  f"full vs float64 {abs(ref - float64) / float64:.2e}  tiled vs float64 "
                  f"{abs(got - float64) / float64:.2e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["memory", "overhead", "exactness", "check", "_memory", "_reference"])
    parser.add_argument("--budgets", default="default,1G", help="check: budgets, each in its own process")
    parser.add_argument("--model", default="alex-st")
    parser.add_argument("--models", default=None)
    parser.add_argument("--providers", default="cpu")
    parser.add_argument("--size", default="4096x3072")
    parser.add_argument("--max-memory", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="alex-st,alex-lpips,vgg-st,vgg-lpips")
    parser.add_argument("--cases", default="517x383@90000,1031x769@270000,640x1280@294000",
                        help="exactness: HxW@PIXELS, the tile budget in pixels of one pair")
    args = parser.parse_args()
    if args.max_memory:
        parse_memory(args.max_memory)
    if args.command.startswith("_"):
        print(json.dumps({"_memory": memory_child, "_reference": reference_child}[args.command](args)))
    else:
        {"memory": run_memory, "overhead": run_overhead, "exactness": run_exactness,
         "check": run_check}[args.command](args)


if __name__ == "__main__":
    main()
