"""Where a session's time goes, by operator type: onnxruntime's profiler (its per-node kernel times) or OpenVINO's
performance counters, summed over timed runs after warm-up ones. ``Scorer.operator_profile`` and
``stlpips-bench --profile`` read it.

The two engines name operators differently (onnxruntime: ONNX op types, with its blocked-layout ``ReorderInput`` /
``ReorderOutput``; OpenVINO: its own node types such as ``Convolution`` and ``GroupConvolution``), and say how each
ran: onnxruntime the provider and whether a node runs in its blocked layout (``_nchwc`` nodes), OpenVINO the
kernel (``brgconv_avx512_bf16``, ``ref_f32``: a reference kernel, the slow generic path).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

#: The operator types that count as convolutions in :attr:`OperatorProfile.convolution_share`.
CONVOLUTIONS = ("Conv", "FusedConv", "Convolution", "GroupConvolution")


@dataclass
class OperatorTime:
    """One operator type: its time per run, its share of all kernel time, how many nodes ran it, and its time
    per kernel (how the engine ran it)."""

    op_type: str
    seconds: float
    share: float
    nodes: int
    kernels: dict[str, float] = field(default_factory=dict)  # kernel -> seconds per run


@dataclass
class OperatorProfile:
    """Per-operator-type kernel time of ``runs`` timed runs, largest first."""

    engine: str
    runs: int
    operators: list[OperatorTime]
    pieces: int = 1  # the batch ran as this many one-thread runs side by side; the profile is of the first
    pairs: int = 0  # pairs in the profiled run (0: not said)

    @property
    def total_seconds(self) -> float:
        return sum(op.seconds for op in self.operators)

    @property
    def convolution_share(self) -> float:
        """The share of kernel time spent in convolutions (:data:`CONVOLUTIONS`)."""
        return sum(op.share for op in self.operators if op.op_type in CONVOLUTIONS)

    def as_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "runs": self.runs, "pieces": self.pieces, "pairs": self.pairs,
                "total_seconds": self.total_seconds, "convolution_share": self.convolution_share,
                "operators": [op.__dict__ for op in self.operators]}


def _summarise(engine: str, runs: int, samples: Iterable[tuple[str, str, str, float]]) -> OperatorProfile:
    """``samples``: (node name, op type, kernel, seconds) over all timed runs."""
    seconds: dict[str, float] = defaultdict(float)
    kernels: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    nodes: dict[str, set[str]] = defaultdict(set)
    for node, op_type, kernel, secs in samples:
        seconds[op_type] += secs / runs
        kernels[op_type][kernel] += secs / runs
        nodes[op_type].add(node)
    total = sum(seconds.values()) or 1.0
    ops = [OperatorTime(op, s, s / total, len(nodes[op]), dict(sorted(kernels[op].items(), key=lambda kv: -kv[1])))
           for op, s in seconds.items()]
    return OperatorProfile(engine, runs, sorted(ops, key=lambda op: -op.seconds))


def onnxruntime_profile(trace_path: str, warmup: int) -> OperatorProfile:
    """Parse onnxruntime's profile (``session.end_profiling()``'s file, removed afterwards): node kernel times of
    the runs after the first ``warmup``."""
    with open(trace_path) as f:
        events = json.load(f)
    os.remove(trace_path)
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session"
                  and e.get("name") == "model_run")
    timed = runs[warmup:]
    if not timed:
        raise ValueError(f"the profile holds {len(runs)} runs, none after {warmup} warm-up runs")
    start = timed[0][0]
    samples = []
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start:
            continue
        node = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        layout = "blocked (NCHWc)" if node.endswith("_nchwc") else "plain"
        samples.append((node, args.get("op_name", "?"), f"{args.get('provider', '?')}, {layout}", e["dur"] / 1e6))
    return _summarise("onnxruntime", len(timed), samples)


def openvino_profile(infos: Iterable[Iterable[Any]], runs: int) -> OperatorProfile:
    """Sum OpenVINO's per-node performance counters (``InferRequest.profiling_info`` of each timed run)."""
    samples = [(p.node_name, p.node_type, p.exec_type, p.real_time.total_seconds())
               for info in infos for p in info if p.status == p.Status.EXECUTED]
    return _summarise("openvino", runs, samples)


def profile_session(session: Any, run: Callable[[Any], Any], runs: int, warmup: int) -> OperatorProfile:
    """Run ``run(session)`` ``warmup + runs`` times on a session built with profiling on (SessionConfig.profile)
    and return where the timed runs spent their time."""
    for _ in range(warmup):
        run(session)
    if hasattr(session, "profiling_info"):  # OpenVINO's own runtime (openvino_direct)
        infos = []
        for _ in range(runs):
            run(session)
            infos.append(session.profiling_info())
        return openvino_profile(infos, runs)
    for _ in range(runs):
        run(session)
    return onnxruntime_profile(session.end_profiling(), warmup)
