"""Build the onnxruntime session so that it never lands on the CPU by surprise.

The rules (docs/gpu.md):

- Providers are tried as one chain in one session: TensorRT, then CUDA, then the CPU, which is always last (it
  takes the few nodes a GPU provider leaves, such as shape arithmetic). TensorRT is always followed by CUDA where
  this onnxruntime has it, so nodes TensorRT cannot take go to the GPU, not the CPU.
- TensorRT whose libraries are missing (the usual ``pip install onnxruntime-gpu``) is dropped before the session is
  built; a TensorRT session that fails to build is rebuilt without it. Either way CUDA runs, ``scorer.provider``
  says "cuda", and one :class:`~stlpips_rt.errors.ProviderFallbackWarning` says why.
- onnxruntime's own fallback is off: it would rebuild on CUDA without our options (TF32 on in exact mode).
- CUDA libraries that do not load are first looked for in pip's NVIDIA packages (``onnxruntime.preload_dlls``).
- After creation ``session.get_providers()`` is checked. CUDA or TensorRT named by the caller and absent from the
  session is a :class:`~stlpips_rt.errors.ProviderError` naming the missing library; under ``"auto"`` the CPU runs,
  with one warning saying why.
- ``precision="fast"`` on CUDA runs :data:`CUDA_FAST_DEFAULT` unless ``CudaOptions.fast`` says otherwise: ``"fp16"`` is
  the ``--fp16`` export beside the model file (``stlpips_alex_st_fp16.onnx`` next to ``stlpips_alex_st.onnx``),
  with TF32 for what stays float32; ``"tf32"`` is the float32 graph with TF32 convolutions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from ..contract import Key, ModelSpec
from ..errors import ModelNotFoundError, ProviderError, ProviderFallbackWarning, StlpipsError
from .cuda_libraries import preload_nvidia_libraries, provider_library_problem, setup_hint
from .model_files import precision_sibling, read_model_info
from .options import SessionConfig
from .providers import SHORT_NAMES, create_session

GPU_PROVIDERS = ("tensorrt", "cuda")

# Until stlpips-bench-gpu has measured both on an H100 (docs/gpu.md), fp16 is the default: half the memory
# traffic and twice TF32's tensor-core rate, and its 2AFC agreement is checked by stlpips-parity.
CUDA_FAST_DEFAULT = "fp16"
_MODEL_ERRORS = ("INVALID_PROTOBUF", "INVALID_GRAPH", "NO_MODEL", "NO_SUCHFILE")

SessionFactory = Callable[[Path, list[str], SessionConfig], Any]


@dataclass
class BuiltSession:
    """The session, the model file it loaded and why it differs from what was asked (if it does)."""

    session: Any
    path: Path
    providers: list[str]  # short names the session registered, most preferred first
    notes: list[str] = field(default_factory=list)


def expand_chain(chosen: Sequence[str]) -> list[str]:
    """TensorRT hands the nodes it cannot take to CUDA, where this onnxruntime has it."""
    chain = list(dict.fromkeys(chosen))
    if "tensorrt" in chain and "cuda" not in chain and "CUDAExecutionProvider" in ort.get_available_providers():
        chain.insert(chain.index("tensorrt") + 1, "cuda")
    return chain


def fp16_sibling(path: Path) -> Path | None:
    """``stlpips_alex_st_spatial.onnx`` -> ``stlpips_alex_st_fp16_spatial.onnx`` in the same folder, if it exists."""
    return precision_sibling(path, "fp16")


def _same_model(a: Any, b: Any) -> bool:
    keys = (Key.NET, Key.VARIANT, Key.OUTPUTS, Key.STATIC_HW, Key.WEIGHTS_SHA256)
    return all(a.metadata.get(k) == b.metadata.get(k) for k in keys)


def cuda_fast_model(path: Path, choice: str | None) -> tuple[Path, list[str]]:
    """The file CUDA's fast mode runs, and notes on the choice. ``choice`` None takes :data:`CUDA_FAST_DEFAULT` and
    falls back to TF32 where no fp16 export lies beside the model; "fp16" insists on it."""
    want = choice or CUDA_FAST_DEFAULT
    spec = ModelSpec.from_file_name(path.name)
    if want == "tf32" or (spec is not None and spec.precision != "fp32"):
        return path, []
    sibling = fp16_sibling(path)
    if sibling is not None and _same_model(read_model_info(path), read_model_info(sibling)):
        return sibling, [f"fast mode on CUDA runs the fp16 export {sibling.name}"]
    if choice == "fp16":
        hint = (f"`stlpips-export --net {spec.net} --variant {spec.variant} --fp16 --out {path.parent}`" if spec
                else "an fp16 export named like stlpips_<net>_<variant>_fp16.onnx beside it")
        why = "was exported from other weights or outputs" if sibling else "does not exist"
        raise ModelNotFoundError(f"CudaOptions(fast='fp16') runs the fp16 export beside {path}, which {why}; "
                                 f"export it with {hint}")
    return path, ["fast mode on CUDA runs TF32 on the float32 graph (no fp16 export beside it)"]


def _is_model_error(exc: Exception) -> bool:
    return any(code in str(exc) for code in _MODEL_ERRORS)


def _refuse(asked: list[str], dropped: dict[str, str]) -> ProviderError:
    reasons = "; ".join(f"{p}: {why}" for p, why in dropped.items())
    return ProviderError(f"{' and '.join(asked)} asked for, but no GPU provider could be used ({reasons}). Refusing "
                         "to run on the CPU instead; pass providers='cpu' to do that on purpose")


def build_session(path: Path, chosen: Sequence[str], cfg: SessionConfig, explicit: bool,
                  create: SessionFactory | None = None) -> BuiltSession:
    """Create the session for the provider chain ``chosen`` (short names, most preferred first) by the rules in
    this module's docstring. ``explicit``: the caller named the providers (not ``"auto"``). ``create`` builds one
    session (default: providers.create_session)."""
    create = create or create_session
    chain = expand_chain(chosen)
    asked_gpu = [p for p in chain if p in GPU_PROVIDERS]
    if not asked_gpu:
        return BuiltSession(create(path, chain, cfg), path, chain)
    if "cpu" not in chain:
        chain.append("cpu")

    dropped: dict[str, str] = {}  # provider -> why it does not run
    if "tensorrt" in chain:
        problem = provider_library_problem("tensorrt")
        if problem:
            dropped["tensorrt"] = f"its libraries are missing ({problem})"
    if "cuda" in chain:
        problem = provider_library_problem("cuda")
        if problem:
            preload_nvidia_libraries()
            problem = provider_library_problem("cuda")
        if problem:
            dropped["cuda"] = f"{problem}; {setup_hint()}"

    notes: list[str] = []
    while True:
        chain = [p for p in chain if p not in dropped]
        if explicit and not any(p in GPU_PROVIDERS for p in chain):
            raise _refuse(asked_gpu, dropped)
        model = path
        if cfg.precision == "fast" and chain[0] == "cuda":
            model, notes = cuda_fast_model(path, cfg.cuda.fast)
        try:
            session = create(model, chain, cfg)
        except StlpipsError:
            raise
        except Exception as exc:  # onnxruntime's exception types are private
            if _is_model_error(exc) or chain[0] not in GPU_PROVIDERS:
                raise
            dropped[chain[0]] = f"onnxruntime could not build a session on it ({exc})"
            continue
        break

    registered = [SHORT_NAMES.get(p, p) for p in session.get_providers()]
    for p in chain:
        if p in GPU_PROVIDERS and p not in registered:
            dropped[p] = ("onnxruntime did not register it (its log above says why; usually a missing CUDA "
                          f"library: {setup_hint()})")
    running = [p for p in registered if p in GPU_PROVIDERS]
    if not running and explicit:
        raise _refuse(asked_gpu, dropped)
    if dropped:
        reasons = "; ".join(f"{p} is not used: {why}" for p, why in dropped.items())
        warnings.warn(f"{reasons}. Running on {registered[0]}.", ProviderFallbackWarning, stacklevel=3)
        notes.append(reasons)
    return BuiltSession(session, model, registered, notes)
