"""The head for many pairs at once: blocked, vectorised, exact to float32 and exactly symmetric.

For images a, b with feature rows ``fa``, ``fb`` (float32, :class:`~.features.FeatureSet`) and the head's
per-element weights ``w`` (``w_{l,c} / (H_l W_l)``, float64)::

    d(a, b) = sum_k w_k (fa_k - fb_k)^2 = |xa|^2 + |xb|^2 - 2 xa . xb,   x = f * sqrt(w)   (Gram form)

**The arithmetic of an entry** is fixed by two constants and nothing else: the matrix is cut into blocks of
:data:`BLOCK` x :data:`BLOCK` images, and a block's Gram products are summed over chunks of :data:`K_CHUNK`
values, one float64 matrix product (BLAS) per block and chunk, in chunk order; each image's norm ``|x|^2`` is
summed the same way (:func:`row_norms`). ``x`` is the float32 features times ``sqrt(w)`` in float64 (one
rounding per element, the same wherever it is computed). Where a result is small against the norms
(``d < RECOMPUTE_BELOW * (|xa|^2 + |xb|^2)``: near-duplicates, identical images) the pair is recomputed in the
direct form (float32 difference, as the pair graph takes it, squared and weighted in float64), so no digits are
lost to cancellation and identical features give exactly 0. Results are rounded to float32, as the pair graph's
``dist``. So the local run and the Ray run (stlpips_rt.scale.matrix, one block per task) agree bit for bit on one
BLAS, whatever the threads.

**Where the time goes.** A pair costs ``2 D`` flops in the products (``D`` values per image; diagonal blocks use
the symmetric product, half the work), and converting a chunk of features to float64 costs about as much per
value as a block's product does per 20 to 40 images. So the local run converts rows once per *group*
(:data:`GROUP` images a side: all its blocks' products reuse the converted chunk) rather than once per block,
and splits each chunk's conversions and block products across ``threads`` threads, each with a one-thread BLAS
(``threadpoolctl``): on a shared 2-core machine OpenBLAS's own two threads ran 8x slower than one
(docs/matrix.md). The group is a unit of work only: it does not change a bit.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

#: images a side of a block (a product of 256 x 2,048 values ran at 45 GFLOP/s per CPU second where a 1,024-wide
#: one ran at 49 and a 128-wide one at 37-40: OpenBLAS 0.3.31 on Zen 4, one thread)
BLOCK = 256
#: values per product; with BLOCK, all that fixes an entry's arithmetic
K_CHUNK = 2048
#: images a side of the local run's unit of work (converted chunks reused by all its blocks; no effect on the bits)
GROUP = 1024
RECOMPUTE_BELOW = 1e-4
#: rows converted at once by :func:`row_norms`
NORM_ROWS = 256

Progress = Callable[[int], None]  # called with the number of pairs just finished


def sqrt_weights(weights: np.ndarray) -> np.ndarray:
    return np.sqrt(np.asarray(weights, dtype=np.float64))


def _chunks(dim: int) -> Iterator[tuple[int, int]]:
    for start in range(0, dim, K_CHUNK):
        yield start, min(dim, start + K_CHUNK)


def _scaled(src: np.ndarray, k0: int, k1: int, sw: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """``float64(src[:, k0:k1]) * sw[k0:k1]`` written into ``buf`` (rows of :data:`K_CHUNK`), returned as the
    view ``buf[:len(src), :k1 - k0]``: every caller hands BLAS the same layout."""
    view = buf[:len(src), :k1 - k0]
    view[...] = src[:, k0:k1]
    view *= sw[k0:k1]
    return view


def row_norms(rows: np.ndarray, sw: np.ndarray) -> np.ndarray:
    """``|x|^2`` of every row, float64, summed chunk by chunk (each row's value depends on that row alone)."""
    out = np.zeros(len(rows))
    buf = np.empty((min(len(rows), NORM_ROWS), K_CHUNK))
    for r0 in range(0, len(rows), NORM_ROWS):
        part = np.asarray(rows[r0:r0 + NORM_ROWS])
        for k0, k1 in _chunks(len(sw)):
            x = _scaled(part, k0, k1, sw, buf)
            out[r0:r0 + len(part)] += np.einsum("ij,ij->i", x, x)
    return out


def direct(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    """One pair in the direct form: float32 difference, squared and weighted in float64 (pairwise summation)."""
    total = 0.0
    for k0, k1 in _chunks(len(weights)):
        diff = (np.asarray(x[k0:k1], dtype=np.float32) - np.asarray(y[k0:k1], dtype=np.float32)).astype(np.float64)
        total += float((diff * diff * weights[k0:k1]).sum())
    return total


def _finish(gram: np.ndarray, na: np.ndarray, nb: np.ndarray, a: np.ndarray, b: np.ndarray | None,
            weights: np.ndarray) -> np.ndarray:
    """A block's float32 distances from its Gram products and norms (``b=None``: a diagonal block)."""
    same = b is None
    scale = na[:, None] + nb[None, :]
    d = scale - 2.0 * gram
    close = d < RECOMPUTE_BELOW * scale
    if same:
        close &= np.triu(np.ones(close.shape, dtype=bool), 1)
    other = a if same else b
    for i, j in zip(*np.nonzero(close), strict=True):
        d[i, j] = direct(a[i], other[j], weights)
    out = np.maximum(d, 0.0).astype(np.float32)
    if same:
        upper = np.triu(out, 1)
        out = upper + upper.T
    return out


def block(a: np.ndarray, b: np.ndarray | None, weights: np.ndarray, sw: np.ndarray | None = None) -> np.ndarray:
    """Distances float32 ``[len(a), len(b)]`` between the feature rows ``a`` and ``b`` (at most :data:`BLOCK` each
    for the same bits as a matrix cut by :data:`BLOCK`); ``b=None``: ``a`` against itself (zero diagonal, exactly
    symmetric)."""
    sw = sqrt_weights(weights) if sw is None else sw
    same = b is None
    na = row_norms(a, sw)
    nb = na if same else row_norms(b, sw)
    gram = np.zeros((len(a), len(na) if same else len(b)))
    bufa = np.empty((len(a), K_CHUNK))
    bufb = None if same else np.empty((len(b), K_CHUNK))
    for k0, k1 in _chunks(len(weights)):
        xa = _scaled(a, k0, k1, sw, bufa)
        gram += xa @ (xa if same else _scaled(b, k0, k1, sw, bufb)).T
    return _finish(gram, na, nb, a, b, weights)


def pair_distances(fa: Sequence[np.ndarray], fb: Sequence[np.ndarray], weights: Sequence[np.ndarray]) -> np.ndarray:
    """The head on per-layer features ``[N0, C_l, H_l, W_l]`` and ``[N1, ...]`` (N0 == N1, or either 1), pair by
    pair in the direct form: float32 ``[N]``, what the pair graph's ``dist`` is. Used by the export gate."""
    n = max(len(fa[0]), len(fb[0]))
    out = np.zeros(n)
    for x, y, w in zip(fa, fb, weights, strict=True):
        diff = (np.asarray(x, np.float32) - np.asarray(y, np.float32)).astype(np.float64)
        h, w_ = diff.shape[2:]
        per_channel = np.broadcast_to(diff * diff, (n, *diff.shape[1:])).sum(axis=(2, 3))
        out += (per_channel * np.asarray(w, np.float64)[None, :]).sum(axis=1) / (h * w_)
    return out.astype(np.float32)


@dataclass(frozen=True)
class Task:
    """One block: rows ``rows`` (of a) against ``cols`` (of b, or of a again when ``same``), as slices."""

    rows: slice
    cols: slice
    same: bool

    @property
    def pairs(self) -> int:
        m = self.rows.stop - self.rows.start
        return m * (m - 1) // 2 if self.same else m * (self.cols.stop - self.cols.start)


def tasks(n: int, m: int | None = None, block: int = BLOCK) -> list[Task]:
    """The blocks of an ``n x n`` matrix (``m=None``: each unordered pair once, ``i <= j`` blocks) or an
    ``n x m`` one, row block by row block, ``block`` images a side."""
    rows = [slice(s, min(n, s + block)) for s in range(0, n, block)]
    if m is None:
        return [Task(r, c, r == c) for i, r in enumerate(rows) for c in rows[i:]]
    cols = [slice(s, min(m, s + block)) for s in range(0, m, block)]
    return [Task(r, c, False) for r in rows for c in cols]


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while blocks run in parallel threads: on 2 cores OpenBLAS's own threading ran the
    block products 8x slower than one thread per block (docs/matrix.md)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class _Group:
    """The blocks ``todo`` whose rows lie in ``rows`` (``a[r0:r1]``) and columns in ``cols`` (``None``: the rows
    themselves, a group on the diagonal), computed together.

    Chunks are taken ``threads`` at a time: each chunk's rows (and columns) are converted to float64 once, with
    their norms, then every (block, chunk) product runs, all spread over the pool; each block then adds its
    products, and each row its norms, in chunk order, as :func:`block` does."""

    def __init__(self, rows: np.ndarray, r0: int, cols: np.ndarray | None, c0: int, todo: Sequence[Task]) -> None:
        self.rows, self.r0, self.cols, self.c0, self.todo = rows, r0, cols, c0, list(todo)

    def run(self, weights: np.ndarray, sw: np.ndarray, pool: ThreadPoolExecutor | None,
            threads: int) -> Iterator[tuple[Task, np.ndarray]]:
        rows, cols, todo = self.rows, self.cols, self.todo
        sources = [rows] if cols is None else [rows, cols]
        slots = max(1, threads)
        bufs = [[np.empty((len(src), K_CHUNK)) for src in sources] for _ in range(slots)]
        norms = [np.zeros(len(src)) for src in sources]
        grams = [np.zeros((t.rows.stop - t.rows.start, t.cols.stop - t.cols.start)) for t in todo]
        pieces = [(slice(t.rows.start - self.r0, t.rows.stop - self.r0),
                   slice(t.cols.start - self.c0, t.cols.stop - self.c0)) for t in todo]

        def each(fn: Callable[..., np.ndarray], items: list) -> list[np.ndarray]:
            return [fn(*item) for item in items] if pool is None else list(pool.map(lambda item: fn(*item), items))

        def convert(j: int, i: int, k0: int, k1: int) -> np.ndarray:
            x = _scaled(sources[i], k0, k1, sw, bufs[j][i])
            return np.einsum("ij,ij->i", x, x)

        def product(j: int, n: int, width: int) -> np.ndarray:
            ri, ci = pieces[n]
            x = bufs[j][0][ri, :width]
            return x @ (x if todo[n].same else bufs[j][-1][ci, :width]).T

        chunks = list(_chunks(len(sw)))
        for first in range(0, len(chunks), slots):
            batch = chunks[first:first + slots]
            found = each(convert, [(j, i, k0, k1) for j, (k0, k1) in enumerate(batch) for i in range(len(sources))])
            products = each(product, [(j, n, k1 - k0) for j, (k0, k1) in enumerate(batch) for n in range(len(todo))])
            for j in range(len(batch)):  # in chunk order
                for i in range(len(sources)):
                    norms[i] += found[j * len(sources) + i]
                for n in range(len(todo)):
                    grams[n] += products[j * len(todo) + n]
        for t, gram, (ri, ci) in zip(todo, grams, pieces, strict=True):
            a = np.asarray(rows[ri])
            b = None if t.same else np.asarray(sources[-1][ci])
            na = norms[0][ri]
            yield t, _finish(gram, na, na if t.same else norms[-1][ci], a, b, weights)


def groups(todo: Sequence[Task], block_size: int = BLOCK, group: int = GROUP) -> dict[tuple[int, int], list[Task]]:
    """``todo`` by (row group, column group) of ``group`` images a side (a multiple of ``block_size``), column
    group after column group."""
    side = max(block_size, group // block_size * block_size)
    by: dict[tuple[int, int], list[Task]] = {}
    for t in todo:
        by.setdefault((t.rows.start // side, t.cols.start // side), []).append(t)
    return dict(sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])))


def run_tasks(a: np.ndarray, b: np.ndarray | None, weights: np.ndarray, out: np.ndarray, threads: int = 1,
              panel_rows: int | None = None, progress: Progress | None = None,
              todo: Sequence[Task] | None = None, block_size: int = BLOCK, group: int = GROUP) -> np.ndarray:
    """Fill ``out`` (``[N, N]`` when ``b`` is None, else ``[N, M]``) block by block with ``threads`` threads.

    ``panel_rows`` bounds the rows of ``a`` held in memory at once (features on disk: ``a`` a memmap); the
    columns are read once per panel. None: everything at once. ``block_size``: images a block side (the same
    blocks give the same bits, here and on Ray). ``group``: images a side of the unit of work (no effect on the
    numbers)."""
    n = len(a)
    todo = list(todo) if todo is not None else tasks(n, None if b is None else len(b), block_size)
    if not todo:
        return out
    sw = sqrt_weights(weights)
    threads = max(1, int(threads))
    side = max(block_size, group // block_size * block_size)
    panel = max(side, (panel_rows or n) // side * side)
    other = a if b is None else b
    lock = threading.Lock()
    with single_threaded_blas(), ThreadPoolExecutor(max_workers=threads) as executor:
        pool = executor if threads > 1 else None
        for p0 in range(0, n, panel):
            in_panel = [t for t in todo if p0 <= t.rows.start < p0 + panel]
            for part in groups(in_panel, block_size, group).values():
                r0, r1 = min(t.rows.start for t in part), max(t.rows.stop for t in part)
                c0, c1 = min(t.cols.start for t in part), max(t.cols.stop for t in part)
                diagonal = b is None and (r0, r1) == (c0, c1)
                rows = np.asarray(a[r0:r1])
                work = _Group(rows, r0, None if diagonal else np.asarray(other[c0:c1]), r0 if diagonal else c0, part)
                for task, values in work.run(weights, sw, pool, threads):
                    with lock:
                        out[task.rows, task.cols] = values
                        if b is None and not task.same:
                            out[task.cols, task.rows] = values.T
                        if progress is not None:
                            progress(task.pairs)
    return out


def pairwise(a: np.ndarray, weights: np.ndarray, out: np.ndarray | None = None, **kwargs: object) -> np.ndarray:
    """``[N, N]`` float32: every unordered pair once, zero diagonal, exactly symmetric."""
    n = len(a)
    out = np.zeros((n, n), dtype=np.float32) if out is None else out
    if n:
        for i in range(n):
            out[i, i] = 0.0
    return run_tasks(a, None, weights, out, **kwargs)  # type: ignore[arg-type]


def cross(a: np.ndarray, b: np.ndarray, weights: np.ndarray, out: np.ndarray | None = None,
          **kwargs: object) -> np.ndarray:
    """``[M, N]`` float32: every row of ``a`` against every row of ``b``."""
    out = np.zeros((len(a), len(b)), dtype=np.float32) if out is None else out
    return run_tasks(a, b, weights, out, **kwargs)  # type: ignore[arg-type]


def top_k(matrix: np.ndarray, k: int, exclude_self: bool = False, rows: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``[M, k]`` (int64) and distances ``[M, k]`` of each row's ``k`` smallest entries, nearest first
    (ties: lower index first); ``exclude_self`` skips the diagonal (a matrix of a set against itself)."""
    m, n = matrix.shape
    k = min(k, n - 1 if exclude_self else n)
    index = np.zeros((m, max(k, 0)), dtype=np.int64)
    dist = np.zeros((m, max(k, 0)), dtype=np.float32)
    if k <= 0:
        return index, dist
    for r0 in range(0, m, rows):
        chunk = np.array(matrix[r0:r0 + rows], dtype=np.float32)
        if exclude_self:
            for i in range(len(chunk)):
                chunk[i, r0 + i] = np.inf
        order = np.argsort(chunk, axis=1, kind="stable")[:, :k]
        index[r0:r0 + len(chunk)] = order
        dist[r0:r0 + len(chunk)] = np.take_along_axis(chunk, order, axis=1)
    return index, dist


def under(matrix: np.ndarray, threshold: float, symmetric: bool, rows: int = 1024) -> tuple[np.ndarray, ...]:
    """``(i, j, distance)`` of the entries below ``threshold`` (``symmetric``: each unordered pair once, i < j)."""
    found_i, found_j, found_d = [], [], []
    for r0 in range(0, len(matrix), rows):
        chunk = np.asarray(matrix[r0:r0 + rows])
        mask = chunk < threshold
        if symmetric:
            mask &= np.arange(chunk.shape[1])[None, :] > (np.arange(len(chunk)) + r0)[:, None]
        i, j = np.nonzero(mask)
        found_i.append(i + r0)
        found_j.append(j)
        found_d.append(chunk[i, j])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
