"""Markdown report of a `stlpips-bench` run, built from its JSON (so it can be re-rendered from bench.json)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

BROADCAST_TARGET, COLD_TARGET = 1.8, 1 / 3


@dataclass(frozen=True)
class SpeedTarget:
    """The runtime's ``kind`` sides against the strongest PyTorch ``peer``: at least
    ``min(multiple x peer, peak_fraction x the machine's peak / FLOPs per pair)`` pairs/s on every plain
    configuration, and never below the peer. The peak term is there because a peer already near the machine's
    arithmetic limit cannot be beaten by ``multiple`` with the same arithmetic."""

    kind: str  # "exact" or "fast"
    peer: str
    multiple: float
    peak_fraction: float
    peak: str  # the peak (bench peaks_gops key) the fraction is of


SPEED_TARGETS = (
    SpeedTarget("exact", "compiled", 1.25, 0.90, "fp32"),
    SpeedTarget("fast", "compiled-bf16", 1.5, 0.75, "bf16"),
)
#: Cold start (interpreter, imports, session, first 64x64 pair) against the compiled peer's, compile included.
COLD_VS_COMPILED = 1 / 10
#: Which peak a side's arithmetic is measured against ("% of peak" column).
PEAK_OF = {"fp32": "fp32", "tf32": "fp32", "bf16": "bf16", "fp16": "bf16", "int8": "int8"}


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _key(m: dict[str, Any]) -> tuple:
    return m["net"], m["size"], m["batch"], m["mode"]


def markdown(report: dict[str, Any]) -> str:
    """The whole report: set-up, throughput per net, broadcast, targets, cold start and memory."""
    lines: list[str] = []
    add = lines.append
    mach = report["machine"]
    add("# stlpips-bench: ST-LPIPS throughput, latency, cold start and memory\n")
    add(f"Command: `{report['command']}` ({report['wall_seconds']:.0f} s)\n")
    if report.get("fit_for_readme") is False:
        peak_load = max([mach["load_average_start"][0], mach["load_average_end"][0], *mach.get("load_samples", [])])
        add(f"> **Unfit for the README**: the 1-minute load average reached {peak_load:.2f} on {mach['cores']} "
            "cores during this run, so other processes shared the CPU. Take the README's figures from a run on a "
            "quiet machine (load at most the core count, plus a quarter core for the kernel, throughout).\n")
    add(f"Machine: {mach['cpu']}, {mach['cores']} cores. Load average (1/5/15 min) at start "
        f"{', '.join(f'{v:.2f}' for v in mach['load_average_start'])}, at end "
        f"{', '.join(f'{v:.2f}' for v in mach['load_average_end'])}: a load above the core count means other "
        "processes shared the CPU and every figure is lower and noisier than on an idle machine.\n")
    add("Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "\n")
    s = report["settings"]
    add(f"Settings: {s['threads']} threads per side; {s['rounds']} alternating round(s) of {s['seconds']} s per "
        "side and configuration, each side in its own worker process; inputs float32 NCHW in [-1, 1].\n")
    for side, detail in report.get("side_details", {}).items():
        add(f"- `{side}`: {detail}")
    add("")
    add("Peers: `upstream` is stlpips_pytorch as its users run it (contiguous NCHW tensors, eager); `tuned` is the "
        "same model on channels_last tensors (one line of PyTorch); `compiled` adds `torch.compile` with inductor's "
        "freezing, one graph per input shape: the strongest float32 PyTorch a user gets in a few lines, exact "
        "mode's peer; `tuned-bf16` and `compiled-bf16` add `torch.autocast(\"cpu\", dtype=torch.bfloat16)`, "
        "the fast mode's peers. Every claim below names the peer it beats.\n")
    for provider, reason in report.get("unavailable_providers", {}).items():
        add(f"- not measured, provider `{provider}`: {reason}")
    add("")
    peak = report["matmul_peak_gflops"]
    add(f"Float32 matrix-multiply peak (numpy, {report['matmul_n']}x{report['matmul_n']}, best run): "
        f"**{peak:.1f} GFLOP/s**.\n")
    if report.get("peaks_gops"):
        probes = report.get("peak_probes_gops")
        if probes:  # each arithmetic's best probe: matrix products, and oneDNN convolutions for fp32 / bf16
            add("Arithmetic peaks with the sides' thread count, the best of PyTorch's probes, best run each (int8 = "
                "torch._int_mm, the VNNI dot products): " + ", ".join(
                    f"**{k} {report['peaks_gops'][k]:.0f} GOP/s** ("
                    + ", ".join(f"{probe} {rate:.0f}" for probe, rate in rates.items()) + ")"
                    for k, rates in probes.items()) + ".\n")
        else:  # reports written before the convolution probes
            add(f"Arithmetic peaks with the sides' thread count (PyTorch {report['matmul_n']}x{report['matmul_n']} "
                "matrix products, best run; int8 = torch._int_mm, the VNNI dot products): " + ", ".join(
                    f"**{k} {v:.0f} GOP/s**" for k, v in report["peaks_gops"].items()) + ".\n")
    flops = report.get("flops_per_pair", {})
    if flops:
        add("FLOPs per pair (the project's PyTorch reference, one plain pair, counted once with "
            "torch.utils.flop_counter; multiply-add = 2): "
            + ", ".join(f"{k}: {v / 1e9:.3f} GFLOP" for k, v in flops.items()) + ". Effective GFLOP/s below = "
            "these FLOPs x pairs/s, also for broadcast runs, which do less work per pair.\n")

    ms = report["measurements"]
    by_key: dict[tuple, dict[str, dict[str, Any]]] = {}
    for m in ms:
        by_key.setdefault(_key(m), {})[m["side"]] = m
    sides = report["settings"]["sides"]

    def ratio(m: dict[str, Any], base: dict[str, Any] | None) -> float:
        if base is None or not m["calls"] or not base["calls"]:
            return float("nan")
        return m["pairs_per_s"] / base["pairs_per_s"]

    add("## Summary\n")
    add("pairs/s per side, with the ratios to upstream and to the strongest PyTorch peer of the side's precision "
        "(`compiled` for exact, `compiled-bf16` for fast) in the same configuration in parentheses.\n")
    add(summary_table(report))
    add("")
    add("## Throughput\n")
    add("pairs/s over all rounds; spread = lowest and highest round; x upstream = against upstream in the same "
        "configuration.\n")
    peaks = report.get("peaks_gops", {})
    arithmetic = report.get("side_arithmetic", {})

    def side_peak(side: str) -> float:
        """The peak of the arithmetic the side ran (PyTorch matrix products); numpy's float32 peak before the
        bench recorded per-side arithmetic."""
        return peaks.get(PEAK_OF.get(arithmetic.get(side, "fp32"), "fp32"), peak)

    add("| net | size | batch | mode | side | pairs/s | rounds (min-max) | median ms | p90 ms | x upstream "
        "| eff. GFLOP/s | % of peak |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, row in by_key.items():
        net, size, batch, mode = key
        up = row.get("upstream")
        for side in sides:
            m = row.get(side)
            if m is None:
                continue
            if m["error"]:
                add(f"| {net}-st | {size} | {batch} | {mode} | {side} | error: {m['error']} |||||||")
                continue
            f = flops.get(f"{net}-st@{size}")
            eff = f * m["pairs_per_s"] / 1e9 if f else float("nan")
            spread = m["round_pairs_per_s"]
            add(f"| {net}-st | {size} | {batch} | {mode} | {side} | {_fmt(m['pairs_per_s'])} | "
                f"{_fmt(min(spread))}-{_fmt(max(spread))} | {_fmt(m['median_ms'], 2)} | {_fmt(m['p90_ms'], 2)} | "
                f"{_fmt(ratio(m, up), 2)} | {_fmt(eff)} | {_fmt(100 * eff / side_peak(side))} |")
    add("")

    add("## One reference against many candidates\n")
    add("N plain pairs run 2N backbone passes, one reference against N candidates N + 1: the ratio cannot exceed "
        "2N / (N + 1) (the bound column; 1.8 needs N >= 9). The target row counts batches where it can be met.\n")
    add("| net | size | batch | side | broadcast pairs/s | plain pairs/s | broadcast / plain | bound |")
    add("|---|---|---|---|---|---|---|---|")
    broadcast_ratios: dict[str, list[float]] = {}
    for key, row in by_key.items():
        net, size, batch, mode = key
        if mode != "broadcast":
            continue
        plain = by_key.get((net, size, batch, "plain"), {})
        for side in sides:
            b, p = row.get(side), plain.get(side)
            if b is None or p is None:
                continue
            r, bound = ratio(b, p), 2 * batch / (batch + 1)
            if bound >= BROADCAST_TARGET:
                broadcast_ratios.setdefault(side, []).append(r)
            add(f"| {net}-st | {size} | {batch} | {side} | {_fmt(b['pairs_per_s'])} | {_fmt(p['pairs_per_s'])} | "
                f"{_fmt(r, 2)} | {bound:.2f} |")
    add("")

    add("## Targets\n")
    add("Each runtime side against the strongest PyTorch peer of its precision, per plain configuration: at least "
        "min(multiple x the peer, a fraction of the machine's peak / FLOPs per pair) pairs/s, and never below the "
        "peer.\n")
    add("| target | measured | met |")
    add("|---|---|---|")
    for target in SPEED_TARGETS:
        for row in speed_target_rows(report, target):
            add(f"| {row['side']} >= min({target.multiple:g}x {target.peer} = {_fmt(row['by_peer'])}, "
                f"{100 * target.peak_fraction:g}% of {target.peak} peak = {_fmt(row['by_peak'])}) pairs/s, "
                f"{row['net']}-st {row['size']}x{row['size']} batch {row['batch']} | {_fmt(row['pairs_per_s'])} "
                f"({_fmt(row['vs_peer'], 2)}x {target.peer}) | {'yes' if row['met'] else 'no'} |")
    for side, ratios in broadcast_ratios.items():
        if side.startswith("runtime:") and ratios:
            add(f"| {side} broadcast >= {BROADCAST_TARGET}x plain (batches >= 9) | {_fmt(min(ratios), 2)}x worst, "
                f"{_fmt(max(ratios), 2)}x best | {'yes' if min(ratios) >= BROADCAST_TARGET else 'no'} |")
    colds = report.get("cold_start", [])
    cold_rows = _cold_rows(colds)
    for row in cold_rows:
        if row["side"].startswith("runtime:") and row.get("time_ratio") is not None:
            for what, key in (("cold start", "time_ratio"), ("peak memory", "rss_ratio")):
                add(f"| {row['side']} {what} <= 1/3 of upstream, {row['net']}-st | {_fmt(row[key], 3)}x | "
                    f"{'yes' if row[key] <= COLD_TARGET else 'no'} |")
        if row["side"].startswith("runtime:") and row.get("vs_compiled") is not None:
            add(f"| {row['side']} cold start <= 1/10 of compiled (compile included), {row['net']}-st | "
                f"{_fmt(row['vs_compiled'], 3)}x | {'yes' if row['vs_compiled'] <= COLD_VS_COMPILED else 'no'} |")
    add("")

    compiles = [m for m in ms if m.get("first_call") is not None and m["side"].startswith("compiled")]
    if compiles:
        add("## Compile time of the compiled peers\n")
        add("The first call of each configuration: torch.compile traces, freezes and compiles a graph for that input "
            "shape (not counted in the throughput above).\n")
        add("| net | size | batch | mode | side | first call s |")
        add("|---|---|---|---|---|---|")
        for m in compiles:
            add(f"| {m['net']}-st | {m['size']} | {m['batch']} | {m['mode']} | {m['side']} | "
                f"{_fmt(m['first_call'], 1)} |")
        add("")

    if colds:
        add("## Cold start and peak memory\n")
        add("A fresh process per run: interpreter start, imports, model / session creation and the first score of "
            "a 64x64 pair; peak resident memory of that process (ru_maxrss). Median of the runs, sides alternating.\n")
        add("| net | side | runs | cold start s (median) | min-max s | peak RSS MB | x upstream (time) "
            "| x upstream (memory) |")
        add("|---|---|---|---|---|---|---|---|")
        for row in cold_rows:
            if row.get("error"):
                add(f"| {row['net']}-st | {row['side']} | error: {row['error']} ||||||")
                continue
            add(f"| {row['net']}-st | {row['side']} | {row['runs']} | {_fmt(row['median'], 2)} | "
                f"{_fmt(row['min'], 2)}-{_fmt(row['max'], 2)} | {_fmt(row['rss'], 0)} | "
                f"{_fmt(row.get('time_ratio'), 3)} | {_fmt(row.get('rss_ratio'), 3)} |")
        add("")
    return "\n".join(lines) + "\n"


def speed_target_rows(report: dict[str, Any], target: SpeedTarget) -> list[dict[str, Any]]:
    """``target`` checked on every plain configuration where a runtime side of its kind and its peer both ran."""
    peak = report.get("peaks_gops", {}).get(target.peak)
    flops = report.get("flops_per_pair", {})
    rows: dict[tuple, dict[str, dict[str, Any]]] = {}
    for m in report["measurements"]:
        if m["mode"] == "plain" and not m["error"] and m["calls"]:
            rows.setdefault(_key(m), {})[m["side"]] = m
    out = []
    for (net, size, batch, _), row in rows.items():
        peer = row.get(target.peer)
        if peer is None:
            continue
        f = flops.get(f"{net}-st@{size}")
        by_peak = target.peak_fraction * peak * 1e9 / f if peak and f else float("inf")
        by_peer = target.multiple * peer["pairs_per_s"]
        for side, m in row.items():
            if side.startswith("runtime:") and side.endswith(f":{target.kind}"):
                need = min(by_peer, by_peak)
                out.append({"side": side, "net": net, "size": size, "batch": batch, "pairs_per_s": m["pairs_per_s"],
                            "by_peer": by_peer, "by_peak": by_peak, "vs_peer": m["pairs_per_s"] / peer["pairs_per_s"],
                            "met": m["pairs_per_s"] >= need and m["pairs_per_s"] >= peer["pairs_per_s"]})
    return out


def _cold_rows(colds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    upstream = {c["net"]: c for c in colds if c["side"] == "upstream" and c["seconds"]}
    compiled = {c["net"]: c for c in colds if c["side"] == "compiled" and c["seconds"]}
    for c in colds:
        if not c["seconds"]:
            rows.append({"side": c["side"], "net": c["net"], "error": c["error"] or "no run"})
            continue
        row = {"side": c["side"], "net": c["net"], "runs": len(c["seconds"]), "median": statistics.median(c["seconds"]),
               "min": min(c["seconds"]), "max": max(c["seconds"]), "rss": max(c["peak_rss_mb"])}
        up = upstream.get(c["net"])
        if up is not None and c["side"] != "upstream":
            row["time_ratio"] = row["median"] / statistics.median(up["seconds"])
            row["rss_ratio"] = row["rss"] / max(up["peak_rss_mb"])
        comp = compiled.get(c["net"])
        if comp is not None and c["side"] != "compiled":
            row["vs_compiled"] = row["median"] / statistics.median(comp["seconds"])
        rows.append(row)
    return rows


def summary_table(report: dict[str, Any]) -> str:
    """One row per configuration, one column per side: pairs/s (x upstream). For the README."""
    sides = report["settings"]["sides"]
    rows: dict[tuple, dict[str, dict[str, Any]]] = {}
    for m in report["measurements"]:
        rows.setdefault(_key(m), {})[m["side"]] = m
    out = ["| net | size | batch | mode | " + " | ".join(sides) + " |", "|---|---|---|---|" + "---|" * len(sides)]
    for (net, size, batch, mode), row in rows.items():
        cells = []
        for side in sides:
            m = row.get(side)
            if m is None or m["error"] or not m["calls"]:
                cells.append("-")
                continue
            peers = (("upstream", "up"),) + ((("compiled-bf16", "compiled-bf16"),) if side.endswith(":fast")
                                             else (("compiled", "compiled"),))
            ratios = [f"{m['pairs_per_s'] / peer['pairs_per_s']:.2f}x {short}" for name, short in peers
                      if side != name and (peer := row.get(name)) and peer["calls"] and not peer["error"]]
            cells.append(_fmt(m["pairs_per_s"]) + (f" ({', '.join(ratios)})" if ratios else ""))
        out.append(f"| {net}-st | {size} | {batch} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(out)
