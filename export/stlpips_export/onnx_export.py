"""PyTorch reference -> simplified, self-describing, parity-checked ONNX file (the contract: stlpips_rt.contract).

Steps: build, trace, simplify, stamp metadata, verify against PyTorch with ONNX Runtime, write. The file is written
to a temporary name and renamed only after verification, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch

from stlpips_rt import contract
from stlpips_rt.contract import Key, ModelSpec
from stlpips_rt.engine import winograd
from stlpips_rt.precision import tolerance
from stlpips_rt.tiling import geometry_metadata

from . import __version__
from .errors import InvalidOptionError, SimplifyError, UnknownModelError
from .exporters import DEFAULT_EXPORTER, DEFAULT_OPSETS, check_opset, default_opset, export_graph
from .fusion import export_copy
from .geometry import layer_windows
from .memory import measure_bytes_per_pixel
from .model import PerceptualDistance, build_model
from .spatial_mean import replace_spatial_means
from .verify import ParityReport, find_min_size, verify_parity

DEFAULT_OPSET = DEFAULT_OPSETS[DEFAULT_EXPORTER]
INT8_EXPORTER = "torchscript"


@dataclass
class ExportOptions:
    net: str = "alex"
    variant: str = "st"
    out_dir: Path = Path("models")
    opset: int | None = None  # None: the exporter's default (exporters.DEFAULT_OPSETS)
    fp16: bool = False
    spatial: bool = False
    layers: bool = False
    static_hw: tuple[int, int] | None = None
    simplify: bool = True
    fuse: bool = True  # exact conv+BlurPool fusion (fusion.py); verified like everything else
    weights: str | None = None
    tolerance: float | None = None  # None: the precision's default
    int8: bool = False  # quantized backbone, written only when it passes its gate (int8.py)
    calibration: Path | None = None  # the user's calibration images for int8, added to the built-in photos
    calibration_only: bool = False  # calibrate on ``calibration`` alone
    gate_triplets: int = 2000
    # Kept for old scripts (--tiles): every dynamic export carries the per-layer maps tiled scoring reads since
    # format 1.1 (docs/tiling.md); True only adds the check that H and W are dynamic.
    tiles: bool = False
    exporter: str | None = None  # "dynamo" or "torchscript" (exporters.py); None: dynamo, torchscript for int8
    features: bool = True  # also write the features graph beside float32 files (features_export.py, docs/matrix.md)

    def __post_init__(self) -> None:
        if self.exporter is None:
            self.exporter = INT8_EXPORTER if self.int8 else DEFAULT_EXPORTER
        if self.int8 and self.exporter != INT8_EXPORTER:
            # int8.backbone_convs finds the backbone's convolutions by the tracer's node names (/net/...); the
            # dynamo graph names them otherwise, and its "int8" file would come out unquantized.
            raise InvalidOptionError(f"--int8 needs --exporter {INT8_EXPORTER} (the quantizer picks the backbone's "
                                     "convolutions by the TorchScript tracer's node names)")
        if self.opset is None:
            self.opset = default_opset(self.exporter)
        check_opset(self.exporter, self.opset)

    @property
    def spec(self) -> ModelSpec:
        """What the graph will be; its file name and short name."""
        if self.fp16 and self.int8:
            raise InvalidOptionError("--fp16 and --int8 are two precisions; choose one")
        if self.tiles and self.static_hw:
            raise InvalidOptionError("--tiles needs dynamic H and W (tiles have many sizes); drop --static")
        precision = "int8" if self.int8 else "fp16" if self.fp16 else "fp32"
        try:
            return ModelSpec(self.net, self.variant, precision, self.spatial, self.layers, self.static_hw, self.fuse)
        except ValueError as exc:
            raise UnknownModelError(str(exc)) from None

    @property
    def layer_maps(self) -> bool:
        """Whether the graph carries each layer's distance map: every file with dynamic H and W (a static one
        cannot be tiled)."""
        return self.static_hw is None

    @property
    def file_name(self) -> str:
        return self.spec.file_name

    @property
    def parity_tolerance(self) -> float:
        if self.tolerance is not None:
            return self.tolerance
        # Per arithmetic, as for every provider: stlpips_rt.precision says why each bound is what it is. An int8
        # file is quantized from a float32 graph that passes the float32 bound first.
        return tolerance("fp32" if self.int8 else self.spec.precision).max_abs


@dataclass
class ExportResult:
    path: Path
    min_size: int
    parity: ParityReport
    metadata: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    memory_rates: dict[str, int] = field(default_factory=dict)  # bytes per pixel measured at each probed size
    features: object | None = None  # features_export.FeaturesResult when the features graph was written


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
            options.net, options.variant, weights=options.weights, spatial=options.spatial, layers=options.layers,
            layer_maps=options.layer_maps,
        )
        min_size = find_min_size(model)
        if options.int8 and options.static_hw:
            raise InvalidOptionError("--int8 gates on the shift study's cropped triplets, which a --static graph "
                                     "cannot run; export --int8 without --static")
        if options.static_hw and min(options.static_hw) < min_size:
            raise InvalidOptionError(f"--static {options.static_hw[0]}x{options.static_hw[1]} is below this "
                                     f"model's minimum input size {min_size}x{min_size}")
        exported = export_copy(model, fuse=options.fuse)
        if options.fp16:
            exported = exported.half_backbone()
    with _step("trace", timings, progress):
        graph = trace_to_onnx(exported, options, min_size)
    if options.simplify:
        with _step("simplify", timings, progress):
            graph = simplify(graph)
    replace_spatial_means(graph, layer_windows(model.arch))
    metadata = {
        Key.FORMAT: contract.FORMAT_VERSION,
        Key.FORMAT_MINOR: contract.FORMAT_MINOR,
        Key.NET: options.net,
        Key.VARIANT: options.variant,
        Key.INPUT_RANGE: contract.INPUT_RANGE,
        Key.INPUT_LAYOUT: contract.INPUT_LAYOUT,
        Key.MIN_SIZE: str(min_size),
        Key.OUTPUTS: ",".join(n for n in model.output_names if n in contract.OUTPUTS),
        Key.NUM_LAYERS: str(len(model.lins)),
        Key.PRECISION: options.spec.precision,
        Key.BATCH: contract.BATCH_RULE,
        Key.STATIC_HW: f"{options.static_hw[0]}x{options.static_hw[1]}" if options.static_hw else "",
        Key.WEIGHTS_SHA256: model.weights_sha256,
        Key.WEIGHTS_ORIGIN: model.weights_origin,
        Key.TOOLKIT_VERSION: __version__,
        Key.TORCH_VERSION: torch.__version__,
        Key.ONNX_VERSION: onnx.__version__,
        Key.OPSET: str(options.opset),
        Key.EXPORTER: options.exporter,
        Key.FUSED: "conv+blurpool" if options.fuse else "none",
        Key.PARITY_TOLERANCE: f"{options.parity_tolerance:g}",
        Key.SPATIAL_MEAN: contract.SPATIAL_MEAN_PAIRWISE,
        **geometry_metadata(layer_windows(model.arch)),
    }
    if options.layer_maps:
        metadata[Key.LAYER_MAPS] = ",".join(contract.layer_map_outputs(len(model.lins)))
    with _step("verify", timings, progress):
        onnx.checker.check_model(graph, full_check=True)
        report = verify_parity(graph, model, min_size, options.parity_tolerance, options.static_hw)
        progress(report.summary())
        report.raise_if_failed(options.file_name)
    metadata[Key.PARITY_MAX_ABS] = f"{report.max_abs:.3g}"
    metadata[Key.PARITY_MAX_REL] = f"{report.max_rel:.3g}"
    # the layers' 2x2 blocks must line up with the tile origins the file's geometry sets (engine/winograd.py)
    align = winograd.alignment_of(metadata)
    cpu_form = (winograd.rewritten_copy(graph, align) if options.spec.precision == "fp32" and not options.int8
                else None)
    if cpu_form is not None:
        with _step("verify winograd", timings, progress):
            cpu_report = verify_parity(cpu_form, model, min_size, options.parity_tolerance, options.static_hw)
            progress(f"the CPU provider's Winograd form: {cpu_report.summary()}")
            cpu_report.raise_if_failed(f"{options.file_name} (the CPU provider's Winograd form)")
        metadata.update(winograd.declaration(cpu_report.max_abs))
    if options.int8:
        graph, int8_metadata = quantize_int8(graph, model, min_size, options, progress, timings)
        metadata.update(int8_metadata)
    with _step("memory", timings, progress), tempfile.TemporaryDirectory() as tmp:
        bytes_per_pixel, rates = 0, {}
        for n, form in enumerate(g for g in (graph, cpu_form) if g is not None):  # the tiler plans for the larger
            probe_path = Path(tmp) / f"probe{n}.onnx"
            probe_path.write_bytes(form.SerializeToString())
            form_bytes, form_rates = measure_bytes_per_pixel(probe_path, min_size, options.static_hw)
            bytes_per_pixel = max(bytes_per_pixel, form_bytes)
            rates = {size: max(rate, rates.get(size, 0)) for size, rate in form_rates.items()}
        progress(f"memory: {bytes_per_pixel} bytes per pixel of a pair (ONNX Runtime CPU; sampled "
                 f"{', '.join(f'{size} {rate}' for size, rate in rates.items())})")
    metadata[Key.BYTES_PER_PIXEL] = str(bytes_per_pixel)
    set_metadata(graph, metadata)
    with _step("write", timings, progress):
        path = write_atomically(graph, Path(options.out_dir) / options.file_name)
    features = None
    if options.features and options.spec.precision == "fp32":
        from .features_export import export_features

        with _step("features", timings, progress):
            features = export_features(model, exported, options.spec, metadata, options.out_dir, options.exporter,
                                       options.opset, min_size, options.parity_tolerance, graph,
                                       simplify if options.simplify else None, _write_features)
        progress(f"features: {features.path.name} ({'up to date, kept' if features.reused else 'written'}), "
                 f"head(features) vs pair graph max abs {features.max_abs:.2e}")
    return ExportResult(path, min_size, report, metadata, timings, rates, features)


def _write_features(graph: onnx.ModelProto, metadata: dict[str, str], path: Path) -> Path:
    set_metadata(graph, metadata)
    graph.doc_string = ("ST-LPIPS / LPIPS features: input image float32 NCHW RGB in [-1, 1]; outputs feat0.. each "
                        "layer's unit-normalised features; head weights in metadata stlpips.head_weights.")
    return write_atomically(graph, path)


def quantize_int8(fp32_graph: onnx.ModelProto, model: PerceptualDistance, min_size: int, options: ExportOptions,
                  progress: Progress, timings: dict[str, float]) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The verified float32 graph -> the int8 graph and its metadata, or GateError (int8.py)."""
    from . import int8

    with _step("calibrate", timings, progress):
        calibration = int8.calibration_set(options.calibration, options.calibration_only, progress)
    with _step("quantize", timings, progress):
        graph, metadata = int8.quantize_and_gate(fp32_graph, calibration, options.gate_triplets, progress)
    # Parity against PyTorch too, at the int8 bound (stlpips_rt.precision): it catches a broken graph, the gate
    # above decides rankings.
    bound = tolerance("int8").max_abs
    report = verify_parity(graph, model, min_size, bound)
    progress(report.summary())
    report.raise_if_failed(options.file_name)
    metadata.update({Key.PARITY_TOLERANCE: f"{bound:g}", Key.PARITY_MAX_ABS: f"{report.max_abs:.3g}",
                     Key.PARITY_MAX_REL: f"{report.max_rel:.3g}"})
    return graph, metadata


def trace_to_onnx(model: PerceptualDistance, options: ExportOptions, min_size: int) -> onnx.ModelProto:
    """Trace with separate batch dimensions for the two inputs and (unless ``static_hw``) dynamic H and W."""
    return export_graph(model, options.exporter, options.opset, min_size, options.static_hw)


def simplify(graph: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim: constant folding and shape simplification. Our own parity check replaces onnxsim's."""
    import onnxsim

    simplified, ok = onnxsim.simplify(graph, check_n=0)
    if not ok:
        raise SimplifyError("onnxsim could not validate the simplified graph; rerun with --no-simplify")
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
