"""The stlpips ONNX contract (format 1.1): what an exported file holds, how it describes itself and how it is named.

One home for the facts the exporter writes and every reader checks: the Python runtime reads files through
:class:`ModelInfo`, the exporter writes them through :class:`ModelSpec` and :class:`Key`, and a test holds the C++
host's key list (examples/cpp) against :data:`Key`. User-facing description: docs/contract.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelNotFoundError, NotAnStlpipsModelError
from .variants import VARIANTS, get_variant

FORMAT_VERSION = "1"
#: Additions a format-1 reader may ignore: 1 (stlpips-deploy 0.2) puts each layer's distance map in every file with
#: dynamic H and W and computes the spatial mean by block sums (:data:`SPATIAL_MEAN_PAIRWISE`); absent means 0.
FORMAT_MINOR = "1"
#: :attr:`Key.SPATIAL_MEAN` of a graph whose spatial means are block sums, accurate at every size (docs/contract.md).
SPATIAL_MEAN_PAIRWISE = "pairwise"
INPUTS = ("in0", "in1")
#: Outputs in the order the graph returns them; ``dist`` is always there.
OUTPUTS = ("dist", "dist_layers", "dist_map")
#: Named dynamic axes. in0 and in1 have their own batch axis: N0 == N1, or either is 1 (broadcast).
AXES: dict[str, dict[int, str]] = {
    "in0": {0: "N0", 2: "H", 3: "W"},
    "in1": {0: "N1", 2: "H", 3: "W"},
    "dist": {0: "N"},
    "dist_layers": {0: "N"},
    "dist_map": {0: "N", 2: "H", 3: "W"},
}
SPATIAL_AXES = ("H", "W")


def layer_map_outputs(num_layers: int) -> tuple[str, ...]:
    """Outputs of every dynamic file (format 1.1; ``--tiles`` files before) besides :data:`OUTPUTS`: each
    layer's distance map ``[N, 1, H_l, W_l]`` before the spatial mean, in layer order (declared under
    :attr:`Key.LAYER_MAPS`, not in ``stlpips.outputs``)."""
    return tuple(f"layer_map{i}" for i in range(num_layers))


def layer_map_axes(index: int) -> dict[int, str]:
    return {0: "N", 2: f"H{index}", 3: f"W{index}"}


def feature_outputs(num_layers: int) -> tuple[str, ...]:
    """Outputs of a features graph (``stlpips_{net}_{variant}_features.onnx``): each layer's unit-normalised
    features ``[N, C_l, H_l, W_l]``, in layer order (docs/matrix.md)."""
    return tuple(f"feat{i}" for i in range(num_layers))


#: The one input of a features graph: images ``[N, 3, H, W]``, as ``in0``.
FEATURES_INPUT = "image"
#: :attr:`Key.KIND` of a features graph; a pair graph has no ``stlpips.kind``.
KIND_FEATURES = "features"
#: :attr:`Key.FEATURES_BATCH` of a features graph checked to be batch invariant, and of one that is not.
BATCH_INVARIANT = "invariant"
BATCH_PER_IMAGE = "per-image"

INPUT_RANGE = "-1,1"
INPUT_LAYOUT = "NCHW,RGB"
BATCH_RULE = "N0 == N1, or either is 1 (broadcast)"
#: Arithmetic inside a file's backbone; inputs and outputs are float32 in every case.
FILE_PRECISIONS = ("fp32", "fp16", "int8")


class Key:
    """``metadata_props`` keys of an stlpips file."""

    FORMAT = "stlpips.format"
    FORMAT_MINOR = "stlpips.format_minor"
    SPATIAL_MEAN = "stlpips.spatial_mean"
    NET = "stlpips.net"
    VARIANT = "stlpips.variant"
    INPUT_RANGE = "stlpips.input_range"
    INPUT_LAYOUT = "stlpips.input_layout"
    MIN_SIZE = "stlpips.min_size"
    OUTPUTS = "stlpips.outputs"
    NUM_LAYERS = "stlpips.num_layers"
    PRECISION = "stlpips.precision"
    BATCH = "stlpips.batch"
    STATIC_HW = "stlpips.static_hw"
    FUSED = "stlpips.fused"
    WEIGHTS_SHA256 = "stlpips.weights_sha256"
    WEIGHTS_ORIGIN = "stlpips.weights_origin"
    TOOLKIT_VERSION = "stlpips.toolkit_version"
    TORCH_VERSION = "stlpips.torch_version"
    ONNX_VERSION = "stlpips.onnx_version"
    OPSET = "stlpips.opset"
    EXPORTER = "stlpips.exporter"
    PARITY_TOLERANCE = "stlpips.parity_tolerance"
    PARITY_MAX_ABS = "stlpips.parity_max_abs"
    PARITY_MAX_REL = "stlpips.parity_max_rel"
    # int8 files only (stlpips-export --int8; docs/int8.md): how they were quantized and what their gate measured
    # against the float32 graph they came from.
    QUANTIZER = "stlpips.quantizer"
    CALIBRATION = "stlpips.calibration"
    FLOAT_NODES = "stlpips.float_nodes"
    GATE = "stlpips.gate"
    GATE_TRIPLETS = "stlpips.gate_triplets"
    GATE_RANK_AGREEMENT = "stlpips.gate_rank_agreement"
    GATE_MEDIAN_REL = "stlpips.gate_median_rel"
    GATE_FLIP_RATES = "stlpips.gate_flip_rates"
    # What the tiler needs (stlpips_rt.tiling, docs/tiling.md): per layer, comma lists in layer order.
    LAYER_STRIDE = "stlpips.layer_stride"
    LAYER_FIELD = "stlpips.layer_field"
    LAYER_PAD_BEFORE = "stlpips.layer_pad_before"
    LAYER_PAD_AFTER = "stlpips.layer_pad_after"
    BYTES_PER_PIXEL = "stlpips.bytes_per_pixel"
    LAYER_MAPS = "stlpips.layer_maps"
    # Features graphs (docs/matrix.md): what a file computes ("features"; absent in pair graphs), the channels of
    # each feat output, the head's learned 1x1 weights (base64 of float32 little-endian, layer after layer) and the
    # pair graph they were exported with (its short name).
    KIND = "stlpips.kind"
    FEATURE_CHANNELS = "stlpips.feature_channels"
    HEAD_WEIGHTS = "stlpips.head_weights"
    PAIR_MODEL = "stlpips.pair_model"
    # "invariant" when the export checked that an image's features are the same bits alone or in any batch, in
    # any position (onnxruntime CPU provider): the runtime may then stack images of one size into a batch;
    # "per-image" when that check failed (one image per run). Absent in features graphs before this key.
    FEATURES_BATCH = "stlpips.features_batch"
    # Set by the export where onnxruntime's CPU provider may run the wide 3x3 convolutions as Winograd F(2x2, 3x3)
    # (stlpips_rt.engine.winograd), after that form passed the same parity gate: its measured max abs error. The
    # runtime rewrites only files that carry it (exact mode, CPU provider); other hosts run the file as it is.
    CPU_WINOGRAD = "stlpips.cpu_winograd"
    # Which version of that rewrite the export gated (stlpips_rt.engine.winograd.FORM): a runtime whose rewrite is
    # another version runs the file's own graph, so no file runs a form its export did not check.
    CPU_WINOGRAD_FORM = "stlpips.cpu_winograd_form"

    @classmethod
    def all(cls) -> tuple[str, ...]:
        return tuple(v for k, v in vars(cls).items() if k.isupper())


#: Keys without which a file is refused.
REQUIRED_KEYS = (Key.FORMAT, Key.NET, Key.VARIANT, Key.INPUT_RANGE, Key.MIN_SIZE, Key.OUTPUTS)

_STATIC = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that changes an exported graph, and so its file name and short name.

    Names are ``{net}-{variant}[-fp16|-int8][-spatial][-layers][-tiles][-features][-HxW][-unfused]`` (short) and
    ``stlpips_{net}_{variant}[_fp16|_int8][_spatial][_layers][_tiles][_features][_HxW][_unfused].onnx`` (file).
    ``unfused`` appears only for variants where fusion changes the graph; ``tiles`` names the files that
    carried the per-layer distance maps tiled scoring reads before format 1.1, when every dynamic file got them
    (:func:`layer_map_outputs`): still read, no longer written; ``features`` is the features graph written beside a
    pair graph (one image in, :func:`feature_outputs` out; :meth:`features_spec`).
    """

    net: str
    variant: str
    precision: str = "fp32"
    spatial: bool = False
    layers: bool = False
    static_hw: tuple[int, int] | None = None
    fused: bool = True
    tiles: bool = False
    features: bool = False

    def __post_init__(self) -> None:
        get_variant(self.net, self.variant)
        if self.precision not in FILE_PRECISIONS:
            raise ValueError(f"precision must be one of {FILE_PRECISIONS}, got {self.precision!r}")
        if self.tiles and self.static_hw:
            raise ValueError("a tiles graph needs dynamic H and W; drop the static size or the tiles option")
        if self.features and (self.spatial or self.layers or self.tiles or self.precision != "fp32"):
            raise ValueError("a features graph is float32 and has no pair outputs (spatial, layers, tiles)")

    def features_spec(self) -> ModelSpec:
        """The features graph of this pair graph: same variant, static size and fusion, float32."""
        return ModelSpec(self.net, self.variant, "fp32", static_hw=self.static_hw, fused=self.fused, features=True)

    @property
    def key(self) -> str:
        return f"{self.net}-{self.variant}"

    @property
    def outputs(self) -> tuple[str, ...]:
        return ("dist",) + (("dist_layers",) if self.layers else ()) + (("dist_map",) if self.spatial else ())

    def _suffixes(self) -> list[str]:
        parts = [] if self.precision == "fp32" else [self.precision]
        parts += [name for name, on in (("spatial", self.spatial), ("layers", self.layers), ("tiles", self.tiles),
                                        ("features", self.features)) if on]
        if self.static_hw:
            parts.append(f"{self.static_hw[0]}x{self.static_hw[1]}")
        if not self.fused and VARIANTS[self.key].fusable:
            parts.append("unfused")
        return parts

    @property
    def short_name(self) -> str:
        return "-".join([self.net, self.variant, *self._suffixes()])

    @property
    def file_name(self) -> str:
        return "stlpips_" + "_".join([self.net, self.variant, *self._suffixes()]) + ".onnx"

    @classmethod
    def from_file_name(cls, file_name: str) -> ModelSpec | None:
        """The inverse of :attr:`file_name`, or None for a name this contract does not give out."""
        if not (file_name.startswith("stlpips_") and file_name.endswith(".onnx")):
            return None
        try:
            spec = cls.parse(file_name[len("stlpips_") : -len(".onnx")].replace("_", "-"))
        except (ModelNotFoundError, ValueError):
            return None
        return spec if spec.file_name == file_name else None

    @classmethod
    def parse(cls, short_name: str) -> ModelSpec:
        """The inverse of :attr:`short_name`; a :class:`ModelNotFoundError` says what a short name looks like."""
        parts = short_name.strip().lower().split("-")
        if len(parts) < 2 or f"{parts[0]}-{parts[1]}" not in VARIANTS:
            raise ModelNotFoundError(
                f"model {short_name!r}: not a file and not a short name like 'alex-st', 'vgg-lpips-fp16' or "
                f"'alex-st-spatial' (known models: {', '.join(VARIANTS)}); pass a path to an .onnx file or a short "
                "name"
            )
        fields: dict = {"net": parts[0], "variant": parts[1]}
        for part in parts[2:]:
            static = _STATIC.match(part)
            if part in FILE_PRECISIONS:
                fields["precision"] = part
            elif part in ("spatial", "layers", "tiles", "features"):
                fields[part] = True
            elif part == "unfused":
                fields["fused"] = False
            elif static:
                fields["static_hw"] = (int(static[1]), int(static[2]))
            else:
                raise ModelNotFoundError(
                    f"model {short_name!r}: unknown part {part!r}; short names end in any of -fp16, -int8, "
                    "-spatial, -layers, -tiles, -features, -HxW, -unfused"
                )
        return cls(**fields)


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about an stlpips model, read and validated from its ``metadata_props``."""

    path: Path
    net: str
    variant: str
    min_size: int
    outputs: tuple[str, ...]
    precision: str
    num_layers: int | None
    static_hw: tuple[int, int] | None
    metadata: dict[str, str] = field(repr=False)

    @property
    def has_spatial(self) -> bool:
        return "dist_map" in self.outputs

    @property
    def has_layers(self) -> bool:
        return "dist_layers" in self.outputs

    @property
    def layer_maps(self) -> tuple[str, ...]:
        """Per-layer distance map outputs (every dynamic file of format 1.1, ``--tiles`` files before), empty
        otherwise."""
        return tuple(n.strip() for n in self.metadata.get(Key.LAYER_MAPS, "").split(",") if n.strip())

    @property
    def format_minor(self) -> int:
        minor = self.metadata.get(Key.FORMAT_MINOR, "0")
        return int(minor) if minor.isdigit() else 0

    @property
    def predates_built_in_tiling(self) -> bool:
        """Exported before every file carried its layer maps (format 1.0): such a file tiles only through a
        ``-tiles`` file beside it, and its ``-tiles`` name is part of its spec."""
        return self.format_minor < 1

    @property
    def short_name(self) -> str:
        """The variant key (``"alex-st"``); :attr:`spec` names the exact file."""
        return f"{self.net}-{self.variant}"

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(self.net, self.variant, self.precision if self.precision in FILE_PRECISIONS else "fp32",
                         self.has_spatial, self.has_layers, self.static_hw,
                         self.metadata.get(Key.FUSED, "none") != "none",
                         bool(self.layer_maps) and self.predates_built_in_tiling)

    @classmethod
    def from_metadata(cls, path: Path, meta: dict[str, str]) -> ModelInfo:
        """Validate the contract; raise :class:`NotAnStlpipsModelError` naming the first violation."""

        def refuse(why: str) -> NotAnStlpipsModelError:
            return NotAnStlpipsModelError(f"{path}: not a usable stlpips model ({why}); export one with "
                                          "`stlpips-export`")

        fmt = meta.get(Key.FORMAT)
        if fmt is None:
            raise refuse(f"no {Key.FORMAT} in its metadata_props")
        if fmt != FORMAT_VERSION:
            raise refuse(f"{Key.FORMAT} is {fmt!r}, this runtime reads format {FORMAT_VERSION}")
        if meta.get(Key.KIND) == KIND_FEATURES:
            raise NotAnStlpipsModelError(
                f"{path}: a features graph (one image in, per-layer features out), not a pair graph; give the pair "
                f"model ({meta.get(Key.PAIR_MODEL) or 'e.g. alex-st'}): Scorer.features and Scorer.matrix find this "
                "file beside it")
        for key in REQUIRED_KEYS:
            if key not in meta:
                raise refuse(f"metadata key {key} is missing")
        if meta[Key.INPUT_RANGE].replace(" ", "") != INPUT_RANGE:
            raise refuse(f"{Key.INPUT_RANGE} is {meta[Key.INPUT_RANGE]!r}, expected {INPUT_RANGE!r}")
        try:
            min_size = int(meta[Key.MIN_SIZE])
        except ValueError:
            raise refuse(f"{Key.MIN_SIZE} {meta[Key.MIN_SIZE]!r} is not an integer") from None
        if min_size < 1:
            raise refuse(f"{Key.MIN_SIZE} is {min_size}")
        outputs = tuple(o.strip() for o in meta[Key.OUTPUTS].split(",") if o.strip())
        if "dist" not in outputs or any(o not in OUTPUTS for o in outputs):
            raise refuse(f"{Key.OUTPUTS} is {meta[Key.OUTPUTS]!r}; expected 'dist' plus any of "
                         f"{', '.join(OUTPUTS[1:])}")
        static_hw = None
        if meta.get(Key.STATIC_HW):
            match = _STATIC.match(meta[Key.STATIC_HW].lower())
            if match is None:
                raise refuse(f"{Key.STATIC_HW} {meta[Key.STATIC_HW]!r} is not HxW")
            static_hw = (int(match[1]), int(match[2]))
        num_layers = meta.get(Key.NUM_LAYERS, "")
        return cls(
            path=path,
            net=meta[Key.NET],
            variant=meta[Key.VARIANT],
            min_size=min_size,
            outputs=outputs,
            precision=meta.get(Key.PRECISION, "fp32"),
            num_layers=int(num_layers) if num_layers.isdigit() else None,
            static_hw=static_hw,
            metadata=dict(meta),
        )

    def check_graph(self, inputs: dict[str, str], outputs: set[str]) -> None:
        """Check a graph's signature (input name -> element type, output names) against the metadata."""
        for name in INPUTS:
            if name not in inputs:
                raise NotAnStlpipsModelError(f"{self.path}: graph has no input {name!r}; re-export it")
            if inputs[name] != "tensor(float)":
                raise NotAnStlpipsModelError(
                    f"{self.path}: input {name} is {inputs[name]}, the contract says float32"
                )
        missing = [o for o in self.outputs + self.layer_maps if o not in outputs]
        if missing:
            raise NotAnStlpipsModelError(
                f"{self.path}: metadata declares outputs {missing} that the graph does not have; re-export it"
            )
