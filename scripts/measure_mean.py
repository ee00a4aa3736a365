"""How accurate is an exported graph's spatial mean? (docs/contract.md "Spatial mean").

For each size, score photo-like pairs (two independent smooth images, and an image against a lightly noised copy)
with a format-1.1 file, which returns each layer's distance map beside ``dist``, and compare ``dist`` with the float64
mean of those same maps summed over the layers: the relative error is what the graph's own float32 mean adds. With
``--old FILE`` (a file whose means are plain ReduceMean, e.g. one exported by stlpips-deploy 0.1), that file's
``dist`` is held against the same float64 reference (both files compute their layer maps with the same operators).

    python scripts/measure_mean.py --model models/stlpips_alex_st.onnx [--old old/stlpips_alex_st.onnx] \
        [--sizes 64x64,256x256,700x1031,2048x2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from stlpips_rt.contract import Key
from stlpips_rt.io.manifest import cpu_name
from stlpips_rt.precision import float64_distance

DEFAULT_SIZES = "64x64,256x256,700x1031,1024x1024,2048x2048"


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    coarse = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), np.float32)


def to_input(pixels: np.ndarray) -> np.ndarray:
    return (np.clip(pixels, 0, 255).round() / 127.5 - 1).astype(np.float32).transpose(2, 0, 1)[None]


def pairs(rng: np.random.Generator, h: int, w: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    a, b = smooth_image(rng, h, w), smooth_image(rng, h, w)
    noisy = a + rng.normal(0, 4, a.shape)
    return [("independent", to_input(a), to_input(b)), ("noised copy", to_input(a), to_input(noisy))]


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a format-1.1 file (with layer_map outputs)")
    parser.add_argument("--old", type=Path, help="a file to compare against the same reference")
    parser.add_argument("--sizes", default=DEFAULT_SIZES)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    new = session(args.model)
    maps = [n.strip() for n in new.get_modelmeta().custom_metadata_map.get(Key.LAYER_MAPS, "").split(",") if n]
    if not maps:
        parser.error(f"{args.model} has no layer_map outputs (exported before format 1.1?)")
    old = session(args.old) if args.old else None
    rng = np.random.default_rng(0)
    rows = []
    print(f"CPU: {cpu_name()}; onnxruntime {ort.__version__}")
    print("| size | pair | dist | graph mean rel. error | old graph rel. error |")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        for name, in0, in1 in pairs(rng, h, w):
            dist, *layer_maps = new.run(["dist", *maps], {"in0": in0, "in1": in1})
            exact = float64_distance(layer_maps)
            row = {"size": f"{h}x{w}", "pair": name, "dist": float(dist[0]),
                   "rel_error": abs(float(dist[0]) - exact) / exact}
            if old is not None:
                old_dist = old.run(["dist"], {"in0": in0, "in1": in1})[0]
                row["old_rel_error"] = abs(float(old_dist[0]) - exact) / exact
            rows.append(row)
            print(f"| {row['size']} | {name} | {row['dist']:.6g} | {row['rel_error']:.2e} | "
                  f"{row.get('old_rel_error', float('nan')):.2e} |", flush=True)
    print(f"max relative error: {max(r['rel_error'] for r in rows):.2e}"
          + (f" (old graph {max(r['old_rel_error'] for r in rows):.2e})" if old is not None else ""))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "onnxruntime": ort.__version__, "model": str(args.model),
                                         "old": str(args.old) if args.old else None, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
