"""OpenVINO's own runtime behind the small part of ``onnxruntime.InferenceSession`` the Scorer uses.

The onnxruntime OpenVINO plugin (onnxruntime-ep-openvino) enumerates Intel hardware only, so on other x86 CPUs
(AMD EPYC, say) it offers no device although OpenVINO's CPU plugin runs there, bf16 included where the CPU has
AVX-512 BF16 or AMX. ``providers="openvino"`` then runs the same .onnx file through the ``openvino`` package
directly. Exact mode pins ``INFERENCE_PRECISION_HINT`` to f32: OpenVINO would otherwise pick bf16 on such CPUs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import ProviderError

PROVIDER_NAME = "OpenVINOExecutionProvider"


def openvino_runtime_reason() -> str:
    """Empty when the ``openvino`` package can run on this machine's CPU, else why not."""
    try:
        import openvino
    except ImportError:
        return "the openvino package is not installed (pip install 'stlpips-deploy[openvino]')"
    try:
        if "CPU" not in openvino.Core().available_devices:
            return "OpenVINO sees no CPU device"
    except Exception as exc:  # broken install
        return f"OpenVINO failed to start: {exc}"
    return ""


@dataclass(frozen=True)
class _Port:
    name: str
    type: str


class OpenVinoSession:
    """Compiled OpenVINO model with ``run``, ``get_inputs``, ``get_outputs``, ``get_modelmeta`` and
    ``get_providers`` as onnxruntime's session has them. Thread-safe: each thread gets its own infer request
    (one request must not run twice at once)."""

    def __init__(self, path: Path, device: str, precision_hint: str, threads: int | None,
                 profile: bool = False) -> None:
        import openvino

        core = openvino.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise ProviderError(f"{path}: OpenVINO cannot read it ({exc})") from None
        # The ONNX frontend keeps metadata_props under rt_info["framework"].
        rt_info = model.get_rt_info()
        keys = list(rt_info["framework"]) if "framework" in rt_info else []
        self._metadata = {k: model.get_rt_info(["framework", k]).astype(str) for k in keys}
        element_types = {"f32": "tensor(float)", "f16": "tensor(float16)"}
        self._inputs = [_Port(p.get_any_name(), element_types.get(p.get_element_type().get_type_name(), "?"))
                        for p in model.inputs]
        self._outputs = [_Port(p.get_any_name(), element_types.get(p.get_element_type().get_type_name(), "?"))
                         for p in model.outputs]
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if profile:  # per-node times for profiling_info() (engine/profiling.py)
            config["PERF_COUNT"] = True
        try:
            self._compiled = core.compile_model(model, device, config)
        except Exception as exc:
            raise ProviderError(f"OpenVINO could not compile {path.name} for {device} ({exc})") from None
        self._local = threading.local()
        # What OpenVINO actually computes in (a CPU without bf16 support runs f32 whatever the hint).
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")
        actual = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.inference_precision = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}.get(actual, actual)

    def _request(self) -> Any:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def run(self, output_names: Sequence[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self._request().infer(feeds)
        by_name = {port.get_any_name(): value for port, value in results.items()}
        # The request reuses its output buffers on the next call: hand out copies.
        return [np.array(by_name[name], copy=True) for name in output_names]

    def profiling_info(self) -> list[Any]:
        """The calling thread's last run, node by node (``openvino.ProfilingInfo``; a session built with
        ``profile=True`` has times in it)."""
        return list(self._request().profiling_info)

    def get_inputs(self) -> list[_Port]:
        return self._inputs

    def get_outputs(self) -> list[_Port]:
        return self._outputs

    def get_modelmeta(self) -> SimpleNamespace:
        return SimpleNamespace(custom_metadata_map=dict(self._metadata))

    def get_providers(self) -> list[str]:
        return [PROVIDER_NAME]
