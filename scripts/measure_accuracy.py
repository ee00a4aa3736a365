"""How far each engine's float32 distance lies from a float64 PyTorch reference (docs/reproducibility.md "Across
engines"): onnxruntime's CPU provider, OpenVINO in f32 (``providers="openvino"``: onnxruntime's OpenVINO plugin on
Intel, OpenVINO's own runtime elsewhere), and PyTorch float32, on random pairs. Needs the export extra (torch).

    python scripts/measure_accuracy.py --model models/stlpips_alex_st.onnx [--pairs 24] [--size 64] [--json f]

Prints max and median relative error per engine, the CPU, the load average and the versions.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stlpips_export.model import build_model, paired_difference, unit_normalize
from stlpips_rt import Scorer
from stlpips_rt.io.manifest import cpu_name


def random_pairs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs in [-1, 1]: smooth random images and distorted copies (noise of random strength), distances spread
    over 0.05..0.9 like real ones."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(-1, 1, (n, 3, size // 8, size // 8)))
    a = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).numpy()
    noise = rng.normal(0, 1, a.shape) * rng.uniform(0.02, 0.5, (n, 1, 1, 1))
    return np.clip(a, -1, 1).astype(np.float32), np.clip(a + noise, -1, 1).astype(np.float32)


def float64_distance(model: torch.nn.Module, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The model's forward pass (stlpips_export.model.PerceptualDistance) with every operation in float64."""
    m = copy.deepcopy(model).double()
    first, second = (m.net(m.scaling_layer(torch.from_numpy(x).double())) for x in (a, b))
    total = torch.zeros(len(a), 1, dtype=torch.float64)
    for f0, f1, lin in zip(first, second, m.lins, strict=True):
        total = total + lin(paired_difference(unit_normalize(f0), unit_normalize(f1)) ** 2).mean(dim=[2, 3])
    return total[:, 0].numpy()


def relative(expected: np.ndarray, got: np.ndarray) -> dict[str, float]:
    rel = np.abs(got.astype(np.float64) - expected) / np.abs(expected)
    return {"max_rel": float(rel.max()), "median_rel": float(np.median(rel)),
            "max_abs": float(np.abs(got.astype(np.float64) - expected).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    load = os.getloadavg()
    a, b = random_pairs(args.pairs, args.size, args.seed)
    engines: dict[str, Scorer] = {"onnxruntime CPU": Scorer(args.model, providers="cpu")}
    try:
        engines["OpenVINO f32"] = Scorer(args.model, providers="openvino")
    except Exception as exc:  # noqa: BLE001 - OpenVINO is optional
        print(f"OpenVINO skipped: {exc}")
    info = engines["onnxruntime CPU"].info
    torch_model = build_model(info.net, info.variant).eval()
    with torch.no_grad():
        f32 = torch_model(torch.from_numpy(a), torch.from_numpy(b))[0].numpy().reshape(-1)
        ref = float64_distance(torch_model, a, b)
    result: dict[str, Any] = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average": load,
                              "model": args.model.name, "pairs": args.pairs, "size": args.size, "engines": {}}
    for name, scorer in engines.items():
        got = scorer.run_arrays(a, b)[0].reshape(-1)
        result["engines"][name] = {**relative(ref, got), **scorer.provenance()["engine"], "precision": scorer.precision}
    result["engines"]["PyTorch float32"] = {**relative(ref, f32), "name": "torch", "version": torch.__version__}
    print(f"{args.model.name}, {args.pairs} random {args.size}x{args.size} pairs vs float64 PyTorch; CPU "
          f"{result['cpu']} ({result['cores']} cores), load {load[0]:.1f}")
    print("| engine | version | max rel | median rel | max abs |")
    print("|---|---|---|---|---|")
    for name, r in result["engines"].items():
        print(f"| {name} | {r['name']} {r['version']} | {r['max_rel']:.1e} | {r['median_rel']:.1e} | "
              f"{r['max_abs']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
