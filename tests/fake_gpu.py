"""A stand-in for onnxruntime-gpu's session creation, for GPU provider tests on machines without a GPU.

It behaves as onnxruntime-gpu 1.31 does (checked with the real wheel on a machine without CUDA): TensorRT without
its libraries raises, CUDA without its libraries is left out of the session silently. Sessions are real CPU
sessions that report the GPU providers they would have registered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from stlpips_rt.engine import session as gs
from stlpips_rt.engine.options import SessionConfig
from stlpips_rt.engine.providers import ORT_NAMES, provider_options

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class FakeGpuSession:
    """A real CPU session that reports the providers onnxruntime-gpu would have registered."""

    def __init__(self, real: ort.InferenceSession, registered: list[str]) -> None:
        self._real, self._registered = real, registered

    def get_providers(self) -> list[str]:
        return [ORT_NAMES[p] for p in self._registered]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class FakeOnnxruntimeGpu:
    """Stands in for onnxruntime-gpu's session creation. ``missing``: provider -> library the probe cannot load;
    ``raises``: providers whose session creation raises; ``silently_dropped``: providers left out of the session
    without an error (what onnxruntime does when the CUDA libraries are missing)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, missing: dict[str, str] | None = None,
                 raises: tuple[str, ...] = (), silently_dropped: tuple[str, ...] = (),
                 cured_by_preload: tuple[str, ...] = ()) -> None:
        self.missing = dict(missing or {})
        self.raises, self.silently_dropped, self.cured_by_preload = raises, silently_dropped, cured_by_preload
        self.calls: list[dict[str, Any]] = []
        self.preloads = 0
        monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_BUILD))
        monkeypatch.setattr(gs, "provider_library_problem", lambda short: self.missing.get(short, ""))
        monkeypatch.setattr(gs, "preload_nvidia_libraries", self.preload)
        monkeypatch.setattr(gs, "create_session", self.create)

    def preload(self) -> str:
        self.preloads += 1
        for short in self.cured_by_preload:
            self.missing.pop(short, None)
        return ""

    def create(self, path: Path, chain: list[str], cfg: SessionConfig) -> FakeGpuSession:
        options = {p: provider_options(p, cfg)[1] for p in chain}
        self.calls.append({"path": path, "chain": list(chain), "options": options})
        if chain[0] in self.raises:
            raise RuntimeError(f"[ONNXRuntimeError] : 1 : FAIL : {chain[0]} could not build its engine")
        real = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return FakeGpuSession(real, [p for p in chain if p not in self.silently_dropped])
