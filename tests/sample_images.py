"""Images the tests write themselves: smooth, seeded, natural-ish RGB (no data files needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int, size: tuple[int, int] = (64, 64)) -> Path:
    """A seeded 8x-upsampled random image of ``size`` (H, W), saved to ``path`` (format from its suffix)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((size[1], size[0]), Image.Resampling.BICUBIC).save(path)
    return path
