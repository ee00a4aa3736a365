"""Can onnxruntime's GPU providers load here? Their shared libraries, the CUDA / cuDNN / TensorRT libraries those
need, and the pip-installed NVIDIA libraries (``site-packages/nvidia/*/lib``) that can supply them.

onnxruntime-gpu loads ``libonnxruntime_providers_cuda.so`` / ``..._tensorrt.so`` when a session asks for the
provider. A missing dependency makes it log a line and build the session without CUDA (so the graph silently runs
on the CPU), or raise for TensorRT. Loading the provider library here first tells, before any session is built,
whether the provider will come up, and the loader's message names the first missing library.

``python -m stlpips_rt.cuda_libraries`` prints the NVIDIA library folders of this Python's site-packages joined
by ``:``, for ``LD_LIBRARY_PATH`` (scripts/gpu/device.sh uses it).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import site
import sys
import threading
from pathlib import Path

import onnxruntime as ort

PROVIDER_LIBRARIES = {"cuda": "libonnxruntime_providers_cuda.so", "tensorrt": "libonnxruntime_providers_tensorrt.so"}
# onnxruntime-gpu 1.19+ is built against cuDNN 9; the CUDA provider opens it when it creates its first kernel, so
# it is not among the provider library's direct dependencies and is checked by name.
CUDNN_LIBRARY = "libcudnn.so.9"

_LOCK = threading.Lock()
_LOADED: set[str] = set()  # only successes are remembered: a failure can be cured by preloading
_PRELOAD_OUTPUT: list[str] = []


def _load_problem(path_or_name: str) -> str:
    """'' when ``dlopen`` succeeds, else the loader's message (it names the first library it could not find)."""
    with _LOCK:
        if path_or_name in _LOADED:
            return ""
        try:
            ctypes.CDLL(path_or_name)
        except OSError as exc:
            return str(exc)
        _LOADED.add(path_or_name)
        return ""


def cuda_version() -> str:
    """The CUDA version this onnxruntime build targets ('' for CPU builds)."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return ""
    return getattr(info, "cuda_version", "") or ""


def provider_library_problem(short: str) -> str:
    """Why onnxruntime's ``short`` provider ("cuda" or "tensorrt") cannot load here, '' when it can.

    Linux only; elsewhere '' (onnxruntime reports it itself)."""
    if not sys.platform.startswith("linux"):
        return ""
    capi = Path(ort.__file__).parent / "capi"
    path = capi / PROVIDER_LIBRARIES[short]
    if not path.is_file():
        return f"this onnxruntime build ({ort.__version__}, {ort.get_device()}) has no {path.name}"
    # As onnxruntime does: the shared provider library first, with global symbols (the provider libraries take
    # Provider_GetHost from it), then the provider library itself.
    shared = capi / "libonnxruntime_providers_shared.so"
    if shared.is_file():
        with _LOCK, contextlib.suppress(OSError):
            ctypes.CDLL(str(shared), mode=ctypes.RTLD_GLOBAL)
    problem = _load_problem(str(path))
    if problem:
        return problem.replace(str(path) + ": ", "")
    return _load_problem(CUDNN_LIBRARY)


def setup_hint() -> str:
    """What to do when the CUDA libraries are missing."""
    major = cuda_version().split(".")[0] or "12/13"
    return (f"this onnxruntime-gpu needs CUDA {major} and cuDNN 9 libraries: "
            "`pip install 'onnxruntime-gpu[cuda,cudnn]'` (the runtime then preloads them), or put the folders "
            f"site-packages/nvidia/*/lib of a PyTorch built for CUDA {major} on LD_LIBRARY_PATH before Python starts "
            "(`python -m stlpips_rt.cuda_libraries` prints them; docs/gpu.md)")


def preload_nvidia_libraries() -> str:
    """Load the CUDA and cuDNN libraries of pip's NVIDIA packages through ``onnxruntime.preload_dlls`` (once per
    process); returns what it printed. A no-op for onnxruntime builds without it."""
    with _LOCK:
        if _PRELOAD_OUTPUT:
            return _PRELOAD_OUTPUT[0]
        out = io.StringIO()
        preload = getattr(ort, "preload_dlls", None)
        if preload is not None and cuda_version():
            with contextlib.redirect_stdout(out):
                try:
                    preload()
                except Exception as exc:  # a broken nvidia package must not stop the CPU path
                    print(f"onnxruntime.preload_dlls failed: {exc}")
        _PRELOAD_OUTPUT.append(out.getvalue())
        return _PRELOAD_OUTPUT[0]


def nvidia_library_dirs(search: list[str] | None = None) -> list[Path]:
    """``nvidia/<package>/lib`` folders holding shared libraries, in the site-packages on ``sys.path``."""
    roots = search if search is not None else [*sys.path, *site.getsitepackages(), site.getusersitepackages()]
    found: list[Path] = []
    for root in roots:
        base = Path(root) / "nvidia"
        if not base.is_dir():
            continue
        for lib in sorted(base.glob("*/lib")):
            if lib not in found and any(lib.glob("*.so*")):
                found.append(lib)
    return found


if __name__ == "__main__":
    print(":".join(str(p) for p in nvidia_library_dirs()))
