"""Torch-free runtime of stlpips-deploy: score image pairs with exported ST-LPIPS / LPIPS ONNX graphs.

    >>> from stlpips_rt import Scorer
    >>> scorer = Scorer("alex-st")            # models/stlpips_alex_st.onnx, best available provider
    >>> scorer.score("ref.png", "dist.png")   # float distance, 0 = identical
"""

from .contract import ModelInfo, ModelSpec
from .engine.device_tensors import DeviceArray
from .engine.model_files import read_model_info, resolve_model
from .engine.options import CpuOptions, CudaOptions, OpenVinoOptions, TensorRTOptions
from .engine.providers import available_providers, unavailable_reasons
from .errors import (
    ChannelError,
    DeviceTensorError,
    ImageError,
    ImageRangeError,
    ImageReadError,
    ImageSizeError,
    ImageTooLargeError,
    ImageValueError,
    InferenceError,
    MemoryBudgetError,
    ModelError,
    ModelNotFoundError,
    NotAnImageError,
    NotAnStlpipsModelError,
    ProviderError,
    ProviderFallbackWarning,
    RequestError,
    RequestTooLargeError,
    StlpipsError,
)
from .io.images import ImageOptions
from .scorer import Scorer
from .variants import VARIANTS, Variant

__version__ = "0.2.0"

__all__ = [
    "ChannelError",
    "CpuOptions",
    "CudaOptions",
    "DeviceArray",
    "DeviceTensorError",
    "ImageError",
    "ImageOptions",
    "ImageRangeError",
    "ImageReadError",
    "ImageSizeError",
    "ImageTooLargeError",
    "ImageValueError",
    "InferenceError",
    "MemoryBudgetError",
    "ModelError",
    "ModelInfo",
    "ModelNotFoundError",
    "ModelSpec",
    "NotAnImageError",
    "NotAnStlpipsModelError",
    "OpenVinoOptions",
    "ProviderError",
    "ProviderFallbackWarning",
    "RequestError",
    "RequestTooLargeError",
    "Scorer",
    "StlpipsError",
    "TensorRTOptions",
    "VARIANTS",
    "Variant",
    "available_providers",
    "read_model_info",
    "resolve_model",
    "unavailable_reasons",
]
