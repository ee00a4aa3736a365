"""One video pair per unit of work: the seam for process pools, Ray tasks and ``stlpips_rt.scale.map_pairs``.

This module sits above :mod:`stlpips_rt.scorer` (it builds Scorers); :mod:`.stream` below it never does."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from ..errors import StlpipsError
from ..scorer import Scorer
from .stream import Failure, Notice, VideoOptions, VideoSummary, iter_scores, to_row


@functools.lru_cache(maxsize=2)
def _cached_scorer(model: str, scorer_options: tuple[tuple[str, Any], ...]) -> Scorer:
    return Scorer(model, **dict(scorer_options))


def score_pair_rows(ref: str, dist: str, model: str = "alex-st", options: VideoOptions | None = None,
                    scorer_options: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Score one video pair in this process and return its rows (:data:`ROW_FIELDS`, as ``stlpips-score --video``
    writes them, distances exact). Every argument is a plain picklable value, so this is the unit of work for a
    process pool or a Ray task (one pair per task, frames streamed inside it); the Scorer is built once per
    process for each (model, options). Bad input becomes an error row, never an exception, so one bad pair
    cannot lose a batch's finished work."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (scorer_options or {}).items()))
    try:
        scorer = _cached_scorer(model, key)
    except StlpipsError as exc:
        return [to_row(ref, Failure(dist, exc))]
    return [to_row(ref, r) for r in iter_scores(scorer, ref, dist, options) if not isinstance(r, Notice)]


# Columns :func:`video_pair_task` returns: the pair's summary and its per-frame distances.
VIDEO_PAIR_COLUMNS = ("frames", "mean", "median", "p95", "max", "worst_frame", "worst_time", "distances")


def video_pair_task(scorer: Scorer, row: Mapping[str, Any], options: VideoOptions | None = None) -> dict[str, Any]:
    """One video pair (``row["ref"]``, ``row["dist"]``) -> :data:`VIDEO_PAIR_COLUMNS`, for
    ``stlpips_rt.scale.map_pairs`` (Ray: one pair per task with ``pairs_dataset(rows, rows_per_block=1)``, frames
    streamed inside it, the actor's Scorer reused). Other options through ``functools.partial(video_pair_task,
    options=VideoOptions(...))``, which pickles. A bad pair raises its typed error, which map_pairs turns into
    that row's error; the other pairs go on."""
    summary = VideoSummary(str(row["dist"]))
    for record in iter_scores(scorer, str(row["ref"]), str(row["dist"]), options):
        if isinstance(record, Failure):
            raise record.error
        summary.add(record)
    worst = summary.worst(1)
    return {**summary.stats(), "worst_frame": worst[0].frame if worst else None,
            "worst_time": worst[0].time if worst else None, "distances": [s.distance for s in summary.scores]}
