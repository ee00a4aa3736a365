"""Exact tiled scoring: the geometry of a model's layers, the memory budget, and the plan that splits a large pair
into tiles whose per-layer distance maps recompose the full-frame result.

Every feature position depends on a bounded window of the input. A tile answers for a *core* of the image; it is
fed its core plus a halo of real pixels as wide as the deepest layer's receptive field reaches, so that every
feature position of the core is computed from exactly the pixels (and, where the tile reaches the image border,
exactly the padding) of the full frame. Tile origins are multiples of the deepest layer's cumulative stride, so
each tile's feature grids are the full frame's grids shifted by whole positions. Each layer's spatial mean is then
the sum over the tiles' cores divided by the full frame's count. User-facing description: docs/tiling.md.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MemoryBudgetError

# --- layer geometry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Where one layer's feature positions come from along one image axis (the same along both axes).

    Position ``o`` reads input pixels ``o * stride - pad_before`` to ``o * stride - pad_before + field - 1``;
    indices outside the image are the network's own padding (zeros or reflection). For an input of ``n`` pixels
    the layer has :meth:`positions` ``(n)`` positions.
    """

    stride: int = 1
    field: int = 1
    pad_before: int = 0
    pad_after: int = 0

    def then(self, kernel: int, stride: int, pad_before: int, pad_after: int) -> Window:
        """This window followed by one sliding-window layer (convolution, pooling, blur)."""
        return Window(self.stride * stride, self.field + (kernel - 1) * self.stride,
                      self.pad_before + pad_before * self.stride, self.pad_after + pad_after * self.stride)

    def positions(self, n: int) -> int:
        """Number of positions for an input of ``n`` pixels (each layer's ``floor`` output-size rule, composed)."""
        return (n + self.pad_before + self.pad_after - self.field) // self.stride + 1

    def first_pixel(self, position: int) -> int:
        return position * self.stride - self.pad_before

    def end_pixel(self, position: int) -> int:
        """One past the last input pixel that ``position`` reads."""
        return self.first_pixel(position) + self.field


@dataclass(frozen=True)
class ModelGeometry:
    """What the tiler knows about a model file, from its metadata (written by the exporter).

    windows: one :class:`Window` per layer (the five LPIPS slices). bytes_per_pixel: measured peak working memory
    of one pair per pixel of one image (ONNX Runtime CPU, float32), None in files exported before it was measured.
    layer_maps: graph outputs holding each layer's distance map ``[N, 1, h_l, w_l]`` before the spatial mean
    (files exported with ``--tiles``), empty otherwise.
    """

    windows: tuple[Window, ...]
    bytes_per_pixel: int | None = None
    layer_maps: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        align = self.align
        if any(align % w.stride for w in self.windows):
            raise ValueError(f"layer strides {[w.stride for w in self.windows]} do not all divide the deepest one")
        if self.layer_maps and len(self.layer_maps) != len(self.windows):
            raise ValueError(f"{len(self.layer_maps)} layer maps for {len(self.windows)} layers")

    @property
    def align(self) -> int:
        """Tile origins are multiples of this (the deepest layer's cumulative stride)."""
        return max(w.stride for w in self.windows)

    @property
    def halo(self) -> tuple[int, int]:
        """Pixels of context a core needs before and after it, at most (before origin alignment)."""
        return max(w.pad_before for w in self.windows), max(w.field - w.pad_before - w.stride for w in self.windows)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def geometry_metadata(windows: tuple[Window, ...] | list[Window]) -> dict[str, str]:
    """The metadata entries that describe ``windows`` (see :class:`~stlpips_rt.contract.Key`)."""
    from ..contract import Key

    return {
        Key.LAYER_STRIDE: ",".join(str(w.stride) for w in windows),
        Key.LAYER_FIELD: ",".join(str(w.field) for w in windows),
        Key.LAYER_PAD_BEFORE: ",".join(str(w.pad_before) for w in windows),
        Key.LAYER_PAD_AFTER: ",".join(str(w.pad_after) for w in windows),
    }


def read_geometry(meta: Mapping[str, str]) -> ModelGeometry | None:
    """The geometry a file declares, or None for files exported before tiling existed (or with broken values)."""
    from ..contract import Key

    try:
        columns = [_ints(meta[k]) for k in (Key.LAYER_STRIDE, Key.LAYER_FIELD, Key.LAYER_PAD_BEFORE,
                                            Key.LAYER_PAD_AFTER)]
        if not columns[0] or len({len(c) for c in columns}) != 1:
            return None
        windows = tuple(Window(*values) for values in zip(*columns, strict=True))
        bpp = meta.get(Key.BYTES_PER_PIXEL, "")
        maps = tuple(n.strip() for n in meta.get(Key.LAYER_MAPS, "").split(",") if n.strip())
        return ModelGeometry(windows, int(bpp) if bpp.isdigit() else None, maps)
    except (KeyError, ValueError):
        return None


# --- memory budget -------------------------------------------------------------------------------------------

DEFAULT_BUDGET_SHARE = 0.25  # of the machine's (or container's) memory
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)


def parse_memory(value: int | float | str) -> int:
    """Bytes from ``1073741824``, ``"1G"``, ``"1.5GiB"``, ``"512M"``, ``"800MB"`` (units are powers of 1024)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        match = _SIZE.match(str(value))
        if match is None:
            raise ValueError(f"memory size {value!r}: expected bytes or a number with K, M, G or T (e.g. 2G, 512M)")
        number = float(match[1]) * _UNITS[match[2].upper()]
    if number <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    return int(number)


def machine_memory() -> int:
    """Physical memory, or the container's cgroup limit where that is lower (bytes)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_budget() -> int:
    """A quarter of :func:`machine_memory`: several scorers (or a service's workers) can share a machine."""
    return int(machine_memory() * DEFAULT_BUDGET_SHARE)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


# --- plans ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisSpan:
    """One tile along one axis: the pixels ``[start, stop)`` fed to the network, and for each layer the range
    ``[lo, hi)`` of full-frame feature positions this tile answers for (its core)."""

    start: int
    stop: int
    core: tuple[int, int]
    layers: tuple[tuple[int, int], ...]

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Tile:
    y: AxisSpan
    x: AxisSpan

    @property
    def pixels(self) -> int:
        return self.y.length * self.x.length


@dataclass(frozen=True)
class TilePlan:
    """What a :class:`~stlpips_rt.Scorer` does with pairs of one size (``scorer.plan(h, w)``).

    ``tiles`` holds one tile covering the whole image when the pair runs full frame. ``bytes_per_run`` is the
    estimated working memory of one graph run (``pairs_per_run`` pairs of the largest tile), None when the file
    carries no memory model.
    """

    height: int
    width: int
    tiles: tuple[Tile, ...]
    grid: tuple[int, int]
    budget: int
    bytes_per_pixel: int | None
    pairs_per_run: int
    reason: str = field(default="", compare=False)

    @property
    def tiled(self) -> bool:
        return len(self.tiles) > 1

    @property
    def largest_tile(self) -> tuple[int, int]:
        tile = max(self.tiles, key=lambda t: t.pixels)
        return tile.y.length, tile.x.length

    @property
    def computed_pixels(self) -> int:
        return sum(t.pixels for t in self.tiles)

    @property
    def overhead(self) -> float:
        """Extra pixels computed for the halos, as a fraction of the image (0.0 for full frame)."""
        return self.computed_pixels / (self.height * self.width) - 1.0

    @property
    def bytes_per_run(self) -> int | None:
        if self.bytes_per_pixel is None:
            return None
        h, w = self.largest_tile
        return self.bytes_per_pixel * h * w * self.pairs_per_run

    def __str__(self) -> str:
        size = f"{self.height}x{self.width}"
        memory = ("memory model unknown" if self.bytes_per_run is None else
                  f"~{format_bytes(self.bytes_per_run)} per run, budget {format_bytes(self.budget)}")
        if not self.tiled:
            return f"{size}: full frame, {self.pairs_per_run} pair(s) per run ({memory}){self.reason}"
        th, tw = self.largest_tile
        return (f"{size}: {len(self.tiles)} tiles ({self.grid[0]}x{self.grid[1]}) of up to {th}x{tw}, "
                f"{100 * self.overhead:.0f}% extra pixels for halos, {self.pairs_per_run} pair(s) per run "
                f"({memory}){self.reason}")


def split_axis(n: int, parts: int, windows: tuple[Window, ...], min_length: int) -> tuple[AxisSpan, ...] | None:
    """Split an axis of ``n`` pixels into ``parts`` tiles with aligned cores of about equal size; None when the
    axis is too short for that many aligned cores."""
    split = _AxisSplit.of(n, parts, windows, min_length)
    if split is None:
        return None
    return tuple(AxisSpan(int(a), int(b), (int(c0), int(c1)), tuple((int(r[0][k]), int(r[1][k])) for r in split.ranges))
                 for k, (a, b, c0, c1) in enumerate(zip(split.starts, split.stops, split.cuts[:-1], split.cuts[1:],
                                                        strict=True)))


@dataclass(frozen=True)
class _AxisSplit:
    """:func:`split_axis` as arrays (one entry per tile), cheap enough to try every tile count."""

    cuts: np.ndarray
    starts: np.ndarray
    stops: np.ndarray
    ranges: tuple[tuple[np.ndarray, np.ndarray], ...]  # per layer: first and end positions of each core

    @property
    def longest(self) -> int:
        return int((self.stops - self.starts).max())

    @property
    def total(self) -> int:
        return int((self.stops - self.starts).sum())

    @staticmethod
    def of(n: int, parts: int, windows: tuple[Window, ...], min_length: int) -> _AxisSplit | None:
        align = max(w.stride for w in windows)
        k = np.arange(parts + 1, dtype=np.int64)
        cuts = (2 * k * n + parts * align) // (2 * parts * align) * align  # k * n / parts, rounded to align
        cuts[-1] = n
        if parts > 1 and (np.diff(cuts) <= 0).any():
            return None
        starts = np.full(parts, np.iinfo(np.int64).max)
        stops = np.full(parts, np.iinfo(np.int64).min)
        ranges = []
        for w in windows:
            count = w.positions(n)
            lo = np.minimum(cuts[:-1] // w.stride, count)
            hi = np.minimum(cuts[1:] // w.stride, count)
            hi[-1] = count
            ranges.append((lo, hi))
            # A tile reaches back to the first pixel of its first core position's field and on to one past the
            # last pixel of its last core position's field, in every layer.
            some = hi > lo
            starts = np.where(some, np.minimum(starts, lo * w.stride - w.pad_before), starts)
            stops = np.where(some, np.maximum(stops, (hi - 1) * w.stride - w.pad_before + w.field), stops)
        empty = starts > stops  # a core past the last position of every layer (a tiny last core)
        starts = np.where(empty, cuts[:-1], np.maximum(0, starts // align * align))
        stops = np.where(empty, cuts[1:], np.minimum(n, stops))
        # At the image's ends the tile stops at the border, where the network pads as in the full frame.
        starts[0], stops[-1] = 0, n
        # More context never hurts; too little input does not run at all.
        short = stops - starts < min_length
        stops = np.where(short, np.minimum(n, starts + min_length), stops)
        starts = np.where(short, np.maximum(0, (stops - min_length) // align * align), starts)
        return _AxisSplit(cuts, starts, stops, tuple(ranges))


def whole_frame(height: int, width: int, windows: tuple[Window, ...]) -> Tile:
    """The one tile of a full-frame run."""
    return Tile(*(AxisSpan(0, n, (0, n), tuple((0, w.positions(n)) for w in windows)) for n in (height, width)))


#: The plan's rate is the file's measured ``stlpips.bytes_per_pixel`` times this. ONNX Runtime's CPU arena grows in
#: steps, so a run's resident memory lies above or below a straight line in its pixels depending on the size: the
#: export probes sizes of 128-256 MB of working memory and keeps the largest rate, and a 1 GiB tile still came out
#: 12% above that (alex-st, a 917x1584 pair: 817 bytes per pixel against 728 probed; 574 with no arena at all).
ARENA_MARGIN = 1.25


def planned_bytes_per_pixel(measured: int) -> int:
    """The rate a plan budgets with: the file's measured rate and :data:`ARENA_MARGIN`."""
    return math.ceil(measured * ARENA_MARGIN)


def plan_tiles(height: int, width: int, geometry: ModelGeometry | None, budget: int, min_size: int,
               batch_size: int = 1, static: bool = False) -> TilePlan:
    """The cheapest way to run pairs of ``height x width`` within ``budget`` bytes of working memory.

    A pair whose full frame fits runs whole, ``pairs_per_run`` (at most ``batch_size``) at a time. Otherwise the
    image is split into a grid of tiles, each within the budget, choosing the grid that computes the fewest
    pixels. Raises :class:`MemoryBudgetError` when even the smallest tile does not fit. Without a memory model
    (``geometry`` None, or no bytes per pixel: files exported before tiling existed) everything runs full frame.
    """
    windows = geometry.windows if geometry else ()
    bpp = planned_bytes_per_pixel(geometry.bytes_per_pixel) if geometry and geometry.bytes_per_pixel else None

    def full_frame(reason: str = "") -> TilePlan:
        fits = batch_size if bpp is None else max(1, min(batch_size, budget // (bpp * height * width)))
        return TilePlan(height, width, (whole_frame(height, width, windows),), (1, 1), budget, bpp, fits, reason)

    if geometry is None or bpp is None:
        return full_frame(" (the file records no memory model: re-export it to enable tiling)")
    if static:
        return full_frame(" (static-size file: never tiled)")
    if bpp * height * width <= budget:
        return full_frame()
    max_pixels = budget // bpp
    splits: dict[tuple[int, int], _AxisSplit | None] = {}

    def split(n: int, parts: int) -> _AxisSplit | None:
        if (n, parts) not in splits:
            splits[n, parts] = _AxisSplit.of(n, parts, windows, min_size)
        return splits[n, parts]

    def most_parts(n: int) -> int:  # cores at least one alignment step wide
        return max(1, n // geometry.align)

    def fewest_cols(limit: int) -> int | None:
        """Few columns whose widest tile is at most ``limit`` pixels: a binary search (tiles narrow, if not
        strictly, as columns are added) that only ever answers a column count that fits."""
        lo, hi = 1, most_parts(width)
        last = split(width, hi)
        if last is None or last.longest > limit:
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            candidate = split(width, mid)
            if candidate is not None and candidate.longest <= limit:
                hi = mid
            else:
                lo = mid + 1
        return lo

    best: tuple[int, int, int] | None = None  # (computed pixels, rows, cols)
    smallest = height * width
    for rows in range(1, most_parts(height) + 1):
        ys = split(height, rows)
        if ys is None:
            break
        if best is not None and ys.total * width >= best[0]:
            break  # every further split computes more pixels than the best found
        cols = fewest_cols(max_pixels // ys.longest)
        narrowest = split(width, most_parts(width))
        if narrowest is not None:
            smallest = min(smallest, ys.longest * narrowest.longest)
        if cols is not None:
            xs = split(width, cols)
            assert xs is not None
            total = ys.total * xs.total
            if best is None or total < best[0]:
                best = (total, rows, cols)
    if best is None:
        need = smallest * bpp
        raise MemoryBudgetError(
            f"{height}x{width}", f"max_memory {format_bytes(budget)} is below the smallest tile this model can "
            f"run exactly (about {format_bytes(need)}: the halo alone spans {sum(geometry.halo)} px); raise "
            "max_memory")
    _, rows, cols = best
    ys, xs = split_axis(height, rows, windows, min_size), split_axis(width, cols, windows, min_size)
    assert ys is not None and xs is not None
    tiles = tuple(Tile(y, x) for y in ys for x in xs)
    largest = max(t.pixels for t in tiles)
    fits = max(1, min(batch_size, budget // (bpp * largest)))
    return TilePlan(height, width, tiles, (rows, cols), budget, bpp, fits)


def layer_counts(height: int, width: int, windows: tuple[Window, ...]) -> list[int]:
    """Feature positions per layer of the full frame: the divisor of each layer's spatial mean."""
    return [w.positions(height) * w.positions(width) for w in windows]


__all__ = ["AxisSpan", "ModelGeometry", "Tile", "TilePlan", "Window", "default_budget", "geometry_metadata",
           "layer_counts", "machine_memory", "parse_memory", "plan_tiles", "read_geometry", "split_axis",
           "whole_frame"]
