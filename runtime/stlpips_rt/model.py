"""Model file resolution and the metadata contract (format 1) of stlpips ONNX files."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .errors import ModelNotFoundError, NotAnStlpipsModelError

SUPPORTED_FORMAT = "1"
NETS = ("alex", "vgg")
VARIANTS = ("st", "lpips", "aa", "scratch")
OUTPUTS = ("dist", "dist_layers", "dist_map")
MODEL_DIR_ENV = "STLPIPS_MODEL_DIR"
# "alex-st", "vgg-lpips-fp16", "alex-st-spatial-layers": {net}-{variant}[-fp16][-spatial][-layers]
_SHORT_NAME = re.compile(r"^(?P<net>[a-z0-9]+)-(?P<variant>[a-z]+)(?P<suffix>(-(fp16|spatial|layers))*)$")


def model_dirs() -> list[Path]:
    """Folders searched for short model names: ``$STLPIPS_MODEL_DIR`` (if set), then ``./models``."""
    dirs = []
    if os.environ.get(MODEL_DIR_ENV):
        dirs.append(Path(os.environ[MODEL_DIR_ENV]).expanduser())
    dirs.append(Path.cwd() / "models")
    return dirs


def file_name_for(short_name: str) -> str:
    """Map a short name such as ``"alex-st"`` or ``"vgg-lpips-fp16"`` to its file name."""
    m = _SHORT_NAME.match(short_name)
    if m is None:
        raise ModelNotFoundError(
            f"model {short_name!r}: not a file and not a short name like 'alex-st', 'vgg-lpips' or "
            "'alex-st-spatial'; pass a path to an .onnx file or a short name"
        )
    suffix = m.group("suffix").replace("-", "_")
    return f"stlpips_{m.group('net')}_{m.group('variant')}{suffix}.onnx"


def resolve_model(model: str | os.PathLike[str]) -> Path:
    """Resolve a path or a short name (``"alex-st"``) to an existing .onnx file."""
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.suffix == ".onnx" or os.sep in str(model):
        raise ModelNotFoundError(f"model file {str(model)!r} does not exist")
    name = file_name_for(str(model))
    searched = model_dirs()
    for folder in searched:
        if (folder / name).is_file():
            return folder / name
    where = ", ".join(str(d) for d in searched)
    raise ModelNotFoundError(
        f"model {str(model)!r}: {name} not found in {where}; export it with "
        f"`stlpips-export --net ... --variant ...`, or set ${MODEL_DIR_ENV} to the folder that holds it"
    )


@dataclass(frozen=True)
class ModelInfo:
    """What the runtime needs to know about an stlpips model, read from its ``metadata_props``."""

    path: Path
    net: str
    variant: str
    min_size: int
    outputs: tuple[str, ...]
    precision: str
    num_layers: int | None
    static_hw: tuple[int, int] | None
    metadata: dict[str, str]

    @property
    def has_spatial(self) -> bool:
        return "dist_map" in self.outputs

    @property
    def has_layers(self) -> bool:
        return "dist_layers" in self.outputs

    @property
    def short_name(self) -> str:
        return f"{self.net}-{self.variant}"

    @classmethod
    def from_metadata(cls, path: Path, meta: dict[str, str]) -> ModelInfo:
        """Validate the stlpips metadata contract; raise :class:`NotAnStlpipsModelError` on any violation."""

        def refuse(why: str) -> NotAnStlpipsModelError:
            return NotAnStlpipsModelError(
                f"{path}: not a usable stlpips model ({why}); export one with `stlpips-export`"
            )

        fmt = meta.get("stlpips.format")
        if fmt is None:
            raise refuse("no stlpips.format in its metadata_props")
        if fmt != SUPPORTED_FORMAT:
            raise refuse(f"stlpips.format is {fmt!r}, this runtime reads format {SUPPORTED_FORMAT}")
        for key in ("stlpips.net", "stlpips.variant", "stlpips.input_range", "stlpips.min_size",
                    "stlpips.outputs"):
            if key not in meta:
                raise refuse(f"metadata key {key} is missing")
        if meta["stlpips.input_range"].replace(" ", "") != "-1,1":
            raise refuse(f"stlpips.input_range is {meta['stlpips.input_range']!r}, expected '-1,1'")
        try:
            min_size = int(meta["stlpips.min_size"])
        except ValueError:
            raise refuse(f"stlpips.min_size {meta['stlpips.min_size']!r} is not an integer") from None
        if min_size < 1:
            raise refuse(f"stlpips.min_size is {min_size}")
        outputs = tuple(o.strip() for o in meta["stlpips.outputs"].split(",") if o.strip())
        if "dist" not in outputs or any(o not in OUTPUTS for o in outputs):
            raise refuse(f"stlpips.outputs is {meta['stlpips.outputs']!r}; expected 'dist' plus any of "
                         "dist_layers, dist_map")
        num_layers = meta.get("stlpips.num_layers")
        static_hw = None
        if meta.get("stlpips.static_hw"):
            try:
                h, w = (int(v) for v in meta["stlpips.static_hw"].lower().split("x"))
            except ValueError:
                raise refuse(f"stlpips.static_hw {meta['stlpips.static_hw']!r} is not HxW") from None
            static_hw = (h, w)
        return cls(
            path=path,
            net=meta["stlpips.net"],
            variant=meta["stlpips.variant"],
            min_size=min_size,
            outputs=outputs,
            precision=meta.get("stlpips.precision", "fp32"),
            num_layers=int(num_layers) if num_layers and num_layers.isdigit() else None,
            static_hw=static_hw,
            metadata=dict(meta),
        )

    @classmethod
    def from_session(cls, path: Path, session: ort.InferenceSession) -> ModelInfo:
        """Validate the metadata and the graph signature of a loaded session."""
        info = cls.from_metadata(path, dict(session.get_modelmeta().custom_metadata_map))
        info.check_session(session)
        return info

    def check_session(self, session: ort.InferenceSession) -> None:
        """Check that the graph's inputs and outputs match what the metadata declares."""
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        for name in ("in0", "in1"):
            if name not in inputs:
                raise NotAnStlpipsModelError(f"{self.path}: graph has no input {name!r}; re-export it")
            if inputs[name].type != "tensor(float)":
                raise NotAnStlpipsModelError(
                    f"{self.path}: input {name} is {inputs[name].type}, the contract says float32"
                )
        missing = [o for o in self.outputs if o not in outputs]
        if missing:
            raise NotAnStlpipsModelError(
                f"{self.path}: metadata declares outputs {missing} that the graph does not have; re-export it"
            )


def read_model_info(path: Path) -> ModelInfo:
    """Read and validate the metadata of an ONNX file without building an execution session."""
    try:
        # A session with every optimisation off is the cheapest way to read metadata without the onnx package.
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private exception types
        raise NotAnStlpipsModelError(f"{path}: onnxruntime cannot load it as an ONNX model ({exc})") from None
    return ModelInfo.from_session(path, sess)
