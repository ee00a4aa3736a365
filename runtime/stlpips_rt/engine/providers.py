"""Execution provider selection and session options (TensorRT, CUDA, OpenVINO, CPU).

Users name providers by short names (``"tensorrt"``, ``"cuda"``, ``"openvino"``, ``"cpu"``) or by onnxruntime's
names (``"CUDAExecutionProvider"``). ``"auto"`` takes the first available of :data:`AUTO_ORDER`: a GPU chain
(TensorRT, CUDA, then the CPU) where one is available, else onnxruntime's CPU provider, on every CPU. OpenVINO
runs only when named, or for ``precision="fast"`` where :func:`stlpips_rt.precision.fast_path` picks it: whether
onnxruntime's OpenVINO plugin offers a device depends on the CPU's vendor (Intel yes, AMD no), and the engine that
computes a distance must not (docs/reproducibility.md: onnxruntime's CPU provider is also the more accurate of the
two against a float64 reference).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from .. import precision
from ..errors import ProviderError
from . import winograd
from .cpus import engine_threads
from .openvino_direct import OpenVinoSession, openvino_runtime_reason
from .options import SessionConfig

ORT_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
SHORT_NAMES = {v: k for k, v in ORT_NAMES.items()}
#: Every provider the runtime knows, in the order :func:`available_providers` lists them.
PROVIDERS = ("tensorrt", "cuda", "openvino", "cpu")
#: What ``"auto"`` tries (``precision="exact"``), first available wins: OpenVINO is not in it (module docstring).
AUTO_ORDER = ("tensorrt", "cuda", "cpu")


# --- OpenVINO plugin -----------------------------------------------------------------------------------------
# The plugin library may be registered only once per process; a lock keeps concurrent Scorer constructions safe.
_OV_LOCK = threading.Lock()
_OV_STATE: dict[str, Any] = {}
_OV_REGISTRATION = "stlpips_openvino"


def _openvino_devices() -> tuple[list[Any], str]:
    """Return the OpenVINO EP devices and, when there are none, the reason why."""
    with _OV_LOCK:
        if "devices" not in _OV_STATE:
            devices: list[Any] = []
            reason = ""
            try:
                import onnxruntime_ep_openvino as ov_ep  # optional extra: pip install stlpips-deploy[openvino]
            except ImportError:
                reason = "the onnxruntime-ep-openvino plugin is not installed (pip install 'stlpips-deploy[openvino]')"
            else:
                try:
                    ort.register_execution_provider_library(_OV_REGISTRATION, ov_ep.get_library_path())
                except Exception as exc:  # already registered by the host application, or a broken install
                    if "already registered" not in str(exc):
                        reason = f"registering the OpenVINO plugin failed: {exc}"
                name = ov_ep.get_ep_name()
                devices = [d for d in ort.get_ep_devices() if d.ep_name == name]
                if not devices and not reason:
                    cpus = [d.device for d in ort.get_ep_devices() if d.ep_name == "CPUExecutionProvider"]
                    vendor = cpus[0].vendor if cpus else "unknown"
                    reason = (f"the OpenVINO plugin is installed but offers no device on this machine (CPU vendor "
                              f"{vendor}; the plugin only enumerates Intel hardware)")
            _OV_STATE["devices"], _OV_STATE["reason"] = devices, reason
        return _OV_STATE["devices"], _OV_STATE["reason"]


def unavailable_reasons(only: Sequence[str] = PROVIDERS) -> dict[str, str]:
    """Short provider name -> why it cannot be used here (only for providers that are unavailable), among
    ``only``. OpenVINO is probed only when asked about: loading its plugin costs about 46 MB."""
    built_in = set(ort.get_available_providers())
    reasons = {}
    for short in ("tensorrt", "cuda"):
        if short in only and ORT_NAMES[short] not in built_in:
            reasons[short] = (f"this onnxruntime build ({ort.__version__}, {ort.get_device()}) has no "
                              f"{ORT_NAMES[short]}; install onnxruntime-gpu in place of onnxruntime")
    if "openvino" not in only:
        return reasons
    devices, reason = _openvino_devices()
    if not devices:
        direct_reason = openvino_runtime_reason()
        if direct_reason:
            reasons["openvino"] = f"{reason}; {direct_reason}"
    return reasons


def openvino_through_plugin() -> bool:
    """True when onnxruntime's OpenVINO plugin offers a device; otherwise "openvino" means OpenVINO's own
    runtime (openvino_direct.py)."""
    return bool(_openvino_devices()[0])


def available_providers() -> list[str]:
    """Short names of the usable providers, in :data:`PROVIDERS` order (the CPU always last)."""
    missing = unavailable_reasons()
    return [p for p in PROVIDERS if p not in missing]


def auto_provider() -> str:
    """What ``"auto"`` picks for ``precision="exact"``: the first available of :data:`AUTO_ORDER` (TensorRT, CUDA,
    the CPU provider). The same on an Intel and an AMD CPU: OpenVINO is never probed here, whatever its plugin
    offers."""
    missing = unavailable_reasons([p for p in AUTO_ORDER if p != "cpu"])
    return next(p for p in AUTO_ORDER if p not in missing)


def engine_of(session: Any) -> dict[str, str]:
    """The engine a session computes with and its version: ``{"name": "onnxruntime", "version": "1.32.0"}``, or
    OpenVINO's own runtime, or onnxruntime with its OpenVINO plugin (both versions)."""
    if isinstance(session, OpenVinoSession):
        import openvino

        return {"name": "openvino", "version": openvino.get_version()}
    engine = {"name": "onnxruntime", "version": ort.__version__}
    if "OpenVINOExecutionProvider" in session.get_providers()[:1]:
        try:
            from importlib.metadata import version

            engine["openvino_plugin"] = version("onnxruntime-ep-openvino")
        except Exception:  # noqa: BLE001 - the version is a courtesy
            pass
    return engine


def normalize(name: str) -> str:
    """Map a short or onnxruntime provider name to the short name; raise :class:`ProviderError` if unknown."""
    key = name.strip()
    if key.lower() in ORT_NAMES:
        return key.lower()
    if key in SHORT_NAMES:
        return SHORT_NAMES[key]
    raise ProviderError(f"unknown provider {name!r}; choose from auto, {', '.join(PROVIDERS)}")


def resolve_providers(spec: str | Sequence[str]) -> list[str]:
    """Turn ``"auto"``, ``"cuda"``, ``"cuda,cpu"`` or a list into the short names to use, most preferred first.

    An explicitly named provider that is not available is an error that lists the available ones.
    """
    names = [s for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if not names or [n.strip().lower() for n in names] == ["auto"]:
        return [auto_provider()]
    chosen = [normalize(n) for n in names]
    missing = unavailable_reasons(chosen)
    for p in chosen:
        if p in missing:
            raise ProviderError(
                f"provider {p!r} is not available: {missing[p]}. Available here: {', '.join(available_providers())}"
            )
    return list(dict.fromkeys(chosen))


def _profile(shape: tuple[int, int, int] | None) -> str | None:
    if shape is None:
        return None
    n, h, w = shape
    return f"in0:{n}x3x{h}x{w},in1:{n}x3x{h}x{w}"


def provider_options(short: str, cfg: SessionConfig) -> tuple[str, dict[str, str]]:
    """Provider options for the built-in providers (TensorRT, CUDA, CPU)."""
    fast = precision.runs_as(short, cfg.precision) != "fp32"
    if short == "tensorrt":
        t = cfg.tensorrt
        cache = Path(t.cache_dir or Path.home() / ".cache" / "stlpips" / "tensorrt").expanduser()
        cache.mkdir(parents=True, exist_ok=True)
        opts = {
            "device_id": str(cfg.cuda.device_id),
            "trt_fp16_enable": str(bool(fast if t.fp16 is None else t.fp16)),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
        }
        if t.workspace_bytes:
            opts["trt_max_workspace_size"] = str(t.workspace_bytes)
        shapes = {k: _profile(s) for k, s in (("trt_profile_min_shapes", t.min_shape),
                                              ("trt_profile_opt_shapes", t.opt_shape),
                                              ("trt_profile_max_shapes", t.max_shape))}
        if any(shapes.values()) and not all(shapes.values()):
            raise ProviderError("TensorRT profile: give min_shape, opt_shape and max_shape together, or none")
        opts.update({k: v for k, v in shapes.items() if v})
        return ORT_NAMES[short], opts
    if short == "cuda":
        extra = dict(cfg.cuda.extra)
        return ORT_NAMES[short], {
            "device_id": str(cfg.cuda.device_id),
            "cudnn_conv_algo_search": cfg.cuda.cudnn_conv_algo_search,
            # TF32 convolutions lose ~3 decimal digits: only in fast mode.
            "use_tf32": "1" if fast else "0",
            **extra,
        }
    return ORT_NAMES[short], {}


def session_options(cfg: SessionConfig) -> ort.SessionOptions:
    """Full graph optimisation, no memory patterns (unless ``cfg.memory_pattern``), the requested intra-op thread
    count, quiet logging."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Memory patterns suit fixed shapes; with changing image sizes ONNX Runtime's first runs keep pattern blocks
    # beside the arena's chunks (alex-st, 2048x2048: 3.5 GB for one pair, 6.2 GB after a second), so the memory
    # a pair needs would depend on history and no budget (docs/tiling.md) could hold. No speed change measured.
    opts.enable_mem_pattern = cfg.memory_pattern
    threads = engine_threads(cfg.threads)
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = int(os.environ.get("STLPIPS_ORT_LOG_LEVEL", "3"))
    if cfg.profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"stlpips_profile_{os.getpid()}")
    return opts


def create_session(path: Path, providers: list[str], cfg: SessionConfig) -> ort.InferenceSession | OpenVinoSession:
    """Build the onnxruntime session for ``providers`` (short names, most preferred first)."""
    if cfg.precision not in precision.MODES:
        raise ProviderError(f"precision must be one of {', '.join(precision.MODES)}, got {cfg.precision!r}")
    opts = session_options(cfg)
    threads = opts.intra_op_num_threads or None  # engine_threads(cfg.threads), as session_options resolved it
    if "openvino" in providers[1:]:
        raise ProviderError("OpenVINO can only be the first provider (it is attached per device); "
                            "use providers='openvino' (unsupported nodes fall back to the CPU provider)")
    if providers[0] == "openvino" and not openvino_through_plugin():
        return OpenVinoSession(path, cfg.openvino.device, "bf16" if cfg.precision == "fast" else "f32", threads,
                               profile=cfg.profile)
    if providers[0] == "openvino":
        devices, reason = _openvino_devices()
        wanted = [d for d in devices if d.ep_metadata.get("ov_device", "").upper().startswith(cfg.openvino.device)]
        if not wanted:
            have = sorted({d.ep_metadata.get("ov_device", "?") for d in devices})
            raise ProviderError(f"OpenVINO device {cfg.openvino.device!r} not offered ({reason or have})")
        hint = "bf16" if cfg.precision == "fast" else "f32"
        if cfg.openvino.device != "CPU":
            hint = "f16" if cfg.precision == "fast" else "f32"
        ov_opts = {"load_config": json.dumps({cfg.openvino.device: {"INFERENCE_PRECISION_HINT": hint}})}
        if threads:
            ov_opts["num_of_threads"] = str(threads)
        opts.add_provider_for_devices([wanted[0]], ov_opts)
        # Nodes OpenVINO cannot take fall back to the CPU provider, which ORT always appends.
        return ort.InferenceSession(str(path), opts)
    entries = [provider_options(p, cfg) for p in providers]
    model: str | bytes = str(path)
    if winograd.applies(path, providers, cfg):
        model = winograd.cpu_model(path)
    if "cpu" not in providers:
        entries.append(provider_options("cpu", cfg))
    # enable_fallback=0: onnxruntime's own fallback would rebuild a failed TensorRT session on CUDA without these
    # options (TF32 on); session.py falls back itself, with them.
    return ort.InferenceSession(model, opts, providers=[e[0] for e in entries],
                                provider_options=[e[1] for e in entries], enable_fallback=0)
