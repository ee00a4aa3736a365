"""Markdown report of a `stlpips-bench` run, built from its JSON (so it can be re-rendered from bench.json)."""

from __future__ import annotations

import math
import statistics
from typing import Any

BROADCAST_TARGET, COLD_TARGET = 1.8, 1 / 3
#: (side kind, size, batch or None for every batch, peer, minimum ratio): the issue's targets, plain pairs.
TARGETS = (
    ("fast", 64, 16, "upstream", 5.0), ("fast", 256, 4, "upstream", 5.0),
    ("fast", 64, 16, "tuned", 3.0), ("fast", 256, 4, "tuned", 3.0),
    # PyTorch's own reduced precision (bfloat16 autocast) is the fast path's like-for-like peer.
    ("fast", 64, 16, "tuned-bf16", 1.0), ("fast", 256, 4, "tuned-bf16", 1.0),
    ("exact", 256, None, "upstream", 2.0), ("exact", 64, 16, "upstream", 1.7),
    ("exact", 64, None, "tuned", 1.0), ("exact", 256, None, "tuned", 1.0),
)


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
        "same model on channels_last tensors (one line of PyTorch); `tuned-bf16` is `tuned` under "
        "`torch.autocast(\"cpu\", dtype=torch.bfloat16)`, the fast path's peer. Every claim below names the peer "
        "it beats.\n")
    for provider, reason in report.get("unavailable_providers", {}).items():
        add(f"- not measured, provider `{provider}`: {reason}")
    add("")
    peak = report["matmul_peak_gflops"]
    add(f"Float32 matrix-multiply peak (numpy, {report['matmul_n']}x{report['matmul_n']}, best run): "
        f"**{peak:.1f} GFLOP/s**.\n")
    if report.get("peaks_gops"):
        add(f"Arithmetic peaks with the sides' thread count (PyTorch {report['matmul_n']}x{report['matmul_n']} matrix "
            "products, best run; int8 = torch._int_mm, the VNNI dot products): " + ", ".join(
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
    add("pairs/s per side, with the ratios to upstream and to the tuned peer in the same configuration in "
        "parentheses.\n")
    add(summary_table(report))
    add("")
    add("## Throughput\n")
    add("pairs/s over all rounds; spread = lowest and highest round; x upstream = against upstream in the same "
        "configuration.\n")
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
                f"{_fmt(ratio(m, up), 2)} | {_fmt(eff)} | {_fmt(100 * eff / peak)} |")
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
    add("| target | measured | met |")
    add("|---|---|---|")
    for kind, size, batch, peer, target in TARGETS:
        runtime_sides = [s for s in sides if s.startswith("runtime:") and s.endswith(f":{kind}")]
        if not runtime_sides or peer not in sides:
            continue
        for side in runtime_sides:
            for net in sorted({k[0] for k in by_key}):
                ratios = [ratio(row[side], row[peer]) for (n, sz, b, mode), row in by_key.items()
                          if n == net and sz == size and mode == "plain" and (batch is None or b == batch)
                          and side in row and peer in row and not row[side]["error"] and not row[peer]["error"]]
                ratios = [r for r in ratios if not math.isnan(r)]
                if not ratios:
                    continue
                where = f"batch {batch}" if batch else "every batch"
                add(f"| {side} >= {target:g}x {peer}, {net}-st {size}x{size} {where} | {_fmt(min(ratios), 2)}x"
                    f"{f' (worst; best {_fmt(max(ratios), 2)}x)' if len(ratios) > 1 else ''} | "
                    f"{'yes' if min(ratios) >= target else 'no'} |")
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


def _cold_rows(colds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    upstream = {c["net"]: c for c in colds if c["side"] == "upstream" and c["seconds"]}
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
            peers = (("upstream", "up"), ("tuned", "tuned")) + ((("tuned-bf16", "bf16"),) if side.endswith(":fast")
                                                                else ())
            ratios = [f"{m['pairs_per_s'] / peer['pairs_per_s']:.2f}x {short}" for name, short in peers
                      if side != name and (peer := row.get(name)) and peer["calls"] and not peer["error"]]
            cells.append(_fmt(m["pairs_per_s"]) + (f" ({', '.join(ratios)})" if ratios else ""))
        out.append(f"| {net}-st | {size} | {batch} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(out)
