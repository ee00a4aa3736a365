"""``stlpips-score --matrix DIR``: distances between every pair of a folder's images (or against a second folder),
with each image's features computed once and cached (docs/matrix.md).

The options are declared here (``matrix_options``) and the run lives here (``run_matrix``), so that
``stlpips_rt.cli.score`` only adds a decorator and a branch.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import StlpipsError
from ..io import manifest
from ..io.output import format_distance
from ..io.pairs import _images_in
from ..io.progress import Progress
from ..matrix import head
from ..matrix.cache import DEFAULT_FOLDER
from .options import build_scorer, fail

TOOL = "stlpips-score"

_OPTIONS = [
    click.option("--matrix", "matrix_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                 default=None, help="Distances between every pair of this folder's images (features once per image; "
                                    "docs/matrix.md). -o out.npy (the matrix), .parquet or .csv (rows a, b, "
                                    "distance)."),
    click.option("--against", "against_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                 default=None, help="With --matrix: rows are --matrix's images, columns this folder's."),
    click.option("--top-k", "top_k", type=click.IntRange(min=1), default=None,
                 help="With --matrix: write each image's K nearest (rows a, rank, b, distance) instead of every pair."),
    click.option("--threshold", type=float, default=None,
                 help="With --matrix: write only the pairs closer than T (near-duplicates)."),
    click.option("--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                 help=f"With --matrix: folder caching each image's features [default: DIR/{DEFAULT_FOLDER}]."),
    click.option("--no-cache", is_flag=True, help="With --matrix: compute every image's features afresh."),
]
_DEFAULTS = {"matrix_dir": None, "against_dir": None, "top_k": None, "threshold": None, "cache_dir": None,
             "no_cache": False}


def matrix_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def take_matrix_args(extra: dict[str, Any]) -> dict[str, Any]:
    """Remove this module's options from the command's extra keyword arguments."""
    return {name: extra.pop(name, default) for name, default in _DEFAULTS.items()}


def refuse_matrix_options(args: Mapping[str, Any]) -> None:
    given = [name for name, default in _DEFAULTS.items() if name != "matrix_dir" and args.get(name) != default]
    if given:
        flags = ", ".join("--" + n.replace("_dir", "").replace("_", "-") for n in given)
        raise click.UsageError(f"{flags}: only with --matrix DIR")


def diversity(matrix: np.ndarray, symmetric: bool) -> tuple[float, float, float]:
    """Mean off-diagonal distance and its 95% interval. Pairs share images, so they are not independent: the
    standard error is the U-statistic's first-order one, from the per-image mean distances (symmetric:
    ``2 * sd(row means) / sqrt(N)``; rows x columns: ``sqrt(var(row means)/M + var(column means)/N)``)."""
    m = np.asarray(matrix, dtype=np.float64)
    if symmetric:
        n = len(m)
        if n < 2:
            return math.nan, math.nan, math.nan
        row_means = m.sum(axis=1) / (n - 1)
        mean = float(row_means.mean())
        se = 2 * float(row_means.std(ddof=1)) / math.sqrt(n) if n > 2 else math.nan
    else:
        mean = float(m.mean())
        rows, cols = m.mean(axis=1), m.mean(axis=0)
        var = (rows.var(ddof=1) / len(rows) if len(rows) > 1 else 0.0) + \
              (cols.var(ddof=1) / len(cols) if len(cols) > 1 else 0.0)
        se = math.sqrt(var)
    return mean, mean - 1.96 * se, mean + 1.96 * se


def _write_rows(output: Path | None, fields: list[str], columns: dict[str, Any],
                provenance: dict[str, Any]) -> None:
    """Long rows as CSV (stdout without -o) or Parquet (by -o's suffix, the provenance in its key-value
    metadata)."""
    if output is not None and output.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            fail(TOOL, "Parquet output needs pyarrow: pip install 'stlpips-deploy[parquet]'")
        table = pa.table({name: columns[name] for name in fields})
        pq.write_table(table.replace_schema_metadata(manifest.parquet_metadata(provenance)), str(output))
        return
    import csv

    out = output.open("w", newline="") if output is not None else sys.stdout
    try:
        writer = csv.writer(out)
        writer.writerow(fields)
        count = len(columns[fields[0]])
        for i in range(count):
            writer.writerow([format_distance(columns[f][i]) if f == "distance" else columns[f][i] for f in fields])
    finally:
        if output is not None:
            out.close()


def write_result(matrix: np.ndarray, rows: list[str], cols: list[str] | None, output: Path | None,
                 top_k: int | None, threshold: float | None, provenance: dict[str, Any]) -> int:
    """Write what was asked: the matrix (.npy), long rows of every pair, the nearest K, or the pairs under T, and
    the manifest beside a written file (io/manifest.py). Returns the number of rows written (the matrix's entries
    for .npy)."""
    written = _write_result(matrix, rows, cols, output, top_k, threshold, provenance)
    if output is not None:
        manifest.write_manifest(output, provenance, rows=written)
    return written


def _write_result(matrix: np.ndarray, rows: list[str], cols: list[str] | None, output: Path | None,
                  top_k: int | None, threshold: float | None, provenance: dict[str, Any]) -> int:
    symmetric = cols is None
    cols_names = rows if cols is None else cols
    if top_k is not None:
        index, dist = head.top_k(matrix, top_k, exclude_self=symmetric)
        k = index.shape[1]
        columns = {"a": [r for r in rows for _ in range(k)], "rank": [j + 1 for _ in rows for j in range(k)],
                   "b": [cols_names[j] for j in index.reshape(-1)], "distance": dist.reshape(-1).tolist()}
        _write_rows(output, ["a", "rank", "b", "distance"], columns, provenance)
        return len(columns["a"])
    if threshold is not None:
        i, j, d = head.under(matrix, threshold, symmetric)
    elif output is not None and output.suffix.lower() == ".npy":
        return matrix.size  # written in place (open_memmap)
    elif symmetric:
        i, j = np.triu_indices(len(rows), 1)
        d = np.asarray(matrix)[i, j]
    else:
        i, j = np.indices(matrix.shape).reshape(2, -1)
        d = np.asarray(matrix).reshape(-1)
    _write_rows(output, ["a", "b", "distance"],
                {"a": [rows[x] for x in i], "b": [cols_names[y] for y in j], "distance": d.tolist()}, provenance)
    return len(i)


def run_matrix(params: Mapping[str, Any], matrix_args: Mapping[str, Any]) -> None:
    """The ``--matrix`` run; exits (0, or 1 when an image was left out)."""
    folder: Path = matrix_args["matrix_dir"]
    against: Path | None = matrix_args["against_dir"]
    output: Path | None = params["output"]
    quiet: bool = params["quiet"]
    top_k, threshold = matrix_args["top_k"], matrix_args["threshold"]
    if top_k is not None and threshold is not None:
        raise click.UsageError("--top-k and --threshold are two outputs; choose one")
    if output is not None and output.suffix.lower() not in (".npy", ".parquet", ".csv"):
        raise click.UsageError("--matrix writes -o out.npy (the matrix), out.parquet or out.csv (long rows)")
    if output is not None and output.suffix.lower() == ".npy" and (top_k or threshold is not None):
        raise click.UsageError("--top-k and --threshold write rows: -o out.csv or out.parquet")
    for name in ("ref", "dist", "pairs_csv", "ref_one", "ref_dir", "dist_dir", "heatmap_dir"):
        if params.get(name):
            raise click.UsageError("--matrix DIR takes no other input (REF DIST, --pairs, --ref, --ref-dir, "
                                   "--dist-dir, --heatmap)")
    if params.get("resume"):
        raise click.UsageError("--resume is not available with --matrix (features are cached instead)")
    files = _images_in(folder)
    others = _images_in(against) if against is not None else None
    if not files or (others is not None and not others):
        fail(TOOL, f"no images in {folder if not files else against}")
    cache = None if matrix_args["no_cache"] else (matrix_args["cache_dir"] or folder / DEFAULT_FOLDER)
    start = time.perf_counter()
    if params["engine"] == "ray":
        from ..scale import matrix as ray_matrix

        result = ray_matrix.main_ray(files, others, output, params, cache)
        rows, cols, matrix, failed, where = result
        provenance = _ray_provenance(params)
    else:
        if params["address"] is not None or params["workers"] != 1 or params["gpus_per_worker"]:
            raise click.UsageError("--address, --workers and --gpus-per-worker need --engine ray")
        try:
            scorer = build_scorer(params["model"], params["models_dir"], params["providers"], params["precision"],
                                  params["threads"], params["batch_size"], params["max_memory"], params["resize"])
        except StlpipsError as exc:
            fail(TOOL, str(exc))
        rows, cols, matrix, failed, counts = _local(scorer, files, others, output, cache, quiet)
        provenance = scorer.provenance()
        where = (f"({scorer.provider}; features of {counts[0]} image(s) computed, {counts[1]} from the cache"
                 f"{' ' + str(cache) if cache is not None else ''})")
    written = write_result(matrix, rows, cols, output, top_k, threshold, provenance)
    if not quiet:
        mean, low, high = diversity(matrix, cols is None)
        shape = f"{len(rows)} x {len(rows)}" if cols is None else f"{len(rows)} x {len(cols)}"
        pairs = len(rows) * (len(rows) - 1) // 2 if cols is None else len(rows) * len(cols)
        click.echo(f"{TOOL}: {shape} matrix, {pairs:,} pairs in {time.perf_counter() - start:.1f}s {where}; "
                   f"mean distance {mean:.4f} (95% interval {low:.4f}-{high:.4f}); {written:,} "
                   f"{'entries' if output is not None and output.suffix == '.npy' else 'rows'} written", err=True)
    for name, error in failed:
        click.echo(f"{TOOL}: left out {name}: {error}", err=True)
    sys.exit(1 if failed else 0)


def _ray_provenance(params: Mapping[str, Any]) -> dict[str, Any]:
    """The Ray workers' provenance, as ``--engine ray`` pair runs record it (scale.job.driver_provenance)."""
    from ..engine.model_files import resolve_model
    from ..scale.batch import ScoringOptions
    from ..scale.job import driver_provenance

    path = resolve_model(params["model"], [params["models_dir"]] if params["models_dir"] else [])
    return driver_provenance(ScoringOptions(model=str(path), providers=params["providers"],
                                            precision=params["precision"], threads=params["threads"],
                                            resize=params["resize"]))


def _local(scorer: Any, files: list[Path], others: list[Path] | None, output: Path | None, cache: Path | None,
           quiet: bool) -> tuple[list[str], list[str] | None, np.ndarray, list[tuple[str, str]], tuple[int, int]]:
    progress = Progress(len(files) + len(others or []), enabled=not quiet, unit="images")
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        progress.update(done[0])

    try:
        try:
            fa = scorer.features([str(f) for f in files], cache=cache, skip_errors=True, progress=tick)
            fb = scorer.features([str(f) for f in others], cache=cache, skip_errors=True, progress=tick) \
                if others is not None else None
        except StlpipsError as exc:
            fail(TOOL, str(exc), code=1)
    finally:
        progress.close()
    failed = [(f.name, f.error) for f in fa.failed + (fb.failed if fb is not None else [])]
    shape = (len(fa), len(fa) if fb is None else len(fb))
    out = None
    if output is not None and output.suffix.lower() == ".npy":
        out = np.lib.format.open_memmap(output, mode="w+", dtype=np.float32, shape=shape)
    pairs = shape[0] * (shape[0] - 1) // 2 if fb is None else shape[0] * shape[1]
    bar = Progress(pairs, enabled=not quiet, unit="pairs")
    count = [0]

    def pairs_done(n: int) -> None:
        count[0] += n
        bar.update(count[0])

    try:
        matrix = scorer.matrix(fa, fb, out=out, progress=pairs_done)
    except StlpipsError as exc:  # e.g. the two folders' images differ in size
        fail(TOOL, str(exc), code=1)
    finally:
        bar.close()
    if out is not None:
        out.flush()
        _write_names(output, fa.names, None if fb is None else fb.names)
    reports = [f.report for f in (fa, fb) if f is not None]
    counts = (sum(r.computed for r in reports), sum(r.cached for r in reports))
    return fa.names, None if fb is None else fb.names, matrix, failed, counts


def _write_names(output: Path | None, rows: list[str], cols: list[str] | None) -> None:
    """Beside out.npy: out.rows.txt (and out.cols.txt with --against), one image path a line, in matrix order."""
    if output is None:
        return
    output.with_suffix(".rows.txt").write_text("".join(f"{n}\n" for n in rows))
    if cols is not None:
        output.with_suffix(".cols.txt").write_text("".join(f"{n}\n" for n in cols))
