"""Images -> a :class:`FeatureSet`, one image per run of the features graph.

One image per run makes an image's features a function of the image alone: onnxruntime's CPU kernels change the
last bit of an image's features with its position in a stacked batch (measured on alex-st 64x64: up to 1.2e-7
between a batch of 16 and single runs; repeated single runs are identical). So identical images give exactly 0,
features from a cache, another call or a Ray actor are the same bits, and the cost is small (alex-st, one thread:
50.6 images/s at batch 1 against 70.2 at batch 4 for 64x64, 4.6 against 4.5 for 256x256; docs/matrix.md).

Past ``max_memory / 2`` of features, rows go to a memory-mapped file (``spill_dir``) instead of memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import FEATURES_INPUT
from ..errors import ImageSizeError, StlpipsError
from .features import FeatureLayout, FeatureSet, spill_file
from .model import FeatureModel

#: image ``[1, 3, H, W]`` float32 -> the per-layer features ``[1, C_l, H_l, W_l]``
RunFeatures = Callable[[np.ndarray], list[np.ndarray]]
#: each item: (name, loader) where loader() returns float32 ``[3, H, W]`` or raises a StlpipsError
Item = tuple[str, Callable[[], np.ndarray]]
#: a cached row and its image size for a name, or None; and storing one
CacheGet = Callable[[str], tuple[np.ndarray, tuple[int, int]] | None]
CachePut = Callable[[str, np.ndarray, tuple[int, int]], None]


def session_runner(session: object) -> RunFeatures:
    """A :data:`RunFeatures` over an onnxruntime session of a features graph."""
    def run(x: np.ndarray) -> list[np.ndarray]:
        return session.run(None, {FEATURES_INPUT: x})  # type: ignore[attr-defined]

    return run


@dataclass
class Failure:
    name: str
    error: str


@dataclass
class ExtractReport:
    computed: int = 0
    cached: int = 0
    failed: list[Failure] = field(default_factory=list)


def compute(run: RunFeatures, model: FeatureModel, items: Iterable[Item], count: int, max_memory: int,
            spill_dir: str | os.PathLike[str] | None = None, skip_errors: bool = False,
            cache: tuple[CacheGet, CachePut] | None = None, progress: Callable[[int], None] | None = None,
            ) -> tuple[FeatureSet, ExtractReport]:
    """Features of ``count`` items, in their order. An item that fails to load raises (``skip_errors=False``) or
    is left out and listed in the report. Images must share one size: the first image's; the others are named in
    one :class:`ImageSizeError` (after every item was read, so it names all of them)."""
    report = ExtractReport()
    data: np.ndarray | None = None
    spill: Path | None = None
    layout: FeatureLayout | None = None
    size: tuple[int, int] | None = None
    names: list[str] = []
    other_sizes: dict[tuple[int, int], list[str]] = {}

    def tick() -> None:
        if progress is not None:
            progress(1)

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
            probe = run(np.zeros((1, 3, *size), dtype=np.float32))
            layout = FeatureLayout(model.channels, tuple((int(o.shape[2]), int(o.shape[3])) for o in probe))
            if count * layout.bytes_per_image > max_memory // 2:
                data, spill = spill_file(spill_dir, count, layout.dim)
            else:
                data = np.empty((count, layout.dim), dtype=np.float32)
        assert data is not None
        if x is not None:
            outputs = run(np.ascontiguousarray(x[None], dtype=np.float32))
            row = np.concatenate([np.asarray(o, dtype=np.float32).reshape(-1) for o in outputs])
            report.computed += 1
            if cache is not None:
                cache[1](name, row, hw)
        else:
            report.cached += 1
            if row.shape != (layout.dim,):
                raise StlpipsError(f"{name}: cached features of {row.size} values, expected {layout.dim}; delete "
                                   "the cache folder")
        data[len(names)] = row
        names.append(name)
        tick()
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
