"""``stlpips-score --engine ray``: the pairs ``stlpips-score`` reads, scored on Ray, written to Parquet as the
results stream back, resumable.

Output: ``-o out.parquet`` is one file (columns ref, dist, distance, status, error; in input order),
assembled at the end from shards kept in ``out.parquet.parts/`` while the job runs; ``-o folder/`` is a folder
of shards (``part-*.parquet``, rows in completion order, with an ``index`` column: the pair's input row).
Each shard is written to a temporary name and renamed, so an interrupted job leaves only whole shards, and
``--resume`` scores only the pairs without an ``ok`` row in them (error rows are retried, as with CSV output).
As with local runs, the output's manifest (``out.parquet.manifest.json``, ``folder/manifest.json``) and the single
file's key-value metadata record the provenance (io/manifest.py), and ``--resume`` refuses an output another model
file, precision, provider or resize wrote.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputMismatchError
from ..io import manifest
from ..io.output import ERROR, FIELDS, OK, report_run
from ..io.pairs import Pair
from .batch import ScoringOptions, pairs_dataset, score_dataset
from .ray_env import cluster

SHARD_ROWS = 512  # rows per shard: what an interruption can cost, at most
SHARD_SECONDS = 10.0  # ... or this long since the last shard, whichever comes first


SHARD_FIELDS = ["index", *FIELDS]  # index: the pair's row in the input (the final single file is sorted by it)


def _schema(fields: list[str] = SHARD_FIELDS) -> Any:
    import pyarrow as pa

    types = {"index": pa.int64(), "ref": pa.string(), "dist": pa.string(), "distance": pa.float32(),
             "status": pa.string(), "error": pa.string()}
    return pa.schema([(f, types[f]) for f in fields])


class ParquetOutput:
    """Result rows in Parquet: one file (``*.parquet``) or a folder of shards, written shard by shard."""

    def __init__(self, target: Path, provenance: dict[str, Any] | None = None) -> None:
        self.target = target
        self.provenance = provenance
        self.single_file = target.suffix.lower() == ".parquet" and not target.is_dir()
        self.shards = target.with_name(target.name + ".parts") if self.single_file else target
        self.run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self._seq = 0
        self._pending: list[Any] = []
        self._pending_rows = 0
        self._last = time.monotonic()
        self.written = 0
        self.failed = 0

    def _existing(self) -> list[Path]:
        files = sorted(self.shards.glob("part-*.parquet")) if self.shards.is_dir() else []
        return files + ([self.target] if self.single_file and self.target.is_file() else [])

    def read_done(self) -> list[dict[str, Any]]:
        """The ``ok`` rows of earlier runs, once per pair. A shard that cannot be read (torn by a crash outside
        the rename) is skipped: its pairs are scored again."""
        import pyarrow.parquet as pq

        kept: dict[tuple[str, str], dict[str, Any]] = {}
        for path in self._existing():
            try:
                rows = pq.read_table(path).to_pylist()
            except Exception:  # noqa: BLE001 - any unreadable shard only means rescoring its pairs
                continue
            for row in rows:
                if row.get("status") == OK:
                    kept.setdefault((row["ref"], row["dist"]), row)
        return list(kept.values())

    def start(self, kept: list[dict[str, Any]]) -> None:
        """Begin a run: the kept rows go into this run's first shard, then earlier shards (and, for one file,
        the earlier file) are removed, so every pair is in the output once."""
        import pyarrow as pa

        old = self._existing()
        self.shards.mkdir(parents=True, exist_ok=True)
        if kept:
            self._write_shard(pa.Table.from_pylist([{k: r.get(k) for k in SHARD_FIELDS} for r in kept], _schema()))
        for path in old:
            path.unlink(missing_ok=True)

    def write(self, table: Any) -> None:
        import pyarrow.compute as pc

        table = table.select(SHARD_FIELDS).cast(_schema())
        self.written += table.num_rows
        self.failed += int(pc.sum(pc.equal(table.column("status"), ERROR)).as_py() or 0)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= SHARD_ROWS or time.monotonic() - self._last >= SHARD_SECONDS:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            self._write_shard(pa.concat_tables(self._pending))
        self._pending, self._pending_rows, self._last = [], 0, time.monotonic()

    def _write_shard(self, table: Any) -> None:
        import pyarrow.parquet as pq

        name = f"part-{self.run}-{self._seq:05d}.parquet"
        self._seq += 1
        tmp = self.shards / f".tmp-{name}"
        pq.write_table(table, tmp)
        os.replace(tmp, self.shards / name)

    def finish(self) -> None:
        """Flush; for one file, join the shards in input order into ``target`` and remove the shard folder."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.flush()
        if not self.single_file:
            return
        parts = sorted(self.shards.glob("part-*.parquet"))
        table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else _schema().empty_table()
        table = table.sort_by("index").select(FIELDS)
        if self.provenance is not None:
            table = table.replace_schema_metadata(manifest.parquet_metadata(self.provenance))
        tmp = self.target.with_name(f".tmp-{self.target.name}")
        pq.write_table(table, tmp)
        os.replace(tmp, self.target)
        shutil.rmtree(self.shards, ignore_errors=True)


@dataclass
class JobResult:
    total: int  # pairs in the input
    scored: int  # rows written by this run
    failed: int  # of those, error rows
    skipped: int  # pairs already done (--resume)


def _location(name: str, path: Path) -> str:
    """Where a worker reads an image: URIs as given (``s3://...``), local files as the absolute path."""
    return name if "://" in name else str(path.absolute())


def run_job(pairs: list[Pair], output: Path, options: ScoringOptions, *, broadcast: bool = False,
            address: str | None = None, resume: bool = False, quiet: bool = False,
            progress: Callable[[int, int], None] | None = None,
            provenance: dict[str, Any] | None = None) -> JobResult:
    """Score ``pairs`` on Ray into ``output`` (see the module docstring). ``broadcast``: every pair has the
    same reference (``--ref/--dist-dir``), scored through the broadcast graph. ``progress(done, todo)`` is
    called as results arrive. ``provenance`` (``Scorer.provenance()``; None: of a Scorer built here from
    ``options``) is written beside the output and into the single file's metadata; with ``resume`` an output
    written with other provenance is refused
    (:class:`~stlpips_rt.errors.OutputMismatchError`) before anything changes."""
    provenance = provenance or driver_provenance(options)
    out = ParquetOutput(output, provenance)
    resumed = resume and bool(out._existing())
    if resumed:
        manifest.check_resume(output, provenance)
    kept = out.read_done() if resume else []
    index_of = {p.key: p.index for p in pairs}
    kept = [{**r, "index": index_of[(r["ref"], r["dist"])]} for r in kept if (r["ref"], r["dist"]) in index_of]
    done_keys = {(r["ref"], r["dist"]) for r in kept}
    todo = [p for p in pairs if p.key not in done_keys]
    out.start(kept)
    manifest.write_manifest(output, provenance, resumed=resumed)
    rows = [{"index": p.index, "ref": p.ref, "dist": p.dist, "ref_path": _location(p.ref, p.ref_path),
             "dist_path": _location(p.dist, p.dist_path), "error": p.problem} for p in todo]
    with cluster(address, cpus_needed=int(options.workers * options.cpus + 0.999), quiet=quiet) as ray:
        if quiet:
            ray.data.DataContext.get_current().enable_progress_bars = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        done = 0
        try:
            if rows:
                ds = pairs_dataset(rows, options.batch_size, workers=options.workers)
                scored = score_dataset(ds, ref_column="ref_path", dist_column="dist_path", options=options,
                                       ref=_location(todo[0].ref, todo[0].ref_path) if broadcast else None)
                for batch in _batches(scored):
                    out.write(batch)
                    done += batch.num_rows
                    if progress is not None:
                        progress(done, len(todo))
        finally:
            out.flush()
    out.finish()
    manifest.write_manifest(output, provenance, rows=out.written, resumed=True)
    return JobResult(total=len(pairs), scored=out.written, failed=out.failed, skipped=len(pairs) - len(todo))


def _batches(ds: Any) -> Iterable[Any]:
    # batch_size=None: whatever each block holds, as it completes; order does not matter, each row is keyed.
    return ds.iter_batches(batch_format="pyarrow", batch_size=None)


def pairs_from_parquet(path: Path) -> list[Pair]:
    """Rows of a Parquet file with string columns ``ref`` and ``dist`` (paths relative to the file's folder, or
    URIs). Image bytes in a table are for :func:`~stlpips_rt.scale.batch.score_dataset` from Python."""
    import click
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is no Parquet
        raise click.BadParameter(f"{path}: cannot read it as Parquet ({exc})", param_hint="--pairs") from None
    for column in ("ref", "dist"):
        if column not in table.column_names:
            raise click.BadParameter(f"{path} has no {column!r} column (it has {', '.join(table.column_names)})",
                                     param_hint="--pairs")
        if not pa.types.is_string(table.schema.field(column).type) and \
                not pa.types.is_large_string(table.schema.field(column).type):
            raise click.BadParameter(f"{path}: column {column!r} is {table.schema.field(column).type}, not paths; "
                                     "score image bytes with stlpips_rt.scale.score_dataset", param_hint="--pairs")
    refs, dists = table.column("ref").to_pylist(), table.column("dist").to_pylist()
    return [Pair(n, r or "", d or "", path.parent / (r or ""), path.parent / (d or ""),
                 "" if r and d else "empty ref or dist cell") for n, (r, d) in enumerate(zip(refs, dists, strict=True))]


def driver_provenance(options: ScoringOptions) -> dict[str, Any]:
    """What the actors compute with, from a Scorer built here as they build theirs (a homogeneous cluster: the same
    file, providers, precision and resize). Where this process cannot build it (a GPU only the workers have), the
    record names what was asked for and says so."""
    from ..errors import StlpipsError
    from ..io.images import ImageOptions
    from ..scorer import Scorer

    try:
        return Scorer(options.model, options.providers, options.precision, threads=options.threads,
                      image=ImageOptions(resize=options.resize)).provenance()
    except StlpipsError as exc:
        from .. import __version__

        return {"stlpips_deploy": __version__,
                "model": {"file": Path(options.model).name, "sha256": manifest.file_sha256(Path(options.model))},
                "provider": options.providers, "precision": options.precision, "engine": {"name": "unknown"},
                "resize": (None if options.resize is None else list(options.resize)
                           if isinstance(options.resize, tuple) else [options.resize, options.resize]),
                "threads": options.threads, "cpu": manifest.cpu_name(),
                "note": f"the driver could not build the workers' Scorer: {exc}"}


def main_ray(pairs: list[Pair], output: Path | None, *, model: str, models_dir: Path | None, providers: str,
             precision: str, batch_size: int, threads: int | None, resize: int | None, workers: int,
             address: str | None, gpus_per_worker: float, broadcast: bool, resume: bool, quiet: bool) -> int:
    """The ``--engine ray`` branch of ``stlpips-score``; returns the exit status (0, 1 if any pair failed)."""
    import click

    from ..engine.model_files import read_model_info, resolve_model
    from ..errors import StlpipsError

    if output is None or not (output.suffix.lower() == ".parquet" or output.is_dir() or not output.suffix):
        raise click.UsageError("--engine ray writes Parquet: pass -o out.parquet or -o a folder (for shards)")
    try:
        model_path = resolve_model(model, [models_dir] if models_dir else [])
        read_model_info(model_path)  # fail here, not in every actor
    except StlpipsError as exc:
        click.echo(f"stlpips-score: error: {exc}", err=True)
        return 2
    options = ScoringOptions(model=model_path, providers=providers, precision=precision, threads=threads or 1,
                             batch_size=batch_size, resize=resize, workers=workers, gpus_per_worker=gpus_per_worker)
    try:
        result = run_job(pairs, output, options, broadcast=broadcast, address=address, resume=resume, quiet=quiet,
                         provenance=driver_provenance(options))
    except OutputMismatchError as exc:
        click.echo(f"stlpips-score: error: {exc}", err=True)
        return 2
    return report_run(result.scored, result.failed, result.skipped if resume else None,
                      f"on Ray ({workers} worker(s)) -> {output}", quiet)
