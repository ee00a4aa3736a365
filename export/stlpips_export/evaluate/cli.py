"""``stlpips-eval``: evidence commands. ``stlpips-eval shift`` runs the paper's rank-flip protocol."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import click

from stlpips_rt.cli.options import CONTEXT, fail, models_dir_option, runtime_options
from stlpips_rt.engine.model_files import check_models_exist, missing_models
from stlpips_rt.errors import ModelNotFoundError

from .metrics import BACKENDS, CLASSIC, LEARNED, METRIC_NAMES, make_metric
from .study import SetResult, log, markdown_tables, plot, save_raw, score_set, write_csv

#: Default study: about 30 minutes for all metrics on 2 cores. At 64x64 its paired intervals resolve the
#: 1-2 point differences of the paper's Table 3; at 256x256 that takes ~1000 triplets (README, "Shift tolerance").
DEFAULT_SETS = "64:2000,256:200"
QUICK_SETS = "64:80,256:6"


def _parse_sets(text: str) -> list[tuple[int, int]]:
    sets = []
    for item in text.split(","):
        try:
            size, count = (int(v) for v in item.split(":"))
        except ValueError:
            raise click.BadParameter(f"{item!r} is not SIZE:COUNT (e.g. 64:2000)") from None
        if size < 16 or count < 1:
            raise click.BadParameter(f"{item!r}: size must be >= 16 and count >= 1")
        sets.append((size, count))
    return sets


def _parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise click.BadParameter(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    return items


@click.group(context_settings=CONTEXT)
def main() -> None:
    """Evidence for the deployed metric: shift tolerance (the paper's protocol) and BAPPS 2AFC."""


@main.command()
@click.option("--sets", "sets_text", default=None,
              help=f"built-in triplet sets as SIZE:COUNT,... (default {DEFAULT_SETS}; --quick {QUICK_SETS}).")
@click.option("--seed", default=0, show_default=True, help="seed of the built-in triplet set.")
@click.option("--metrics", "metrics_text", default=",".join(METRIC_NAMES), show_default=True,
              help="metrics to compare.")
@click.option("--backends", "backends_text", default="onnx,torch", show_default=True,
              help="backends of the learned metrics: onnx (runtime, exact), torch (PyTorch reference), "
                   "fast (runtime, the fastest reduced-precision path), int8 (the model's int8 file).")
@click.option("--torch-fraction", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="share of each set (its first triplets, at least one) scored by the PyTorch reference too.")
@click.option("--bapps", "bapps_dir", type=click.Path(path_type=Path), default=None,
              help="BAPPS 2AFC directory (e.g. dataset/2afc/val) to score as well.")
@click.option("--bapps-size", default="64", show_default=True,
              help="resize BAPPS patches to this size (64: the paper's Table 2; 256 or native: Table 3).")
@click.option("--bapps-limit", default=None, type=int, help="first N triplets of each BAPPS category.")
@click.option("--no-builtin", is_flag=True, help="skip the built-in set (with --bapps).")
@click.option("--quick", is_flag=True, help=f"small sets ({QUICK_SETS}) for a run of a minute or two.")
@models_dir_option()
@runtime_options(precision=False)
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("out/shift_eval"),
              show_default=True, help="folder for the report (.md, .csv, .png, raw .npz).")
def shift(
    sets_text: str | None,
    seed: int,
    metrics_text: str,
    backends_text: str,
    torch_fraction: float,
    bapps_dir: Path | None,
    bapps_size: str,
    bapps_limit: int | None,
    no_builtin: bool,
    quick: bool,
    models_dir: Path | None,
    providers: str,
    threads: int | None,
    out_dir: Path,
) -> None:
    """Rank-flip rate r_rf of each metric under 1-3 pixel shifts (ST-LPIPS paper, section 4)."""
    from stlpips_rt.errors import StlpipsError

    from .triplets import make_triplets

    sets = _parse_sets(sets_text or (QUICK_SETS if quick else DEFAULT_SETS))
    metric_names = _parse_list(metrics_text, METRIC_NAMES, "metric")
    backends = _parse_list(backends_text, BACKENDS, "backend")
    if "onnx" not in backends and any(m in LEARNED for m in metric_names):
        raise click.BadParameter("the learned metrics are compared against the exact runtime: keep 'onnx'",
                                 param_hint="--backends")

    # Every model first, all named at once: a missing model fails now, not after an hour of scoring.
    needed = {name: [f"{name}-int8" if backend == "int8" else name for backend in backends if backend != "torch"]
              for name in metric_names if name in LEARNED}
    try:
        check_models_exist([m for names in needed.values() for m in names], [models_dir] if models_dir else [])
    except ModelNotFoundError as exc:
        search = [models_dir] if models_dir else []
        have = [name for name in metric_names if name not in needed or not missing_models(needed[name], search)]
        fail("stlpips-eval", f"{exc}; or compare only the others: --metrics {','.join(have)}")
    log("loading metrics ...")
    metrics = []
    for name in metric_names:
        if name in CLASSIC:
            metrics.append((make_metric(name), None))
            continue
        for backend in backends:
            try:
                metric = make_metric(name, backend, providers=providers, threads=threads, models_dir=models_dir)
            except (StlpipsError, ValueError, OSError, ImportError) as exc:
                raise click.ClickException(f"{name} [{backend}]: {exc}") from None
            metrics.append((metric, backend == "torch"))

    triplet_sets = []
    if not no_builtin:
        for size, count in sets:
            t0 = time.perf_counter()
            triplet_sets.append((f"built-in {size}x{size}", make_triplets(count, size, seed)))
            log(f"built-in set {size}x{size}: {count} triplets (seed {seed}) in {time.perf_counter() - t0:.1f} s")
    if bapps_dir is not None:
        from .bapps import load_bapps

        size = None if bapps_size == "native" else int(bapps_size)
        bapps = load_bapps(bapps_dir, size=size, limit=bapps_limit)
        h, w = bapps.size
        triplet_sets.append((f"BAPPS {bapps_dir.name} {h}x{w}", bapps))
        log(f"BAPPS: {len(bapps)} triplets in {len(set(bapps.category))} categories at {h}x{w}")
    if not triplet_sets:
        raise click.UsageError("nothing to evaluate: --no-builtin without --bapps")

    results = []
    for label, triplets in triplet_sets:
        log(f"scoring {label} ...")
        # The PyTorch reference shows agreement triplet by triplet; a share of the set is enough for that.
        torch_limit = max(1, round(torch_fraction * len(triplets)))
        runs = [score_set(metric, triplets, torch_limit if is_torch else None, progress=log)
                for metric, is_torch in metrics]
        results.append(SetResult(label, triplets, runs))

    out_dir.mkdir(parents=True, exist_ok=True)
    command = "stlpips-eval shift " + " ".join(sys.argv[2:])
    details = sorted({f"{r.metric} [{r.backend}]: {r.detail}" for res in results for r in res.runs})
    header = (
        f"# Shift tolerance: rank-flip rate r_rf\n\nCommand: `{command}`\n\n"
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}. Seed {seed}.\n\n"
        "r_rf: the share of triplets (ref, d0, d1) whose ranking d(ref, d0) < d(ref, d1) flips when d0 and "
        "d1 are shifted by k pixels (crop I[0:h, k:w+k-3]; reference and unshifted images cropped to w-3), "
        "equations 1-2 of the ST-LPIPS paper. Pooled over triplets with Wilson 95% intervals for the built-in "
        "set; mean over categories for BAPPS, as the paper.\n\n"
        "Backends: " + "; ".join(details) + "\n\n"
    )
    report = header + markdown_tables(results) + "![r_rf against shift](shift_eval.png)\n"
    (out_dir / "shift_eval.md").write_text(report)
    write_csv(results, out_dir / "shift_eval.csv")
    plot(results, out_dir / "shift_eval.png")
    save_raw(results, out_dir / "shift_eval_raw.npz")
    click.echo(report)
    log(f"wrote {out_dir}/shift_eval.md, .csv, .png and shift_eval_raw.npz")
