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

from ..errors import ImageSizeError, StlpipsError, describe
from ..io import manifest
from ..io.output import format_distance
from ..io.pairs import scan_folder
from ..io.progress import Progress
from ..matrix import head
from ..matrix.cache import CACHE_ENV, DEFAULT_LIMIT, FeatureCache, format_bytes
from ..tiling.plan import parse_memory
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
    click.option("--cache-dir", "--cache", "cache_dir", type=click.Path(file_okay=False, path_type=Path),
                 default=None, help=f"With --matrix: the feature cache's folder [default: ${CACHE_ENV}, else the "
                                    "user's cache folder, ~/.cache/stlpips-deploy/features on Linux]."),
    click.option("--cache-size", "cache_size", metavar="SIZE", default=None,
                 help=f"With --matrix: the feature cache's limit, e.g. 500M or 8G [default: "
                      f"{format_bytes(DEFAULT_LIMIT)}]; the least recently used entries go first."),
    click.option("--no-cache", is_flag=True, help="With --matrix: compute every image's features afresh, cache "
                                                  "nothing."),
    click.option("--clear-cache", is_flag=True, help="Empty the feature cache (--cache-dir, or the default) first; "
                                                     "alone, only that."),
]
_DEFAULTS = {"matrix_dir": None, "against_dir": None, "top_k": None, "threshold": None, "cache_dir": None,
             "cache_size": None, "no_cache": False, "clear_cache": False}


def matrix_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def take_matrix_args(extra: dict[str, Any]) -> dict[str, Any]:
    """Remove this module's options from the command's extra keyword arguments."""
    return {name: extra.pop(name, default) for name, default in _DEFAULTS.items()}


def _flag(name: str) -> str:
    return {"matrix_dir": "--matrix", "against_dir": "--against", "cache_dir": "--cache-dir"}.get(
        name, "--" + name.replace("_", "-"))


def refuse_matrix_options(args: Mapping[str, Any]) -> None:
    given = [name for name, default in _DEFAULTS.items()
             if name not in ("matrix_dir", "clear_cache") and args.get(name) != default]
    if given:
        raise click.UsageError(f"{', '.join(_flag(n) for n in given)}: only with --matrix DIR")


def feature_cache(args: Mapping[str, Any]) -> FeatureCache:
    """The cache the options describe: --cache-dir (or the default folder), --cache-size (or the default limit)."""
    try:
        limit = DEFAULT_LIMIT if args["cache_size"] is None else parse_memory(args["cache_size"])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--cache-size") from None
    return FeatureCache(args["cache_dir"], limit)


def clear_cache(args: Mapping[str, Any], quiet: bool) -> None:
    """--clear-cache: empty the cache folder of its own entries, and say so."""
    cache = feature_cache(args)
    removed = cache.clear()
    if not quiet:
        click.echo(f"{TOOL}: feature cache {cache.folder}: {removed} entr{'y' if removed == 1 else 'ies'} removed",
                   err=True)


def diversity(matrix: np.ndarray, symmetric: bool) -> tuple[float, float, float]:
    """Mean off-diagonal distance and its 95% interval (NaN where there is no pair, or too few images for an
    interval). Pairs share images, so they are not independent: the standard error is the U-statistic's first-order
    one, from the per-image mean distances (symmetric: ``2 * sd(row means) / sqrt(N)``, N >= 3; rows x columns:
    ``sqrt(var(row means)/M + var(column means)/N)``, more than one pair)."""
    n_rows, n_cols = matrix.shape
    row_sums, col_sums = np.zeros(n_rows), np.zeros(n_cols)
    for r0 in range(0, n_rows, 1024):  # float64 a slice at a time: the matrix may be a memmap larger than memory
        part = np.asarray(matrix[r0:r0 + 1024], dtype=np.float64)
        row_sums[r0:r0 + len(part)] = part.sum(axis=1)
        col_sums += part.sum(axis=0)
    if symmetric:
        if n_rows < 2:
            return math.nan, math.nan, math.nan
        row_means = row_sums / (n_rows - 1)
        mean = float(row_means.mean())
        se = 2 * float(row_means.std(ddof=1)) / math.sqrt(n_rows) if n_rows > 2 else math.nan
    else:
        size = n_rows * n_cols
        mean = float(row_sums.sum() / size) if size else math.nan
        rows, cols = row_sums / max(n_cols, 1), col_sums / max(n_rows, 1)
        var = (rows.var(ddof=1) / len(rows) if len(rows) > 1 else 0.0) + \
              (cols.var(ddof=1) / len(cols) if len(cols) > 1 else 0.0)
        se = math.sqrt(var) if size > 1 else math.nan
    return mean, mean - 1.96 * se, mean + 1.96 * se


def describe_diversity(matrix: np.ndarray, symmetric: bool) -> str:
    """The summary's words for :func:`diversity`, with no NaN: what is missing is said instead."""
    mean, low, high = diversity(matrix, symmetric)
    if math.isnan(mean):
        return "no pairs (one image)"
    if math.isnan(low):  # two images, or one row against one column
        return f"mean distance {mean:.4f} (one pair: no interval)"
    return f"mean distance {mean:.4f} (95% interval {low:.4f}-{high:.4f})"


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
        # the distance column holds the float32 the head computed, as pair scoring's Parquet rows do (ROW_TYPES)
        table = pa.table({name: pa.array(np.asarray(columns[name], dtype=np.float32)) if name == "distance"
                          else columns[name] for name in fields})
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
    files, skipped = scan_folder(folder)
    others, skipped_against = scan_folder(against) if against is not None else (None, {})
    if not files or (others is not None and not others):
        empty, left = (folder, skipped) if not files else (against, skipped_against)
        fail(TOOL, f"no image files in {empty}{_skipped_words(left)}")
    cache = None
    if not matrix_args["no_cache"]:
        cache = feature_cache(matrix_args)
        if matrix_args["clear_cache"]:
            clear_cache(matrix_args, quiet)
    elif matrix_args["clear_cache"] or matrix_args["cache_dir"] or matrix_args["cache_size"]:
        raise click.UsageError("--no-cache caches nothing: drop --cache-dir, --cache-size and --clear-cache")
    start = time.perf_counter()
    if params["engine"] == "ray":
        from ..scale import matrix as ray_matrix

        result = ray_matrix.main_ray(files, others, output, params, None if cache is None else cache.folder)
        rows, cols, matrix, failed, where = result
        provenance = _ray_provenance(params)
    else:
        if params["address"] is not None or params["workers"] != 1 or params["gpus_per_worker"]:
            raise click.UsageError("--address, --workers and --gpus-per-worker need --engine ray")
        try:
            scorer = build_scorer(params["model"], params["models_dir"], params["providers"], params["precision"],
                                  params["threads"], params["batch_size"], params["max_memory"], params["resize"])
        except StlpipsError as exc:
            fail(TOOL, describe(exc, "cli"))
        rows, cols, matrix, failed, counts = _local(scorer, files, others, output, cache, quiet)
        provenance = scorer.provenance()
        cached = "; no cache" if cache is None else f", {counts[1]} from the cache; cache {cache.describe()}"
        where = f"({scorer.provider}; features of {counts[0]} image(s) computed{cached})"
    written = write_result(matrix, rows, cols, output, top_k, threshold, provenance)
    if not quiet:
        shape = f"{len(rows)} x {len(rows)}" if cols is None else f"{len(rows)} x {len(cols)}"
        pairs = len(rows) * (len(rows) - 1) // 2 if cols is None else len(rows) * len(cols)
        as_npy = output is not None and output.suffix.lower() == ".npy"
        click.echo(f"{TOOL}: {shape} matrix, {_count(pairs, 'pair', 'pairs')} in "
                   f"{time.perf_counter() - start:.1f}s {where}; "
                   f"{describe_diversity(matrix, cols is None)}; "
                   f"{_count(written, *(('entry', 'entries') if as_npy else ('row', 'rows')))} written", err=True)
        for where_from, left in ((folder, skipped), (against, skipped_against)):
            if left:
                click.echo(f"{TOOL}: not read in {where_from}{_skipped_words(left)}", err=True)
    for name, error in failed:
        click.echo(f"{TOOL}: left out {name}: {error}", err=True)
    sys.exit(1 if failed else 0)


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _skipped_words(skipped: Mapping[str, list[str]]) -> str:
    """``: notes.txt, a.csv (not an image file name (...)); sub/ (a folder: ...)``, or nothing."""
    if not skipped:
        return ""
    return ": " + "; ".join(f"{', '.join(names)} ({reason})" for reason, names in skipped.items())


def _ray_provenance(params: Mapping[str, Any]) -> dict[str, Any]:
    """The Ray workers' provenance, as ``--engine ray`` pair runs record it (scale.job.driver_provenance)."""
    from ..engine.model_files import resolve_model
    from ..scale.batch import ScoringOptions
    from ..scale.job import driver_provenance

    path = resolve_model(params["model"], [params["models_dir"]] if params["models_dir"] else [])
    return driver_provenance(ScoringOptions(model=str(path), providers=params["providers"],
                                            precision=params["precision"], threads=params["threads"],
                                            resize=params["resize"]))


def _local(scorer: Any, files: list[Path], others: list[Path] | None, output: Path | None, cache: Any,
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
        except ImageSizeError as exc:  # images of several sizes: a usage error, like mismatched pairs
            fail(TOOL, describe(exc, "cli"))
        except StlpipsError as exc:
            fail(TOOL, describe(exc, "cli"), code=1)
    finally:
        progress.close()
    failed = [(f.name, f.error) for f in fa.failed + (fb.failed if fb is not None else [])]
    if fb is not None and fb.image_hw != fa.image_hw:
        fail(TOOL, describe(ImageSizeError(
            f"{files[0].parent} vs {others[0].parent}" if others else "--against",
            f"a distance matrix needs one image size; --matrix's images are {fa.image_hw[0]}x{fa.image_hw[1]}, "
            f"--against's {fb.image_hw[0]}x{fb.image_hw[1]} (HxW)", resize=True), "cli"))
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
    except StlpipsError as exc:
        fail(TOOL, describe(exc, "cli"), code=1)
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
