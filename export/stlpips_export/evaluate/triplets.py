"""The built-in triplet set: seeded patches of scikit-image's bundled photographs and distorted copies.

Each triplet is a reference patch and two distorted versions of it (types and strengths drawn at random, so
that some pairs are hard to rank, as in BAPPS). Triplet ``i`` of a given seed and size is generated from its
own random stream ``(seed, size, i)``: the first N triplets are the same whatever the requested count, and
the set is byte-for-byte reproducible on a machine with the same scikit-image / Pillow (JPEG) versions.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from PIL import Image

#: Photographs bundled with scikit-image (no download), by their `skimage.data` loader.
PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "stereo_motorcycle",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
)
#: Patches flatter than this (std of uint8 values) are redrawn: on a flat patch every metric ties.
MIN_PATCH_STD = 12.0


@dataclass
class TripletSet:
    """Triplets (ref, d0, d1) as uint8 RGB arrays ``[N, H, W, 3]``, with optional BAPPS annotations.

    ``judge`` (fraction of people who chose d1, in [0, 1]) and ``category`` come with BAPPS; the built-in
    set has neither. ``info`` describes each triplet in words (source, position, distortions).
    """

    ref: np.ndarray
    d0: np.ndarray
    d1: np.ndarray
    info: list[str] = field(default_factory=list)
    judge: np.ndarray | None = None
    category: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not (self.ref.shape == self.d0.shape == self.d1.shape) or self.ref.ndim != 4:
            raise ValueError(
                f"ref, d0, d1 must share one [N, H, W, 3] shape, got {self.ref.shape}, {self.d0.shape}, "
                f"{self.d1.shape}"
            )
        if self.ref.dtype != np.uint8:
            raise ValueError(f"triplet images must be uint8, got {self.ref.dtype}")

    def __len__(self) -> int:
        return len(self.ref)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the uncropped images."""
        return int(self.ref.shape[1]), int(self.ref.shape[2])


@cache
def load_photo(name: str) -> np.ndarray:
    """One bundled photograph as uint8 RGB ``[H, W, 3]`` (grey ones replicated to three channels)."""
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {', '.join(PHOTOS)}")
    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle returns (left, right, disparity)
        img = img[0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


# --- distortions: float32 HWC in [0, 1] and a strength in [0, 1] -> float32 HWC (clipped later) ---

Distortion = Callable[[np.ndarray, float, np.random.Generator], tuple[np.ndarray, str]]


def _noise(x: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    sigma = 0.01 + 0.12 * s
    return x + rng.normal(0.0, sigma, x.shape).astype(np.float32), f"noise(sigma={sigma:.3f})"


def _blur(x: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    from skimage.filters import gaussian

    sigma = 0.4 + 2.0 * s
    return gaussian(x, sigma=sigma, channel_axis=2, mode="reflect"), f"blur(sigma={sigma:.2f})"


def _jpeg(x: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    quality = int(round(90 - 85 * s))
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(x)).save(buf, format="JPEG", quality=quality)
    out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255
    return out, f"jpeg(q={quality})"


def _colour(x: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    direction = rng.normal(size=3).astype(np.float32)
    offset = (0.02 + 0.16 * s) * direction / np.linalg.norm(direction)
    return x + offset, "colour(" + ",".join(f"{v:+.3f}" for v in offset) + ")"


def _contrast(x: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    factor = 1 + (0.1 + 0.5 * s) * rng.choice([-1.0, 1.0])
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * factor + mean, f"contrast(x{factor:.2f})"


def _resample(x: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    factor = 1.25 + 2.75 * s
    h, w = x.shape[:2]
    small = Image.fromarray(_to_uint8(x)).resize(
        (max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BOX
    )
    out = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    return out, f"resample(1/{factor:.2f})"


def _saltpepper(x: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    fraction = 0.002 + 0.04 * s
    mask = rng.random(x.shape[:2]) < fraction
    out = x.copy()
    out[mask] = rng.integers(0, 2, size=(int(mask.sum()), 1)).astype(np.float32)
    return out, f"saltpepper({fraction:.3f})"


def _quantize(x: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    levels = int(round(32 - 28 * s))
    return np.round(x * (levels - 1)) / (levels - 1), f"quantize({levels})"


def _sharpen(x: np.ndarray, s: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    from skimage.filters import gaussian

    amount = 0.5 + 2.5 * s
    return x + amount * (x - gaussian(x, sigma=1.0, channel_axis=2, mode="reflect")), f"sharpen({amount:.2f})"


#: Distortion table: name -> function(image, strength, rng).
DISTORTIONS: dict[str, Distortion] = {
    "noise": _noise,
    "blur": _blur,
    "jpeg": _jpeg,
    "colour": _colour,
    "contrast": _contrast,
    "resample": _resample,
    "saltpepper": _saltpepper,
    "quantize": _quantize,
    "sharpen": _sharpen,
}


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(x, dtype=np.float32) * 255), 0, 255).astype(np.uint8)


def _patch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
    """A random patch of side ``size``: a crop of ``size * scale`` pixels, box-downsampled by ``scale``.

    The scale (1, 2 or 4, where the photo is large enough) varies the image content per pixel, as BAPPS's
    patches do.
    """
    for _ in range(100):
        name = PHOTOS[rng.integers(len(PHOTOS))]
        photo = load_photo(name)
        h, w = photo.shape[:2]
        scales = [s for s in (1, 2, 4) if size * s <= min(h, w)]
        if not scales:
            continue
        scale = int(scales[rng.integers(len(scales))])
        side = size * scale
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = photo[y : y + side, x : x + side]
        if scale > 1:
            crop = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BOX))
        if crop.std() >= MIN_PATCH_STD:
            return crop, f"{name}@{y},{x}x{scale}"
    raise RuntimeError(f"no textured {size}x{size} patch found in 100 draws; is size larger than the photos?")


def _distort(ref: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    kind = list(DISTORTIONS)[rng.integers(len(DISTORTIONS))]
    out, label = DISTORTIONS[kind](ref.astype(np.float32) / 255, float(rng.random()), rng)
    return _to_uint8(out), label


def make_triplet(seed: int, size: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Triplet ``index`` of the set (seed, size): ``(ref, d0, d1, description)``, uint8 ``[size, size, 3]``."""
    rng = np.random.default_rng([seed, size, index])
    ref, where = _patch(rng, size)
    d0, label0 = _distort(ref, rng)
    d1, label1 = _distort(ref, rng)
    return ref, d0, d1, f"{where} d0={label0} d1={label1}"


def make_triplets(count: int, size: int, seed: int = 0) -> TripletSet:
    """The first ``count`` triplets of the built-in set at ``size`` x ``size`` (size >= 8) for ``seed``."""
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    if size < 8:
        raise ValueError(f"size {size} is too small for the protocol's 3-pixel crop and the distortions")
    refs, d0s, d1s, info = [], [], [], []
    for i in range(count):
        ref, d0, d1, text = make_triplet(seed, size, i)
        refs.append(ref)
        d0s.append(d0)
        d1s.append(d1)
        info.append(text)
    return TripletSet(np.stack(refs), np.stack(d0s), np.stack(d1s), info)
