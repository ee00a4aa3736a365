"""The head for many pairs at once: blocked, vectorised, exact to float32 and exactly symmetric.

For images a, b with feature rows ``fa``, ``fb`` (float32, :class:`~.features.FeatureSet`) and the head's
per-element weights ``w`` (``w_{l,c} / (H_l W_l)``, float64)::

    d(a, b) = sum_k w_k (fa_k - fb_k)^2 = |xa|^2 + |xb|^2 - 2 xa . xb,   x = f * sqrt(w)   (Gram form)

Blocks of :data:`BLOCK` x :data:`BLOCK` images are computed in the Gram form in float64 (one DGEMM per
:data:`K_CHUNK` values, float32 features converted chunk by chunk), which costs a few percent of the direct
difference's time. Where a result is small against the norms (``d < RECOMPUTE_BELOW * (|xa|^2 + |xb|^2)``:
near-duplicates, identical images) the pair is recomputed in the direct form (float32 difference, as the pair graph
takes it, squared and weighted in float64), so no digits are lost to cancellation and identical features give
exactly 0. Results are rounded to float32, as the pair graph's ``dist``.

Exactness across machines and engines: a block's numbers depend only on its rows and on :data:`BLOCK` and
:data:`K_CHUNK` (fixed here), so the local run and the Ray run (stlpips_rt.scale.matrix), which cut the matrix into
the same blocks, agree bit for bit on one BLAS. Each block runs with a single-threaded BLAS (``threadpoolctl``)
and blocks run in parallel threads: on a shared 2-core machine OpenBLAS's own two threads ran 8x
slower than one (docs/matrix.md).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

BLOCK = 128
K_CHUNK = 1 << 15
RECOMPUTE_BELOW = 1e-4

Progress = Callable[[int], None]  # called with the number of pairs just finished


def sqrt_weights(weights: np.ndarray) -> np.ndarray:
    return np.sqrt(np.asarray(weights, dtype=np.float64))


def _chunks(dim: int) -> Iterator[tuple[int, int]]:
    for start in range(0, dim, K_CHUNK):
        yield start, min(dim, start + K_CHUNK)


def direct(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    """One pair in the direct form: float32 difference, squared and weighted in float64 (pairwise summation)."""
    total = 0.0
    for k0, k1 in _chunks(len(weights)):
        diff = (np.asarray(x[k0:k1], dtype=np.float32) - np.asarray(y[k0:k1], dtype=np.float32)).astype(np.float64)
        total += float((diff * diff * weights[k0:k1]).sum())
    return total


def block(a: np.ndarray, b: np.ndarray | None, weights: np.ndarray, sw: np.ndarray | None = None) -> np.ndarray:
    """Distances float32 ``[len(a), len(b)]`` between the feature rows ``a`` and ``b``; ``b=None``: ``a`` against
    itself (zero diagonal, exactly symmetric)."""
    sw = sqrt_weights(weights) if sw is None else sw
    same = b is None
    m, n = len(a), len(a) if same else len(b)
    gram = np.zeros((m, n))
    na, nb = np.zeros(m), np.zeros(n)
    for k0, k1 in _chunks(len(weights)):
        xa = np.asarray(a[:, k0:k1], dtype=np.float64) * sw[k0:k1]
        na += (xa * xa).sum(axis=1)
        if same:
            gram += xa @ xa.T
        else:
            xb = np.asarray(b[:, k0:k1], dtype=np.float64) * sw[k0:k1]
            nb += (xb * xb).sum(axis=1)
            gram += xa @ xb.T
    if same:
        nb = na
    scale = na[:, None] + nb[None, :]
    d = scale - 2.0 * gram
    close = d < RECOMPUTE_BELOW * scale
    if same:
        close &= np.triu(np.ones((m, m), dtype=bool), 1)
    other = a if same else b
    for i, j in zip(*np.nonzero(close), strict=True):
        d[i, j] = direct(a[i], other[j], weights)
    out = np.maximum(d, 0.0).astype(np.float32)
    if same:
        upper = np.triu(out, 1)
        out = upper + upper.T
    return out


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


def run_tasks(a: np.ndarray, b: np.ndarray | None, weights: np.ndarray, out: np.ndarray, threads: int = 1,
              panel_rows: int | None = None, progress: Progress | None = None,
              todo: Sequence[Task] | None = None, block_size: int = BLOCK) -> np.ndarray:
    """Fill ``out`` (``[N, N]`` when ``b`` is None, else ``[N, M]``) block by block with ``threads`` threads.

    ``panel_rows`` bounds the rows of ``a`` held in memory at once (features on disk: ``a`` a memmap); the
    columns' blocks are read once per panel. None: everything at once. ``block_size``: images a block side (the
    same blocks give the same bits, here and on Ray)."""
    n = len(a)
    todo = list(todo) if todo is not None else tasks(n, None if b is None else len(b), block_size)
    if not todo:
        return out
    sw = sqrt_weights(weights)
    threads = max(1, int(threads))
    panel = max(block_size, (panel_rows or n) // block_size * block_size)
    lock = threading.Lock()
    other = a if b is None else b

    def run(task: Task, rows: np.ndarray, cols: np.ndarray | None) -> None:
        values = block(rows, cols, weights, sw)
        with lock:
            out[task.rows, task.cols] = values
            if b is None and not task.same:
                out[task.cols, task.rows] = values.T
            if progress is not None:
                progress(task.pairs)

    with single_threaded_blas(), ThreadPoolExecutor(max_workers=threads) as pool:
        for p0 in range(0, n, panel):
            in_panel = [t for t in todo if p0 <= t.rows.start < p0 + panel]
            if not in_panel:
                continue
            top = max(t.rows.stop for t in in_panel)
            rows_mem = np.asarray(a[p0:top])
            pending: set[Future] = set()
            by_cols: dict[tuple[int, int], list[Task]] = {}
            for t in in_panel:
                by_cols.setdefault((t.cols.start, t.cols.stop), []).append(t)
            for (c0, c1), group in by_cols.items():
                cols_mem = None if all(t.same for t in group) else np.asarray(other[c0:c1])
                for t in group:
                    rows = rows_mem[t.rows.start - p0:t.rows.stop - p0]
                    pending.add(pool.submit(run, t, rows, None if t.same else cols_mem))
                while len(pending) > 2 * threads:  # bound the column blocks held at once
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
            for f in pending:
                f.result()
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
