"""PyTorch reference -> simplified, self-describing, parity-checked ONNX file (format 1 of DESIGN.md).

Steps: build, trace, simplify, stamp metadata, verify against PyTorch with ONNX Runtime, write. The file is written
to a temporary name and renamed only after verification, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from . import __version__
from .fusion import fuse_for_export
from .model import PerceptualDistance, build_model
from .verify import ParityReport, find_min_size, verify_parity

FORMAT_VERSION = "1"
DEFAULT_OPSET = 17
INPUT_RANGE = "-1,1"
FP32_TOLERANCE = 1e-5
# float16 backbone vs the float32 reference, measured over random and structured inputs (see README "Export"):
# max abs error stays below 2e-3 on distances of 0.05..0.8 and 2AFC rankings agree; 1e-2 leaves margin for the
# accumulated rounding of VGG's 13 convolutions on larger images without admitting a wrong model.
FP16_TOLERANCE = 1e-2


@dataclass
class ExportOptions:
    net: str = "alex"
    variant: str = "st"
    out_dir: Path = Path("models")
    opset: int = DEFAULT_OPSET
    fp16: bool = False
    spatial: bool = False
    layers: bool = False
    static_hw: tuple[int, int] | None = None
    simplify: bool = True
    fuse: bool = True  # exact conv+BlurPool fusion (fusion.py); verified like everything else
    weights: str | None = None
    tolerance: float | None = None  # None: the precision's default

    @property
    def file_name(self) -> str:
        flags = (("_fp16", self.fp16), ("_spatial", self.spatial), ("_layers", self.layers))
        suffix = "".join(text for text, on in flags if on)
        return f"stlpips_{self.net}_{self.variant}{suffix}.onnx"

    @property
    def parity_tolerance(self) -> float:
        if self.tolerance is not None:
            return self.tolerance
        return FP16_TOLERANCE if self.fp16 else FP32_TOLERANCE


@dataclass
class ExportResult:
    path: Path
    min_size: int
    parity: ParityReport
    metadata: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str], None]


@contextmanager
def _step(name: str, timings: dict[str, float], progress: Progress) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    progress(f"{name:<9} {timings[name]:6.2f}s")


def export_model(options: ExportOptions, progress: Progress = lambda _: None) -> ExportResult:
    """Run every export step; raises :class:`~stlpips_export.errors.ExportError` (nothing written) on failure."""
    timings: dict[str, float] = {}
    with _step("build", timings, progress):
        model = build_model(
            options.net, options.variant, weights=options.weights, spatial=options.spatial, layers=options.layers
        )
        min_size = find_min_size(model)
        if options.static_hw and min(options.static_hw) < min_size:
            raise ValueError(f"--static {options.static_hw[0]}x{options.static_hw[1]} is below this model's "
                             f"minimum input size {min_size}x{min_size}")
        # The graph is traced from a separate copy, so the reference it is verified against stays untouched.
        exported = copy.deepcopy(model)
        if options.fuse:
            exported = fuse_for_export(exported)
        if options.fp16:
            exported = exported.half_backbone()
    with _step("trace", timings, progress):
        graph = trace_to_onnx(exported, options, min_size)
    if options.simplify:
        with _step("simplify", timings, progress):
            graph = simplify(graph)
    metadata = {
        "stlpips.format": FORMAT_VERSION,
        "stlpips.net": options.net,
        "stlpips.variant": options.variant,
        "stlpips.input_range": INPUT_RANGE,
        "stlpips.input_layout": "NCHW,RGB",
        "stlpips.min_size": str(min_size),
        "stlpips.outputs": ",".join(model.output_names),
        "stlpips.num_layers": str(len(model.lins)),
        "stlpips.precision": "fp16" if options.fp16 else "fp32",
        "stlpips.batch": "N0 == N1, or either is 1 (broadcast)",
        "stlpips.static_hw": f"{options.static_hw[0]}x{options.static_hw[1]}" if options.static_hw else "",
        "stlpips.weights_sha256": model.weights_sha256,
        "stlpips.weights_origin": model.weights_origin,
        "stlpips.toolkit_version": __version__,
        "stlpips.torch_version": torch.__version__,
        "stlpips.onnx_version": onnx.__version__,
        "stlpips.opset": str(options.opset),
        "stlpips.fused": "conv+blurpool" if options.fuse else "none",
        "stlpips.parity_tolerance": f"{options.parity_tolerance:g}",
    }
    with _step("verify", timings, progress):
        onnx.checker.check_model(graph, full_check=True)
        report = verify_parity(graph, model, min_size, options.parity_tolerance, options.static_hw)
        progress(report.summary())
        report.raise_if_failed(options.file_name)
    metadata["stlpips.parity_max_abs"] = f"{report.max_abs:.3g}"
    metadata["stlpips.parity_max_rel"] = f"{report.max_rel:.3g}"
    set_metadata(graph, metadata)
    with _step("write", timings, progress):
        path = write_atomically(graph, Path(options.out_dir) / options.file_name)
    return ExportResult(path, min_size, report, metadata, timings)


def trace_to_onnx(model: PerceptualDistance, options: ExportOptions, min_size: int) -> onnx.ModelProto:
    """Trace with separate batch dimensions for the two inputs and (unless ``static_hw``) dynamic H and W."""
    h, w = options.static_hw or (max(min_size, 64),) * 2
    example = (torch.zeros(1, 3, h, w), torch.zeros(2, 3, h, w))
    spatial_axes = {} if options.static_hw else {2: "H", 3: "W"}
    dynamic_axes = {
        "in0": {0: "N0", **spatial_axes},
        "in1": {0: "N1", **spatial_axes},
        "dist": {0: "N"},
        "dist_layers": {0: "N"},
        "dist_map": {0: "N", **spatial_axes},
    }
    names = model.output_names
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The TorchScript exporter is used on purpose (plain dynamic_axes, no onnxscript dependency); its
        # deprecation notice and its note on Slice folding (onnxsim folds those afterwards) are noise here.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        raw = Path(tmp) / "traced.onnx"
        torch.onnx.export(
            model,
            example,
            str(raw),
            dynamo=False,
            opset_version=options.opset,
            input_names=["in0", "in1"],
            output_names=names,
            dynamic_axes={k: v for k, v in dynamic_axes.items() if k in ("in0", "in1", *names)},
            do_constant_folding=True,
        )
        return onnx.load(str(raw))


def simplify(graph: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim: constant folding and shape simplification. Our own parity check replaces onnxsim's."""
    import onnxsim

    simplified, ok = onnxsim.simplify(graph, check_n=0)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified graph; rerun with --no-simplify")
    return simplified


def set_metadata(graph: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del graph.metadata_props[:]
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    graph.producer_name = "stlpips-deploy"
    graph.producer_version = __version__
    graph.doc_string = (
        "ST-LPIPS / LPIPS perceptual distance. Inputs in0, in1: float32 NCHW RGB in [-1, 1] (img/127.5 - 1); "
        "output dist [N]. See metadata_props stlpips.*."
    )


def write_atomically(graph: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(graph.SerializeToString())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an exported file."""
    graph = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in graph.metadata_props}


__all__ = ["ExportOptions", "ExportResult", "export_model", "read_metadata"]
