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

Past ``max_memory / 2`` of features, rows go to a memory-mapped file (``spill_dir``) instead of memory. Rows in
memory come from the runner's :class:`~.features.RowsPool`: the memory of a call's FeatureSet, once it is dropped,
serves the next call without the kernel zeroing it again.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import FEATURES_INPUT
from ..errors import ImageSizeError, StlpipsError
from .features import FeatureLayout, FeatureSet, RowsPool, spill_file
from .model import FeatureModel

#: each item: (name, loader) where loader() returns float32 ``[3, H, W]`` or raises a StlpipsError
Item = tuple[str, Callable[[], np.ndarray]]
#: a cached row and its image size for a name, or None; storing one; and the entry a name is stored under (None:
#: not cacheable), so that an image given twice in one call is computed once
CacheGet = Callable[[str], tuple[np.ndarray, tuple[int, int]] | None]
CachePut = Callable[[str, np.ndarray, tuple[int, int]], None]
CacheKey = Callable[[str], str | None]

#: pixels of one batched run: 16 images of 64x64, 64 of 32x32 (capped by MAX_BATCH), one of 256x256
BATCH_PIXELS = 1 << 16
MAX_BATCH = 32


def images_per_run(height: int, width: int) -> int:
    """How many images of ``height x width`` a batch-invariant features graph takes per run. Batches help small
    images (alex-st, one thread, 2 shared cores: 32x32 at 187 images/s in batches of 16 against 138 alone, 64x64
    60 against 53, 256x256 4.4 either way; medians of 7 rounds, load average 10-13)."""
    return max(1, min(MAX_BATCH, BATCH_PIXELS // max(1, height * width)))


class Runner:
    """How images go through a features graph (an onnxruntime session): :meth:`write` runs a stacked batch and
    puts each image's row into an array; ``batching``: images of one size may share a run (a batch-invariant
    graph on the CPU provider); ``workers``: runs at once (threads).

    :meth:`write` binds the graph's outputs to buffers it keeps for the next run (onnxruntime IOBinding) and
    copies them into the rows, rather than taking fresh output arrays each run: fresh arrays cost their
    allocation and page faults, about a quarter of a 64x64 image's time (alex-st, one thread, batches of 16: 137
    images per CPU second with fresh outputs copied into rows, 173 with bound ones, 179 running the graph alone;
    the pair graph 169)."""

    def __init__(self, session: object, batching: bool = False, workers: int = 1) -> None:
        self.session, self.batching, self.workers = session, batching, max(1, int(workers))
        self._lock = threading.Lock()
        self._shapes: dict[tuple[int, int], list[tuple[int, ...]]] = {}  # (H, W) -> each output's [C_l, H_l, W_l]
        self._free: dict[tuple[int, ...], list[tuple[object, list[np.ndarray]]]] = {}  # idle bindings by input
        self._pool: ThreadPoolExecutor | None = None
        self.rows = RowsPool()  # the in-memory rows of each call, given back when its FeatureSet is gone

    def submit(self, fn: Callable[..., object], *args: object) -> Future:
        """``fn(*args)`` on one of ``workers`` threads kept from call to call, so that the per-thread working
        buffers of onnxruntime's kernels are not allocated again for every ``Scorer.features`` call."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="stlpips-features")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            return self._pool.submit(fn, *args)

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """The per-layer features ``[n, C_l, H_l, W_l]`` of ``images`` ``[n, 3, H, W]``, in new arrays."""
        return self.session.run(None, {FEATURES_INPUT: images})  # type: ignore[attr-defined]

    def output_shapes(self, height: int, width: int) -> list[tuple[int, ...]]:
        """Each output's ``(C_l, H_l, W_l)`` for images of ``height x width`` (one run of a blank image, once)."""
        with self._lock:
            known = self._shapes.get((height, width))
        if known is None:
            known = [o.shape[1:] for o in self.run(np.zeros((1, 3, height, width), np.float32))]
            with self._lock:
                self._shapes[(height, width)] = known
        return known

    def _take(self, shape: tuple[int, ...]) -> tuple[object, list[np.ndarray]]:
        with self._lock:
            idle = self._free.get(shape)
            if idle:
                return idle.pop()
        outputs = [np.empty((shape[0], *s), np.float32) for s in self.output_shapes(shape[2], shape[3])]
        binding = self.session.io_binding()  # type: ignore[attr-defined]
        for meta, out in zip(self.session.get_outputs(), outputs, strict=True):  # type: ignore[attr-defined]
            binding.bind_output(meta.name, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        return binding, outputs

    def _give_back(self, shape: tuple[int, ...], bound: tuple[object, list[np.ndarray]]) -> None:
        with self._lock:
            if shape not in self._free and len(self._free) >= 4:  # full batches and a shorter last one
                self._free.clear()
            idle = self._free.setdefault(shape, [])
            if len(idle) < self.workers:
                idle.append(bound)

    def write(self, images: np.ndarray, dest: np.ndarray, rows: list[int]) -> None:
        """Run ``images`` ``[n, 3, H, W]`` once and write image i's features (every layer, flattened, in layer
        order) into ``dest[rows[i]]``."""
        x = np.ascontiguousarray(images, dtype=np.float32)
        binding, outputs = bound = self._take(x.shape)
        try:
            binding.bind_cpu_input(FEATURES_INPUT, x)  # type: ignore[attr-defined]
            self.session.run_with_iobinding(binding)  # type: ignore[attr-defined]
            start, index = 0, rows if len(rows) > 1 else rows[0]
            for out in outputs:
                size = out[0].size
                dest[index, start:start + size] = out.reshape(len(x), size) if len(rows) > 1 else out.reshape(size)
                start += size
        finally:
            self._give_back(x.shape, bound)


def session_runner(session: object, model: FeatureModel | None = None, workers: int = 1) -> Runner:
    """A :class:`Runner` over an onnxruntime session of ``model``'s features graph: batches when the graph says it
    is batch invariant and the session runs on the CPU provider; ``workers`` runs at once there (build the
    session with one intra-op thread), one elsewhere."""
    cpu = session.get_providers()[0] == "CPUExecutionProvider"  # type: ignore[attr-defined]
    invariant = model is not None and model.batch_invariant
    return Runner(session, batching=cpu and invariant, workers=workers if cpu else 1)


def layer_shapes(runner: Runner, height: int, width: int) -> list[tuple[int, int]]:
    """Each layer's (H_l, W_l) for images of ``height x width``."""
    return [(int(s[1]), int(s[2])) for s in runner.output_shapes(height, width)]


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
            cache: tuple[CacheGet, CachePut, CacheKey] | None = None, progress: Callable[[int], None] | None = None,
            ) -> tuple[FeatureSet, ExtractReport]:
    """Features of ``count`` items, in their order. An item that fails to load raises (``skip_errors=False``) or
    is left out and listed in the report. Images must share one size: the first image's; the others are named in
    one :class:`ImageSizeError` (after every item was read, so it names all of them). Items are read here, in
    order; the graph runs on ``runner.workers`` threads. With a cache, an image whose entry is already being computed
    in this call (the same content under another name) is copied from it once it is done, and counted as cached."""
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
    first_row: dict[str, int] = {}  # cache entry -> the row computing it in this call
    copies: list[tuple[int, int]] = []  # (row, row it copies) for images given twice

    def tick(done: int = 1) -> None:
        if progress is not None:
            progress(done)

    def run_batch(todo: list[tuple[int, str, np.ndarray]]) -> list[tuple[int, str, np.ndarray]]:
        assert data is not None
        runner.write(np.stack([x for _, _, x in todo]), data, [index for index, _, _ in todo])
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
            running.add(runner.submit(run_batch, batch))
            batch = []
        while len(running) > 2 * runner.workers:  # bound the images held in memory
            done, running = wait(running, return_when=FIRST_COMPLETED)
            collect(done)

    try:
        for name, load in items:
            key = cache[2](name) if cache is not None else None
            if key is not None and key in first_row:
                copies.append((len(names), first_row[key]))
                names.append(name)
                report.cached += 1
                tick()
                continue
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
                layout = FeatureLayout(model.channels, tuple(layer_shapes(runner, *size)))
                if count * layout.bytes_per_image > max_memory // 2:
                    data, spill = spill_file(spill_dir, count, layout.dim)
                else:
                    data = runner.rows.take(count, layout.dim)
                per_run = images_per_run(*size) if runner.batching else 1
            assert data is not None
            index = len(names)
            names.append(name)
            if x is not None:
                if key is not None:
                    first_row[key] = index
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
    if data is not None:
        for index, source in copies:
            data[index] = data[source]
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
