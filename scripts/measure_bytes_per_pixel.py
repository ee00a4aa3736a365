"""Working memory of one pair per pixel of an image, onnxruntime CPU provider, with its arena (as the Scorer runs)
and without it (what the graph's own tensors need), each in a fresh process (the exporter's probe,
``stlpips_export.memory.probe``). For comparing two exports of a graph:

    python scripts/measure_bytes_per_pixel.py OLD.onnx NEW.onnx --sizes 768x1024,1024x1536
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stlpips_export.memory import probe

WARM = (32, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--sizes", default="768x1024,1024x1536", help="HxW,... of the pair")
    args = parser.parse_args()
    print("| model | size | with arena, bytes per pixel | without arena |")
    print("|---|---|---|---|")
    for model in args.models:
        for size in args.sizes.split(","):
            h, w = map(int, size.split("x"))
            rates = [round(probe(model, h, w, WARM, arena=arena) / (h * w)) for arena in (True, False)]
            print(f"| {model} | {size} | {rates[0]} | {rates[1]} |", flush=True)


if __name__ == "__main__":
    main()
