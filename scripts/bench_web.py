"""Browser host speed: one alex-st pair in headless Chromium (onnxruntime-web, WASM with 1 thread, then with
threads in a cross-origin isolated page; WebGPU where the browser offers it) against the Python runtime on one
thread, in the same run. Not a test: prints ms/pair and the ratios (docs/web.md records them).

    python scripts/bench_web.py --model models/stlpips_alex_st.onnx [--size 256] [--repeats 15]

Needs what tests/test_web.py needs (bash scripts/setup_web.sh). Python rounds are taken before, between and after
the browser's, and their median is the reference, since other jobs may share the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from web_harness import Browser, StaticServer, missing_requirement, open_page, rgba_b64  # noqa: E402

from stlpips_rt import Scorer  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def python_round(scorer: Scorer, a: np.ndarray, b: np.ndarray, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        scorer.score(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.score(a, b)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def browser_round(browser: Browser, model: str, a: np.ndarray, b: np.ndarray, warmup: int, repeats: int,
                  options: dict) -> dict:
    h, w, _ = a.shape
    return browser.eval(f"""
        const s = await stlpips.loadScorer('/data/{model}', {json.dumps(options)});
        const a = __t.imageData('{rgba_b64(a)}', {w}, {h}), b = __t.imageData('{rgba_b64(b)}', {w}, {h});
        let d = 0;
        for (let i = 0; i < {warmup}; i++) d = await s.score(a, b);
        const times = [];
        for (let i = 0; i < {repeats}; i++) {{
          const t0 = performance.now(); d = await s.score(a, b); times.push(performance.now() - t0);
        }}
        const out = {{times, distance: d, backend: s.backend, threads: s.threads, isolated: crossOriginIsolated}};
        await s.release();
        return out;""")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/stlpips_alex_st.onnx"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="WASM threads when isolated")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    why = missing_requirement()
    if why:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    model = args.model.resolve()
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    scorer = Scorer(str(model), providers="cpu", threads=1)
    load_before = os.getloadavg()
    rows: dict[str, dict] = {}
    python_times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        (data / model.name).symlink_to(model)
        browser = Browser(Path(tmp) / "profile")
        try:
            python_times += python_round(scorer, a, b, args.warmup, args.repeats)
            with StaticServer(data) as plain:
                open_page(browser, plain.url + "index.html")
                rows["wasm, 1 thread"] = browser_round(browser, model.name, a, b, args.warmup, args.repeats,
                                                       {"backend": "wasm", "threads": 1})
                gpu = browser.eval("if (!navigator.gpu) return 'navigator.gpu is absent';"
                                   "const ad = await navigator.gpu.requestAdapter();"
                                   "return ad ? null : 'navigator.gpu offers no adapter';")
                if gpu is None:
                    rows["webgpu"] = browser_round(browser, model.name, a, b, args.warmup, args.repeats,
                                                   {"backend": "webgpu"})
            python_times += python_round(scorer, a, b, 1, args.repeats)
            with StaticServer(data, isolated=True) as isolated:
                open_page(browser, isolated.url + "index.html")
                rows[f"wasm, {args.threads} threads (COOP/COEP)"] = browser_round(
                    browser, model.name, a, b, args.warmup, args.repeats,
                    {"backend": "wasm", "threads": args.threads})
            python_times += python_round(scorer, a, b, 1, args.repeats)
            version = browser.version
        finally:
            browser.close()
    python_ms = statistics.median(python_times)
    python_d = scorer.score(a, b)
    print(f"alex-st {args.size}x{args.size}, one pair per call; {cpu_model()}, {os.cpu_count()} cores; "
          f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; {version}")
    print(f"{'what':38s} {'ms/pair (median)':>17s} {'x python 1 thread':>18s}  distance")
    print(f"{'python Scorer(threads=1), cpu':38s} {python_ms:17.1f} {1.0:18.2f}  {python_d:.7f}")
    results = {"python_ms": python_ms, "cpu": cpu_model(), "browser": version, "load_before": load_before[0],
               "load_after": os.getloadavg()[0], "size": args.size, "rows": {}}
    for name, row in rows.items():
        ms = statistics.median(row["times"])
        print(f"{name:38s} {ms:17.1f} {ms / python_ms:18.2f}  {row['distance']:.7f}"
              f"  (threads {row['threads']}, isolated {row['isolated']})")
        results["rows"][name] = {"ms": ms, "ratio": ms / python_ms, **row}
    if "webgpu" not in rows:
        print(f"{'webgpu':38s} not run: {gpu} (headless Chromium started with --disable-gpu)")
        results["webgpu"] = gpu
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
