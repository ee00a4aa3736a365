"""Finding model files: a path, or a short name (``"alex-st"``) looked up in the model folders; reading a file's
contract (:class:`~stlpips_rt.contract.ModelInfo`) and its graph's tensors (:class:`Signature`)."""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import onnxruntime as ort

from ..contract import ModelInfo, ModelSpec
from ..errors import ModelNotFoundError, NotAnStlpipsModelError

MODEL_DIR_ENV = "STLPIPS_MODEL_DIR"


def model_dirs(extra: Sequence[str | os.PathLike[str]] = ()) -> list[Path]:
    """Folders searched for short model names: ``extra`` (e.g. a CLI's ``--models``), ``$STLPIPS_MODEL_DIR`` (if
    set), then ``./models``."""
    dirs = [Path(d).expanduser() for d in extra]
    if os.environ.get(MODEL_DIR_ENV):
        dirs.append(Path(os.environ[MODEL_DIR_ENV]).expanduser())
    dirs.append(Path.cwd() / "models")
    return dirs


def file_name_for(short_name: str) -> str:
    """Map a short name such as ``"alex-st"`` or ``"vgg-lpips-fp16"`` to its file name."""
    return ModelSpec.parse(short_name).file_name


def resolve_model(model: str | os.PathLike[str], search: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """Resolve a path or a short name (``"alex-st"``) to an existing .onnx file; short names are looked up in
    ``search``, then the default folders (:func:`model_dirs`)."""
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if path.suffix == ".onnx" or os.sep in str(model):
        raise ModelNotFoundError(f"model file {str(model)!r} does not exist")
    spec = ModelSpec.parse(str(model))
    searched = model_dirs(search)
    for folder in searched:
        if (folder / spec.file_name).is_file():
            return folder / spec.file_name
    where = ", ".join(str(d) for d in searched)
    raise ModelNotFoundError(
        f"model {str(model)!r}: {spec.file_name} not found in {where}; export it with "
        f"`{export_command(spec.short_name)}`, or point --models / ${MODEL_DIR_ENV} at the folder that holds it"
    )


def export_command(short_name: str) -> str:
    """The command that writes a short name's file: ``stlpips-export --net vgg --variant st --spatial``."""
    spec = ModelSpec.parse(short_name)
    flags = [f"--{spec.precision}"] if spec.precision != "fp32" else []
    flags += [f"--{part}" for part in ("spatial", "layers") if getattr(spec, part)]
    if spec.static_hw is not None:
        flags.append(f"--static {spec.static_hw[0]}x{spec.static_hw[1]}")
    if not spec.fused:
        flags.append("--no-fuse")
    return " ".join(["stlpips-export --net", spec.net, "--variant", spec.variant, *flags])


def missing_models(names: Sequence[str], search: Sequence[str | os.PathLike[str]] = ()) -> list[str]:
    """The models of ``names`` (short names or paths) that do not resolve to a file, in order, once each."""
    missing = []
    for name in dict.fromkeys(names):
        try:
            resolve_model(name, search)
        except ModelNotFoundError:
            missing.append(str(name))
    return missing


def check_models_exist(names: Sequence[str], search: Sequence[str | os.PathLike[str]] = ()) -> None:
    """Raise one :class:`ModelNotFoundError` naming every model of ``names`` (short names or paths) that does not
    resolve, with the commands that make them: for tools that need several models, before any work starts."""
    missing = missing_models(names, search)
    if not missing:
        return
    where = ", ".join(str(d) for d in model_dirs(search))
    makes, paths = [], []
    for name in missing:
        try:
            makes.append(f"`{export_command(name)}`")
        except ModelNotFoundError:  # a path: nothing to export under its name
            paths.append(name)
    remedy = f"make them with {' and '.join(makes)}" if makes else ""
    if paths:
        remedy += f"{'; ' if remedy else ''}no such file: {', '.join(paths)}"
    raise ModelNotFoundError(
        f"{len(missing)} model(s) not found in {where}: {', '.join(missing)}; {remedy}; or point --models / "
        f"${MODEL_DIR_ENV} at the folder that holds them"
    )


def precision_sibling(path: Path, precision: str) -> Path | None:
    """The ``precision`` file exported beside a float32 export (``stlpips_alex_st.onnx`` ->
    ``stlpips_alex_st_int8.onnx``), when there is one; None for other file names."""
    spec = ModelSpec.from_file_name(path.name)
    if spec is None or spec.precision != "fp32":
        return None
    sibling = path.with_name(dataclasses.replace(spec, precision=precision).file_name)
    return sibling if sibling.is_file() else None



def info_from_session(path: Path, session: ort.InferenceSession) -> ModelInfo:
    """Validate the metadata and the graph signature of a loaded session."""
    info = ModelInfo.from_metadata(path, dict(session.get_modelmeta().custom_metadata_map))
    info.check_graph({i.name: i.type for i in session.get_inputs()}, {o.name for o in session.get_outputs()})
    return info


#: ModelProto's ``metadata_props`` field, and StringStringEntryProto's key and value (onnx.proto).
_METADATA_PROPS, _KEY, _VALUE = 14, 1, 2
_LENGTH_DELIMITED = 2
_SKIP = {1: 8, 5: 4}  # fixed-size wire types: bytes to skip


def read_metadata(path: Path) -> dict[str, str]:
    """A file's ``metadata_props``, read straight from the ONNX protobuf: every other top-level field (the graph and
    its weights among them) is skipped by its length, so this costs well under a millisecond where a session costs
    30-90 ms (what a check on every load can afford). Raises ValueError where the file is not a well-formed
    protobuf."""
    out: dict[str, str] = {}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while f.tell() < size:
            tag = _varint(f)
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                _varint(f)
            elif wire in _SKIP:
                f.seek(_SKIP[wire], os.SEEK_CUR)
            elif wire == _LENGTH_DELIMITED:
                length = _varint(f)
                if field == _METADATA_PROPS:
                    blob = f.read(length)
                    if len(blob) < length:
                        raise ValueError(f"{path}: truncated ONNX protobuf")
                    key, value = _entry(blob)
                    out[key] = value
                else:
                    f.seek(length, os.SEEK_CUR)
            else:
                raise ValueError(f"{path}: not an ONNX protobuf (wire type {wire})")
            if f.tell() > size:
                raise ValueError(f"{path}: truncated ONNX protobuf")
    return out


def _varint(f: BinaryIO) -> int:
    value = shift = 0
    while True:
        byte = f.read(1)
        if not byte or shift > 63:
            raise ValueError("not a well-formed ONNX protobuf")
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if byte[0] < 0x80:
            return value


def _entry(blob: bytes) -> tuple[str, str]:
    """A StringStringEntryProto's key and value."""
    fields: dict[int, str] = {}
    f = io.BytesIO(blob)
    while f.tell() < len(blob):
        tag = _varint(f)
        if tag & 7 != _LENGTH_DELIMITED:
            raise ValueError("a metadata entry that is not two strings")
        length = _varint(f)
        text = f.read(length)
        if len(text) < length:
            raise ValueError("a truncated metadata entry")
        fields[tag >> 3] = text.decode("utf-8")
    return fields.get(_KEY, ""), fields.get(_VALUE, "")


def read_model_info(path: Path) -> ModelInfo:
    """Read and validate the metadata of an ONNX file without building an execution session."""
    return read_signature(path)[0]


#: onnxruntime's element types -> numpy dtype names (the ones an stlpips graph can carry).
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32", "tensor(int64)": "int64",
               "tensor(bool)": "bool"}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output of a graph, as the file declares it: ``shape`` holds ints for fixed axes and the axis'
    name (``"N0"``, ``"H"``) for dynamic ones."""

    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]

    @property
    def dims(self) -> tuple[int, ...]:
        """The shape with -1 for every dynamic axis (the convention of Triton and the Open Inference Protocol)."""
        return tuple(d if isinstance(d, int) else -1 for d in self.shape)


@dataclasses.dataclass(frozen=True)
class Signature:
    """A graph's inputs and outputs, in the file's order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)


def signature_of(session: ort.InferenceSession) -> Signature:
    """The tensors of a loaded session's graph."""

    def spec(arg: ort.NodeArg) -> TensorSpec:
        dtype = _ORT_DTYPES.get(arg.type)
        if dtype is None:
            raise NotAnStlpipsModelError(f"tensor {arg.name} has element type {arg.type}, which no stlpips graph has")
        return TensorSpec(arg.name, dtype, tuple(d if isinstance(d, int) else str(d or "?") for d in arg.shape))

    return Signature(tuple(spec(a) for a in session.get_inputs()), tuple(spec(a) for a in session.get_outputs()))


def read_signature(path: Path) -> tuple[ModelInfo, Signature]:
    """Read and validate an ONNX file's contract and its graph's tensors, without building an execution session
    (and without the onnx package or torch)."""
    try:
        # A session with every optimisation off is the cheapest way to read metadata without the onnx package.
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private exception types
        raise NotAnStlpipsModelError(f"{path}: onnxruntime cannot load it as an ONNX model ({exc})") from None
    return info_from_session(path, sess), signature_of(sess)
