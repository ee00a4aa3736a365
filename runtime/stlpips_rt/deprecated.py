"""Scorer keywords of 0.1, mapped onto the option objects that replaced them (removed in 0.3).

``Scorer(device_id=1, resize=64)`` still works and warns with the replacement: ``provider_options=[CudaOptions(
device_id=1)]``, ``image=ImageOptions(resize=64)``. One table here is the whole mapping (docs/runtime.md repeats it
for users)."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

from .engine.model_files import resolve_model
from .engine.options import CudaOptions, OpenVinoOptions, TensorRTOptions
from .io.images import ImageOptions

#: old keyword -> (option class, its field); None: handled in :func:`translate`.
MOVED: dict[str, tuple[type, str] | None] = {
    "device_id": (CudaOptions, "device_id"),
    "cudnn_conv_algo_search": (CudaOptions, "cudnn_conv_algo_search"),
    "cuda_fast": (CudaOptions, "fast"),
    "cuda_options": (CudaOptions, "extra"),
    "io_binding": (CudaOptions, "io_binding"),
    "openvino_device": (OpenVinoOptions, "device"),
    "float_range": (ImageOptions, "float_range"),
    "resize": (ImageOptions, "resize"),
    "max_pixels": (ImageOptions, "max_pixels"),
    "tensorrt": None,
    "models_dir": None,
}


def translate(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Scorer keyword arguments with the 0.1 keywords folded into ``image``, ``provider_options`` and ``model``;
    one DeprecationWarning names every replacement."""
    old = [k for k in kwargs if k in MOVED]
    if not old:
        return dict(kwargs)
    out = {k: v for k, v in kwargs.items() if k not in MOVED}
    hints = []
    fields: dict[type, dict[str, Any]] = {}
    for key in old:
        target = MOVED[key]
        if target is not None:
            fields.setdefault(target[0], {})[target[1]] = kwargs[key]
            hints.append(f"{key}= -> {target[0].__name__}({target[1]}=...)")
    image = out.get("image") or ImageOptions()
    if ImageOptions in fields:
        out["image"] = dataclasses.replace(image, **fields.pop(ImageOptions))
    given = {type(o): o for o in out.get("provider_options", ())}
    if kwargs.get("tensorrt") is not None:
        given[TensorRTOptions] = kwargs["tensorrt"]
        hints.append("tensorrt= -> provider_options=[TensorRTOptions(...)]")
    for cls, values in fields.items():
        given[cls] = dataclasses.replace(given.get(cls) or cls(), **values)
    if given:
        out["provider_options"] = tuple(given.values())
    if kwargs.get("models_dir") is not None:
        out["model"] = resolve_model(out.get("model", "alex-st"), [kwargs["models_dir"]])
        hints.append("models_dir= -> Scorer(stlpips_rt.resolve_model(name, [models_dir]))")
    warnings.warn(f"Scorer keywords of stlpips-deploy 0.1 are deprecated: {'; '.join(hints)} (image=, "
                  "provider_options=; docs/runtime.md 'Scorer options')", DeprecationWarning, stacklevel=3)
    return out
