"""Markdown report of a ``stlpips-bench-gpu`` run, built from its JSON (so it can be re-rendered)."""

from __future__ import annotations

import math
from typing import Any

# Goals of the GPU issue (docs/gpu.md): runtime exact and fast against upstream eager float32, zero-copy against the
# host-copy path at 256x256.
EXACT_GOAL, FAST_GOAL, ZERO_COPY_GOAL = 1.5, 4.0, 1.3
BASELINE = "upstream:fp32"
EXACT = "runtime:exact:zero-copy"
HOST = "runtime:exact:host"
FAST_SIDES = ("runtime:fast-tf32:zero-copy", "runtime:fast-fp16:zero-copy", "runtime:fast-fp16-nhwc:zero-copy")


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _table(results: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, dict[str, Any]]]:
    rows: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}
    for r in results:
        rows.setdefault((r["net"], r["size"], r["batch"]), {})[r["side"]] = r
    return rows


def ratio(row: dict[str, dict[str, Any]], side: str, base: str) -> float:
    a, b = row.get(side), row.get(base)
    if not a or not b or a.get("error") or b.get("error") or not a["calls"] or not b["calls"]:
        return float("nan")
    return a["pairs_per_s"] / b["pairs_per_s"]


def fast_default_side(report: dict[str, Any]) -> str:
    return f"runtime:fast-{report['environment'].get('cuda_fast_default', 'fp16')}:zero-copy"


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per goal, net and throughput configuration (batch > 1): measured ratio and whether it is met."""
    out = []
    default_fast = fast_default_side(report)
    for (net, size, batch), row in _table(report["results"]).items():
        if batch == 1:
            continue
        where = f"{net}-st {size}x{size} b{batch}"
        checks = [(f"exact (zero-copy) >= {EXACT_GOAL:g}x upstream eager fp32", ratio(row, EXACT, BASELINE),
                   EXACT_GOAL),
                  (f"fast (default, {default_fast.split(':')[1]}) >= {FAST_GOAL:g}x upstream eager fp32",
                   ratio(row, default_fast, BASELINE), FAST_GOAL)]
        best = max(FAST_SIDES, key=lambda s: -1 if math.isnan(ratio(row, s, BASELINE)) else ratio(row, s, BASELINE))
        checks.append((f"fast (best: {best.split(':')[1]}) >= {FAST_GOAL:g}x upstream eager fp32",
                       ratio(row, best, BASELINE), FAST_GOAL))
        if size >= 256:
            checks.append((f"zero-copy >= {ZERO_COPY_GOAL:g}x host-copy path (exact)", ratio(row, EXACT, HOST),
                           ZERO_COPY_GOAL))
        for goal, value, target in checks:
            out.append({"where": where, "goal": goal, "ratio": value,
                        "met": None if math.isnan(value) else value >= target})
    return out


def markdown(report: dict[str, Any]) -> str:
    env, settings = report["environment"], report["settings"]
    lines: list[str] = []
    add = lines.append
    add("# stlpips-bench-gpu: ST-LPIPS on one NVIDIA GPU\n")
    add(f"Command: `{report['command']}` ({report.get('wall_seconds', 0):.0f} s)\n")
    add(f"GPU: {env.get('gpu')} ({env.get('gpu_memory_gib')} GiB, {env.get('multiprocessors')} SMs); "
        f"nvidia-smi: {env.get('nvidia_smi', '-')}\n")
    add(f"Versions: onnxruntime {env.get('onnxruntime')} ({env.get('onnxruntime_device')}, CUDA "
        f"{env.get('onnxruntime_cuda')}), PyTorch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN "
        f"{env.get('cudnn')}), stlpips_pytorch {env.get('stlpips_pytorch', '-')}\n")
    flags = ", ".join(f"{k}={v}" for k, v in env.get("torch_flags", {}).items())
    add(f"PyTorch flags as the upstream sides ran (its defaults): {flags}. With `cudnn.allow_tf32=True` upstream's "
        "\"fp32\" convolutions use TF32 on this GPU.\n")
    add(f"Settings: {settings['rounds']} alternating rounds of {settings['seconds']} s per side and configuration, "
        f"{settings['warmup']} warm-up calls; every call is followed by torch.cuda.synchronize(); inputs are CUDA "
        "tensors in [-1, 1]. `runtime:exact:host` copies them to the host and scores numpy arrays; `zero-copy` binds "
        "them in place; `cuda-graph` is a raw onnxruntime session with CUDA graphs on static shapes. CUDA's fast "
        f"mode default here: `{env.get('cuda_fast_default')}`.\n")

    rows = _table(report["results"])
    sides = settings["sides"]
    add("## Throughput and latency\n")
    add("pairs/s over all rounds; x upstream = against `upstream:fp32` in the same configuration; max abs = largest "
        "distance difference from `upstream:fp32` on the first call.\n")
    add("| net | size | batch | side | pairs/s | rounds (min-max) | median ms | p90 ms | x upstream | max abs |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for (net, size, batch), row in rows.items():
        for side in sides:
            m = row.get(side)
            if m is None:
                continue
            if m.get("error"):
                add(f"| {net}-st | {size} | {batch} | {side} | error: {m['error']} ||||||")
                continue
            spread = m["round_pairs_per_s"]
            add(f"| {net}-st | {size} | {batch} | {side} | {_fmt(m['pairs_per_s'])} | {_fmt(min(spread))}-"
                f"{_fmt(max(spread))} | {_fmt(m['median_ms'], 3)} | {_fmt(m['p90_ms'], 3)} | "
                f"{_fmt(ratio(row, side, BASELINE), 2)} | {_fmt_err(m.get('max_abs_vs_baseline'))} |")
    add("")

    add("## Goals\n")
    add("| configuration | goal | measured | met |")
    add("|---|---|---|---|")
    for g in goals(report):
        met = "not measured" if g["met"] is None else ("yes" if g["met"] else "no")
        add(f"| {g['where']} | {g['goal']} | {_fmt(g['ratio'], 2)}x | {met} |")
    add("")

    add("## Which fast mode, and do CUDA graphs help?\n")
    add("| configuration | fastest fast side | tf32 / fp16 / fp16-nhwc pairs/s | CUDA graph / zero-copy, exact | "
        "CUDA graph / zero-copy, fp16 |")
    add("|---|---|---|---|---|")
    for (net, size, batch), row in rows.items():
        speeds = {s.split(":")[1]: row[s]["pairs_per_s"] for s in FAST_SIDES
                  if s in row and not row[s].get("error") and row[s]["calls"]}
        best = max(speeds, key=speeds.get) if speeds else "-"
        trio = " / ".join(_fmt(speeds.get(k)) for k in ("fast-tf32", "fast-fp16", "fast-fp16-nhwc"))
        add(f"| {net}-st {size}x{size} b{batch} | {best} | {trio} | "
            f"{_fmt(ratio(row, 'runtime:exact:cuda-graph', EXACT), 2)} | "
            f"{_fmt(ratio(row, 'runtime:fast-fp16:cuda-graph', 'runtime:fast-fp16:zero-copy'), 2)} |")
    add("")
    return "\n".join(lines) + "\n"


def _fmt_err(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"
