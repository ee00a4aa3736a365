"""Turn user inputs (paths, PIL images, arrays, lists, batches) into float32 CHW RGB arrays in [-1, 1].

Data flows one way: item -> decoded array -> RGB -> [-1, 1] -> (optional resize) -> CHW. Every check happens where
the bad value is first seen and raises a typed :mod:`stlpips_rt.errors` error that names the item.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import (
    ChannelError,
    ImageRangeError,
    ImageReadError,
    ImageSizeError,
    ImageTooLargeError,
    ImageValueError,
    NotAnImageError,
)

FLOAT_RANGES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0)}
DEFAULT_MAX_PIXELS = 50_000_000  # about 7000 x 7000; larger is almost certainly a decompression bomb
# Float inputs may carry rounding noise from upstream arithmetic; anything further out is a real range error.
_RANGE_SLACK = 1e-4
_CHANNELS = (1, 3, 4)


@dataclass(frozen=True)
class ImageOptions:
    """How inputs are interpreted.

    float_range: value range of float arrays, ``"0,1"`` or ``"-1,1"`` (None: float arrays are refused until
    declared). max_pixels: pixel limit per image (a guard against decompression bombs). resize: ``(height,
    width)`` or one int for a square, to resize every image to with bicubic interpolation (off by default: the
    metric is defined on the images as given).
    """

    float_range: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    resize: tuple[int, int] | int | None = None

    def __post_init__(self) -> None:
        if self.float_range is not None and normalize_range(self.float_range) != self.float_range:
            object.__setattr__(self, "float_range", normalize_range(self.float_range))
        if self.resize is not None:
            size = (self.resize, self.resize) if isinstance(self.resize, int) else tuple(self.resize)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"resize must be (height, width) or one positive int, got {self.resize!r}")
            object.__setattr__(self, "resize", (int(size[0]), int(size[1])))


def normalize_range(value: str | tuple[float, float]) -> str:
    """Accept ``"0,1"``, ``"[0, 1]"``, ``(0, 1)``, ``"-1,1"`` ... and return ``"0,1"`` or ``"-1,1"``."""
    if isinstance(value, tuple | list):
        key = ",".join(f"{float(v):g}" for v in value)
    else:
        key = str(value).strip("[]() ").replace(" ", "")
    if key not in FLOAT_RANGES:
        raise ValueError(f"float range must be '0,1' or '-1,1', got {value!r}")
    return key


def is_path(item: Any) -> bool:
    return isinstance(item, str | os.PathLike)


def expand(items: Any, name: str) -> list[tuple[Any, str]]:
    """Split a list, tuple or 4-D array into single images, each paired with the name errors will use."""
    if isinstance(items, np.ndarray) and items.ndim == 4:
        return [(items[i], f"{name}[{i}]") for i in range(items.shape[0])]
    if isinstance(items, Sequence) and not isinstance(items, str | bytes):
        return [(it, str(it) if is_path(it) else f"{name}[{i}]") for i, it in enumerate(items)]
    return [(items, str(items) if is_path(items) else name)]


def load(item: Any, name: str, opts: ImageOptions) -> np.ndarray:
    """Convert one image to a float32 ``[3, H, W]`` RGB array in [-1, 1]."""
    if is_path(item):
        rgb = _from_pil(_open(Path(item), name, opts.max_pixels), name, opts)
    elif isinstance(item, Image.Image):
        _check_pixels(item.width * item.height, name, opts.max_pixels)
        rgb = _from_pil(ImageOps.exif_transpose(item), name, opts)
    elif isinstance(item, np.ndarray):
        rgb = _from_array(item, name, opts)
    else:
        raise ImageValueError(
            name, f"unsupported input type {type(item).__name__}; pass a file path, a PIL image or a numpy array"
        )
    if opts.resize is not None:
        rgb = _resize(rgb, opts.resize)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


def check_size(x: np.ndarray, name: str, min_size: int, static_hw: tuple[int, int] | None = None) -> None:
    """Refuse an image smaller than the model's minimum height/width, or of another size than a static model's."""
    h, w = x.shape[-2:]
    if static_hw is not None and (h, w) != tuple(static_hw):
        raise ImageSizeError(
            name, f"{h}x{w} pixels, but this model was exported for {static_hw[0]}x{static_hw[1]} only; resize "
                  "the images, or use a model exported without --static", resize=(int(static_hw[0]), int(static_hw[1]))
        )
    if h < min_size or w < min_size:
        raise ImageSizeError(
            name, f"{h}x{w} pixels is below this model's minimum of {min_size}x{min_size}; use larger images",
            resize=True,
        )


def check_pair(x0: np.ndarray, x1: np.ndarray, name0: str, name1: str) -> None:
    """The two images of a pair must have the same height and width."""
    if x0.shape != x1.shape:
        raise ImageSizeError(
            f"{name0} vs {name1}",
            f"sizes differ ({x0.shape[1]}x{x0.shape[2]} vs {x1.shape[1]}x{x1.shape[2]}, HxW); the metric "
            "compares aligned images: crop or resize them to one size", resize=True,
        )


# --- decoding ----------------------------------------------------------------------------------------------
def _check_pixels(pixels: int, name: str, max_pixels: int) -> None:
    if pixels > max_pixels:
        raise ImageTooLargeError(
            name, f"{pixels} pixels is over the limit of {max_pixels} (decompression-bomb guard); raise "
                  "max_pixels if the image is trusted"
        )


def _open(path: Path, name: str, max_pixels: int) -> Image.Image:
    if not path.is_file():
        raise ImageReadError(name, "file does not exist; check the path")
    return ImageOps.exif_transpose(_decode(path, name, max_pixels))


def open_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an encoded image (PNG, JPEG, ... bytes) with the checks a file gets: the pixel limit (checked
    from the header, before decoding), truncation, and :class:`NotAnImageError` for data that is no image.
    EXIF orientation is applied later by :func:`load`, as for any PIL image."""
    return _decode(io.BytesIO(data), name, max_pixels)


def _decode(source: Path | io.BytesIO, name: str, max_pixels: int) -> Image.Image:
    try:
        img = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, f"{exc} (decompression-bomb guard)") from None
    except UnidentifiedImageError as exc:
        why = exc if isinstance(source, Path) else "no known image format in its bytes"  # not a BytesIO repr
        raise NotAnImageError(name, f"cannot decode it as an image ({why}); is it a PNG/JPEG/...?") from None
    except OSError as exc:
        raise ImageReadError(name, f"cannot decode it as an image ({exc}); is it a PNG/JPEG/...?") from None
    _check_pixels(img.width * img.height, name, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit already applied
            img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(name, f"file is truncated or corrupt ({exc}); re-create or re-download it") from None
    return img


def _from_pil(img: Image.Image, name: str, opts: ImageOptions) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return _from_array(np.asarray(img).astype(np.uint16), name, opts)
    if mode == "I":  # 16-bit PNGs open as 32-bit integer images
        arr = np.asarray(img)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageValueError(name, "32-bit integer image outside the 16-bit range; save it as 8 or 16 bit")
        return _from_array(arr.astype(np.uint16), name, opts)
    if mode == "F":
        return _from_array(np.asarray(img, dtype=np.float32), name, opts)
    if mode in ("L", "1"):
        return _from_array(np.asarray(img.convert("L")), name, opts)
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # palettes may carry transparency; it is dropped next
    return _from_array(np.asarray(img.convert("RGB")), name, opts)


def _to_hwc(a: np.ndarray, name: str) -> np.ndarray:
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim != 3:
        raise ChannelError(name, f"expected a 2-D (grey) or 3-D (HWC or CHW) array, got shape {a.shape}")
    if a.shape[2] in _CHANNELS:
        return a
    if a.shape[0] in _CHANNELS:
        return a.transpose(1, 2, 0)
    raise ChannelError(
        name, f"shape {a.shape} has no channel axis of size 1 (grey), 3 (RGB) or 4 (RGBA) first (CHW) or last "
              "(HWC); convert the image to RGB"
    )


def uint8_to_unit(u8: np.ndarray) -> np.ndarray:
    """The reference normalisation, ``img / 127.5 - 1``, of uint8 data of any shape, as float32."""
    return u8.astype(np.float32) / 127.5 - 1.0


def to_model_input(u8: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` or ``[N, H, W, 3]`` -> the graph's float32 ``[N, 3, H, W]`` in [-1, 1]: what the
    Scorer feeds for uint8 images, for callers that build batches themselves (parity checks, benchmarks)."""
    if u8.dtype != np.uint8 or u8.ndim not in (3, 4) or u8.shape[-1] != 3:
        raise ValueError(f"expected uint8 [H, W, 3] or [N, H, W, 3], got {u8.dtype} {u8.shape}")
    batch = u8[None] if u8.ndim == 3 else u8
    return np.ascontiguousarray(uint8_to_unit(batch).transpose(0, 3, 1, 2))


def _from_array(a: np.ndarray, name: str, opts: ImageOptions) -> np.ndarray:
    """Array in HWC or CHW -> float32 HWC RGB in [-1, 1]."""
    hwc = _to_hwc(a, name)
    _check_pixels(hwc.shape[0] * hwc.shape[1], name, opts.max_pixels)
    if hwc.dtype == np.uint8:
        x = uint8_to_unit(hwc)
    elif hwc.dtype == np.uint16:
        x = hwc.astype(np.float32) / 32767.5 - 1.0
    elif np.issubdtype(hwc.dtype, np.floating):
        x = _float_to_unit(hwc, name, opts.float_range)
    else:
        raise ImageValueError(
            name, f"dtype {hwc.dtype} is not supported; pass uint8, uint16, or float with a declared range"
        )
    channels = x.shape[2]
    if channels == 1:
        x = np.repeat(x, 3, axis=2)
    elif channels == 4:
        x = x[:, :, :3]  # alpha carries no colour: dropped, not composited
    return x


def _float_to_unit(x: np.ndarray, name: str, float_range: str | None) -> np.ndarray:
    if float_range is None:
        raise ImageRangeError(
            name, "float array without a declared value range; pass float_range='0,1' or float_range='-1,1'"
        )
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise ImageValueError(name, f"contains {bad} NaN or Inf value(s); fix the pipeline that produced it")
    lo, hi = FLOAT_RANGES[float_range]
    mn, mx = float(x.min()), float(x.max())
    if mn < lo - _RANGE_SLACK or mx > hi + _RANGE_SLACK:
        hint = ""
        if float_range == "0,1" and mn >= -1 - _RANGE_SLACK and mx <= 1 + _RANGE_SLACK:
            hint = "; it looks like [-1,1] data: pass float_range='-1,1' (the classic [0,1] vs [-1,1] mix-up)"
        elif mx > 2:
            hint = "; it looks like 0..255 data: divide by 255 or pass a uint8 array"
        else:
            hint = "; check whether the data is [0,1] or [-1,1] (the classic mix-up) and declare that range"
        raise ImageRangeError(name, f"values span [{mn:.4g}, {mx:.4g}], outside the declared [{float_range}]{hint}")
    x = x.astype(np.float32)
    if float_range == "0,1":
        x = x * 2.0 - 1.0
    return np.clip(x, -1.0, 1.0)


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bicubic resize of a float HWC image, channel by channel in 32-bit float to avoid 8-bit rounding."""
    h, w = size
    if x.shape[:2] == (h, w):
        return x
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[:, :, c], dtype=np.float32)).resize(
        (w, h), Image.Resampling.BICUBIC)) for c in range(x.shape[2])]
    return np.clip(np.stack(chans, axis=2), -1.0, 1.0)
