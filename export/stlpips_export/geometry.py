"""Where each layer's features come from: per-slice cumulative stride, receptive field and padding, derived from
the variant table (architectures.py) and written into every exported file for the tiler (stlpips_rt.tiling).

Only sliding-window layers move the geometry: convolutions (zero padding), max pooling (none) and BlurPool
(reflection padding). Every one of them pads the same along both axes, so one :class:`Window` per slice serves
height and width alike. tests/test_tiling_geometry.py checks the result against the network itself by perturbing
single input columns.
"""

from __future__ import annotations

from stlpips_rt.tiling import Window

from .architectures import Architecture, Blur, Conv, LayerSpec, MaxPool, ReLU
from .blurpool import blur_padding


def footprint(spec: LayerSpec) -> tuple[int, int, int, int] | None:
    """``(kernel, stride, pad_before, pad_after)`` of a sliding-window layer along either axis; None for ReLU."""
    if isinstance(spec, Conv):
        return spec.kernel, spec.stride, spec.padding, spec.padding
    if isinstance(spec, MaxPool):
        return spec.kernel, spec.stride, 0, 0
    if isinstance(spec, Blur):
        if spec.filter_size == 1:  # plain subsampling
            return 1, spec.stride, 0, 0
        left, right, top, bottom = blur_padding(spec.filter_size, spec.pad_more)
        if (left, right) != (top, bottom):
            raise ValueError(f"{spec}: padding differs between the axes; one window per layer cannot describe it")
        return spec.filter_size, spec.stride, left, right
    if isinstance(spec, ReLU):
        return None
    raise TypeError(f"no geometry for layer {spec!r}")


def layer_windows(arch: Architecture) -> tuple[Window, ...]:
    """One :class:`Window` per slice output (the LPIPS layers), composed over every layer before it."""
    window = Window()
    windows = []
    for specs in arch.slices:
        for spec in specs:
            step = footprint(spec)
            if step is not None:
                window = window.then(*step)
        windows.append(window)
    return tuple(windows)
