"""Split work into runs: items of one image size per run, at most ``batch_size`` items each."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence


def plan_runs(keys: Sequence[Hashable], batch_size: int) -> Iterator[list[int]]:
    """Yield lists of indices into ``keys``; every list shares one key (the image shape) and has at most
    ``batch_size`` entries. Order within a key is kept, so results can be scattered back by index."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start:start + batch_size]
