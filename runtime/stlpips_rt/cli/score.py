"""``stlpips-score``: perceptual distance of image pairs from the command line (torch-free)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from ..errors import ImageError, InferenceError, ModelNotFoundError, StlpipsError, describe
from ..io import heatmap, images, manifest
from ..io.output import (
    ERROR,
    FIELDS,
    OK,
    ROW_TYPES,
    ParquetRowWriter,
    RowWriter,
    format_distance,
    read_done,
    report_run,
)
from ..io.pairs import Pair, from_csv, from_dirs, from_ref
from ..io.progress import Progress
from ..scorer import Scorer
from .matrix import clear_cache, matrix_options, refuse_matrix_options, run_matrix, take_matrix_args
from .options import CONTEXT, build_scorer, fail, max_memory_option, model_option, models_dir_option, runtime_options
from .video import refuse_video_options, run_video, video_options


@dataclass
class LoadedPair:
    """One pair after decoding: its arrays, or the error that stopped it."""

    pair: Pair
    ref: np.ndarray | None = None
    dist: np.ndarray | None = None
    error: str = ""


def error_row(pair: Pair, message: str) -> dict[str, Any]:
    return {"ref": pair.ref, "dist": pair.dist, "distance": None, "status": ERROR, "error": message}


def _load_pair(scorer: Scorer, pair: Pair, ref: np.ndarray | None = None) -> LoadedPair:
    """Read and check one pair; a problem becomes the row's error message instead of an exception."""
    if pair.problem:
        return LoadedPair(pair, error=pair.problem)
    try:
        x0 = ref if ref is not None else scorer.load(pair.ref_path, pair.ref)
        x1 = scorer.load(pair.dist_path, pair.dist)
        images.check_pair(x0, x1, pair.ref, pair.dist)
    except StlpipsError as exc:
        return LoadedPair(pair, error=describe(exc, "cli"))
    return LoadedPair(pair, x0, x1)


def _heatmap_name(pair: Pair) -> str:
    return f"{pair.index:06d}_{Path(pair.ref).stem}_vs_{Path(pair.dist).stem}.png"


def _score_chunk(scorer: Scorer, loaded: list[LoadedPair], outputs: tuple[str, ...], broadcast: bool,
                 heatmap_dir: Path | None) -> list[dict[str, Any]]:
    good = [item for item in loaded if not item.error]
    results: dict[str, np.ndarray] = {}
    failure = ""
    if good:
        try:
            x0 = good[0].ref if broadcast else [g.ref for g in good]
            results = scorer.evaluate(x0, [g.dist for g in good], outputs)
        except (InferenceError, ImageError, ModelNotFoundError) as exc:
            if len(good) > 1:  # e.g. one pair too large for --max-memory: the others still get scored
                return [row for item in loaded for row in _score_chunk(scorer, [item], outputs, broadcast,
                                                                          heatmap_dir)]
            failure = describe(exc, "cli")
    rows, k = [], 0
    for item in loaded:
        if item.error or failure:
            rows.append(error_row(item.pair, item.error or failure))
            k += 0 if item.error else 1
            continue
        # The graph's float32 as is: the writers format it (io.output.format_distance) or store it (Parquet).
        row = {**error_row(item.pair, ""), "distance": float(results["dist"][k]), "status": OK}
        if heatmap_dir is not None:
            out = heatmap_dir / _heatmap_name(item.pair)
            heatmap.save(out, item.ref, item.dist, results["dist_map"][k][0])
            row["heatmap"] = str(out)
        k += 1
        rows.append(row)
    return rows


def _run(scorer: Scorer, pairs: list[Pair], writer: RowWriter | ParquetRowWriter, progress: Progress, broadcast: bool,
         heatmap_dir: Path | None) -> None:
    outputs = ("dist", "dist_map") if heatmap_dir is not None else ("dist",)
    size = scorer.batch_size
    chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    ref_array: np.ndarray | None = None
    if broadcast and pairs:
        try:
            ref_array = scorer.load(pairs[0].ref_path, pairs[0].ref)
        except StlpipsError as exc:
            for p in pairs:
                writer.write(error_row(p, describe(exc, "cli")))
            writer.flush()
            return

    def load(chunk: list[Pair]) -> list[LoadedPair]:
        return [_load_pair(scorer, p, ref_array) for p in chunk]

    done = 0
    # Decode the next chunk's images while the current one runs through the graph.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            assert pending is not None
            loaded = pending.result()
            pending = pool.submit(load, chunks[i + 1]) if i + 1 < len(chunks) else None
            for row in _score_chunk(scorer, loaded, outputs, broadcast, heatmap_dir):
                writer.write(row)
            writer.flush()
            done += len(loaded)
            progress.update(done)


TOOL = "stlpips-score"


@click.command(context_settings=CONTEXT)
@click.argument("ref", required=False, type=click.Path(path_type=Path))
@click.argument("dist", required=False, type=click.Path(path_type=Path))
@click.option("--pairs", "pairs_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with ref,dist columns (paths relative to the CSV's folder); Parquet too with --engine ray.")
@click.option("--ref", "ref_one", type=click.Path(path_type=Path),
              help="One reference scored against every image of --dist-dir (features computed once).")
@click.option("--ref-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of references, matched with --dist-dir by file name.")
@click.option("--dist-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of distorted images.")
@model_option()
@models_dir_option()
@runtime_options()
@max_memory_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--resize", type=click.IntRange(min=1), default=None,
              help="Bicubic-resize every image to SIZE x SIZE first (off by default).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write rows to this file (default: stdout).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]), default=None,
              help="Row format (default: by -o's suffix, else csv; a single pair without --format prints just the "
                   "distance).")
@click.option("--resume", is_flag=True, help="Skip pairs already scored in --output (written by the same model file, "
                                             "precision, provider and resize: its manifest says).")
@click.option("--heatmap", "heatmap_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a PNG per pair showing where the images differ (needs a spatial model).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, no summary.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: score on a Ray cluster, Parquet output (-o out.parquet or a folder); see docs/at_scale.md.")
@click.option("--address", default=None, help="With --engine ray: a running cluster (auto, HOST:PORT, ray://...); "
                                              "default: start a local one.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --engine ray: scoring actors, each with its own model and --threads CPU threads.")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0,
              help="With --engine ray: GPUs each actor reserves (use with --providers cuda or auto).")
@video_options
@matrix_options
def main(ref: Path | None, dist: Path | None, pairs_csv: Path | None, ref_one: Path | None, ref_dir: Path | None,
         dist_dir: Path | None, model: str, models_dir: Path | None, providers: str, precision: str,
         threads: int | None, max_memory: int | None, batch_size: int, resize: int | None, output: Path | None,
         fmt: str | None, resume: bool, heatmap_dir: Path | None, quiet: bool, engine: str, address: str | None,
         workers: int, gpus_per_worker: float, **video_args: Any) -> None:
    """Score REF against DIST, or many pairs (--pairs, --ref-dir/--dist-dir, --ref/--dist-dir), or every pair of a
    folder (--matrix DIR, docs/matrix.md).

    Prints the distance for one pair; otherwise one row per pair (ref, dist, distance, status, error). Exits 1
    when any pair failed, 2 on a usage or set-up error. With --video, REF and DIST are videos (docs/video.md)."""
    matrix_args = take_matrix_args(video_args)
    if matrix_args["matrix_dir"] is not None:
        run_matrix(click.get_current_context().params, matrix_args)
        return
    if matrix_args["clear_cache"] and not (ref or dist or pairs_csv or ref_dir or ref_one or video_args["video"]):
        refuse_matrix_options({k: v for k, v in matrix_args.items() if k not in ("cache_dir", "cache_size")})
        clear_cache(matrix_args, quiet)  # --clear-cache alone (with --cache-dir at most)
        return
    refuse_matrix_options(matrix_args)
    if video_args["video"]:
        run_video(click.get_current_context().params)
        return
    refuse_video_options(video_args)
    modes = [bool(ref or dist), bool(pairs_csv), bool(ref_dir), bool(ref_one)]
    if sum(modes) != 1:
        raise click.UsageError("give exactly one of: REF DIST, --pairs FILE, --ref-dir/--dist-dir, --ref/--dist-dir")
    if (ref_dir or ref_one) and not dist_dir:
        raise click.UsageError("--ref-dir and --ref need --dist-dir")
    if dist_dir and not (ref_dir or ref_one):
        raise click.UsageError("--dist-dir needs --ref-dir or --ref")
    if (ref or dist) and not (ref and dist):
        raise click.UsageError("give both REF and DIST")
    if resume and output is None:
        raise click.UsageError("--resume needs --output FILE")
    if engine == "ray":
        _main_ray(ref, dist, pairs_csv, ref_one, ref_dir, dist_dir, model, models_dir, providers, precision,
                  batch_size, threads, resize, output, resume, heatmap_dir, quiet, address, workers, gpus_per_worker)
    if address is not None or workers != 1 or gpus_per_worker:
        raise click.UsageError("--address, --workers and --gpus-per-worker need --engine ray")
    if output is not None and fmt is None:
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}.get(
            output.suffix.lower(), "csv")
    if fmt == "parquet" and output is None:
        raise click.UsageError("Parquet rows need a file: -o rows.parquet")

    try:
        scorer = build_scorer(model, models_dir, providers, precision, threads, batch_size, max_memory, resize)
    except StlpipsError as exc:
        fail(TOOL, describe(exc, "cli"))
    if heatmap_dir is not None and not scorer.info.has_spatial:
        fail(TOOL, f"--heatmap needs a spatial model; {scorer.info.path.name} has outputs "
              f"{', '.join(scorer.info.outputs)}. Export one with `stlpips-export --net {scorer.info.net} "
              f"--variant {scorer.info.variant} --spatial` and pass --model {scorer.info.short_name}-spatial")

    if ref and dist and fmt is None and output is None:
        try:
            click.echo(format_distance(scorer.score(ref, dist)))
        except StlpipsError as exc:
            fail(TOOL, describe(exc, "cli"), code=1)
        return

    pairs = _select_pairs(ref, dist, pairs_csv, ref_one, ref_dir, dist_dir)

    fields = FIELDS + (["heatmap"] if heatmap_dir is not None else [])
    fmt = fmt or "csv"
    provenance = scorer.provenance()
    resumed = bool(resume and output is not None and output.exists())
    if resumed:
        assert output is not None
        try:  # before anything is written: a refused resume leaves the output byte for byte as it was
            manifest.check_resume(output, provenance)
        except StlpipsError as exc:
            fail(TOOL, describe(exc, "cli"))
    kept = read_done(output, fmt) if resumed and output is not None else []
    done_keys = {(r["ref"], r["dist"]) for r in kept}
    todo = [p for p in pairs if p.key not in done_keys]
    writer: RowWriter | ParquetRowWriter
    if fmt == "parquet":
        assert output is not None
        writer = ParquetRowWriter(output, fields, ROW_TYPES, keep=kept, metadata=manifest.parquet_metadata(provenance))
    else:
        writer = RowWriter(output, fmt, fields, kept)
    if output is not None:
        manifest.write_manifest(output, provenance, resumed=resumed)
    progress = Progress(len(todo), enabled=not quiet)
    try:
        _run(scorer, todo, writer, progress, broadcast=bool(ref_one), heatmap_dir=heatmap_dir)
    finally:
        progress.close()
        writer.close()
        if output is not None:
            manifest.write_manifest(output, provenance, rows=writer.written, resumed=True)
    status = report_run(writer.written, writer.failed, len(pairs) - len(todo) if resume else None,
                        f"({scorer.provider}, {scorer.precision})", quiet)
    if status:
        sys.exit(status)


def _select_pairs(ref: Path | None, dist: Path | None, pairs_csv: Path | None, ref_one: Path | None,
                  ref_dir: Path | None, dist_dir: Path | None,
                  read_table: Callable[[Path], list[Pair]] = from_csv) -> list[Pair]:
    """The pairs a run scores, from whichever input form was given (checked by the caller)."""
    if pairs_csv:
        return read_table(pairs_csv)
    if ref_dir and dist_dir:
        return from_dirs(ref_dir, dist_dir)
    if ref_one and dist_dir:
        return from_ref(ref_one, dist_dir)
    assert ref is not None and dist is not None
    return [Pair(0, str(ref), str(dist), ref, dist)]


def _main_ray(ref: Path | None, dist: Path | None, pairs_csv: Path | None, ref_one: Path | None,
              ref_dir: Path | None, dist_dir: Path | None, model: str, models_dir: Path | None, providers: str,
              precision: str, batch_size: int, threads: int | None, resize: int | None, output: Path | None,
              resume: bool, heatmap_dir: Path | None, quiet: bool, address: str | None, workers: int,
              gpus_per_worker: float) -> None:
    """``--engine ray``: the same inputs, scored on Ray (stlpips_rt.scale.job); exits."""
    if heatmap_dir is not None:
        raise click.UsageError("--heatmap is not available with --engine ray")
    try:
        from ..scale import job, ray_env

        ray_env.require_ray()
    except ImportError as exc:
        fail(TOOL, describe(exc, "cli"))
    pairs = _select_pairs(ref, dist, pairs_csv, ref_one, ref_dir, dist_dir,
                          read_table=lambda p: job.pairs_from_parquet(p) if p.suffix.lower() == ".parquet"
                          else from_csv(p))
    sys.exit(job.main_ray(pairs, output, model=model, models_dir=models_dir, providers=providers, precision=precision,
                          batch_size=batch_size, threads=threads, resize=resize, workers=workers, address=address,
                          gpus_per_worker=gpus_per_worker, broadcast=bool(ref_one), resume=resume, quiet=quiet))
