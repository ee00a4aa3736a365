"""Generated videos for the video benchmark and demo (scripts/bench_video.py, scripts/video_demo.py).

A camera pans back and forth over a photograph (scikit-image's samples, extra ``eval``; sharp random shapes
where scikit-image is absent), written with PyAV. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw


def photo(height: int, width: int) -> np.ndarray:
    """A photograph at least ``height`` x ``width`` (uint8 RGB): scikit-image's astronaut and coffee side by
    side, scaled to the height; random shapes without scikit-image."""
    try:
        from skimage import data

        parts = [data.astronaut(), data.coffee()]
        scaled = []
        for part in parts:
            img = Image.fromarray(part)
            scaled.append(np.asarray(img.resize((round(img.width * height / img.height), height),
                                                Image.Resampling.LANCZOS)))
        canvas = np.concatenate(scaled, axis=1)
    except ImportError:
        rng = np.random.default_rng(0)
        im = Image.new("RGB", (2 * width, height), (90, 120, 150))
        draw = ImageDraw.Draw(im)
        for _ in range(2 * width * height // 300):
            x, y, s = int(rng.integers(0, 2 * width)), int(rng.integers(0, height)), int(rng.integers(4, 40))
            draw.ellipse([x, y, x + s, y + s], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        canvas = np.asarray(im)
    while canvas.shape[1] < width + 64:
        canvas = np.concatenate([canvas, canvas[:, ::-1]], axis=1)
    return canvas


def panning(n: int, height: int, width: int, speed: int = 2, shift: int = 0) -> Iterator[np.ndarray]:
    """``n`` frames panning ``speed`` px per frame back and forth over :func:`photo`; ``shift`` moves every frame
    right by that many pixels (a one-pixel-shifted copy of the same video)."""
    canvas = photo(height, width + speed * 16 + 2)
    travel = canvas.shape[1] - width - 2
    for i in range(n):
        x = (speed * i) % (2 * travel)
        x = x if x <= travel else 2 * travel - x  # ping-pong: constant memory, any length
        yield np.ascontiguousarray(canvas[:height, x + shift:x + shift + width])


def write(path: Path, frames: Iterable[np.ndarray], codec: str = "libx264", pix_fmt: str = "yuv420p",
          fps: int = 25, options: dict[str, str] | None = None) -> Path:
    """Encode frames one by one (constant memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = options
        for i, rgb in enumerate(frames):
            if i == 0:
                stream.width, stream.height = rgb.shape[1], rgb.shape[0]
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
