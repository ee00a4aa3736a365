"""``stlpips-bench``: pairs/s, latency, effective GFLOP/s, cold start and peak memory, runtime vs upstream.

Every side runs in its own worker process (`worker`), asked in turn config by config and round by round, the
order rotating each round, so that drifts in machine load hit all sides alike. Cold start and memory are
measured in fresh processes, alternating sides. Results go to Markdown and JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import numpy as np

from stlpips_rt.cli.options import CONTEXT, fail, models_dir_option, runtime_options
from stlpips_rt.engine.cpus import available_cpus
from stlpips_rt.engine.model_files import check_models_exist, missing_models
from stlpips_rt.errors import ModelNotFoundError

from .worker import TORCH_SIDES

UPSTREAM = "upstream"
#: The tuned PyTorch peer: upstream's model on channels_last tensors (worker.py).
TUNED = "tuned"
#: ``tuned`` in bfloat16 autocast (worker.py).
TUNED_BF16 = "tuned-bf16"
#: The strongest float32 PyTorch peer, exact mode's: ``tuned`` under torch.compile with inductor freezing.
COMPILED = "compiled"
#: The strongest reduced-precision PyTorch peer, fast mode's: ``compiled`` in bfloat16 autocast.
COMPILED_BF16 = "compiled-bf16"
DEFAULT_SHAPES = "64:1,16,50;256:1,4"
QUICK_SHAPES = "64:1,16;256:1"
#: --profile's configurations when --shapes is not given.
PROFILE_SHAPES = "64:16;256:4"


@dataclass
class Measurement:
    """One side on one configuration, all rounds together."""

    net: str
    size: int
    batch: int
    mode: str  # "plain": batch independent pairs; "broadcast": one reference against batch candidates
    side: str
    latencies: list[float] = field(default_factory=list)
    round_pairs_per_s: list[float] = field(default_factory=list)
    error: str | None = None
    first_call: float | None = None  # seconds; a compiled peer compiles this configuration's graph in it

    @property
    def pairs_per_s(self) -> float:
        return self.batch * len(self.latencies) / sum(self.latencies) if self.latencies else float("nan")

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.latencies) if self.latencies else float("nan")

    @property
    def p90_ms(self) -> float:
        return 1000 * float(np.percentile(self.latencies, 90)) if self.latencies else float("nan")


@dataclass
class ColdStart:
    """One fresh process: start, import, session / model, first score of a 64x64 pair."""

    side: str
    net: str
    seconds: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    error: str | None = None


class Worker:
    """A side's long-lived worker process, spoken to in JSON lines."""

    def __init__(self, side: str, threads: int, models_dir: Path | None) -> None:
        self.side = side
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stlpips_export.bench.worker", side, str(threads),
             *([str(models_dir)] if models_dir else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        ready = self._read()
        if ready.get("ready") != side:
            raise RuntimeError(f"benchmark worker {side} did not start: {ready}")

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.side} exited (code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def ask(self, **request: Any) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


def parse_shapes(text: str) -> list[tuple[int, list[int]]]:
    """``"64:1,16,50;256:1,4"`` -> ``[(64, [1, 16, 50]), (256, [1, 4])]``."""
    shapes = []
    for part in text.split(";"):
        try:
            size, batches = part.split(":")
            shapes.append((int(size), [int(b) for b in batches.split(",")]))
        except ValueError:
            raise click.BadParameter(f"{part!r} is not SIZE:BATCH,BATCH (e.g. 64:1,16,50)") from None
    return shapes


def default_sides(providers: str = "all", int8_files: bool = False) -> list[str]:
    """upstream, the tuned and compiled PyTorch peers, reference, and the runtime on each of ``providers`` ("all":
    every available one), fast too where it differs from exact (with ``int8_files``, fast on a CPU engine runs
    them)."""
    from stlpips_rt.engine.providers import available_providers, resolve_providers
    from stlpips_rt.precision import INT8_ENGINES, has_fast_mode

    sides = [UPSTREAM, TUNED, COMPILED, "reference"]
    for provider in available_providers() if providers == "all" else resolve_providers(providers):
        sides.append(f"runtime:{provider}:exact")
        if has_fast_mode(provider) or (int8_files and provider in INT8_ENGINES):
            sides.append(f"runtime:{provider}:fast")  # elsewhere "fast" runs float32: the same run as exact
    if any(s.endswith(":fast") for s in sides):
        # a reduced-precision runtime side gets PyTorch's reduced precision as its peers
        sides[3:3] = [TUNED_BF16, COMPILED_BF16]
    return sides


#: Load above the core count that still reads as a quiet machine: the bench's own worker keeps one runnable thread
#: per core, so an idle machine under the bench reads about its core count, plus a few hundredths from the kernel's
#: threads and short tools (measured 2.04 on 2 cores with nothing else running); another job adds a whole thread.
BUSY_MARGIN = 0.25


def busy(machine: dict[str, Any]) -> bool:
    """True when the machine was shared: a 1-minute load average above its core count (plus :data:`BUSY_MARGIN`)
    at the start, the end or any configuration of the run. Such a run's figures are unfit for the README (slower
    and noisier)."""
    samples = [machine["load_average_start"][0], machine.get("load_average_end", [0.0])[0],
               *machine.get("load_samples", [])]
    return max(samples) > (machine.get("cores") or 1) + BUSY_MARGIN


def int8_files_exist(nets: list[str], models_dir: Path | None) -> bool:
    """Whether every benchmarked net has an int8 file where the runtime looks."""
    from stlpips_rt import resolve_model
    from stlpips_rt.errors import ModelNotFoundError

    try:
        for net in nets:
            resolve_model(f"{net}-st-int8", [models_dir] if models_dir else [])
    except ModelNotFoundError:
        return False
    return True


def matmul_peak(n: int, repeats: int) -> float:
    """Best float32 GFLOP/s of an ``n x n`` numpy matrix product (numpy's BLAS, all its threads)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


_COLD_RUNTIME = """
import json, resource, time
import numpy as np
from stlpips_rt import Scorer, resolve_model
folders = [d for d in [{models_dir!r}] if d]
s = Scorer(resolve_model("{net}-st", folders), "{provider}", "{precision}", threads={threads})
rng = np.random.default_rng(0)
a, b = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
s.score(a, b)
print(json.dumps({{"t": time.time(), "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""
_COLD_TORCH = """
import json, resource, time
import numpy as np
import torch
from stlpips_rt.io.images import to_model_input
from stlpips_export.bench.worker import TorchSide
side = TorchSide({side!r}, {threads})
rng = np.random.default_rng(0)
a, b = (to_model_input(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(2))
side.prepare({net!r}, a, b)()
print(json.dumps({{"t": time.time(), "rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
"""


def cold_start(side: str, net: str, threads: int, models_dir: Path | None) -> tuple[float, float]:
    """Seconds from process launch to the first score returned, and peak RSS (MB), in a fresh process."""
    if side.startswith("runtime:"):
        _, provider, precision = side.split(":")
        code = _COLD_RUNTIME.format(net=net, provider=provider, precision=precision, threads=threads,
                                    models_dir=str(models_dir) if models_dir else None)
    else:
        code = _COLD_TORCH.format(side=side, net=net, threads=threads)
    start = time.time()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["t"] - start, result["rss_kb"] / 1024


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("onnxruntime", "onnxruntime-ep-openvino", "openvino", "torch", "numpy", "stlpips_pytorch",
                 "stlpips-deploy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@click.command(context_settings=CONTEXT)
@click.option("--quick", is_flag=True, help=f"a run under two minutes: shapes {QUICK_SHAPES}, 1 round, short timings.")
@click.option("--nets", default="alex,vgg", show_default=True, help="backbones (the ST variant of each).")
@click.option("-m", "--model", "models", multiple=True, metavar="NAME",
              help="an ST model to measure, alex-st or vgg-st (repeatable; in place of --nets: the upstream peers "
                   "exist for the ST variants only).")
@click.option("--shapes", default=None, help=f"SIZE:BATCH,...;SIZE:... (default {DEFAULT_SHAPES}).")
@click.option("--sides", default=None,
              help=f"comma-separated: {', '.join(TORCH_SIDES)}, runtime:<provider>:<exact|fast> "
                   "(provider auto: as Scorer picks it; default: all available).")
@click.option("--rounds", default=None, type=int, help="alternating rounds per configuration (default 3; quick 1).")
@click.option("--seconds", default=None, type=float,
              help="timed seconds per side, configuration and round (default 1.5; quick 0.3).")
@click.option("--cold-runs", default=None, type=int, help="fresh processes per side and net for cold start "
                                                          "(default 3; quick 1; 0 skips).")
@click.option("--no-broadcast", is_flag=True, help="skip the one-reference-many-candidates configurations.")
@runtime_options(providers="all", precision=False)
@models_dir_option()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/bench"), show_default=True,
              help="folder for bench.md and bench.json.")
@click.option("--profile", is_flag=True,
              help=f"measure where the time goes instead: per operator type, for each runtime side of --sides "
                   f"(default: every available provider, exact and fast) and each configuration of --shapes "
                   f"(default {PROFILE_SHAPES}); writes profile.md and profile.json into --out.")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="measure nothing: re-render bench.md from an earlier run's bench.json into --out.")
def main(quick: bool, nets: str, models: tuple[str, ...], shapes: str | None, sides: str | None, rounds: int | None,
         seconds: float | None,
         cold_runs: int | None, no_broadcast: bool, providers: str, threads: int | None, models_dir: Path | None,
         out_dir: Path, profile: bool, from_json: Path | None) -> None:
    """Benchmark ST-LPIPS: upstream eager PyTorch, the project's PyTorch reference, the runtime per provider.

    `stlpips-bench serve --help`: the scoring service under load (concurrency sweep, overhead, soak)."""
    from .report import markdown

    if profile:
        run_profile(quick, nets, shapes, sides, providers, threads, models_dir, out_dir)
        return
    if from_json is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        report = json.loads(from_json.read_text())
        if "load_average_end" in report.get("machine", {}):  # today's rule on the loads the run recorded
            report["machine"]["busy"] = busy(report["machine"])
            report["fit_for_readme"] = not report["machine"]["busy"]
        (out_dir / "bench.md").write_text(markdown(report))
        log(f"wrote {out_dir}/bench.md from {from_json}")
        return
    started = time.time()
    threads = threads or available_cpus()
    rounds = rounds if rounds is not None else (1 if quick else 3)
    seconds = seconds if seconds is not None else (0.3 if quick else 1.5)
    cold_runs = cold_runs if cold_runs is not None else (1 if quick else 3)
    shape_list = parse_shapes(shapes or (QUICK_SHAPES if quick else DEFAULT_SHAPES))
    net_list = [n.strip() for n in nets.split(",") if n.strip()]
    if models:
        if any(m.strip().lower() not in ("alex-st", "vgg-st") for m in models):
            raise click.BadParameter(f"{', '.join(models)}: the bench compares the ST models with upstream's, "
                                     "so -m is alex-st or vgg-st", param_hint="-m/--model")
        net_list = list(dict.fromkeys(m.strip().lower().split("-")[0] for m in models))
    side_list = ([s.strip() for s in sides.split(",")] if sides
                 else default_sides(providers, int8_files_exist(net_list, models_dir)))
    models_dir = models_dir.resolve() if models_dir is not None else None
    for side in side_list:
        if side not in TORCH_SIDES and not side.startswith("runtime:"):
            raise click.BadParameter(f"unknown side {side!r}", param_hint="--sides")
    if any(side.startswith("runtime:") for side in side_list):  # every model named now, before any measuring
        try:
            check_models_exist([f"{net}-st" for net in net_list], [models_dir] if models_dir else [])
        except ModelNotFoundError as exc:
            missing = missing_models([f"{net}-st" for net in net_list], [models_dir] if models_dir else [])
            present = [net for net in net_list if f"{net}-st" not in missing]
            others = f"; or measure only {' '.join(f'-m {net}-st' for net in present)}" if present else ""
            fail("stlpips-bench", f"{exc}{others}")

    report: dict[str, Any] = {
        "command": "stlpips-bench " + " ".join(sys.argv[1:]),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "load_average_start": os.getloadavg()},
        "versions": _versions(),
        "settings": {"threads": threads, "rounds": rounds, "seconds": seconds, "cold_runs": cold_runs,
                     "sides": side_list},
    }
    from stlpips_rt.engine.providers import unavailable_reasons

    report["unavailable_providers"] = unavailable_reasons()
    n = 1024 if quick else 2048
    report["matmul_peak_gflops"] = matmul_peak(n, 3 if quick else 5)
    report["matmul_n"] = n
    log(f"numpy float32 matmul peak ({n}x{n}): {report['matmul_peak_gflops']:.1f} GFLOP/s")

    workers: dict[str, Worker] = {}
    measurements: list[Measurement] = []
    try:
        for side in side_list:
            log(f"starting worker {side} ...")
            workers[side] = Worker(side, threads, models_dir)
        torch_side = next((s for s in side_list if s in TORCH_SIDES), None)
        if torch_side is not None:
            probes = workers[torch_side].ask(op="peaks", n=n, repeats=3 if quick else 5)["peaks"]
            report["peak_probes_gops"] = probes
            report["peaks_gops"] = {name: max(rates.values()) for name, rates in probes.items()}
            log("peaks (GOP/s, best probe): " + ", ".join(f"{k} {v:.0f}" for k, v in report["peaks_gops"].items()))
        flops: dict[str, int] = {}
        if torch_side is not None:
            for net in net_list:
                for size, _ in shape_list:
                    reply = workers[torch_side].ask(op="flops", net=net, size=size)
                    if "flops" in reply:
                        flops[f"{net}-st@{size}"] = reply["flops"]
        report["flops_per_pair"] = flops

        configs = [(net, size, batch, "plain") for net in net_list for size, batches in shape_list for batch in batches]
        if not no_broadcast:
            configs += [(net, size, batch, "broadcast") for net in net_list for size, batches in shape_list
                        for batch in batches if batch > 1]
        configs.sort(key=lambda c: (c[0], c[1], c[2], c[3] != "plain"))
        details: dict[str, str] = {}
        arithmetic: dict[str, str] = {}
        report["machine"]["load_samples"] = []
        for net, size, batch, mode in configs:
            report["machine"]["load_samples"].append(os.getloadavg()[0])
            row = {side: Measurement(net, size, batch, mode, side) for side in side_list}
            for r in range(rounds):
                order = side_list[r % len(side_list):] + side_list[: r % len(side_list)]
                for side in order:
                    m = row[side]
                    if m.error:
                        continue
                    reply = workers[side].ask(op="time", net=net, size=size, batch=batch, mode=mode,
                                              seconds=seconds, warmup=(1 if quick else 3) if r == 0 else 1,
                                              min_calls=2 if quick else 3)
                    if "error" in reply:
                        m.error = reply["error"]
                        log(f"  {side}: {m.error}")
                        continue
                    details[side] = reply["detail"]
                    arithmetic[side] = reply["arithmetic"]
                    if "first_call" in reply:
                        m.first_call = reply["first_call"]
                    m.latencies += reply["latencies"]
                    m.round_pairs_per_s.append(batch * len(reply["latencies"]) / sum(reply["latencies"]))
            measurements += row.values()
            log(f"{net}-st {size}x{size} batch {batch} {mode}: " + ", ".join(
                f"{s} {row[s].pairs_per_s:.1f}" for s in side_list) + " pairs/s")
        report["side_details"] = details
        report["side_arithmetic"] = arithmetic
    finally:
        for worker in workers.values():
            worker.close()

    colds: list[ColdStart] = []
    cold_sides = [s for s in side_list if s in (UPSTREAM, TUNED, COMPILED) or s.startswith("runtime:")]
    for net in net_list if cold_runs else []:
        entries = {side: ColdStart(side, net) for side in cold_sides}
        for rep in range(cold_runs):
            for side in cold_sides if rep % 2 == 0 else cold_sides[::-1]:
                entry = entries[side]
                if entry.error:
                    continue
                try:
                    secs, rss = cold_start(side, net, threads, models_dir)
                except RuntimeError as exc:
                    entry.error = str(exc)
                    continue
                entry.seconds.append(secs)
                entry.peak_rss_mb.append(rss)
        colds += entries.values()
        log(f"cold start {net}-st: " + ", ".join(
            f"{e.side} {statistics.median(e.seconds):.2f} s {max(e.peak_rss_mb):.0f} MB" for e in entries.values()
            if e.seconds))

    report["machine"]["load_average_end"] = os.getloadavg()
    report["machine"]["busy"] = busy(report["machine"])
    report["fit_for_readme"] = not report["machine"]["busy"]
    if report["machine"]["busy"]:
        log(f"the load average rose above the {os.cpu_count()} cores (+{BUSY_MARGIN}) during this run: its figures "
            "are marked unfit for the README (bench.json fit_for_readme=false)")
    report["wall_seconds"] = time.time() - started
    report["measurements"] = [
        {**{k: v for k, v in asdict(m).items() if k != "latencies"}, "calls": len(m.latencies),
         "pairs_per_s": m.pairs_per_s, "median_ms": m.median_ms, "p90_ms": m.p90_ms}
        for m in measurements
    ]
    report["cold_start"] = [asdict(c) for c in colds]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    md = markdown(report)
    (out_dir / "bench.md").write_text(md)
    click.echo(md)
    log(f"wrote {out_dir}/bench.md and bench.json in {report['wall_seconds']:.0f} s")


def run_profile(quick: bool, nets: str, shapes: str | None, sides: str | None, providers: str, threads: int | None,
                models_dir: Path | None, out_dir: Path) -> None:
    """``--profile``: per-operator kernel time of each runtime side (bench/profile.py)."""
    from . import profile

    threads = threads or available_cpus()
    side_list = [s.strip() for s in sides.split(",")] if sides else default_sides(providers)
    runtime_sides = [s for s in side_list if s.startswith("runtime:")]
    if not runtime_sides:
        raise click.BadParameter("--profile measures runtime sides (runtime:<provider>:<exact|fast>)",
                                 param_hint="--sides")
    runs = 3 if quick else 10
    report: dict[str, Any] = {
        "command": "stlpips-bench " + " ".join(sys.argv[1:]),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "load_average_start": os.getloadavg()},
        "versions": _versions(), "threads": threads, "runs": runs,
    }
    report["profiles"] = profile.profile_sides(
        runtime_sides, [n.strip() for n in nets.split(",") if n.strip()], parse_shapes(shapes or PROFILE_SHAPES),
        threads, models_dir.resolve() if models_dir else None, runs, log)
    report["machine"]["load_average_end"] = os.getloadavg()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "profile.json").write_text(json.dumps(report, indent=1) + "\n")
    md = profile.markdown(report)
    (out_dir / "profile.md").write_text(md)
    click.echo(md)
    log(f"wrote {out_dir}/profile.md and profile.json")
