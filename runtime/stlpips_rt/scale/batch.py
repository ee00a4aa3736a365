"""Batch scoring on Ray Data: a Dataset of image pairs in, the same rows with ``distance``, ``status`` and ``error``
out, scored by a pool of actors that each load the model once and decode their own images.

Exactness: each Ray batch (``batch_size`` rows) is scored exactly as the single-process ``stlpips-score`` scores
one chunk: the pairs that load go through one :meth:`Scorer.evaluate` (or :meth:`Scorer.evaluate_many` for one
reference) call. That matters because onnxruntime's CPU kernels (its NCHWc layout, at the full optimisation
level the runtime uses) can change the last bit of a pair's distance with the pair's position in a batch
(measured: 1 pair in ~20 moves by ~4e-9 on alex-st 64x64). :func:`pairs_dataset` builds blocks aligned to those
chunks, so a job reproduces a single-process run bit for bit; an arbitrary Dataset gets the same numbers as
``Scorer.evaluate`` on each of its Ray batches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.options import ProviderOptions
from ..errors import ImageReadError, InferenceError, StlpipsError
from ..io import images
from ..io.images import ImageOptions
from ..io.output import ERROR, OK
from ..scorer import Scorer
from .ray_env import ModelPayload, require_ray

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

RESULT_COLUMNS = ("distance", "status", "error")
PairTask = Callable[[Scorer, dict[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class ScoringOptions:
    """How many actors run, what each reserves on the cluster, and how each builds its :class:`Scorer`.

    threads: onnxruntime intra-op threads per actor (None: one per CPU the actor's process may use).
    max_memory, provider_options: as the Scorer's (each actor's Scorer gets them).
    cpus_per_worker: CPUs each actor reserves from Ray (default: ``threads``, or 1).
    gpus_per_worker: GPUs each actor reserves (with ``providers="auto"`` or ``"cuda"`` the actor runs on its GPU).
    ray_remote_args: anything else for the actors (``resources``, ``accelerator_type``, ``runtime_env``, ...).
    """

    model: str | os.PathLike[str] = "alex-st"
    providers: str | Sequence[str] = "auto"
    precision: str = "exact"
    threads: int | None = 1
    batch_size: int = 16
    resize: int | tuple[int, int] | None = None
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    max_memory: int | str | None = None
    provider_options: tuple[ProviderOptions, ...] = ()
    workers: int = 1
    cpus_per_worker: float | None = None
    gpus_per_worker: float = 0
    ray_remote_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def cpus(self) -> float:
        return self.cpus_per_worker if self.cpus_per_worker is not None else float(self.threads or 1)

    def map_args(self) -> dict[str, Any]:
        """Keyword arguments of ``Dataset.map_batches`` that size and place the actor pool."""
        ray = require_ray()
        return dict(compute=ray.data.ActorPoolStrategy(size=self.workers), num_cpus=self.cpus,
                    num_gpus=self.gpus_per_worker or None, **self.ray_remote_args)


@dataclass(frozen=True)
class _ScorerSpec:
    """What an actor needs to build its Scorer: picklable, the model travelling as a :class:`ModelPayload`."""

    model: ModelPayload
    providers: str | Sequence[str]
    precision: str
    threads: int | None
    batch_size: int
    image: ImageOptions
    max_memory: int | str | None = None  # None: the Scorer's default budget (tiles larger pairs)
    provider_options: tuple[ProviderOptions, ...] = ()

    @classmethod
    def from_options(cls, opts: ScoringOptions) -> _ScorerSpec:
        return cls(ModelPayload.put(opts.model), opts.providers, opts.precision, opts.threads, opts.batch_size,
                   ImageOptions(resize=opts.resize, max_pixels=opts.max_pixels), opts.max_memory,
                   tuple(opts.provider_options))

    def build(self) -> Scorer:
        return Scorer(self.model.local_path(), self.providers, self.precision, threads=self.threads,
                      batch_size=self.batch_size, max_memory=self.max_memory, image=self.image,
                      provider_options=self.provider_options)


class ImageSource:
    """Reads one pair column's cell inside an actor: a local path, a URI any pyarrow filesystem reads
    (``s3://``, ``gs://``, ``hdfs://``, ``file://``, ...), or encoded image bytes."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def load(self, item: Any, column: str) -> tuple[np.ndarray, str]:
        """The image as the scorer's float32 ``[3, H, W]`` array, and the name errors use for it."""
        if item is None:
            raise ImageReadError(column, "empty cell; give a path, a URI or image bytes")
        if isinstance(item, bytes | bytearray | memoryview):
            name = f"{column} ({len(item)} bytes)"
            data = bytes(item)
        elif isinstance(item, str) and "://" in item:
            name, data = item, self._read_uri(item)
        elif isinstance(item, str | os.PathLike):
            name = str(item)
            return self.scorer.load(item, name), name
        else:
            raise ImageReadError(column, f"cell of type {type(item).__name__}; give a path, a URI or image bytes")
        pil = images.open_bytes(data, name, self.scorer.image_options.max_pixels)
        return self.scorer.load(pil, name), name

    @staticmethod
    def _read_uri(uri: str) -> bytes:
        import pyarrow.fs

        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(uri)
            with fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            raise ImageReadError(uri, "file does not exist; check the URI") from None
        except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise ImageReadError(uri, f"cannot read it ({exc}); check the URI and the filesystem's credentials") \
                from None


class PairScorer:
    """The actor of :func:`score_dataset`: one Scorer, built once, scoring one Ray batch per call."""

    def __init__(self, spec: _ScorerSpec, ref_column: str, dist_column: str, ref: Any = None) -> None:
        self.scorer = spec.build()
        self.source = ImageSource(self.scorer)
        self.ref_column, self.dist_column = ref_column, dist_column
        self.broadcast = ref is not None
        self._ref_array: np.ndarray | None = None
        self._ref_name = ""
        self._ref_error = ""
        if self.broadcast:
            try:
                self._ref_array, self._ref_name = self.source.load(ref, "ref")
            except StlpipsError as exc:  # every row then says why: the job still finishes
                self._ref_error = str(exc)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        errors = _given_errors(batch)
        dists = batch.column(self.dist_column).to_pylist()
        refs = None if self.broadcast else batch.column(self.ref_column).to_pylist()
        x0: list[np.ndarray | None] = [None] * n
        x1: list[np.ndarray | None] = [None] * n
        for i in range(n):
            if errors[i]:
                continue
            if self._ref_error:
                errors[i] = self._ref_error
                continue
            try:
                if refs is None:
                    a, a_name = self._ref_array, self._ref_name
                else:
                    a, a_name = self.source.load(refs[i], self.ref_column)
                b, b_name = self.source.load(dists[i], self.dist_column)
                images.check_pair(a, b, a_name, b_name)
            except StlpipsError as exc:
                errors[i] = str(exc)
                continue
            x0[i], x1[i] = a, b
        distances: list[float | None] = [None] * n
        good = [i for i in range(n) if not errors[i]]
        if good:
            try:
                if self.broadcast:
                    d = self.scorer.evaluate_many(self._ref_array, [x1[i] for i in good])["dist"]
                else:
                    d = self.scorer.evaluate([x0[i] for i in good], [x1[i] for i in good])["dist"]
                for k, i in enumerate(good):
                    distances[i] = float(d[k])
            except InferenceError as exc:
                for i in good:
                    errors[i] = str(exc)
        return _with_results(batch, distances, errors)


class PairTaskRunner:
    """The actor of :func:`map_pairs`: one Scorer, and the user's per-pair function applied row by row."""

    def __init__(self, spec: _ScorerSpec, task: PairTask, columns: Sequence[str]) -> None:
        self.scorer = spec.build()
        self.task = task
        self.columns = tuple(columns)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        errors = _given_errors(batch)
        produced: dict[str, list[Any]] = {c: [] for c in self.columns}
        for i, row in enumerate(batch.to_pylist()):
            values: Mapping[str, Any] = {}
            if not errors[i]:
                try:
                    values = self.task(self.scorer, row)
                    missing = [c for c in self.columns if c not in values]
                    if missing:
                        raise TypeError(f"the task returned no {', '.join(missing)} (it returned {sorted(values)})")
                except Exception as exc:  # noqa: BLE001 - one bad pair (or a bug on one input) must not end the job
                    errors[i] = str(exc) if isinstance(exc, StlpipsError) else f"{type(exc).__name__}: {exc}"
                    values = {}
            for c in self.columns:
                produced[c].append(values.get(c) if not errors[i] else None)
        out = _drop(batch, (*self.columns, "status", "error"))
        for c in self.columns:
            out = out.append_column(c, pa.array(produced[c]))
        return _append_status(out, errors)


def _given_errors(batch: pa.Table) -> list[str]:
    """Rows that arrive with a non-empty ``error`` (e.g. a reference without a partner) are passed through."""
    if "error" not in batch.column_names:
        return [""] * batch.num_rows
    return [e or "" for e in batch.column("error").to_pylist()]


def _drop(batch: pa.Table, columns: Sequence[str]) -> pa.Table:
    return batch.drop_columns([c for c in columns if c in batch.column_names])


def _append_status(table: pa.Table, errors: list[str]) -> pa.Table:
    import pyarrow as pa

    table = table.append_column("status", pa.array([ERROR if e else OK for e in errors], pa.string()))
    return table.append_column("error", pa.array(errors, pa.string()))


def _with_results(batch: pa.Table, distances: list[float | None], errors: list[str]) -> pa.Table:
    import pyarrow as pa

    out = _drop(batch, RESULT_COLUMNS)
    # float32: the graph's own output type, so the stored value is the Scorer's number bit for bit.
    out = out.append_column("distance", pa.array(distances, pa.float32()))
    return _append_status(out, errors)


def _options(options: ScoringOptions | None, overrides: dict[str, Any]) -> ScoringOptions:
    return replace(options or ScoringOptions(), **overrides)


def score_dataset(ds: ray.data.Dataset, model: str | os.PathLike[str] | None = None, *, ref_column: str = "ref",
                  dist_column: str = "dist", ref: Any = None, options: ScoringOptions | None = None,
                  **option_overrides: Any) -> ray.data.Dataset:
    """Score every pair of ``ds`` on a pool of Ray actors; returns ``ds``'s rows with ``distance`` (float32, null
    on error), ``status`` (``ok``/``error``) and ``error`` (the message, naming the image and what to do) added.

    ``ref_column``/``dist_column`` hold local paths, URIs that pyarrow's filesystems read, or encoded image
    bytes. With ``ref`` (a path, URI or bytes) every row's ``dist_column`` is scored against that one
    reference through the broadcast graph (``Scorer.evaluate_many``: its features are computed once per run) and
    ``ref_column`` is not read. Rows arriving with a non-empty ``error`` column are passed through unscored.

    ``options`` (:class:`ScoringOptions`) or keyword overrides of it choose the actors: ``workers=4,
    threads=2`` (CPU threads per actor), ``gpus_per_worker=1``, ``batch_size``, ``providers``, ``precision``,
    ``resize``, ``max_pixels``, ``ray_remote_args``. A bad or missing image becomes an error row; an actor that
    dies is restarted by Ray and its batches retried, so every row comes out once. Lazy, like every Dataset
    transform: nothing runs until the result is consumed (``write_parquet``, ``iter_batches``, ...)."""
    if model is not None:
        option_overrides["model"] = model
    opts = _options(options, option_overrides)
    if ref is None and ref_column == dist_column:
        raise ValueError("ref_column and dist_column are the same column; pass ref=... for one reference")
    spec = _ScorerSpec.from_options(opts)
    return ds.map_batches(PairScorer, batch_size=opts.batch_size, batch_format="pyarrow",
                          fn_constructor_args=(spec, ref_column, dist_column, ref), **opts.map_args())


def map_pairs(ds: ray.data.Dataset, task: PairTask, columns: Sequence[str] = ("distance",),
              model: str | os.PathLike[str] | None = None, *, options: ScoringOptions | None = None,
              **option_overrides: Any) -> ray.data.Dataset:
    """The generic seam: ``task(scorer, row) -> {column: value}`` for each row, one row per call, in actors that
    each hold one :class:`Scorer` built once. For work that is one pair per unit and does not batch: video
    pairs, for one, e.g. ``map_pairs(ds, lambda s, r: {"distance": s.score_video(r["ref"], r["dist"])})`` once
    ``Scorer.score_video`` exists.

    Every row comes back with the ``columns`` the task returns, plus ``status`` and ``error``: an exception on
    one row (a :class:`StlpipsError`, or any other) makes that row an error row and the job goes on. For one
    pair per Ray *task* (scheduling and retry granularity, long videos), build ``ds`` with one row per block:
    ``pairs_dataset(rows, rows_per_block=1)``."""
    if model is not None:
        option_overrides["model"] = model
    opts = _options(options, option_overrides)
    spec = _ScorerSpec.from_options(opts)
    return ds.map_batches(PairTaskRunner, batch_size=1, batch_format="pyarrow",
                          fn_constructor_args=(spec, task, tuple(columns)), **opts.map_args())


def pairs_dataset(rows: Sequence[Mapping[str, Any]] | pa.Table, batch_size: int = 16,
                  rows_per_block: int | None = None, workers: int = 1) -> ray.data.Dataset:
    """A Dataset of ``rows`` (dicts or a pyarrow Table, in order) whose blocks hold whole multiples of
    ``batch_size`` rows, so that :func:`score_dataset`'s Ray batches are exactly the consecutive chunks of
    ``batch_size`` that the single-process ``stlpips-score`` forms: the same runs, the same bits.

    ``rows_per_block`` (a multiple of ``batch_size``) defaults to about eight blocks per worker, at most
    64 chunks a block; pass 1 (with :func:`map_pairs`) for one pair per task."""
    import pyarrow as pa

    ray = require_ray()
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows))
    n = table.num_rows
    if rows_per_block is None:
        chunks = math.ceil(n / batch_size)
        rows_per_block = batch_size * max(1, min(64, math.ceil(chunks / (8 * max(1, workers)))))
    elif rows_per_block != 1 and rows_per_block % batch_size:
        raise ValueError(f"rows_per_block={rows_per_block} is not a multiple of batch_size={batch_size}")
    blocks = [table.slice(start, rows_per_block) for start in range(0, n, rows_per_block)] or [table]
    return ray.data.from_arrow(blocks)
