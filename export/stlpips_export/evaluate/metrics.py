"""The metrics of the study, all as distances (lower = more similar) of uint8 RGB images.

Each metric takes one reference ``[H, W, 3]`` and candidates ``[N, H, W, 3]`` (uint8) and returns float64
``[N]``: the learned ones compute the reference's features once (the runtime's ``score_many``, the PyTorch
reference's broadcast batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from stlpips_rt.io.images import to_model_input
from stlpips_rt.precision import INT8_ENGINES, REDUCED
from stlpips_rt.variants import RELEASED, VARIANTS, Variant

#: Learned metrics: the registered variants with released weights, named by their key ("alex-st").
LEARNED: dict[str, Variant] = {key: VARIANTS[key] for key in sorted(RELEASED, key=lambda k: (k.endswith("-st"), k))}
CLASSIC = {"l2": "L2", "ssim": "SSIM"}
#: Every metric name the CLI accepts, in table order (the paper's: classic first).
METRIC_NAMES = (*CLASSIC, *LEARNED)
#: How a learned metric is computed: runtime exact, runtime fast (the fastest reduced-precision path,
#: stlpips_rt.precision), the model's int8 file (stlpips-export --int8), PyTorch reference.
BACKENDS = ("onnx", "fast", "int8", "torch")


class Metric(Protocol):
    """A distance between one reference and a batch of same-sized candidates."""

    name: str
    backend: str

    def distances(self, ref: np.ndarray, candidates: np.ndarray) -> np.ndarray: ...


def _check(ref: np.ndarray, candidates: np.ndarray) -> None:
    if ref.dtype != np.uint8 or candidates.dtype != np.uint8:
        raise ValueError("metrics take uint8 RGB images")
    if candidates.ndim != 4 or candidates.shape[1:] != ref.shape:
        raise ValueError(f"candidates {candidates.shape} do not match the reference {ref.shape}")


@dataclass
class L2:
    """Mean squared error on [0, 1] pixel values."""

    name: str = "L2"
    backend: str = "numpy"

    def distances(self, ref: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        _check(ref, candidates)
        diff = candidates.astype(np.float64) / 255 - ref.astype(np.float64) / 255
        return np.mean(diff * diff, axis=(1, 2, 3))


@dataclass
class SSIM:
    """``1 - SSIM`` (scikit-image, 7x7 uniform window, per channel then averaged, data range 255)."""

    name: str = "SSIM"
    backend: str = "skimage"

    def distances(self, ref: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        from skimage.metrics import structural_similarity

        _check(ref, candidates)
        return np.array(
            [1.0 - structural_similarity(ref, c, channel_axis=2, data_range=255) for c in candidates]
        )


class RuntimeMetric:
    """A learned metric through the torch-free runtime (`stlpips_rt.Scorer`) on an exported ONNX graph."""

    def __init__(self, key: str, precision: str = "exact", providers: str = "auto", threads: int | None = None,
                 models_dir: Path | None = None, int8: bool = False):
        from stlpips_rt import Scorer, resolve_model

        model = resolve_model(f"{key}-int8" if int8 else key, [models_dir] if models_dir else [])
        self.scorer = Scorer(model, providers, precision, threads=threads)
        self.name = LEARNED[key].display_name
        self.backend = "int8" if int8 else "fast" if precision == "fast" else "onnx"
        self.detail = f"{self.scorer.provider} {self.scorer.precision}"
        if precision == "fast" and self.scorer.precision == "fp32":
            raise ValueError(
                f"no reduced-precision provider here: {self.scorer.provider} runs 'fast' as fp32, the same numbers "
                f"as 'onnx'; drop the 'fast' backend (it needs one of: {', '.join(REDUCED)})"
            )

    def distances(self, ref: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        _check(ref, candidates)
        return np.asarray(self.scorer.score_many(ref, candidates), dtype=np.float64)


class TorchMetric:
    """A learned metric through the project's PyTorch reference model (float32, CPU)."""

    def __init__(self, key: str, threads: int | None = None):
        import torch

        from ..model import build_model

        variant = LEARNED[key]
        if threads is not None:
            torch.set_num_threads(threads)
        self.model = build_model(variant.net, variant.variant).eval()
        self.name = variant.display_name
        self.backend = "torch"
        self.detail = f"PyTorch {torch.__version__} CPU float32"
        self._torch = torch

    def distances(self, ref: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        _check(ref, candidates)
        torch = self._torch

        with torch.inference_mode():
            dist = self.model(torch.from_numpy(to_model_input(ref)), torch.from_numpy(to_model_input(candidates)))[0]
        return dist.double().numpy()


def make_metric(name: str, backend: str = "onnx", providers: str = "auto", threads: int | None = None,
                models_dir: Path | None = None) -> Metric:
    """Build metric ``name`` (one of `METRIC_NAMES`) on ``backend`` (`BACKENDS`; ignored for L2 / SSIM)."""
    if name == "l2":
        return L2()
    if name == "ssim":
        return SSIM()
    if name not in LEARNED:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}")
    if backend == "torch":
        return TorchMetric(name, threads=threads)
    if backend == "onnx":
        return RuntimeMetric(name, "exact", providers, threads, models_dir)
    if backend == "fast":  # stlpips_rt.precision picks the path, the int8 file included where it exists
        return RuntimeMetric(name, "fast", providers, threads, models_dir)
    if backend == "int8":
        return RuntimeMetric(name, "exact", _int8_providers(providers), threads, models_dir, int8=True)
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def _int8_providers(providers: str) -> str:
    """For "auto", the engine "fast" runs an int8 file on (stlpips_rt.precision)."""
    if providers != "auto":
        return providers
    from stlpips_rt.engine.providers import available_providers
    from stlpips_rt.precision import fast_path

    cpu_side = [p for p in available_providers() if p in INT8_ENGINES]
    return fast_path(cpu_side or ["cpu"], int8_file=True).provider
