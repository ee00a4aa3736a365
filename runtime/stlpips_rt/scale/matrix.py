"""Distance matrices on Ray: each image's features computed once in actors, blocks of the matrix as tasks.

1. Features: ``workers`` actors (each with the features graph, sent through the object store like the model of
   batch scoring) take chunks of images and return their feature rows, batched as the local path batches them
   (only where the graph is batch invariant: stlpips_rt.matrix.extract), so the rows are the same bits wherever
   they are computed. The driver puts each chunk into the object store it
   owns (on the driver's node), so losing a worker node never loses features; a chunk whose actor died is retried
   (actors restart, calls are retried), and an image that fails to load is left out and named.
2. Head: the matrix is cut into the same blocks as the local path (stlpips_rt.matrix.head.tasks, ``block``
   images a side); each block is a task reading its rows from the object store. A block whose worker or node
   dies is submitted again by the driver (Ray's own task retries are off, so that every lost block is counted
   in ``block_retries``), at most :data:`MAX_BLOCK_ATTEMPTS` times; the driver keeps the first result of each
   block (``blocks_done`` counts each block once), so every block comes out exactly once and, with the same
   features and the same block cut, equal to the local ``Scorer.matrix`` bit for bit on CPU.

Limits: features go through the driver's object store (the head node holds all of them: 632,576 bytes per 64x64
alex-st image); the matrix is assembled in the driver's memory (or an ``out`` memmap).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import ModelSpec
from ..errors import ImageSizeError, StlpipsError
from ..io import images
from ..matrix import head
from ..matrix.extract import images_per_run, layer_shapes, session_runner
from ..matrix.features import FeatureLayout
from ..matrix.model import FeatureModel, features_path
from .ray_env import ModelPayload, require_ray

#: Attempts of one block (its first run included) before the job gives up on it: each lost attempt is a worker or
#: node that died under it, which a few more nodes survive; a block that fails by itself fails at once.
MAX_BLOCK_ATTEMPTS = 4

@dataclass(frozen=True)
class _WorkerSpec:
    features: ModelPayload
    providers: str | Sequence[str]
    threads: int | None
    resize: tuple[int, int] | None
    max_pixels: int


class _FeatureWorker:
    """Holds the features graph; turns a chunk of image paths into feature rows."""

    def __init__(self, spec: _WorkerSpec) -> None:
        from ..engine.options import SessionConfig
        from ..engine.session import build_session
        from ..scorer import _is_auto

        chosen = ["cpu"] if _is_auto(spec.providers) else [p.strip() for p in str(spec.providers).split(",")]
        path = spec.features.local_path()
        session = build_session(path, chosen, SessionConfig.build(spec.threads, "exact"),
                                not _is_auto(spec.providers)).session
        self.model = FeatureModel.from_metadata(path, dict(session.get_modelmeta().custom_metadata_map),
                                                spec.features.sha256)
        self.runner = session_runner(session, self.model)
        self.options = images.ImageOptions(max_pixels=spec.max_pixels, resize=spec.resize)

    def chunk(self, items: list[str]) -> tuple[dict[str, Any], np.ndarray]:
        """(meta: ok names, image sizes, failures, layer shapes), rows float32 ``[ok, D]``."""
        loaded, names, sizes, failed = [], [], [], []
        for name in items:
            try:
                x = images.load(name, name, self.options)
                images.check_size(x, name, self.model.min_size, self.model.static_hw)
            except StlpipsError as exc:
                failed.append((name, str(exc)))
                continue
            loaded.append(x)
            names.append(name)
            sizes.append(tuple(int(v) for v in x.shape[1:]))
        if not loaded:
            return {"names": names, "sizes": sizes, "failed": failed, "shapes": None, "pid": os.getpid()}, \
                np.zeros((0, 0), dtype=np.float32)
        shapes = layer_shapes(self.runner, *sizes[0])
        if any(hw != sizes[0] for hw in sizes):  # another size: the driver names it; rows of this chunk unused
            return {"names": names, "sizes": sizes, "failed": failed, "shapes": shapes, "pid": os.getpid()}, \
                np.zeros((len(loaded), 0), dtype=np.float32)
        data = np.empty((len(loaded), FeatureLayout(self.model.channels, tuple(shapes)).dim), dtype=np.float32)
        per_run = images_per_run(*sizes[0]) if self.runner.batching else 1
        for start in range(0, len(loaded), per_run):  # batched as the local path batches them
            self.runner.write(np.stack(loaded[start:start + per_run]), data,
                              list(range(start, min(len(loaded), start + per_run))))
        return {"names": names, "sizes": sizes, "failed": failed, "shapes": shapes, "pid": os.getpid()}, data


def _block_task(weights: np.ndarray, same: bool, row_pieces: list[tuple[int, int, int]],
                col_pieces: list[tuple[int, int, int]], *chunks: np.ndarray) -> tuple[np.ndarray, str]:
    def gather(pieces: list[tuple[int, int, int]]) -> np.ndarray:
        return np.concatenate([chunks[k][s0:s1] for k, s0, s1 in pieces])

    import ray

    with head.single_threaded_blas():
        rows = gather(row_pieces)
        values = head.block(rows, None if same else gather(col_pieces), weights)
    return values, ray.get_runtime_context().get_node_id()


@dataclass
class MatrixResult:
    """``matrix`` float32 (``[N, N]``, or ``[M, N]`` with ``against``), the image names of its rows and
    columns, the images left out, and how the job went."""

    rows: list[str]
    cols: list[str] | None
    matrix: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)
    blocks: int = 0
    blocks_done: int = 0  # results kept: one per block
    block_retries: int = 0  # block attempts lost with their worker or node, and submitted again
    chunk_retries: int = 0
    block_nodes: dict[tuple[int, int], str] = field(default_factory=dict)  # (row, col) start -> node that made it
    feature_seconds: float = 0.0
    head_seconds: float = 0.0


def score_matrix(images_: Sequence[str | os.PathLike[str]], model: str | os.PathLike[str] = "alex-st", *,
                 against: Sequence[str | os.PathLike[str]] | None = None, workers: int = 1,
                 threads: int | None = 1, providers: str | Sequence[str] = "auto",
                 resize: int | tuple[int, int] | None = None, max_pixels: int = images.DEFAULT_MAX_PIXELS,
                 models_dir: str | os.PathLike[str] | None = None, block: int = head.BLOCK, chunk: int | None = None,
                 out: np.ndarray | None = None, cpus_per_task: float = 1,
                 progress: Callable[[str, int, int], None] | None = None) -> MatrixResult:
    """The distance matrix of ``images_`` (paths readable on every node) on the connected Ray cluster: ``[N, N]``
    (each unordered pair once, zero diagonal, exactly symmetric), or ``[M, N]`` against ``against``. Equal to
    ``Scorer(model).matrix(...)`` bit for bit on CPU with the same ``block``. ``progress(stage, done, total)``
    is called as chunks ("features") and blocks ("blocks") finish."""
    ray = require_ray()
    from ..engine.model_files import resolve_model

    pair_path = resolve_model(model, [models_dir] if models_dir else [])
    feat_path = features_path(pair_path, ModelSpec.from_file_name(pair_path.name),
                              [Path(models_dir)] if models_dir else [])
    if isinstance(resize, int):
        resize = (resize, resize)
    spec = _WorkerSpec(ModelPayload.put(feat_path), providers, threads, tuple(resize) if resize else None,
                       max_pixels)
    row_names = [str(p) for p in images_]
    col_names = [str(p) for p in against] if against is not None else []
    chunk = chunk or block
    # chunks never mix the two sets: rows' chunks first, then the columns'
    chunks = [row_names[i:i + chunk] for i in range(0, len(row_names), chunk)]
    n_row_chunks = len(chunks)
    chunks += [col_names[i:i + chunk] for i in range(0, len(col_names), chunk)]
    result = MatrixResult([], None, np.zeros((0, 0), np.float32))

    # 1. features, in actors; a chunk is submitted again until it comes back
    start = time.perf_counter()
    actor_cls = ray.remote(num_cpus=threads or 1, max_restarts=-1, max_task_retries=-1)(_FeatureWorker)
    actors = [actor_cls.remote(spec) for _ in range(max(1, min(workers, len(chunks))))]
    pending: dict[Any, tuple[int, Any]] = {}

    def submit_chunk(k: int) -> None:
        meta_ref, rows_ref = actors[k % len(actors)].chunk.options(num_returns=2).remote(chunks[k])
        pending[meta_ref] = (k, rows_ref)

    for k in range(len(chunks)):
        submit_chunk(k)
    rows_refs: dict[int, Any] = {}
    metas: dict[int, dict] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        k, rows_ref = pending.pop(done[0])
        try:
            meta, data = ray.get(done[0]), ray.get(rows_ref)
        except Exception:  # noqa: BLE001 - a lost actor or object: compute the chunk again
            result.chunk_retries += 1
            submit_chunk(k)
            continue
        metas[k], rows_refs[k] = meta, ray.put(data)  # owned by the driver: survives worker nodes
        if progress is not None:
            progress("features", len(metas), len(chunks))
    for actor in actors:
        ray.kill(actor)
    result.feature_seconds = time.perf_counter() - start

    # the good images, in input order, and where each one's row lives
    row_loc: list[tuple[str, int, int]] = []
    col_loc: list[tuple[str, int, int]] | None = [] if against is not None else None
    shapes = None
    sizes: dict[tuple[int, int], list[str]] = {}
    for k in range(len(chunks)):
        meta = metas[k]
        result.failed += [(str(a), str(b)) for a, b in meta["failed"]]
        shapes = shapes or meta["shapes"]
        for j, (name, size) in enumerate(zip(meta["names"], meta["sizes"], strict=True)):
            (row_loc if k < n_row_chunks else col_loc).append((name, k, j))  # type: ignore[union-attr]
            sizes.setdefault(tuple(size), []).append(name)
    if len(sizes) > 1:
        first = next(iter(sizes))
        others = "; ".join(f"{h}x{w}: {', '.join(n[:3])}" for (h, w), n in list(sizes.items())[1:])
        raise ImageSizeError(", ".join(n for ns in list(sizes.values())[1:] for n in ns[:5]),
                             f"a distance matrix needs one image size; {first[0]}x{first[1]} first, others are "
                             f"{others} (HxW)", resize=True)
    if shapes is None or not row_loc or col_loc == []:
        raise StlpipsError("no image could be read: nothing to compare")
    model_meta = FeatureModel.from_metadata(feat_path, _metadata(feat_path), spec.features.sha256)
    layout = FeatureLayout(model_meta.channels, tuple(tuple(s) for s in shapes))
    weights_ref = ray.put(layout.weight_vector(model_meta.weights))

    # 2. blocks as tasks
    start = time.perf_counter()
    m = len(row_loc)
    n = m if col_loc is None else len(col_loc)
    matrix = np.zeros((m, n), dtype=np.float32) if out is None else out
    todo = head.tasks(m, None if col_loc is None else n, block)
    block_fn = ray.remote(num_cpus=cpus_per_task, max_retries=0)(_block_task)

    def submit(t: head.Task) -> Any:
        refs: list[Any] = []
        index: dict[int, int] = {}

        def pieces(loc: list[tuple[str, int, int]], sl: slice) -> list[tuple[int, int, int]]:
            out_pieces: list[tuple[int, int, int]] = []
            for _, k, j in loc[sl]:
                if k not in index:
                    index[k] = len(refs)
                    refs.append(rows_refs[k])
                slot = index[k]
                if out_pieces and out_pieces[-1][0] == slot and out_pieces[-1][2] == j:
                    out_pieces[-1] = (slot, out_pieces[-1][1], j + 1)
                else:
                    out_pieces.append((slot, j, j + 1))
            return out_pieces

        rp = pieces(row_loc, t.rows)
        cp = [] if t.same else pieces(col_loc if col_loc is not None else row_loc, t.cols)
        return block_fn.remote(weights_ref, t.same, rp, cp, *refs)

    running = {submit(t): t for t in todo}
    attempts = {(t.rows.start, t.cols.start): 1 for t in todo}
    kept: set[tuple[int, int]] = set()
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        t = running.pop(done[0])
        key = (t.rows.start, t.cols.start)
        try:
            values, node = ray.get(done[0])
        except ray.exceptions.RayTaskError:  # the block itself failed: running it again fails again
            raise
        except ray.exceptions.RayError as exc:  # its worker or node died (or an object it read was lost)
            if attempts[key] >= MAX_BLOCK_ATTEMPTS:
                raise StlpipsError(f"block at rows {t.rows.start}, columns {t.cols.start} was lost "
                                   f"{attempts[key]} times ({type(exc).__name__}); the cluster is losing workers "
                                   "faster than it can score") from exc
            attempts[key] += 1
            result.block_retries += 1
            running[submit(t)] = t
            continue
        if key in kept:
            continue
        kept.add(key)
        result.block_nodes[key] = node
        matrix[t.rows, t.cols] = values
        if col_loc is None and not t.same:
            matrix[t.cols, t.rows] = values.T
        result.blocks_done += 1
        if progress is not None:
            progress("blocks", result.blocks_done, len(todo))
    result.head_seconds = time.perf_counter() - start
    result.rows = [name for name, _, _ in row_loc]
    result.cols = None if col_loc is None else [name for name, _, _ in col_loc]
    result.matrix, result.blocks = matrix, len(todo)
    return result


def _metadata(path: Path) -> dict[str, str]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


def main_ray(files: list[Path], others: list[Path] | None, output: Path | None, params: dict[str, Any],
             cache: Path | None) -> tuple[list[str], list[str] | None, np.ndarray, list[tuple[str, str]], str]:
    """The ``--matrix --engine ray`` branch of ``stlpips-score``: (rows, cols, matrix, failures, where)."""
    import click

    from ..io.progress import Progress
    from .ray_env import cluster

    if cache is not None and params.get("cache_dir"):
        click.echo("stlpips-score: note: --cache-dir is not used with --engine ray (features stay in the object store)",
                   err=True)
    try:
        require_ray()
    except ImportError as exc:
        raise click.UsageError(str(exc)) from None
    workers, threads = params["workers"], params["threads"] or 1
    bars: dict[str, Progress] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = Progress(total, enabled=not params["quiet"], unit=f"{stage[:-1]} chunks"
                                   if stage == "features" else "blocks")
        bars[stage].update(done)

    out = None
    with cluster(params["address"], workers * threads, params["quiet"]):
        try:
            result = score_matrix([str(f) for f in files], params["model"],
                                  against=[str(f) for f in others] if others is not None else None,
                                  workers=workers, threads=threads, providers=params["providers"],
                                  resize=params["resize"], models_dir=params["models_dir"], progress=progress,
                                  out=out)
        except StlpipsError as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            for bar in bars.values():
                bar.close()
    if output is not None and output.suffix.lower() == ".npy":
        np.save(output, result.matrix)
        output.with_suffix(".rows.txt").write_text("".join(f"{n}\n" for n in result.rows))
        if result.cols is not None:
            output.with_suffix(".cols.txt").write_text("".join(f"{n}\n" for n in result.cols))
    where = (f"on Ray ({workers} worker(s); features {result.feature_seconds:.1f}s, {result.blocks} blocks "
             f"{result.head_seconds:.1f}s)")
    return result.rows, result.cols, result.matrix, result.failed, where
