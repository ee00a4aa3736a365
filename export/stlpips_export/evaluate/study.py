"""Score triplet sets with several metrics and summarise: r_rf per shift, 2AFC, backend agreement.

Data flows one way: TripletSet -> per-metric distance arrays (`MetricRun`) -> rates (`flip_rates`) ->
tables (Markdown, CSV) and a plot.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stlpips_rt.precision import error_stats

from .metrics import Metric
from .shift import (
    MAX_SHIFT,
    SHIFTS,
    Z_95,
    Rate,
    all_rank_flips,
    flip_rates,
    prefers_d0,
    rank_flips,
    sample_candidates,
    shift_crop,
    two_afc_scores,
)
from .triplets import TripletSet


@dataclass
class MetricRun:
    """One metric's distances on one set.

    ``dist`` is ``[N, 2, 4]`` (d0 / d1 against the cropped reference, at shift 0..3, see
    `shift.sample_candidates`); ``full`` is ``[N, 2]`` on the uncropped images (for 2AFC) or None.
    """

    metric: str
    backend: str
    detail: str
    dist: np.ndarray
    full: np.ndarray | None
    seconds: float


def score_set(
    metric: Metric,
    triplets: TripletSet,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> MetricRun:
    """Distances of ``metric`` on the first ``limit`` (default all) triplets of ``triplets``.

    Per triplet, the cropped reference is scored once against its eight candidates (d0 and d1 at shifts
    0..3), and, where the set has human judgements, the uncropped reference against uncropped d0 and d1.
    """
    n = len(triplets) if limit is None else min(limit, len(triplets))
    dist = np.empty((n, 2, MAX_SHIFT + 1))
    full = np.empty((n, 2)) if triplets.judge is not None else None
    start = last = time.perf_counter()
    for i in range(n):
        ref = np.ascontiguousarray(shift_crop(triplets.ref[i], 0))
        dist[i] = metric.distances(ref, sample_candidates(triplets.d0[i], triplets.d1[i])).reshape(2, -1)
        if full is not None:
            full[i] = metric.distances(triplets.ref[i], np.stack([triplets.d0[i], triplets.d1[i]]))
        now = time.perf_counter()
        if progress is not None and (now - last > 10 or i + 1 == n):
            progress(f"  {metric.name} [{metric.backend}] {i + 1}/{n} triplets, {now - start:.0f} s")
            last = now
    return MetricRun(metric.name, metric.backend, getattr(metric, "detail", metric.backend), dist, full,
                     time.perf_counter() - start)


@dataclass
class SetResult:
    """All metric runs on one triplet set, labelled for the report (e.g. ``"built-in 64x64"``)."""

    label: str
    triplets: TripletSet
    runs: list[MetricRun]

    def rates(self, run: MetricRun) -> dict[int, Rate]:
        """r_rf per shift; per-category mean where the set has categories (BAPPS), pooled otherwise."""
        cats = None if self.triplets.category is None else self.triplets.category[: len(run.dist)]
        return flip_rates(run.dist, cats)

    def two_afc(self, run: MetricRun) -> float | None:
        """2AFC score (mean over categories of per-category means), or None without human judgements."""
        if run.full is None or self.triplets.judge is None:
            return None
        n = len(run.full)
        scores = two_afc_scores(run.full[:, 0], run.full[:, 1], self.triplets.judge[:n])
        cats = self.triplets.category[:n]
        return float(np.mean([scores[cats == c].mean() for c in np.unique(cats)]))


@dataclass(frozen=True)
class Agreement:
    """How a backend's distances compare with the exact runtime's, on the triplets both scored."""

    metric: str
    backend: str
    n: int
    max_abs: float
    max_rel: float
    rank_agreement: float  # fraction of (triplet, shift) where d0 < d1 is decided the same way
    flip_disagreements: int  # (triplet, k) whose rank-flip indicator differs


def agreement(exact: MetricRun, other: MetricRun) -> Agreement:
    """Compare ``other`` (PyTorch reference, fast runtime or int8 file) with ``exact`` triplet by triplet."""
    n = min(len(exact.dist), len(other.dist))
    a, b = exact.dist[:n], other.dist[:n]
    max_abs, max_rel = error_stats(a, b)
    ranks = prefers_d0(a) == prefers_d0(b)
    return Agreement(exact.metric, other.backend, n, max_abs, max_rel, float(ranks.mean()),
                     int((all_rank_flips(a) != all_rank_flips(b)).sum()))


def paired_difference(a: MetricRun, b: MetricRun, k: int, z: float = Z_95) -> tuple[float, float, float]:
    """r_rf(a) - r_rf(b) at shift k on the same triplets, with a 95% CI from the paired differences.

    Pairing removes the triplet-to-triplet variation both metrics share, so it resolves smaller differences
    than two separate intervals do.
    """
    n = min(len(a.dist), len(b.dist))
    fa = rank_flips(a.dist[:n], k).astype(float)
    fb = rank_flips(b.dist[:n], k).astype(float)
    d = fa - fb
    half = z * float(d.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    return float(d.mean()), float(d.mean()) - half, float(d.mean()) + half


# --- reports ---------------------------------------------------------------------------------------------


def markdown_tables(results: Sequence[SetResult]) -> str:
    """r_rf (and 2AFC where judged) per set and metric, then backend agreement, as Markdown."""
    out = io.StringIO()
    for res in results:
        judged = res.triplets.judge is not None
        out.write(f"### {res.label}\n\n")
        head = "| metric | backend | n |" + (" 2AFC (%) |" if judged else "")
        head += "".join(f" r_rf {k}px (%) [95% CI] |" for k in SHIFTS) + " time (s) |\n"
        out.write(head)
        out.write("|" + "---|" * (head.count("|") - 1) + "\n")
        for run in res.runs:
            if len(run.dist) < len(res.triplets):
                continue  # a backend run on a subset (the PyTorch reference) appears in the agreement table
            rates = res.rates(run)
            row = f"| {run.metric} | {run.backend} | {len(run.dist)} |"
            if judged:
                two_afc = res.two_afc(run)
                row += f" {100 * two_afc:.2f} |" if two_afc is not None else " |"
            row += "".join(f" {rates[k].percent()} |" for k in SHIFTS) + f" {run.seconds:.0f} |\n"
            out.write(row)
        out.write("\n")
        agreements = agreement_rows(res)
        if agreements:
            out.write("Other backends against the exact runtime (ONNX), triplet by triplet on the triplets both "
                      "scored (each triplet: 8 distances, d0 and d1 at shifts 0-3):\n\n")
            out.write("| metric | backend | triplets | max abs diff | max rel diff | rank agreement (%) "
                      "| flip decisions that differ | time (s) |\n|---|---|---|---|---|---|---|---|\n")
            for a, seconds in agreements:
                out.write(f"| {a.metric} | {a.backend} | {a.n} | {a.max_abs:.2e} | {a.max_rel:.2e} | "
                          f"{100 * a.rank_agreement:.3f} | {a.flip_disagreements} | {seconds:.0f} |\n")
            out.write("\n")
        pairs = paired_rows(res)
        if pairs:
            out.write("Paired differences in r_rf (same triplets; percentage points, 95% CI):\n\n")
            out.write("| comparison |" + "".join(f" {k}px |" for k in SHIFTS) + "\n|---|"
                      + "---|" * len(SHIFTS) + "\n")
            for label, diffs in pairs:
                out.write(f"| {label} |" + "".join(
                    f" {100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] |" for d, lo, hi in diffs) + "\n")
            out.write("\n")
    return out.getvalue()


def agreement_rows(res: SetResult) -> list[tuple[Agreement, float]]:
    """Each non-exact backend of a learned metric against the exact runtime run of the same metric, with the
    backend's scoring time."""
    exact = {r.metric: r for r in res.runs if r.backend == "onnx"}
    return [(agreement(exact[r.metric], r), r.seconds) for r in res.runs
            if r.backend in ("torch", "fast", "int8") and r.metric in exact]


def paired_rows(res: SetResult) -> list[tuple[str, list[tuple[float, float, float]]]]:
    """LPIPS - ST-LPIPS and L2 - LPIPS per backbone (exact runtime runs), where both were scored."""
    runs = {r.metric: r for r in res.runs if r.backend in ("onnx", "numpy")}
    rows = []
    for net in ("alex", "vgg"):
        for a, b in ((f"LPIPS {net}", f"ST-LPIPS {net}"), ("L2", f"LPIPS {net}")):
            if a in runs and b in runs:
                rows.append((f"{a} - {b}", [paired_difference(runs[a], runs[b], k) for k in SHIFTS]))
    return rows


def write_csv(results: Sequence[SetResult], path: Path) -> None:
    """One row per (set, metric, backend, shift): r_rf with its CI, and 2AFC where judged."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "metric", "backend", "shift_px", "n", "r_rf", "ci_low", "ci_high", "two_afc"])
        for res in results:
            for run in res.runs:
                two_afc = res.two_afc(run)
                for k, rate in res.rates(run).items():
                    w.writerow([res.label, run.metric, run.backend, k, rate.n, f"{rate.value:.6f}",
                                f"{rate.low:.6f}", f"{rate.high:.6f}", "" if two_afc is None else f"{two_afc:.6f}"])


def plot(results: Sequence[SetResult], path: Path) -> None:
    """r_rf (%) against shift (0..3 px) per metric, one panel per set, 95% CI as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One colour per backbone, solid for ST-LPIPS and dashed for LPIPS, so each pair reads at a glance.
    colours = {"alex": "tab:blue", "vgg": "tab:red", "L2": "tab:gray", "SSIM": "tab:olive"}
    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        runs = [r for r in res.runs if r.backend in ("onnx", "numpy", "skimage")]  # the runtime's exact numbers
        for i, run in enumerate(runs):
            rates = res.rates(run)
            y = [0.0] + [100 * rates[k].value for k in SHIFTS]
            err = [[0.0] + [100 * (rates[k].value - rates[k].low) for k in SHIFTS],
                   [0.0] + [100 * (rates[k].high - rates[k].value) for k in SHIFTS]]
            style = "-" if run.metric.startswith("ST-") else "--" if "LPIPS" in run.metric else ":"
            dodge = 0.05 * (i - (len(runs) - 1) / 2)  # keep overlapping error bars apart
            ax.errorbar([k + dodge for k in range(MAX_SHIFT + 1)], y, yerr=err, linestyle=style, marker="o",
                        markersize=4, capsize=3, label=run.metric, color=colours[run.metric.split()[-1]])
        ax.set_title(f"{res.label} (n={len(res.triplets)})")
        ax.set_xlabel("horizontal shift (pixels)")
        ax.set_ylabel("rank-flip rate r_rf (%)")
        ax.set_xticks(range(MAX_SHIFT + 1))
        # Linear below 1%, logarithmic above: the learned metrics' few percent stay readable beside L2's tens.
        ax.set_yscale("symlog", linthresh=1.0, linscale=0.6)
        top = max(1.0, ax.get_ylim()[1])
        ax.set_ylim(0, top)
        ticks = [t for t in (0, 0.5, 1, 2, 5, 10, 20, 50, 100) if t <= top]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_raw(results: Sequence[SetResult], path: Path) -> None:
    """All distance arrays in one .npz (keys ``<set>|<metric>|<backend>|dist`` / ``|full``) for re-analysis."""
    arrays = {}
    for res in results:
        for run in res.runs:
            arrays[f"{res.label}|{run.metric}|{run.backend}|dist"] = run.dist
            if run.full is not None:
                arrays[f"{res.label}|{run.metric}|{run.backend}|full"] = run.full
    np.savez_compressed(path, **arrays)


def log(message: str) -> None:
    """Progress to stderr, so stdout stays the report."""
    print(message, file=sys.stderr, flush=True)
