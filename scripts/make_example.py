"""Write a synthetic example pair (a textured image and its one-pixel horizontal shift) for the demo."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:97, 0:97].astype(np.float32)
    rgb = np.stack([np.sin(xx / 5.0) * np.cos(yy / 7.0), np.sin((xx + yy) / 9.0), np.cos(xx / 3.0)], -1)
    img = ((rgb + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    Image.fromarray(img[:, :96]).save(out / "ref.png")
    Image.fromarray(img[:, 1:97]).save(out / "shifted.png")


if __name__ == "__main__":
    main(sys.argv[1])
