"""``stlpips-bench-gpu``: ST-LPIPS on one NVIDIA GPU. Upstream eager PyTorch (float32 as its users run it, and
under fp16 autocast) against the runtime's exact, fast and zero-copy paths and against CUDA graphs, in one process,
with ratios taken in the same run.

Sides (``SIDES``; every input starts as a CUDA tensor in [-1, 1], as in a GPU training or data pipeline):

- ``upstream:fp32``, ``upstream:fp16-autocast``: ``stlpips_pytorch`` on CUDA, eager, ``inference_mode``; PyTorch's
  default flags (recorded in the report: its cuDNN convolutions may use TF32 unless told otherwise).
- ``runtime:exact:host``: the host-copy path, ``tensor.cpu().numpy()`` then ``Scorer.score_batch``.
- ``runtime:<mode>:zero-copy``: ``Scorer.score_batch`` on the CUDA tensors (bound by pointer). Modes: ``exact``
  (float32, TF32 off), ``fast-tf32``, ``fast-fp16`` (the ``--fp16`` export) and ``fast-fp16-nhwc`` (the same with
  onnxruntime's ``prefer_nhwc``), so a run tells which fast mode to make the default.
- ``runtime:<mode>:cuda-graph``: a raw onnxruntime session with ``enable_cuda_graph`` on the same file, its dynamic
  dimensions fixed by ``add_free_dimension_override_by_name`` (static shapes), fixed device buffers filled by a
  device-to-device copy per call.

Timing: after warm-up calls (cuDNN's algorithm search happens there), each side is timed call by call, every call
followed by ``torch.cuda.synchronize()``, for ``--seconds`` per round; the order of the sides rotates each round.
Each side's first output is compared with ``upstream:fp32``'s. The measuring loop (:func:`measure`) is free of
torch so that tests can drive it with fake sides.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import numpy as np

from stlpips_rt.cli.options import CONTEXT, models_dir_option

SIDES = (
    "upstream:fp32",
    "upstream:fp16-autocast",
    "runtime:exact:host",
    "runtime:exact:zero-copy",
    "runtime:fast-tf32:zero-copy",
    "runtime:fast-fp16:zero-copy",
    "runtime:fast-fp16-nhwc:zero-copy",
    "runtime:exact:cuda-graph",
    "runtime:fast-fp16:cuda-graph",
)
BASELINE = "upstream:fp32"
DEFAULT_CONFIGS = "64:64,256:32,64:1,256:1"  # SIZE:BATCH; batch 1 is the latency configuration


@dataclass
class Result:
    """One side on one configuration, all rounds together."""

    net: str
    size: int
    batch: int
    side: str
    latencies: list[float] = field(default_factory=list)
    round_pairs_per_s: list[float] = field(default_factory=list)
    max_abs_vs_baseline: float | None = None
    error: str | None = None

    @property
    def pairs_per_s(self) -> float:
        return self.batch * len(self.latencies) / sum(self.latencies) if self.latencies else float("nan")

    def summary(self) -> dict[str, Any]:
        lat = self.latencies
        return {**{k: v for k, v in asdict(self).items() if k != "latencies"}, "calls": len(lat),
                "pairs_per_s": self.pairs_per_s,
                "median_ms": 1000 * statistics.median(lat) if lat else float("nan"),
                "p90_ms": 1000 * float(np.percentile(lat, 90)) if lat else float("nan")}


def parse_configs(text: str) -> list[tuple[int, int]]:
    """``"64:64,256:32"`` -> ``[(64, 64), (256, 32)]``."""
    out = []
    for part in text.split(","):
        try:
            size, batch = part.split(":")
            out.append((int(size), int(batch)))
        except ValueError:
            raise click.BadParameter(f"{part!r} is not SIZE:BATCH (e.g. 256:32)") from None
    return out


# --- the measuring loop (no torch) ---------------------------------------------------------------------------
Prepare = Callable[[str, int, int], Callable[[], Any]]


def measure(prepare: dict[str, Prepare], nets: list[str], configs: list[tuple[int, int]], rounds: int,
            seconds: float, warmup: int, sync: Callable[[], None], to_host: Callable[[Any], np.ndarray],
            log: Callable[[str], None] = lambda _m: None, min_calls: int = 3) -> list[Result]:
    """Time every side (``prepare[side](net, size, batch)`` returns the call to time) on every configuration."""
    results: list[Result] = []
    sides = list(prepare)
    for net in nets:
        for size, batch in configs:
            row = {side: Result(net, size, batch, side) for side in sides}
            calls: dict[str, Callable[[], Any]] = {}
            outputs: dict[str, np.ndarray] = {}
            for side in sides:
                try:
                    calls[side] = prepare[side](net, size, batch)
                    out = calls[side]()
                    sync()
                    outputs[side] = to_host(out).reshape(-1)
                    for _ in range(warmup - 1):
                        calls[side]()
                    sync()
                except Exception as exc:  # a side that cannot run is reported, the others go on
                    row[side].error = f"{type(exc).__name__}: {exc}"[:500]
                    calls.pop(side, None)
            base = outputs.get(BASELINE)
            for side, out in outputs.items():
                if base is not None and out.shape == base.shape:
                    row[side].max_abs_vs_baseline = float(np.abs(out.astype(np.float64) - base).max())
            for r in range(rounds):
                order = sides[r % len(sides):] + sides[:r % len(sides)]
                for side in order:
                    if side not in calls:
                        continue
                    lat: list[float] = []
                    start = time.perf_counter()
                    while len(lat) < min_calls or time.perf_counter() - start < seconds:
                        t = time.perf_counter()
                        calls[side]()
                        sync()
                        lat.append(time.perf_counter() - t)
                    row[side].latencies += lat
                    row[side].round_pairs_per_s.append(batch * len(lat) / sum(lat))
            calls.clear()
            results += row.values()
            log(f"{net}-st {size}x{size} batch {batch}: " + ", ".join(
                f"{s} {row[s].pairs_per_s:.0f}" if not row[s].error else f"{s} error" for s in sides) + " pairs/s")
    return results


# --- sides on a real GPU ---------------------------------------------------------------------------------------
class GpuSides:
    """Builds each side's call on CUDA tensors. Needs torch with CUDA, stlpips_pytorch and onnxruntime-gpu."""

    def __init__(self, models_dir: Path | None, device_id: int = 0) -> None:
        import torch

        if not torch.cuda.is_available():
            raise click.ClickException(f"PyTorch {torch.__version__} sees no CUDA device: stlpips-bench-gpu needs a "
                                       "GPU and a CUDA build of PyTorch (docs/gpu.md)")
        self.torch, self.models_dir, self.device_id = torch, models_dir, device_id
        self.device = torch.device("cuda", device_id)
        self._upstream: dict[str, Any] = {}
        self._scorers: dict[tuple[str, str], Any] = {}

    def model_path(self, net: str, fp16: bool = False) -> Path:
        """``{net}-st`` (or its fp16 export) from --models, $STLPIPS_MODEL_DIR or ./models."""
        from stlpips_rt.contract import ModelSpec
        from stlpips_rt.engine.model_files import resolve_model

        spec = ModelSpec(net, "st", precision="fp16" if fp16 else "fp32")
        return resolve_model(spec.short_name, [self.models_dir] if self.models_dir else [])

    def inputs(self, size: int, batch: int) -> tuple[Any, Any]:
        g = self.torch.Generator(device="cpu").manual_seed(size * 1000 + batch)
        make = lambda: (self.torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(self.device)  # noqa: E731
        return make(), make()

    def upstream(self, net: str) -> Any:
        if net not in self._upstream:
            from ..upstream import load_upstream

            self._upstream[net] = load_upstream(net, "shift_tolerant").to(self.device).eval()
        return self._upstream[net]

    def scorer(self, net: str, mode: str) -> Any:
        from stlpips_rt import CudaOptions, Scorer

        if (net, mode) not in self._scorers:
            cuda = CudaOptions(device_id=self.device_id)
            if mode != "exact":
                cuda = CudaOptions(device_id=self.device_id, fast="tf32" if mode == "fast-tf32" else "fp16",
                                   extra={"prefer_nhwc": "1"} if mode.endswith("-nhwc") else {})
            self._scorers[(net, mode)] = Scorer(self.model_path(net), "cuda", "exact" if mode == "exact" else "fast",
                                                batch_size=1024, provider_options=[cuda])
        return self._scorers[(net, mode)]

    def prepare(self, side: str) -> Prepare:
        torch = self.torch
        kind, mode, *rest = side.split(":")
        path = rest[0] if rest else ""

        def build(net: str, size: int, batch: int) -> Callable[[], Any]:
            t0, t1 = self.inputs(size, batch)
            if kind == "upstream":
                model = self.upstream(net)

                def call() -> Any:
                    with torch.inference_mode():
                        if mode == "fp16-autocast":
                            with torch.autocast("cuda", dtype=torch.float16):
                                return model(t0, t1)
                        return model(t0, t1)

                return call
            if path == "cuda-graph":
                return self.cuda_graph_call(net, mode, t0, t1)
            scorer = self.scorer(net, mode)
            if path == "host":
                return lambda: scorer.score_batch(t0.cpu().numpy(), t1.cpu().numpy(), float_range="-1,1")
            return lambda: scorer.score_batch(t0, t1)

        return build

    def cuda_graph_call(self, net: str, mode: str, t0: Any, t1: Any) -> Callable[[], Any]:
        """A raw onnxruntime CUDA-graph session for these shapes; inputs are copied into its fixed buffers."""
        import onnxruntime as ort

        torch = self.torch
        n, _, h, w = t0.shape
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        for dim, value in (("N0", n), ("N1", n), ("H", h), ("W", w)):
            so.add_free_dimension_override_by_name(dim, int(value))
        fast = mode != "exact"
        options = {"device_id": str(self.device_id), "enable_cuda_graph": "1", "use_tf32": "1" if fast else "0",
                   "cudnn_conv_algo_search": "EXHAUSTIVE"}
        session = ort.InferenceSession(str(self.model_path(net, fp16=mode.startswith("fast-fp16"))), so,
                                       providers=[("CUDAExecutionProvider", options)], enable_fallback=0)
        if session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"the session runs on {session.get_providers()}, not CUDA")
        buffers = {name: ort.OrtValue.ortvalue_from_shape_and_type(list(t.shape), np.float32, "cuda",
                                                                   self.device_id)
                   for name, t in (("in0", t0), ("in1", t1))}
        dist = ort.OrtValue.ortvalue_from_shape_and_type([int(n)], np.float32, "cuda", self.device_id)
        views = {name: torch.from_dlpack(value) for name, value in buffers.items()}
        binding = session.io_binding()
        for name, value in buffers.items():
            binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output("dist", dist)

        def call() -> Any:
            views["in0"].copy_(t0)
            views["in1"].copy_(t1)
            binding.synchronize_inputs()  # the copies (PyTorch's stream) are done before onnxruntime's replay
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return dist

        call._keepalive = (session, buffers, dist, views, binding)  # type: ignore[attr-defined]
        return call

    def to_host(self, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value.astype(np.float32)
        if hasattr(value, "detach"):
            return value.detach().float().cpu().numpy()
        return np.asarray(value.numpy(), dtype=np.float32)

    def sync(self) -> None:
        self.torch.cuda.synchronize(self.device)

    def environment(self) -> dict[str, Any]:
        import onnxruntime as ort

        from stlpips_rt.engine.session import CUDA_FAST_DEFAULT

        torch = self.torch
        props = torch.cuda.get_device_properties(self.device)
        env = {
            "gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "torch_flags": {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                            "cudnn.benchmark": torch.backends.cudnn.benchmark},
            "onnxruntime": ort.__version__, "onnxruntime_device": ort.get_device(),
            "onnxruntime_cuda": _ort_cuda_version(), "cuda_fast_default": CUDA_FAST_DEFAULT,
        }
        with contextlib.suppress(metadata.PackageNotFoundError):
            env["stlpips_pytorch"] = metadata.version("stlpips_pytorch")
        with contextlib.suppress(Exception):
            import subprocess

            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
        return env


def _ort_cuda_version() -> str:
    from stlpips_rt.engine.cuda_libraries import cuda_version

    return cuda_version()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@click.command(context_settings=CONTEXT)
@click.option("--nets", default="alex,vgg", show_default=True, help="backbones (the ST variant of each).")
@click.option("--configs", default=DEFAULT_CONFIGS, show_default=True,
              help="SIZE:BATCH,...; batch 1 measures latency.")
@click.option("--sides", default=",".join(SIDES), show_default=True, help="comma-separated, from: " + ", ".join(SIDES))
@click.option("--rounds", default=3, show_default=True, help="alternating rounds per configuration.")
@click.option("--seconds", default=0.5, show_default=True, help="timed seconds per side, configuration and round.")
@click.option("--warmup", default=5, show_default=True, help="untimed calls per side and configuration.")
@models_dir_option()
@click.option("--device-id", default=0, show_default=True)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/bench-gpu"), show_default=True,
              help="folder for bench_gpu.md and bench_gpu.json.")
@click.option("--from-json", "from_json", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="measure nothing: re-render bench_gpu.md from an earlier bench_gpu.json into --out.")
def main(nets: str, configs: str, sides: str, rounds: int, seconds: float, warmup: int, models_dir: Path | None,
         device_id: int, out_dir: Path, from_json: Path | None) -> None:
    """Benchmark ST-LPIPS on one NVIDIA GPU: upstream eager PyTorch vs the runtime's exact, fast, zero-copy and
    CUDA-graph paths (docs/gpu.md)."""
    from .gpu_report import markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    if from_json is not None:
        (out_dir / "bench_gpu.md").write_text(markdown(json.loads(from_json.read_text())))
        log(f"wrote {out_dir}/bench_gpu.md from {from_json}")
        return
    side_list = [s.strip() for s in sides.split(",") if s.strip()]
    unknown = [s for s in side_list if s not in SIDES]
    if unknown:
        raise click.BadParameter(f"unknown side(s) {unknown}; choose from {', '.join(SIDES)}", param_hint="--sides")
    started = time.time()
    gpu = GpuSides(models_dir.resolve() if models_dir else None, device_id)
    report: dict[str, Any] = {
        "command": "stlpips-bench-gpu " + " ".join(sys.argv[1:]),
        "environment": gpu.environment(),
        "settings": {"rounds": rounds, "seconds": seconds, "warmup": warmup, "sides": side_list,
                     "configs": parse_configs(configs), "baseline": BASELINE},
    }
    log(f"{report['environment']['gpu']}: onnxruntime {report['environment']['onnxruntime']}, "
        f"torch {report['environment']['torch']}")
    results = measure({side: gpu.prepare(side) for side in side_list},
                      [n.strip() for n in nets.split(",") if n.strip()], parse_configs(configs), rounds, seconds,
                      warmup, gpu.sync, gpu.to_host, log)
    report["wall_seconds"] = time.time() - started
    report["results"] = [r.summary() for r in results]
    (out_dir / "bench_gpu.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    md = markdown(report)
    (out_dir / "bench_gpu.md").write_text(md)
    click.echo(md)
    log(f"wrote {out_dir}/bench_gpu.md and bench_gpu.json in {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
