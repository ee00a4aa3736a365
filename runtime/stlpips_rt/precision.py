"""Precision modes, in one place: what "exact" and "fast" run as on each provider, and the parity tolerance of
each arithmetic. The Scorer, ``stlpips-parity``, ``stlpips-eval`` and ``stlpips-bench`` all read this module.

- ``exact``: float32 throughout, parity with the PyTorch reference.
- ``fast``: the fastest reduced-precision path that exists for the model and the machine (:func:`fast_path`):
  a GPU provider's reduced precision (:data:`REDUCED`: fp16 on TensorRT, TF32 on CUDA); else the model's int8 file
  (``stlpips-export --int8``, gated against float32) where it was exported, on OpenVINO where installed (it ran the
  QDQ graph faster than onnxruntime's CPU provider here), else on the CPU provider; else bf16 on OpenVINO's CPU
  runtime; else float32 (the CPU provider has no reduced-precision mode). A file exported with reduced precision
  inside (``--fp16``, ``--int8``) runs as that in both modes.

Tolerances (max abs error of any output, and minimum 2AFC rank agreement against the reference) depend on the
arithmetic that actually runs (``Scorer.precision``):

- fp32: 1e-5 abs, 100% rank agreement.
- fp16 (TensorRT fast, fp16 graphs) and tf32 (CUDA fast): 1e-2 abs, >= 98% rank agreement. Both keep a 10-bit
  mantissa. The reference with a float16 backbone in PyTorch gives max abs 2.6e-4 (alex-st) and 9.6e-4 (vgg-st)
  on the parity cases, rank agreement 100%; fp16 graphs measured < 2e-3 at export. 1e-2 leaves 5-10x margin for
  larger images and other kernels without admitting a broken graph (a wrong graph is off by 1e-1 and more on
  distances of 0.05..0.8).
- A GPU's reduced precision (tf32, fp16) must also keep >= 99.5% of the 2AFC judgments on real photos, pooled
  over all real-photo triplet sets (``min_real_rank_agreement``): a fast mode must rank real images as the exact
  model does (docs/gpu.md).
- bf16 (OpenVINO fast): 2e-2 abs, >= 98% rank agreement. bf16 keeps 7 mantissa bits, 8x coarser than fp16; the
  reference with a bfloat16 backbone in PyTorch gives max abs 5.6e-3 (alex-st) and 4.0e-3 (vgg-st), rank
  agreement 100%; 2e-2 bounds that emulated worst case with 3.5x margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MODES = ("exact", "fast")
#: provider -> the arithmetic its "fast" mode runs. Providers not listed have no reduced-precision mode.
REDUCED = {"tensorrt": "fp16", "cuda": "tf32", "openvino": "bf16"}


@dataclass(frozen=True)
class Tolerance:
    max_abs: float
    min_rank_agreement: float  # the worst triplet set
    min_real_rank_agreement: float | None = None  # pooled over real-photo triplet sets; None: no extra bound


TOLERANCES = {
    "fp32": Tolerance(1e-5, 1.0),
    "tf32": Tolerance(1e-2, 0.98, 0.995),
    "fp16": Tolerance(1e-2, 0.98, 0.995),
    "bf16": Tolerance(2e-2, 0.98),
    # int8 files: their export gate (2AFC rank agreement and rank-flip rates against the float32 graph, on 2000
    # real-photo triplets; docs/int8.md) decides rankings. This bound only catches a broken graph: alex-st int8
    # graphs measured max abs 2.2e-2 (NNCF, stlpips-parity) and 5.4e-2 (onnxruntime's quantizer: flat grey vs flat
    # white, distance 0.43) against PyTorch.
    "int8": Tolerance(1e-1, 0.95, 0.995),
}


#: Tiled vs full-frame distance of one pair, relative (docs/tiling.md): the tiles sum the same terms in another
#: order, so they agree to float32 rounding, not bit for bit.
TILED_MAX_REL = 1e-6

#: A float32 graph's distance against the float64 mean of its own layer maps, relative, at any size the default
#: memory budget scores untiled (docs/contract.md "Spatial mean"): what its block-sum spatial mean may add. The
#: export gate checks it on one large pair.
SPATIAL_MEAN_MAX_REL = 2e-7


def float64_distance(layer_maps: Sequence[np.ndarray]) -> float:
    """A pair's distance from its per-layer distance maps (``[1, 1, H_l, W_l]`` each), each map's mean taken in
    float64: the reference a graph's float32 spatial means are held to (:data:`SPATIAL_MEAN_MAX_REL`)."""
    return sum(float(m.astype(np.float64).mean()) for m in layer_maps)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"precision must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def runs_as(provider: str, mode: str, file_precision: str = "fp32") -> str:
    """The arithmetic ``provider`` runs a file of ``file_precision`` with in ``mode``."""
    if file_precision != "fp32":
        return file_precision
    return REDUCED.get(provider, "fp32") if check_mode(mode) == "fast" else "fp32"


#: GPU providers: "fast" there is their own reduced precision; int8 files are for CPUs.
GPU_PROVIDERS = ("tensorrt", "cuda")
#: Engines for an int8 file, fastest first.
INT8_ENGINES = ("openvino", "cpu")


@dataclass(frozen=True)
class FastPath:
    """What "fast" runs: on ``provider``, the model's ``file_precision`` file ("int8": its -int8 sibling; "fp32":
    the file as given), computing in ``arithmetic`` (what ``Scorer.precision`` then says)."""

    provider: str
    file_precision: str
    arithmetic: str


def fast_path(providers: Sequence[str], int8_file: bool) -> FastPath:
    """The fastest reduced-precision path among ``providers`` (usable short names, most preferred first) for a
    model whose int8 file exists (``int8_file``) or not. The order is the module docstring's."""
    if not providers:
        raise ValueError("fast_path needs at least one provider")
    gpu = [p for p in providers if p in GPU_PROVIDERS]
    if gpu:
        return FastPath(gpu[0], "fp32", REDUCED[gpu[0]])
    if int8_file:
        for engine in INT8_ENGINES:
            if engine in providers:
                return FastPath(engine, "int8", "int8")
    if "openvino" in providers:
        return FastPath("openvino", "fp32", REDUCED["openvino"])
    return FastPath(providers[0], "fp32", "fp32")


def session_mode(mode: str, file_precision: str) -> str:
    """The mode a session is built in: an int8 file computes its float32 parts in float32 in both modes (the
    arithmetic its gate measured), so OpenVINO must not turn them into bf16."""
    return "exact" if file_precision == "int8" else check_mode(mode)


def has_fast_mode(provider: str) -> bool:
    return provider in REDUCED


def tolerance(precision: str) -> Tolerance:
    """The parity tolerance of an arithmetic; unknown ones get the loosest 10-bit bound (fp16)."""
    return TOLERANCES.get(precision, TOLERANCES["fp16"])


# --- comparing results -----------------------------------------------------------------------------------------
def error_stats(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(max abs, max relative) error of ``actual`` against ``expected``. Relative error counts only where
    ``|expected| > 1e-4``: it is meaningless for distances near zero."""
    expected = np.asarray(expected, dtype=np.float64)
    diff = np.abs(expected - np.asarray(actual, dtype=np.float64))
    significant = np.abs(expected) > 1e-4
    rel = diff[significant] / np.abs(expected[significant]) if significant.any() else np.zeros(1)
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0))


def rank_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """Share of candidate pairs (i, j) that both score vectors order the same way: a 2AFC judgment per pair."""
    i, j = np.triu_indices(len(reference), k=1)
    return float(np.mean(np.sign(reference[i] - reference[j]) == np.sign(other[i] - other[j])))
