"""Triton Inference Server model repositories from an exported file: ``DIR/<name>/config.pbtxt`` and
``DIR/<name>/1/model.onnx``, served by Triton's onnxruntime backend (docs/serving.md).

Everything in the config is read from the ``.onnx`` file itself (its contract and its graph's tensors, through
onnxruntime: no torch, no onnx package), so a repository can be generated for any exported file:
``stlpips-export --triton DIR`` does it after an export, :func:`write_repository` (or
``python -m stlpips_rt.cli.triton MODEL DIR``) for a file already on disk.

The batch axes. ``in0`` and ``in1`` have separate batch axes in the graph (``N0``, ``N1``: equal, or either 1).
Triton's batching (``max_batch_size > 0``) gives every input one shared batch dimension that it leaves out of
``dims``, requires the same batch size of all inputs of a request, and concatenates requests along it for dynamic
batching: right for pairs (``in0[i]`` stays beside ``in1[i]`` in a merged batch), impossible for one reference
against many candidates. So the default config batches pairs (``max_batch_size`` 16 with dynamic batching), and
``max_batch_size=0`` writes the graph's full shapes instead (``[-1, 3, -1, -1]`` each, broadcast allowed), where
Triton runs each request as it comes, without dynamic batching.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .contract import INPUTS, ModelInfo
from .engine.model_files import Signature, TensorSpec, read_signature

#: Triton's data types of the numpy dtypes a graph may carry.
TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "float64": "TYPE_FP64", "uint8": "TYPE_UINT8",
                 "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL"}
INSTANCE_KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
ACCELERATORS = ("none", "tensorrt", "openvino")
VERSION = "1"
#: The largest batch the TensorRT profile covers when Triton does not batch (``max_batch_size`` 0).
TRT_UNBATCHED_MAX = 16
#: The side of the warm-up pair when the graph's H and W are dynamic (or its minimum size, if larger).
WARMUP_SIDE = 64


@dataclass(frozen=True)
class TritonOptions:
    """How the repository's config serves the model.

    - ``max_batch_size``: the largest batch Triton forms (dynamic batching gathers requests up to it); 0 keeps
      the graph's own batch axes (broadcast allowed, no batching by Triton).
    - ``queue_delay_us``: how long dynamic batching waits for requests to join a batch.
    - ``instance``: ``"cpu"`` or ``"gpu"`` (``instance_group`` kind), ``instances`` per device.
    - ``accelerator``: ``"tensorrt"`` (GPU instances; ``precision`` ``"fast"`` builds FP16 engines, ``"exact"``
      FP32), ``"openvino"`` (CPU instances), or ``"none"`` (onnxruntime's CUDA or CPU provider).
    - ``trt_max_side``: the largest H and W the TensorRT profile covers (the engine is built once for the whole
      range; a larger image falls back to an engine rebuild).
    - ``warmup``: a warm-up request of one zero pair, so that the first real request does not pay for the
      session's (or TensorRT engine's) build.
    - ``name``: the model's name in the repository (default: the file's short name, ``alex-st``).
    """

    max_batch_size: int = 16
    queue_delay_us: int = 5000
    instance: str = "cpu"
    instances: int = 1
    accelerator: str = "none"
    precision: str = "exact"
    trt_max_side: int = 1024
    trt_workspace_bytes: int = 1 << 30
    warmup: bool = True
    name: str | None = None

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ValueError(f"max_batch_size must be >= 0, got {self.max_batch_size}")
        if self.instance not in INSTANCE_KINDS:
            raise ValueError(f"instance must be one of {', '.join(INSTANCE_KINDS)}, got {self.instance!r}")
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.accelerator not in ACCELERATORS:
            raise ValueError(f"accelerator must be one of {', '.join(ACCELERATORS)}, got {self.accelerator!r}")
        if self.accelerator == "tensorrt" and self.instance != "gpu":
            raise ValueError("the TensorRT accelerator runs on GPU instances; pass instance='gpu' "
                             "(--triton-instance gpu)")
        if self.accelerator == "openvino" and self.instance != "cpu":
            raise ValueError("the OpenVINO accelerator runs on CPU instances; pass instance='cpu' "
                             "(--triton-instance cpu)")
        if self.precision not in ("exact", "fast"):
            raise ValueError(f"precision must be 'exact' or 'fast', got {self.precision!r}")


@dataclass(frozen=True)
class Repository:
    """What :func:`write_repository` wrote."""

    model_dir: Path
    config: Path
    model: Path
    name: str


def write_repository(model: str | Path, out_dir: str | Path, options: TritonOptions | None = None) -> Repository:
    """Write ``out_dir/<name>/config.pbtxt`` and ``out_dir/<name>/1/model.onnx`` (a copy of ``model``) for Triton's
    onnxruntime backend; the config's tensors, datatypes and shapes are read from the file."""
    options = options or TritonOptions()
    path = Path(model)
    info, signature = read_signature(path)
    name = options.name or info.spec.short_name
    model_dir = Path(out_dir) / name
    (model_dir / VERSION).mkdir(parents=True, exist_ok=True)
    target = model_dir / VERSION / "model.onnx"
    shutil.copyfile(path, target)
    config = model_dir / "config.pbtxt"
    config.write_text(config_text(info, signature, name, options))
    return Repository(model_dir, config, target, name)


def config_text(info: ModelInfo, signature: Signature, name: str, options: TritonOptions) -> str:
    """The ``config.pbtxt`` (protobuf text format of Triton's ``ModelConfig``) for the file's graph."""
    batched = options.max_batch_size > 0
    lines = [f"# {info.path.name}: {info.short_name}, written by stlpips_rt.triton (docs/serving.md)",
             f"name: {_quote(name)}", 'backend: "onnxruntime"', f"max_batch_size: {options.max_batch_size}"]
    for tensor in (signature.input(n) for n in INPUTS):
        lines += _tensor("input", tensor, batched)
    for tensor in (signature.output(n) for n in info.outputs):
        lines += _tensor("output", tensor, batched)
    if batched:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {options.queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {options.instances}",
              f"    kind: {INSTANCE_KINDS[options.instance]}", "  }", "]"]
    lines += _accelerator(info, options)
    if options.warmup:
        lines += _warmup(info, signature, batched)
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid protobuf text-format string for these names


def _dims(tensor: TensorSpec, batched: bool) -> list[int]:
    """Triton's dims: the file's shape (-1 for dynamic axes), less the batch axis when Triton batches."""
    return list(tensor.dims[1:] if batched else tensor.dims)


def _tensor(kind: str, tensor: TensorSpec, batched: bool) -> list[str]:
    dims = _dims(tensor, batched)
    lines = [f"{kind} [", "  {", f"    name: {_quote(tensor.name)}",
             f"    data_type: {TRITON_DTYPES[tensor.dtype]}"]
    if batched and not dims:  # a per-pair scalar ([N] in the graph): Triton needs dims [1], reshaped to []
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    else:
        lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    return lines + ["  }", "]"]


def _profile_shape(info: ModelInfo, batch: int, side: int) -> str:
    """A TensorRT profile shape for both inputs (``in0:1x3x64x64,in1:1x3x64x64``); a static graph keeps its size."""
    h, w = info.static_hw or (side, side)
    return ",".join(f"{n}:{batch}x3x{h}x{w}" for n in INPUTS)


def _accelerator(info: ModelInfo, options: TritonOptions) -> list[str]:
    if options.accelerator == "none":
        return []
    if options.accelerator == "openvino":
        return ["optimization {", "  execution_accelerators {",
                '    cpu_execution_accelerator: [ { name: "openvino" } ]', "  }", "}"]
    # The profile's batch: Triton's largest, or without Triton's batching the largest run of in1 it covers.
    batch = options.max_batch_size or TRT_UNBATCHED_MAX
    side = info.min_size
    parameters = {
        "precision_mode": "FP16" if options.precision == "fast" else "FP32",
        "max_workspace_size_bytes": str(options.trt_workspace_bytes),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": "/tmp/triton_trt_cache",
        "trt_profile_min_shapes": _profile_shape(info, 1, side),
        "trt_profile_opt_shapes": _profile_shape(info, batch, 256),
        "trt_profile_max_shapes": _profile_shape(info, batch, options.trt_max_side),
    }
    lines = ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator: [", "      {",
             '        name: "tensorrt"']
    lines += [f"        parameters {{ key: {_quote(k)} value: {_quote(v)} }}" for k, v in parameters.items()]
    return lines + ["      }", "    ]", "  }", "}"]


def _warmup(info: ModelInfo, signature: Signature, batched: bool) -> list[str]:
    h, w = info.static_hw or (max(WARMUP_SIDE, info.min_size),) * 2
    dims = [3, h, w] if batched else [1, 3, h, w]
    lines = ["model_warmup [", "  {", f"    name: {_quote(f'zero pair {h}x{w}')}", "    batch_size: 1"]
    for name in INPUTS:
        lines += ["    inputs {", f"      key: {_quote(name)}", "      value {",
                  f"        data_type: {TRITON_DTYPES[signature.input(name).dtype]}",
                  f"        dims: [ {', '.join(str(d) for d in dims)} ]", "        zero_data: true", "      }",
                  "    }"]
    return lines + ["  }", "]"]
