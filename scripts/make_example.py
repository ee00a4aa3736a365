"""Write the sample images the README's and docs' examples name, so that each command runs as written.

    python scripts/make_example.py out/example                  # what scripts/demo.sh writes
    python scripts/make_example.py out/example --models models  # also a link out/example/models -> models

Into the folder: ``ref.png`` and ``shifted.png`` (a textured image and its one-pixel horizontal shift), ``dist.png``
(the reference, blurred and with noise), ``a.png`` and ``b.png``, ``candidates/`` (4 images), ``images/`` (8, one a
near-duplicate of another), ``refs/`` and ``dists/`` (3 images each, matched by name), ``pairs.csv`` (ref,dist
rows), ``queries/`` (2) and ``corpus/`` (5): 96x96 RGB PNGs; and ``big_a.png``, ``big_b.png`` (768x1024, for tiling).
Made from sines and a fixed seed: the same bytes on every machine.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 96


def texture(phase: float = 0.0, width: int = SIZE + 1, height: int = SIZE + 1) -> np.ndarray:
    """A smooth RGB texture, ``[height, width, 3]`` uint8; ``phase`` moves its patterns."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([np.sin(xx / 5.0 + phase) * np.cos(yy / 7.0), np.sin((xx + yy) / 9.0 + 2 * phase),
                    np.cos(xx / 3.0 - phase)], -1)
    return ((rgb + 1.0) * 127.5).clip(0, 255).astype(np.uint8)


def distort(img: np.ndarray, seed: int, noise: float = 12.0) -> np.ndarray:
    """A box blur of the image plus Gaussian noise (a typical distortion)."""
    x = img.astype(np.float32)
    blurred = (x + np.roll(x, 1, 0) + np.roll(x, -1, 0) + np.roll(x, 1, 1) + np.roll(x, -1, 1)) / 5
    rng = np.random.default_rng(seed)
    return (blurred + rng.normal(0, noise, img.shape)).clip(0, 255).astype(np.uint8)


def write(path: Path, img: np.ndarray, size: tuple[int, int] = (SIZE, SIZE)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img[:size[0], :size[1]]).save(path)


def main(out_dir: str, models: str | None = None) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = texture()
    write(out / "ref.png", base[:, :SIZE])
    write(out / "shifted.png", base[:, 1:])
    write(out / "dist.png", distort(base, 0))
    write(out / "a.png", distort(base, 1, 6.0))
    write(out / "b.png", texture(0.4))
    for i in range(4):
        write(out / "candidates" / f"c{i + 1}.png", distort(texture(0.1 * i), 10 + i, 4.0 + 4 * i))
    for i in range(7):
        write(out / "images" / f"im{i + 1:02d}.png", distort(texture(0.5 * i), 20 + i, 3.0 * i))
    near = distort(texture(0.5), 21, 3.0)
    near[5, 7, 1] ^= 1  # one bit from images/im02.png: a near-duplicate
    write(out / "images" / "im08.png", near)
    for i in range(3):
        write(out / "refs" / f"x{i + 1}.png", texture(0.3 * i))
        write(out / "dists" / f"x{i + 1}.png", distort(texture(0.3 * i), 30 + i))
    (out / "pairs.csv").write_text("ref,dist\n" + "".join(f"refs/x{i}.png,dists/x{i}.png\n" for i in (1, 2, 3)))
    for i in range(2):
        write(out / "queries" / f"q{i + 1}.png", distort(texture(0.5 * i), 40 + i, 5.0))
    for i in range(5):
        write(out / "corpus" / f"k{i + 1}.png", texture(0.5 * i))
    big = texture(0.2, width=1024, height=768)
    write(out / "big_a.png", big, big.shape[:2])
    write(out / "big_b.png", distort(big, 50), big.shape[:2])
    if models is not None:
        link = out / "models"
        if not link.exists():
            link.symlink_to(os.path.relpath(Path(models).resolve(), out.resolve()), target_is_directory=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--models", help="link OUT_DIR/models to this folder, so short model names resolve there")
    args = parser.parse_args()
    main(args.out_dir, args.models)
