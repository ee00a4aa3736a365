"""``stlpips-bench --profile``: where each runtime side's time goes, by operator type, per configuration.

Runs in this process (no PyTorch): for each ``runtime:<provider>:<precision>`` side and each plain configuration it
builds the side's Scorer and asks it for :meth:`stlpips_rt.Scorer.operator_profile` on the bench's inputs: the runs
as the Scorer makes them (on the CPU provider a batch of small images goes as one-thread runs side by side, and the
profile is of one of them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stlpips_rt import Scorer, resolve_model

from .worker import make_inputs

#: Operator types below this share are folded into one "other" row in the Markdown.
SHOWN_SHARE = 0.005


def profile_sides(sides: list[str], nets: list[str], shapes: list[tuple[int, list[int]]], threads: int,
                  models_dir: Path | None, runs: int, log: Any) -> list[dict[str, Any]]:
    """One entry per (side, net, size, batch): the side's operator profile, or the error that stopped it."""
    out = []
    for side in sides:
        _, provider, precision = side.split(":")
        for net in nets:
            try:
                model = resolve_model(f"{net}-st", [models_dir] if models_dir else [])
                scorer = Scorer(model, provider, precision, threads=threads)
            except Exception as exc:  # a side that cannot run here is reported, the others go on
                out.append({"side": side, "net": net, "error": f"{type(exc).__name__}: {exc}"})
                log(f"  {side} {net}-st: {exc}")
                continue
            for size, batches in shapes:
                for batch in batches:
                    in0, in1 = make_inputs(size, batch, "plain")
                    profile = scorer.operator_profile(in0, in1, runs=runs)
                    out.append({"side": side, "net": net, "size": size, "batch": batch,
                                "provider": scorer.provider, "precision": scorer.precision, **profile.as_dict()})
                    log(f"{side} {net}-st {size}x{size} batch {batch}: convolutions "
                        f"{100 * profile.convolution_share:.1f}% of {1000 * profile.total_seconds:.1f} ms")
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["# stlpips-bench --profile: where the time goes, by operator type\n",
             f"Command: `{report['command']}`\n",
             f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, load average at start "
             f"{', '.join(f'{v:.2f}' for v in report['machine']['load_average_start'])}. {report['threads']} threads, "
             f"{report['runs']} timed runs after 2 warm-up runs; kernel time per run (the engine's own profiler: "
             "onnxruntime's, or OpenVINO's performance counters).\n"]
    for entry in report["profiles"]:
        if "error" in entry:
            lines.append(f"## {entry['side']}, {entry['net']}-st\n\nnot profiled: {entry['error']}\n")
            continue
        lines.append(f"## {entry['side']}, {entry['net']}-st {entry['size']}x{entry['size']}, batch {entry['batch']}\n")
        how = "" if entry.get("pieces", 1) == 1 else (
            f" (the batch runs as {entry['pieces']} one-thread runs side by side; profiled: the first, "
            f"{entry['pairs']} pairs)")
        lines.append(f"{entry['engine']}, {entry['provider']} provider, {entry['precision']}{how}: "
                     f"{1000 * entry['total_seconds']:.2f} ms of kernel time per run, convolutions "
                     f"**{100 * entry['convolution_share']:.1f}%**.\n")
        lines.append("| operator | share | ms per run | nodes | how it ran (share of the operator's time) |")
        lines.append("|---|---|---|---|---|")
        other = 0.0
        for op in entry["operators"]:
            if op["share"] < SHOWN_SHARE:
                other += op["share"]
                continue
            how = ", ".join(f"{kernel} {100 * secs / op['seconds']:.0f}%" for kernel, secs in op["kernels"].items()
                            if op["seconds"])
            lines.append(f"| {op['op_type']} | {100 * op['share']:.1f}% | {1000 * op['seconds']:.3f} | "
                         f"{op['nodes']} | {how} |")
        if other:
            lines.append(f"| (other, each < {100 * SHOWN_SHARE:g}%) | {100 * other:.1f}% | | | |")
        lines.append("")
    return "\n".join(lines) + "\n"
