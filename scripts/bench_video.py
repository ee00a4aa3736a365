"""Benchmark of video scoring (not a test): where the time goes, and memory against video length.

1. Speed, per frame size (256x256 and 1280x720 H.264 videos, a reference at CRF 18 against a copy at CRF 36):
   frame pairs per second of
     - decode:  decoding both videos to RGB (PyAV, what scoring decodes), nothing else;
     - prepare: decode + the image path's conversion (Scorer.load), no graph;
     - score:   stlpips_rt.video.iter_scores, everything (decoding overlaps the graph in a second thread);
     - graph:   Scorer.evaluate on frames prepared beforehand (same batches), nothing else.
   Rounds alternate the four, so that load from other processes spreads over all of them.
2. Memory: peak RSS of a fresh process scoring generated videos of growing length, streaming
   (iter_scores) against the usual hand-written loop (decode every frame into a list, then score_batch). Long
   videos are scored with a stride (every frame decoded, ~48 (256x256) or ~8 (720p) scored) to keep it short:
   decoding and the pipeline are what could grow with length; the graph's memory depends on the batch only.

    python scripts/bench_video.py --model models/stlpips_alex_st.onnx --out docs
    python scripts/bench_video.py --model models/stlpips_alex_st.onnx --quick     # smaller, ~5 minutes here
    python scripts/bench_video.py --from-json docs/video_bench.json --out docs     # re-render the Markdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import video_samples  # noqa: E402  (a sibling script)

from stlpips_rt import Scorer  # noqa: E402
from stlpips_rt.video import VideoOptions, VideoReader, frames_per_run, iter_scores  # noqa: E402


def make_pair(folder: Path, n: int, h: int, w: int) -> tuple[Path, Path]:
    ref = folder / f"ref_{w}x{h}_{n}.mp4"
    dist = folder / f"dist_{w}x{h}_{n}.mp4"
    if not ref.exists():
        video_samples.write(ref, video_samples.panning(n, h, w), options={"crf": "18"})
        video_samples.write(dist, video_samples.panning(n, h, w), options={"crf": "36"})
    return ref, dist


# --- speed -------------------------------------------------------------------------------------------------
def decode_only(ref: Path, dist: Path, limit: int) -> int:
    pairs = 0
    with VideoReader(ref) as a, VideoReader(dist) as b:
        for fa, fb in zip(a.frames(), b.frames(), strict=False):
            fa.rgb()
            fb.rgb()
            pairs += 1
            if pairs == limit:
                break
    return pairs


def prepare_only(scorer: Scorer, ref: Path, dist: Path, limit: int) -> int:
    pairs = 0
    with VideoReader(ref) as a, VideoReader(dist) as b:
        for fa, fb in zip(a.frames(), b.frames(), strict=False):
            scorer.load(fa.rgb())
            scorer.load(fb.rgb())
            pairs += 1
            if pairs == limit:
                break
    return pairs


def graph_only(scorer: Scorer, x0: list[np.ndarray], x1: list[np.ndarray], per_run: int) -> int:
    for i in range(0, len(x0), per_run):
        scorer.evaluate(x0[i:i + per_run], x1[i:i + per_run])
    return len(x0)


def score_all(scorer: Scorer, ref: Path, dist: Path, limit: int, fps: float) -> int:
    opts = VideoOptions(end=(limit - 0.5) / fps)
    return sum(1 for _ in iter_scores(scorer, ref, dist, opts))


def bench_speed(scorer: Scorer, folder: Path, h: int, w: int, frames: int, rounds: int) -> dict:
    ref, dist = make_pair(folder, frames, h, w)
    with VideoReader(ref) as a, VideoReader(dist) as b:
        fps = a.info.fps or 25.0
        x0 = [scorer.load(f.rgb()) for f, _ in zip(a.frames(), range(frames), strict=False)]
        x1 = [scorer.load(f.rgb()) for f, _ in zip(b.frames(), range(frames), strict=False)]
    per_run = frames_per_run(scorer.batch_size, h, w, VideoOptions().max_batch_pixels)
    sides = {
        "decode": lambda: decode_only(ref, dist, frames),
        "prepare": lambda: prepare_only(scorer, ref, dist, frames),
        "score": lambda: score_all(scorer, ref, dist, frames, fps),
        "graph": lambda: graph_only(scorer, x0, x1, per_run),
    }
    graph_only(scorer, x0[:per_run], x1[:per_run], per_run)  # warm-up: the session's first run allocates
    times: dict[str, list[float]] = {k: [] for k in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every round
            start = time.perf_counter()
            done = sides[name]()
            times[name].append(time.perf_counter() - start)
            assert done == frames, (name, done)
    best = {k: min(v) for k, v in times.items()}
    median = {k: float(np.median(v)) for k, v in times.items()}
    return {"size": f"{w}x{h}", "frames": frames, "batch": per_run, "rounds": rounds,
            "pairs_per_s_median": {k: frames / v for k, v in median.items()},
            "pairs_per_s_best": {k: frames / v for k, v in best.items()},
            "seconds": times}


# --- memory ------------------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: on Linux that keeps the peak of the
    forked copy of the parent across exec, so a child of a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: no such file


def child(mode: str, model: str, ref: str, dist: str, stride: int) -> None:
    """Runs in a fresh process: prints peak RSS after set-up and after scoring, in MiB."""
    with VideoReader(ref) as a, VideoReader(dist) as b:
        first = [(fa.rgb(), fb.rgb()) for fa, fb, _ in zip(a.frames(), b.frames(), range(1), strict=False)][0]
        per_run = frames_per_run(16, a.info.height, a.info.width, VideoOptions().max_batch_pixels)
    scorer = Scorer(model, providers="cpu", batch_size=per_run)  # both modes run the graph on the same batches
    for _ in range(2):  # onnxruntime allocates its memory pattern (one block, ~170 MB at 256x256) on the 2nd run
        scorer.score_batch([first[0]] * per_run, [first[1]] * per_run)
    setup = peak_rss_mib()
    if mode == "stream":
        scored = sum(1 for _ in iter_scores(scorer, ref, dist, VideoOptions(stride=stride)))
    else:  # the usual hand-written loop: every frame decoded into memory first
        with VideoReader(ref) as a, VideoReader(dist) as b:
            ra = [f.rgb() for f in a.frames()]
            rb = [f.rgb() for f in b.frames()]
        scored = len(scorer.score_batch(ra[::stride], rb[::stride]))
    peak = peak_rss_mib()
    print(json.dumps({"setup_mib": setup, "peak_mib": peak, "scored": scored}))


def bench_memory(model: str, folder: Path, h: int, w: int, lengths: list[int], scored: int) -> list[dict]:
    rows = []
    for n in lengths:
        ref, dist = make_pair(folder, n, h, w)
        stride = max(1, n // scored)
        for mode in ("stream", "decode-all"):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, __file__, "--child", mode, model, str(ref), str(dist), str(stride)],
                                 capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"size": f"{w}x{h}", "frames": n, "stride": stride, "mode": mode,
                         "seconds": time.perf_counter() - start, **result})
            print(f"  memory {w}x{h} {n:5d} frames stride {stride:3d} {mode:10s}: set-up {result['setup_mib']:.0f} "
                  f"MiB, peak {result['peak_mib']:.0f} MiB", file=sys.stderr)
    return rows


# --- report ------------------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    lines = ["# Video benchmark", "",
             f"`{result['command']}` on {result['machine']}, load average {result['load_before']} before and "
             f"{result['load_after']} after (other processes shared the CPU).", "",
             "Frame pairs per second (median of the rounds; best in brackets). Model "
             f"`{result['model']}`, CPU provider, float32; H.264 reference (CRF 18) against a CRF 36 copy.", "",
             "| size | batch | decode only | decode + prepare | graph only | score (all) | decode / score time |",
             "|---|---|---|---|---|---|---|"]
    for s in result["speed"]:
        m, b = s["pairs_per_s_median"], s["pairs_per_s_best"]
        cells = [f"{m[k]:.3g} ({b[k]:.3g})" for k in ("decode", "prepare", "graph", "score")]
        lines.append(f"| {s['size']} | {s['batch']} | " + " | ".join(cells) + f" | {m['score'] / m['decode']:.1%} |")
    lines += ["", "Peak RSS of a fresh process (MiB): set-up (imports, session, two warm runs at the batch size) and "
              "the peak after scoring; every frame decoded, every `stride`-th scored.", "",
              "| size | frames | stride | streaming: set-up / peak | decode-all loop: set-up / peak |",
              "|---|---|---|---|---|"]
    by_key: dict[tuple, dict] = {}
    for row in result["memory"]:
        by_key.setdefault((row["size"], row["frames"], row["stride"]), {})[row["mode"]] = row
    for (size, frames, stride), modes in by_key.items():
        s, d = modes["stream"], modes["decode-all"]
        lines.append(f"| {size} | {frames} | {stride} | {s['setup_mib']:.0f} / {s['peak_mib']:.0f} | "
                     f"{d['setup_mib']:.0f} / {d['peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/stlpips_alex_st.onnx")
    parser.add_argument("--out", type=Path, default=None, help="write video_bench.json and video_bench.md here")
    parser.add_argument("--work", type=Path, default=None, help="folder for the generated videos (default: temp)")
    parser.add_argument("--quick", action="store_true", help="fewer frames and rounds, shorter videos")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="re-render the Markdown of a run's JSON")
    args = parser.parse_args()
    if args.from_json:
        text = markdown(json.loads(args.from_json.read_text()))
        print(text)
        if args.out:
            (args.out / "video_bench.md").write_text(text)
        return
    quick = args.quick
    rounds = args.rounds or (2 if quick else 3)
    speed_sizes = [(256, 256, 32 if quick else 64), (720, 1280, 4 if quick else 8)]
    memory_sizes = [(256, 256, [250, 1000] if quick else [250, 1000, 4000], 48),
                    (720, 1280, [25, 100] if quick else [25, 100, 400], 8)]
    load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.work or Path(tmp)
        scorer = Scorer(args.model, providers="cpu")
        speed = []
        for h, w, n in speed_sizes:
            speed.append(bench_speed(scorer, folder, h, w, n, rounds))
            m = speed[-1]["pairs_per_s_median"]
            print(f"  speed {w}x{h}: " + ", ".join(f"{k} {v:.2f}/s" for k, v in m.items()), file=sys.stderr)
        memory = []
        for h, w, lengths, scored in memory_sizes:
            memory += bench_memory(args.model, folder, h, w, lengths, scored)
    result = {"command": "python scripts/bench_video.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "model": Path(args.model).name, "load_before": load_before,
              "load_after": " ".join(f"{x:.1f}" for x in os.getloadavg()), "speed": speed, "memory": memory}
    text = markdown(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "video_bench.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "video_bench.md").write_text(text)


if __name__ == "__main__":
    main()
