"""Scoring past one process, on Ray: batch scoring of Ray Datasets and an online HTTP service.

Nothing here imports ray at import time; ray is imported when a function that needs it runs, with a one-line
error naming the extra (``pip install 'stlpips-deploy[ray]'``) when it is missing.

- :func:`stlpips_rt.scale.batch.score_dataset`: a ``ray.data.Dataset`` of image pairs -> the same rows with
  ``distance``, ``status`` and ``error``, scored by a pool of actors that each hold one :class:`~stlpips_rt.Scorer`.
- :func:`stlpips_rt.scale.batch.map_pairs`: the generic seam, one pair per task through a function of your own
  that gets the actor's Scorer (video pairs, per-pair outputs).
- :func:`stlpips_rt.scale.matrix.score_matrix`: a distance matrix, features once per image in actors, blocks of
  the matrix as tasks (docs/matrix.md).
- ``stlpips-score --engine ray`` (:mod:`stlpips_rt.scale.job`) and ``stlpips-serve`` (:mod:`stlpips_rt.scale.service`).

See docs/at_scale.md.
"""

from __future__ import annotations

from typing import Any

_PUBLIC = {
    "score_dataset": "batch",
    "map_pairs": "batch",
    "pairs_dataset": "batch",
    "ScoringOptions": "batch",
    "score_matrix": "matrix",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    # Lazy re-exports: `from stlpips_rt.scale import score_dataset` without importing every submodule up front.
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
