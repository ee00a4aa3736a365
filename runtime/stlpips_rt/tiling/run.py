"""Running a :class:`~stlpips_rt.tiling.TilePlan`: every tile through a ``--tiles`` graph, each layer's distance
map cropped to the tile's core, and the cores recomposed into what the full frame gives.

- ``dist_layers``: each layer's spatial mean is the sum over all cores divided by the full frame's count.
- ``dist``: the sum of those means, as in the graph.
- ``dist_map``: the cores are assembled into each layer's full-frame map (a few bytes per pixel), then upsampled
  bilinearly to the image size and summed exactly as the graph's ``Resize`` (ONNX ``pytorch_half_pixel``
  coordinates, computed in float32 as ONNX Runtime does) and ``Add`` nodes do. Upsampling reads neighbours across
  core borders, which is why it runs on the assembled maps instead of per tile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import InferenceError
from .plan import TilePlan, Window, layer_counts

#: ``run(in0, in1, output_names) -> arrays``: one graph run on batches ``[N0, 3, h, w]`` and ``[N1, 3, h, w]``.
Run = Callable[[np.ndarray, np.ndarray, Sequence[str]], list[np.ndarray]]
_UPSAMPLE_BLOCK = 1 << 22  # output elements per block of rows, to bound the upsampling's temporaries


def evaluate_tiled(run: Run, plan: TilePlan, windows: Sequence[Window], layer_maps: Sequence[str],
                   x0: np.ndarray | Sequence[np.ndarray], x1: Sequence[np.ndarray],
                   outputs: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """Outputs of pairs ``(x0[i], x1[i])`` (or one reference ``x0`` ``[3, H, W]`` against every ``x1``), all of
    the plan's size, per item, shaped as the graph returns them per item."""
    sums, maps = assemble_layers(run, plan, windows, layer_maps, x0, x1, keep_maps="dist_map" in outputs)
    means = sums / np.array(layer_counts(plan.height, plan.width, tuple(windows)), dtype=np.float64)
    results: dict[str, list[np.ndarray]] = {}
    for name in outputs:
        if name == "dist":
            results[name] = [np.float32(row.astype(np.float32).sum(dtype=np.float32)) for row in means]
        elif name == "dist_layers":
            results[name] = [row.astype(np.float32) for row in means]
        elif name == "dist_map":
            results[name] = [sum_upsampled(item, plan.height, plan.width)[None] for item in maps]
        else:
            raise ValueError(f"tiled scoring gives dist, dist_layers and dist_map, not {name!r}")
    return results


def assemble_layers(run: Run, plan: TilePlan, windows: Sequence[Window], layer_maps: Sequence[str],
                    x0: np.ndarray | Sequence[np.ndarray], x1: Sequence[np.ndarray],
                    keep_maps: bool = False) -> tuple[np.ndarray, list[list[np.ndarray]]]:
    """Run every tile and crop each layer's map to the tile's core. Returns the float64 sums over the cores
    ``[N, L]`` and, with ``keep_maps``, each pair's full-frame layer maps assembled from the cores."""
    broadcast = isinstance(x0, np.ndarray) and x0.ndim == 3
    count = len(x1)
    sums = np.zeros((count, len(windows)), dtype=np.float64)
    maps = ([[np.empty((w.positions(plan.height), w.positions(plan.width)), np.float32) for w in windows]
             for _ in range(count)] if keep_maps else [])
    per_run = plan.pairs_per_run
    for tile in plan.tiles:
        ys, xs = slice(tile.y.start, tile.y.stop), slice(tile.x.start, tile.x.stop)
        for first in range(0, count, per_run):
            chunk = range(first, min(count, first + per_run))
            in1 = np.ascontiguousarray(np.stack([x1[i][:, ys, xs] for i in chunk]))
            if broadcast:
                in0 = np.ascontiguousarray(x0[None, :, ys, xs])
            else:
                in0 = np.ascontiguousarray(np.stack([x0[i][:, ys, xs] for i in chunk]))
            got = run(in0, in1, layer_maps)
            del in0, in1
            for layer, (window, layer_map) in enumerate(zip(windows, got, strict=True)):
                (y_lo, y_hi), (x_lo, x_hi) = tile.y.layers[layer], tile.x.layers[layer]
                oy, ox = tile.y.start // window.stride, tile.x.start // window.stride
                core = layer_map[:, 0, y_lo - oy:y_hi - oy, x_lo - ox:x_hi - ox]
                if core.shape[1:] != (y_hi - y_lo, x_hi - x_lo):
                    raise InferenceError(
                        f"tile {tile.y.start}:{tile.y.stop}x{tile.x.start}:{tile.x.stop}: layer {layer} map is "
                        f"{layer_map.shape[2:]}, too small for its core; the file's stlpips.layer_* geometry does "
                        "not match its graph (re-export it)")
                sums[chunk.start:chunk.stop, layer] += core.sum(axis=(1, 2), dtype=np.float64)
                if keep_maps:
                    for j, i in enumerate(chunk):
                        maps[i][layer][y_lo:y_hi, x_lo:x_hi] = core[j]
    return sums, maps


def _source_coordinates(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the two source indices and their weights, as ONNX Runtime's linear ``Resize`` computes
    them for ``pytorch_half_pixel`` in float32 (weights of a clamped edge are 1/2 and 1/2 of the same pixel)."""
    scale = np.float32(out_size) / np.float32(in_size)
    index = np.arange(out_size, dtype=np.float32)
    if scale == 1:
        coord = index
    elif out_size > 1:
        coord = (index + np.float32(0.5)) / scale - np.float32(0.5)
    else:
        coord = np.zeros(out_size, np.float32)
    coord = np.clip(coord, np.float32(0), np.float32(in_size - 1)).astype(np.float32)
    lo = np.minimum(coord.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    weight_hi = np.abs(coord - lo.astype(np.float32))  # the distance from lo is hi's share
    weight_lo = np.abs(coord - hi.astype(np.float32))
    same = lo == hi
    weight_hi[same] = 0.5
    weight_lo[same] = 0.5
    return lo, hi, weight_lo, weight_hi


def sum_upsampled(layer_maps: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """``[H, W]`` float32: each ``[h_l, w_l]`` map upsampled bilinearly to ``height x width``, summed in layer
    order (the graph's ``dist_map``)."""
    out = np.empty((height, width), np.float32)
    rows = max(1, _UPSAMPLE_BLOCK // max(1, width))
    for layer, m in enumerate(layer_maps):
        y_lo, y_hi, wy_lo, wy_hi = _source_coordinates(height, m.shape[0])
        x_lo, x_hi, wx_lo, wx_hi = _source_coordinates(width, m.shape[1])
        for top in range(0, height, rows):
            block = slice(top, min(height, top + rows))
            upper, lower = m[y_lo[block]], m[y_hi[block]]
            w_upper, w_lower = wy_lo[block, None], wy_hi[block, None]
            # The four terms in ONNX Runtime's order.
            value = ((wx_lo * w_upper) * upper[:, x_lo] + (wx_hi * w_upper) * upper[:, x_hi]
                     + (wx_lo * w_lower) * lower[:, x_lo] + (wx_hi * w_lower) * lower[:, x_hi])
            if layer == 0:
                out[block] = value
            else:
                out[block] += value
    return out
