"""Per-provider settings as data: one frozen option object per provider (the way onnxruntime takes
``provider_options``), given to a Scorer as ``provider_options=[CudaOptions(...), TensorRTOptions(...)]``.

Each object holds only what its provider reads; :class:`SessionConfig` gathers them with the thread count and the
precision mode into the one value sessions are built from (hashable, so it can key caches)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ProviderError

#: What ``precision="fast"`` may run on CUDA (None: :data:`stlpips_rt.engine.session.CUDA_FAST_DEFAULT`).
CUDA_FAST_CHOICES = ("fp16", "tf32")
CUDNN_ALGO_SEARCHES = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
OPENVINO_DEVICES = ("CPU", "GPU", "NPU")


@dataclass(frozen=True)
class CudaOptions:
    """CUDA settings (the GPU index also serves TensorRT, which runs on the same device).

    ``fast``: what ``precision="fast"`` runs on CUDA: ``"fp16"`` (the ``--fp16`` export beside the model), ``"tf32"``
    (the float32 graph with TF32), or None (fp16 where that export exists, else TF32). ``io_binding``: feed inputs
    and outputs through I/O binding (None: on for CUDA and TensorRT). ``extra``: more CUDA provider options, e.g.
    ``{"prefer_nhwc": "1"}``; ``use_tf32`` belongs to the precision mode and is refused here.
    """

    device_id: int = 0
    cudnn_conv_algo_search: str = "EXHAUSTIVE"
    fast: str | None = None
    io_binding: bool | None = None
    extra: tuple[tuple[str, str], ...] | Mapping[str, str] = ()

    def __post_init__(self) -> None:
        if self.fast is not None and self.fast not in CUDA_FAST_CHOICES:
            raise ProviderError(f"CudaOptions.fast must be one of {CUDA_FAST_CHOICES} or None, got {self.fast!r}")
        if self.cudnn_conv_algo_search not in CUDNN_ALGO_SEARCHES:
            raise ProviderError(f"CudaOptions.cudnn_conv_algo_search must be one of {CUDNN_ALGO_SEARCHES}, got "
                                f"{self.cudnn_conv_algo_search!r}")
        extra = tuple((str(k), str(v)) for k, v in dict(self.extra).items())
        if any(k == "use_tf32" for k, _ in extra):
            raise ProviderError("CudaOptions.extra may not set use_tf32: precision='exact' keeps it off, 'fast' on")
        object.__setattr__(self, "extra", extra)  # a tuple of pairs keeps the frozen object hashable


@dataclass(frozen=True)
class TensorRTOptions:
    """TensorRT settings. Shapes are ``(N, H, W)`` of both inputs for the optimisation profile.

    ``fp16=None`` follows the Scorer's precision ("fast" -> fp16). ``cache_dir`` holds built engines and the
    timing cache so that a restart does not rebuild them (default: ``~/.cache/stlpips/tensorrt``).
    """

    fp16: bool | None = None
    cache_dir: Path | None = None
    workspace_bytes: int | None = 2 << 30
    min_shape: tuple[int, int, int] | None = None
    opt_shape: tuple[int, int, int] | None = None
    max_shape: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class OpenVinoOptions:
    """OpenVINO settings: the device (``"CPU"``, ``"GPU"`` or ``"NPU"``)."""

    device: str = "CPU"

    def __post_init__(self) -> None:
        device = self.device.upper()
        if device not in OPENVINO_DEVICES:
            raise ProviderError(f"OpenVinoOptions.device must be one of {OPENVINO_DEVICES}, got {self.device!r}")
        object.__setattr__(self, "device", device)


@dataclass(frozen=True)
class CpuOptions:
    """onnxruntime CPU provider settings. ``winograd``: in exact mode, run VGG's wide 3x3 convolutions as Winograd
    F(2x2, 3x3) (:mod:`stlpips_rt.engine.winograd`: 1.2-1.6x on those layers, within the same parity bound, the
    same bits in any batch and in tiles); False runs the file's graph as it is, as other hosts of the file do."""

    winograd: bool = True


ProviderOptions = CudaOptions | TensorRTOptions | OpenVinoOptions | CpuOptions
_KINDS: tuple[type, ...] = (CudaOptions, TensorRTOptions, OpenVinoOptions, CpuOptions)


@dataclass(frozen=True)
class SessionConfig:
    """Everything that shapes a session besides the model file and the provider list."""

    threads: int | None = None
    precision: str = "exact"
    cuda: CudaOptions = field(default_factory=CudaOptions)
    tensorrt: TensorRTOptions = field(default_factory=TensorRTOptions)
    openvino: OpenVinoOptions = field(default_factory=OpenVinoOptions)
    cpu: CpuOptions = field(default_factory=CpuOptions)
    #: Per-operator timing (onnxruntime's profiler, OpenVINO's performance counters): Scorer.operator_profile's
    #: sessions only, never a scoring session (it costs time and, for onnxruntime, a trace file).
    profile: bool = False
    #: onnxruntime's memory patterns (one planned block per run and input shape): only for sessions that run
    #: one-thread runs side by side (engine/side_by_side.py, the features graph), where two runs at once would
    #: otherwise take turns at the arena's lock; a scoring session keeps them off (providers.session_options).
    memory_pattern: bool = False

    @classmethod
    def build(cls, threads: int | None, precision: str, provider_options: Iterable[Any] = ()) -> SessionConfig:
        """The config for a Scorer: at most one option object per provider kind, anything else refused."""
        chosen: dict[type, Any] = {}
        for opts in provider_options:
            if not isinstance(opts, _KINDS):
                raise TypeError(f"provider_options takes CudaOptions, TensorRTOptions, OpenVinoOptions and CpuOptions, "
                                f"got {type(opts).__name__}")
            if type(opts) in chosen:
                raise TypeError(f"provider_options has two {type(opts).__name__}; give one per provider")
            chosen[type(opts)] = opts
        return cls(threads=threads, precision=precision, cuda=chosen.get(CudaOptions, CudaOptions()),
                   tensorrt=chosen.get(TensorRTOptions, TensorRTOptions()),
                   openvino=chosen.get(OpenVinoOptions, OpenVinoOptions()), cpu=chosen.get(CpuOptions, CpuOptions()))

    @property
    def provider_options(self) -> tuple[ProviderOptions, ...]:
        """The option objects, as ``Scorer(provider_options=...)`` takes them (to build another Scorer alike)."""
        return (self.cuda, self.tensorrt, self.openvino, self.cpu)
