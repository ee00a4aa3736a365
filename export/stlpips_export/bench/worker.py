"""A benchmark worker: one side in its own process, driven by JSON lines on stdin, answering on stdout.

Run as ``python -m stlpips_export.bench.worker SIDE THREADS [MODELS_DIR]``. SIDE is a PyTorch peer of
:data:`TORCH_PEERS` (upstream's model as its users run it, with the few lines of tuning a user would add, or the
project's reference) or ``runtime:<provider>:<precision>`` (provider ``auto`` lets the runtime choose, as ``Scorer``
does). Requests (one JSON object per line):

- ``{"op": "time", "net": "alex", "size": 64, "batch": 16, "mode": "plain"|"broadcast", "seconds": 1.0,
  "warmup": 2, "min_calls": 3}`` -> ``{"latencies": [s, ...], "detail": "...", "first_call": s}``: warm-up calls,
  then calls until ``seconds`` have passed (at least ``min_calls``), each timed on its own. ``first_call`` is the
  first warm-up call's time, the first time a configuration is asked for: a compiled peer's compile time.
- ``{"op": "flops", "net": "alex", "size": 64}`` (a PyTorch side) -> FLOPs of one plain pair, counted on the
  project's reference.
- ``{"op": "peaks", "n": 2048, "repeats": 5}`` (a PyTorch side) -> the machine's arithmetic peaks, by probe.
- ``{"op": "exit"}``.

Inputs are seeded uniform noise in [-1, 1], identical on every side. "broadcast" scores one reference against
``batch`` candidates (in0 has batch 1); "plain" scores ``batch`` independent pairs.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np


def make_inputs(size: int, batch: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 NCHW inputs in [-1, 1]: in0 has batch 1 in broadcast mode."""
    rng = np.random.default_rng([size, batch])
    in0 = rng.uniform(-1, 1, size=(1 if mode == "broadcast" else batch, 3, size, size)).astype(np.float32)
    in1 = rng.uniform(-1, 1, size=(batch, 3, size, size)).astype(np.float32)
    return in0, in1


@dataclass(frozen=True)
class TorchPeer:
    """A PyTorch side: which model, and the tuning a user adds in a few lines."""

    description: str
    channels_last: bool = False  # model and inputs in channels_last (the inputs arrive that way, untimed)
    compiled: bool = False  # torch.compile (inductor) with freezing, one graph per input shape
    bf16: bool = False  # torch.autocast("cpu", dtype=torch.bfloat16): PyTorch's own reduced precision
    reference: bool = False  # the project's PyTorch reference instead of upstream stlpips_pytorch


#: Every PyTorch side, as rows of configuration. ``compiled`` is the strongest float32 PyTorch a user gets in three
#: lines and ``compiled-bf16`` the strongest reduced precision: the peers the runtime's exact and fast modes are
#: held to (report.py).
TORCH_PEERS: dict[str, TorchPeer] = {
    "upstream": TorchPeer("upstream stlpips_pytorch, eager, contiguous NCHW (as its users run it)"),
    "tuned": TorchPeer("upstream, eager, channels_last", channels_last=True),
    "tuned-bf16": TorchPeer("upstream, eager, channels_last, bfloat16 autocast", channels_last=True, bf16=True),
    "compiled": TorchPeer("upstream, torch.compile (inductor, freezing), channels_last", channels_last=True,
                          compiled=True),
    "compiled-bf16": TorchPeer("upstream, torch.compile (inductor, freezing), channels_last, bfloat16 autocast",
                               channels_last=True, compiled=True, bf16=True),
    "reference": TorchPeer("the project's PyTorch reference, eager", reference=True),
}
TORCH_SIDES = tuple(TORCH_PEERS)


class TorchSide:
    """A :class:`TorchPeer` in this process."""

    def __init__(self, kind: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch, self.kind, self.peer, self.models = torch, kind, TORCH_PEERS[kind], {}
        if self.peer.compiled:
            import torch._dynamo.config
            import torch._inductor.config

            # Weights folded into the compiled graph as constants: what inductor's docs advise for CPU inference.
            torch._inductor.config.freezing = True
            # One specialised graph per input shape, as a user serving a few fixed shapes gets; the default limit of
            # 8 graphs per function would fall back to eager in a long run.
            torch._dynamo.config.recompile_limit = 256
            torch._dynamo.config.automatic_dynamic_shapes = False
        self.detail = (f"PyTorch {torch.__version__}, {self.peer.description}, {threads} threads, "
                       f"{'no_grad' if self.peer.compiled else 'inference_mode'}")
        self.seen: set[tuple[str, tuple[int, ...], tuple[int, ...]]] = set()

    def model(self, net: str) -> Any:
        if net not in self.models:
            if self.peer.reference:
                from ..model import build_model

                model = build_model(net, "st").eval()
            else:
                from ..upstream import load_upstream

                model = load_upstream(net, "shift_tolerant")
            if self.peer.channels_last:
                model = model.to(memory_format=self.torch.channels_last)
            if self.peer.compiled:
                model = self.torch.compile(model, dynamic=False)
            self.models[net] = model
        return self.models[net]

    def prepare(self, net: str, in0: np.ndarray, in1: np.ndarray) -> Any:
        model, t0, t1 = self.model(net), self.torch.from_numpy(in0), self.torch.from_numpy(in1)
        if self.peer.channels_last:  # the user's tensors arrive in that layout; converting them is not timed
            t0 = t0.contiguous(memory_format=self.torch.channels_last)
            t1 = t1.contiguous(memory_format=self.torch.channels_last)
        torch, bf16 = self.torch, self.peer.bf16
        # Inductor's freezing runs under no_grad; inference_mode is the eager sides' fastest setting.
        grad_off = torch.no_grad if self.peer.compiled else torch.inference_mode

        def call() -> np.ndarray:
            with grad_off(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(t0, t1)
            out = out[0] if isinstance(out, tuple) else out
            return out.reshape(-1).float().numpy()

        return call

    def arithmetic(self, net: str) -> str:
        """What the convolutions compute in: "bf16" under autocast, else "fp32"."""
        return "bf16" if self.peer.bf16 else "fp32"

    #: Convolution probes (batch, channels, side): 3x3, stride 1, zero padding, channels_last. The shapes of
    #: vgg-st's middle layers, where oneDNN's direct convolutions run fastest here.
    CONV_PROBES = ((16, 256, 17), (16, 512, 9))

    def peaks(self, n: int, repeats: int) -> dict[str, dict[str, float]]:
        """Best GOP/s per arithmetic with this side's threads, by probe: an ``n x n`` matrix product in float32,
        bfloat16 and int8 (``torch._int_mm``: u8/s8 dot products, VNNI where the CPU has it), and for float32 and
        bfloat16 oneDNN's 3x3 convolutions (:attr:`CONV_PROBES`). A matrix product alone can sit below what the
        convolutions reach (MKL's float32 product ran at 70% of oneDNN's convolutions on an AMD Zen 4), and a
        peak the peers already beat is no bound."""
        torch = self.torch
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        products = {"fp32": (a, b, torch.mm), "bf16": (a.bfloat16(), b.bfloat16(), torch.mm),
                    "int8": (torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=gen),
                             torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=gen), torch._int_mm)}
        out: dict[str, dict[str, float]] = {name: {} for name in products}

        def best(call: Any, ops: float) -> float:
            call()  # warm-up
            return ops / min(_seconds(call) for _ in range(repeats)) / 1e9

        for name, (x, y, mm) in products.items():
            out[name][f"matmul {n}"] = best(lambda: mm(x, y), 2 * n**3)  # noqa: B023
        with torch.no_grad():
            for batch, channels, side in self.CONV_PROBES:
                x = torch.randn(batch, channels, side, side, generator=gen).contiguous(
                    memory_format=torch.channels_last)
                w = torch.randn(channels, channels, 3, 3, generator=gen).contiguous(
                    memory_format=torch.channels_last)
                ops = 2 * batch * channels * channels * 9 * side * side
                for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                    xd, wd = x.to(dtype), w.to(dtype)
                    out[name][f"conv {channels}x{side}x{side}"] = best(
                        lambda: torch.nn.functional.conv2d(xd, wd, padding=1), ops)  # noqa: B023
        return out

    def flops(self, net: str, size: int) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        in0, in1 = make_inputs(size, 1, "plain")
        model = build_reference(net)
        with FlopCounterMode(display=False) as counter, self.torch.no_grad():
            model(self.torch.from_numpy(in0), self.torch.from_numpy(in1))
        return int(counter.get_total_flops())


def build_reference(net: str) -> Any:
    """The project's PyTorch reference (ST variant): what FLOPs per pair are counted on."""
    from ..model import build_model

    return build_model(net, "st").eval()


class RuntimeSide:
    """The torch-free runtime (`stlpips_rt.Scorer`) through its public score_batch / score_many."""

    def __init__(self, provider: str, precision: str, threads: int, models_dir: str | None = None) -> None:
        self.provider, self.precision, self.threads, self.models_dir = provider, precision, threads, models_dir
        self.scorers: dict[str, Any] = {}
        self.detail = ""
        self.seen: set[tuple[str, tuple[int, ...], tuple[int, ...]]] = set()

    def scorer(self, net: str) -> Any:
        import onnxruntime

        from stlpips_rt import ImageOptions, Scorer, resolve_model

        if net not in self.scorers:
            # A batch_size above every benchmark batch: one graph run per call, as on the torch sides.
            model = resolve_model(f"{net}-st", [self.models_dir] if self.models_dir else [])
            self.scorers[net] = s = Scorer(model, self.provider, self.precision, threads=self.threads,
                                           batch_size=1024, image=ImageOptions(float_range="-1,1"))
            engine = f"onnxruntime {onnxruntime.__version__}"
            if s.provider == "openvino":
                engine = "OpenVINO through stlpips_rt"
            self.detail = (f"{engine}, provider {s.provider}, {s.precision} ({s.info.path.name}), {self.threads} "
                           "threads, public score_batch / score_many on float32 arrays")
        return self.scorers[net]

    def arithmetic(self, net: str) -> str:
        """What the scorer computes in (Scorer.precision: fp32, bf16, fp16, tf32 or int8)."""
        return self.scorer(net).precision

    def prepare(self, net: str, in0: np.ndarray, in1: np.ndarray) -> Any:
        scorer = self.scorer(net)
        if len(in0) == 1 and len(in1) > 1:
            return lambda: scorer.score_many(in0[0], in1)
        return lambda: scorer.score_batch(in0, in1)


def make_side(side: str, threads: int, models_dir: str | None = None) -> TorchSide | RuntimeSide:
    """The side named ``upstream``, ``reference`` or ``runtime:<provider>:<precision>``."""
    if side in TORCH_SIDES:
        return TorchSide(side, threads)
    parts = side.split(":")
    if len(parts) == 3 and parts[0] == "runtime":
        return RuntimeSide(parts[1], parts[2], threads, models_dir)
    raise ValueError(f"unknown side {side!r}: use {', '.join(TORCH_SIDES)} or runtime:<provider>:<exact|fast>")


def _seconds(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def time_calls(call: Any, seconds: float, warmup: int, min_calls: int = 3) -> list[float]:
    """Per-call wall times after ``warmup`` untimed calls, until ``seconds`` pass (at least ``min_calls``)."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < min_calls or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return latencies


def handle(side: TorchSide | RuntimeSide, request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request."""
    op = request["op"]
    if op == "time":
        in0, in1 = make_inputs(request["size"], request["batch"], request["mode"])
        call = side.prepare(request["net"], in0, in1)
        reply: dict[str, Any] = {"detail": side.detail, "arithmetic": side.arithmetic(request["net"])}
        key = (request["net"], in0.shape, in1.shape)
        if key not in side.seen:  # the first call of a new shape: a compiled side compiles it here
            side.seen.add(key)
            reply["first_call"] = _seconds(call)
        reply["latencies"] = time_calls(call, request["seconds"], request["warmup"], request.get("min_calls", 3))
        return reply
    if op == "peaks":
        if not isinstance(side, TorchSide):
            raise ValueError("peaks are measured on a PyTorch side")
        return {"peaks": side.peaks(request["n"], request["repeats"])}
    if op == "flops":
        if not isinstance(side, TorchSide):
            raise ValueError("FLOPs are counted on a PyTorch side (on the project's reference)")
        return {"flops": side.flops(request["net"], request["size"])}
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    side_name, threads = sys.argv[1], int(sys.argv[2])
    side = make_side(side_name, threads, sys.argv[3] if len(sys.argv) > 3 else None)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not corrupt the protocol
    print(json.dumps({"ready": side_name}), file=out, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "exit":
            break
        try:
            reply = handle(side, request)
        except Exception as exc:  # reported to the parent, which names the side and request
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
    main()
