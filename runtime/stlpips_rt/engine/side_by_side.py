"""A batch on the CPU provider as runs side by side, one onnxruntime thread each, instead of one run whose
operators are split across the threads.

A 64x64 pair has too little work per operator to share it well: every operator of a run waits for the slowest
thread, and on a virtual machine a thread that is not running when the others are done costs the whole run. Each
half of the batch on its own thread needs no such meeting point. alex-st 16 pairs of 64x64 on 2 cores (quiet
AMD EPYC Zen 4): 73 ms as two one-thread runs of 8 against 89-93 ms as one two-thread run; vgg-st 450 against
491-501 ms; alex-st 4 pairs of 256x256 305 against 341 ms.

The one-thread session plans each run's memory as one block (onnxruntime's memory patterns): two runs at once on
one session otherwise take turns at its arena's lock (alex-st 64x64: 85 ms instead of 73). Images above
:data:`MAX_PIXELS` run whole, on the scorer's own session, as do tiles (their memory is planned for one run).

The distances are the same bits: each pair's arithmetic is the same in a batch of any size (the graph is batch
invariant, docs/reproducibility.md) and onnxruntime's CPU kernels give the same bits on one thread as on several.
Only runs of pairs are split, and one reference against many candidates (a broadcast run) only when each run keeps
at least :data:`MIN_BROADCAST_PER_RUN` candidates, because every piece computes the reference's features again.
"""

from __future__ import annotations

import dataclasses
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .options import SessionConfig

#: candidates per piece below which a broadcast run stays whole (the reference's pass is repeated per piece)
MIN_BROADCAST_PER_RUN = 8
#: pixels per image above which a batch runs whole: a large image has work enough per operator for every thread,
#: and the one-thread session keeps a memory pattern per input shape (its runs of small images stay small)
MAX_PIXELS = 512 * 512

Infer = Callable[[np.ndarray, np.ndarray, Sequence[str], object], list[np.ndarray]]


def pieces(n0: int, n1: int, threads: int, pixels: int) -> int:
    """Into how many side-by-side runs a batch of ``n0`` x ``n1`` images of ``pixels`` each goes on ``threads``
    threads (1: whole)."""
    if threads < 2 or pixels > MAX_PIXELS:
        return 1
    if n0 == 1 < n1:  # broadcast
        return max(1, min(threads, n1 // MIN_BROADCAST_PER_RUN))
    return max(1, min(threads, n1))


def one_thread(config: SessionConfig) -> SessionConfig:
    """The session config of runs side by side: one intra-op thread, onnxruntime's memory patterns (see above)."""
    return dataclasses.replace(config, threads=1, memory_pattern=True)


def split(in0: np.ndarray, in1: np.ndarray, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``count`` contiguous pieces of a batch (a broadcast run's reference goes with every piece)."""
    bounds = np.linspace(0, len(in1), count + 1).round().astype(int)
    broadcast = len(in0) == 1 < len(in1)
    return [(in0 if broadcast else in0[a:b], in1[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class SideBySide:
    """Runs pieces of a batch at once on a one-thread session (``make_session``, built on first use) from a pool of
    ``threads - 1`` workers and the calling thread."""

    def __init__(self, threads: int, make_session: Callable[[], object]) -> None:
        self.threads = threads
        self._make_session = make_session
        self._session: object | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _ready(self) -> tuple[object, ThreadPoolExecutor]:
        with self._lock:
            if self._session is None:
                self._session = self._make_session()
                self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="stlpips-side")
                weakref.finalize(self, self._pool.shutdown, wait=False)
            assert self._pool is not None
            return self._session, self._pool

    def run(self, in0: np.ndarray, in1: np.ndarray, outputs: Sequence[str], infer: Infer, count: int) \
            -> list[np.ndarray]:
        """``infer(in0_piece, in1_piece, outputs, session)`` for ``count`` contiguous pieces of the batch, each
        output concatenated along the batch in order."""
        session, pool = self._ready()
        parts = split(in0, in1, count)
        futures = [pool.submit(infer, a, b, outputs, session) for a, b in parts[1:]]
        first = infer(*parts[0], outputs, session)
        results = [first] + [f.result() for f in futures]
        return [np.concatenate([r[i] for r in results]) for i in range(len(outputs))]
