"""Images -> a :class:`FeatureSet`: images of one size stacked into batches where that cannot move a bit, runs
of the features graph side by side.

An image's features are a function of the image alone: identical images give exactly 0, and features from a
cache, another call or a Ray actor are the same bits. How that holds:

- **Batches only where the graph is batch invariant.** Features graphs exported with ``stlpips.features_batch =
  invariant`` (the export checks it on the onnxruntime CPU provider: each image's features the same bits alone or
  in a batch, any position) take up to :func:`images_per_run` images of one size per run on the CPU provider.
  Older graphs, and other providers (whose kernels may pick another algorithm for another batch size), run one
  image per run: in older graphs the channel sums of the normalisation took another order for a batch of one,
  moving the last bit (up to 1.2e-7 on alex-st 64x64).
- **Runs side by side, one thread each.** On the CPU provider ``workers`` runs go at once, each on one
  onnxruntime thread (the session is built with one intra-op thread): a 64x64 image has too little work per
  operator to split it across threads (alex-st, 2 shared cores: one image per run on 2 intra-op threads reached
  17.9 images/s, two one-thread runs side by side 41.1, the pair graph at batch 16 on 2 threads 30.2 images
  through its backbone, medians of 5 rounds, load average 7-12), and a one-thread run is the same bits
  whatever the machine's core count.

Past ``max_memory / 2`` of features, rows go to a memory-mapped file (``spill_dir``) instead of memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import FEATURES_INPUT
from ..errors import ImageSizeError, StlpipsError
from .features import FeatureLayout, FeatureSet, spill_file
from .model import FeatureModel

#: images ``[n, 3, H, W]`` float32 -> the per-layer features ``[n, C_l, H_l, W_l]``
RunFeatures = Callable[[np.ndarray], list[np.ndarray]]
#: each item: (name, loader) where loader() returns float32 ``[3, H, W]`` or raises a StlpipsError
Item = tuple[str, Callable[[], np.ndarray]]
#: a cached row and its image size for a name, or None; and storing one
CacheGet = Callable[[str], tuple[np.ndarray, tuple[int, int]] | None]
CachePut = Callable[[str, np.ndarray, tuple[int, int]], None]

#: pixels of one batched run: 16 images of 64x64, 64 of 32x32 (capped by MAX_BATCH), one of 256x256
BATCH_PIXELS = 1 << 16
MAX_BATCH = 32


def images_per_run(height: int, width: int) -> int:
    """How many images of ``height x width`` a batch-invariant features graph takes per run. Batches help small
    images (alex-st, one thread, 2 shared cores: 32x32 at 187 images/s in batches of 16 against 138 alone, 64x64
    60 against 53, 256x256 4.4 either way; medians of 7 rounds, load average 10-13)."""
    return max(1, min(MAX_BATCH, BATCH_PIXELS // max(1, height * width)))


@dataclass(frozen=True)
class Runner:
    """How images go through a features graph: ``run`` a stacked batch, ``batching`` (images of one size may
    share a run: a batch-invariant graph on the CPU provider) and ``workers`` runs at once."""

    run: RunFeatures
    batching: bool = False
    workers: int = 1


def session_runner(session: object, model: FeatureModel | None = None, workers: int = 1) -> Runner:
    """A :class:`Runner` over an onnxruntime session of ``model``'s features graph: batches when the graph says it
    is batch invariant and the session runs on the CPU provider; ``workers`` runs at once there (build the
    session with one intra-op thread), one elsewhere."""
    def run(x: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {FEATURES_INPUT: x})  # type: ignore[attr-defined]

    cpu = session.get_providers()[0] == "CPUExecutionProvider"  # type: ignore[attr-defined]
    invariant = model is not None and model.batch_invariant
    return Runner(run, batching=cpu and invariant, workers=max(1, int(workers)) if cpu else 1)


def rows_of(run: RunFeatures, images: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Feature rows float32 ``[n, D]`` of ``images`` ``[n, 3, H, W]`` in one run, and each layer's (H_l, W_l)."""
    outputs = run(np.ascontiguousarray(images, dtype=np.float32))
    rows = np.concatenate([np.asarray(o, dtype=np.float32).reshape(len(images), -1) for o in outputs], axis=1)
    return rows, [(int(o.shape[2]), int(o.shape[3])) for o in outputs]


@dataclass
class Failure:
    name: str
    error: str


@dataclass
class ExtractReport:
    computed: int = 0
    cached: int = 0
    failed: list[Failure] = field(default_factory=list)


def compute(runner: Runner, model: FeatureModel, items: Iterable[Item], count: int, max_memory: int,
            spill_dir: str | os.PathLike[str] | None = None, skip_errors: bool = False,
            cache: tuple[CacheGet, CachePut] | None = None, progress: Callable[[int], None] | None = None,
            ) -> tuple[FeatureSet, ExtractReport]:
    """Features of ``count`` items, in their order. An item that fails to load raises (``skip_errors=False``) or
    is left out and listed in the report. Images must share one size: the first image's; the others are named in
    one :class:`ImageSizeError` (after every item was read, so it names all of them). Items are read here, in
    order; the graph runs on ``runner.workers`` threads."""
    report = ExtractReport()
    data: np.ndarray | None = None
    spill: Path | None = None
    layout: FeatureLayout | None = None
    size: tuple[int, int] | None = None
    names: list[str] = []
    other_sizes: dict[tuple[int, int], list[str]] = {}
    batch: list[tuple[int, str, np.ndarray]] = []  # (row, name, image) waiting for a run
    per_run = 1
    running: set[Future] = set()

    def tick(done: int = 1) -> None:
        if progress is not None:
            progress(done)

    def run_batch(todo: list[tuple[int, str, np.ndarray]]) -> list[tuple[int, str, np.ndarray]]:
        rows, _ = rows_of(runner.run, np.stack([x for _, _, x in todo]))
        assert data is not None
        for (index, _, _), row in zip(todo, rows, strict=True):
            data[index] = row
        return todo

    def collect(futures: Iterable[Future]) -> None:
        for future in futures:
            done = future.result()
            report.computed += len(done)
            if cache is not None:
                assert data is not None
                for index, name, _ in done:
                    cache[1](name, np.array(data[index]), size)  # type: ignore[arg-type]
            tick(len(done))

    def submit() -> None:
        nonlocal batch, running
        if batch:
            running.add(pool.submit(run_batch, batch))
            batch = []
        while len(running) > 2 * runner.workers:  # bound the images held in memory
            done, running = wait(running, return_when=FIRST_COMPLETED)
            collect(done)

    with ThreadPoolExecutor(max_workers=runner.workers) as pool:
        try:
            for name, load in items:
                hit = cache[0](name) if cache is not None else None
                x = None
                if hit is not None:
                    row, hw = hit
                else:
                    try:
                        x = load()
                    except StlpipsError as exc:
                        if not skip_errors:
                            raise
                        report.failed.append(Failure(name, str(exc)))
                        tick()
                        continue
                    hw = (int(x.shape[1]), int(x.shape[2]))
                size = size or hw
                if hw != size or other_sizes:
                    if hw != size:
                        other_sizes.setdefault(hw, []).append(name)
                    tick()
                    continue  # only read the rest, to name every image of another size
                if layout is None:
                    _, shapes = rows_of(runner.run, np.zeros((1, 3, *size), dtype=np.float32))
                    layout = FeatureLayout(model.channels, tuple(shapes))
                    if count * layout.bytes_per_image > max_memory // 2:
                        data, spill = spill_file(spill_dir, count, layout.dim)
                    else:
                        data = np.empty((count, layout.dim), dtype=np.float32)
                    per_run = images_per_run(*size) if runner.batching else 1
                assert data is not None
                index = len(names)
                names.append(name)
                if x is not None:
                    batch.append((index, name, x))
                    if len(batch) >= per_run:
                        submit()
                    continue
                report.cached += 1
                if row.shape != (layout.dim,):
                    raise StlpipsError(f"{name}: cached features of {row.size} values, expected {layout.dim}; "
                                       "delete the cache folder")
                data[index] = row
                tick()
            if not other_sizes:
                submit()
        finally:
            batch = []
            done, running = wait(running), set()
        collect(done.done)
    if other_sizes:
        assert size is not None
        described = "; ".join(f"{h}x{w}: {', '.join(n[:3])}{' and more' if len(n) > 3 else ''} ({len(n)})"
                              for (h, w), n in other_sizes.items())
        raise ImageSizeError(", ".join(n for ns in other_sizes.values() for n in ns[:5]),
                             f"a distance matrix needs one image size; the first image ({names[0] if names else '?'})"
                             f" is {size[0]}x{size[1]}, others are {described} (HxW)", resize=True)
    if layout is None or data is None or size is None:
        raise StlpipsError("no image could be read: nothing to compare" if report.failed else "no images given")
    features = FeatureSet(data[:len(names)], names, size, layout, model.weights, model.sha256, model.name, spill)
    return features, report
