"""Render a distance map as a PNG a person can read: reference | distorted | heat map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Anchor colours of a perceptually ordered dark-to-bright ramp (black, purple, red, orange, pale yellow).
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
_MIN_PANEL = 256  # small images (64x64 patches) are enlarged so that the map can be seen


def colorize(dist_map: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Map a ``[H, W]`` non-negative distance map to uint8 RGB; 0 is black, ``vmax`` (default: the map's max)
    is pale yellow."""
    top = float(vmax if vmax is not None else dist_map.max())
    t = np.clip(dist_map / top, 0.0, 1.0) if top > 0 else np.zeros_like(dist_map)
    pos = t * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    rgb = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac
    return rgb.round().astype(np.uint8)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """float32 ``[3, H, W]`` in [-1, 1] -> uint8 HWC."""
    return ((x.transpose(1, 2, 0) + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)


def render(ref: np.ndarray, dist: np.ndarray, dist_map: np.ndarray) -> Image.Image:
    """Side-by-side panel: reference, distorted image (both ``[3, H, W]`` in [-1, 1]) and the heat map of
    ``dist_map`` ``[H, W]`` (black: no difference; pale yellow: the map's maximum). The heat map is not blended
    over the image: on bright images a blend hides it."""
    panel = np.concatenate([_to_uint8(ref), _to_uint8(dist), colorize(dist_map)], axis=1)
    img = Image.fromarray(panel)
    h = dist_map.shape[0]
    if h < _MIN_PANEL:
        scale = -(-_MIN_PANEL // h)
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def save(path: Path, ref: np.ndarray, dist: np.ndarray, dist_map: np.ndarray) -> None:
    """Write :func:`render`'s panel as a PNG (parent folders are created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    render(ref, dist, dist_map).save(path, format="PNG")
