"""Loader for the Berkeley-Adobe Perceptual Patch Similarity (BAPPS) 2AFC data.

Layout (as the LPIPS authors distribute it, e.g. ``dataset/2afc/val``): one folder per distortion category
(``cnn``, ``traditional``, ``color``, ``deblur``, ``frameinterp``, ``superres``), each with ``ref/``, ``p0/``,
``p1/`` holding PNG patches and ``judge/`` holding one ``.npy`` per triplet (the fraction of people who chose
p1). Files are matched by stem. ``DIR`` may be that parent folder or a single category folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .triplets import TripletSet

_PARTS = ("ref", "p0", "p1", "judge")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def find_categories(root: str | Path) -> dict[str, Path]:
    """Category name -> folder for a BAPPS 2AFC directory (or one category folder), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BAPPS directory {root} does not exist")
    if (root / "ref").is_dir():
        return {root.name: root}
    found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and (p / "ref").is_dir()}
    if not found:
        raise FileNotFoundError(
            f"{root} holds no BAPPS 2AFC category: expected sub-folders with {', '.join(_PARTS)}/ "
            "(for example dataset/2afc/val from the LPIPS repository's download script)"
        )
    return found


def _read_image(path: Path, size: int | None) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        # Bicubic as the runtime's optional resize; the paper's Table 2 scores BAPPS resized to 64x64.
        if size is not None and im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def load_category(folder: Path, size: int | None = None, limit: int | None = None) -> TripletSet:
    """All triplets of one category folder, images resized to ``size`` x ``size`` when given."""
    for part in _PARTS:
        if not (folder / part).is_dir():
            raise FileNotFoundError(f"BAPPS category {folder} lacks its {part}/ folder")
    stems = sorted(p.stem for p in (folder / "ref").iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if limit is not None:
        stems = stems[:limit]
    if not stems:
        raise FileNotFoundError(f"BAPPS category {folder} has no images in ref/")
    refs, d0s, d1s, judges = [], [], [], []
    for stem in stems:
        paths = {}
        for part in ("ref", "p0", "p1"):
            matches = [p for p in (folder / part).glob(stem + ".*") if p.suffix.lower() in _IMAGE_SUFFIXES]
            if not matches:
                raise FileNotFoundError(f"BAPPS triplet {stem} of {folder.name} has no image in {part}/")
            paths[part] = matches[0]
        judge_path = folder / "judge" / f"{stem}.npy"
        if not judge_path.is_file():
            raise FileNotFoundError(f"BAPPS triplet {stem} of {folder.name} has no judge/{stem}.npy")
        judge = float(np.load(judge_path, allow_pickle=False).reshape(-1)[0])
        if not 0.0 <= judge <= 1.0:
            raise ValueError(f"{judge_path}: judge {judge} is not a fraction in [0, 1]")
        images = [_read_image(paths[p], size) for p in ("ref", "p0", "p1")]
        if not images[0].shape == images[1].shape == images[2].shape:
            raise ValueError(
                f"BAPPS triplet {stem} of {folder.name}: ref, p0, p1 differ in size "
                f"({', '.join(str(i.shape) for i in images)}); pass a size to resize them"
            )
        refs.append(images[0])
        d0s.append(images[1])
        d1s.append(images[2])
        judges.append(judge)
    return TripletSet(
        np.stack(refs),
        np.stack(d0s),
        np.stack(d1s),
        info=[f"{folder.name}/{s}" for s in stems],
        judge=np.array(judges),
        category=np.array([folder.name] * len(stems)),
    )


def load_bapps(root: str | Path, size: int | None = 64, limit: int | None = None) -> TripletSet:
    """Every category under ``root`` as one set (``category`` labels each triplet).

    ``size`` resizes patches (64 for the paper's Table 2, 256 or None for Table 3, BAPPS's native size);
    ``limit`` keeps the first N triplets of each category (sorted by file name), for quick runs.
    """
    sets = [load_category(folder, size, limit) for folder in find_categories(root).values()]
    shapes = {s.ref.shape[1:] for s in sets}
    if len(shapes) > 1:
        raise ValueError(f"BAPPS categories differ in image size {sorted(shapes)}; pass a size to resize them")
    return TripletSet(
        np.concatenate([s.ref for s in sets]),
        np.concatenate([s.d0 for s in sets]),
        np.concatenate([s.d1 for s in sets]),
        info=[i for s in sets for i in s.info],
        judge=np.concatenate([s.judge for s in sets]),
        category=np.concatenate([s.category for s in sets]),
    )
