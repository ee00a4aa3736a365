"""The Open Inference Protocol (KServe's v2 protocol; Triton's HTTP/REST protocol) as data, free of Ray and of any web
framework: the tensor datatypes, an inference request parsed from its JSON (with the binary-data extension's raw
tensors after it) into numpy arrays, and an answer encoded as JSON (with binary outputs after it where asked).

The protocol's texts: https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol and
Triton's binary-data extension (``Inference-Header-Content-Length``: the JSON's length in bytes; the tensors follow
it, each as ``parameters.binary_data_size`` bytes, in the order of the inputs that have one).

Every problem with a request raises :class:`~stlpips_rt.errors.RequestError` (400) saying which tensor and what to
send instead; the service answers it as ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import RequestError, RequestTooLargeError
from ..io.output import json_distance

#: The HTTP header that carries the JSON's length when binary tensors follow it.
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
#: The protocol's datatypes of fixed size -> numpy (little-endian in the binary extension). BYTES is variable.
FIXED_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
BYTES = "BYTES"
_NUMPY_TO_DATATYPE = {dtype.name: name for name, dtype in FIXED_DATATYPES.items()}


def datatype_of(numpy_dtype: str) -> str:
    """The protocol's datatype name of a numpy dtype name (``"float32"`` -> ``"FP32"``)."""
    return _NUMPY_TO_DATATYPE[np.dtype(numpy_dtype).name]


@dataclass
class Tensor:
    """One input of a request: ``data`` is a numpy array of ``shape`` for the fixed-size datatypes, and a list of
    bytes (one per element, row-major) for BYTES."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]


@dataclass
class InferRequest:
    """A parsed inference request: its inputs by name, the outputs asked for (name -> binary or JSON; empty: the
    server's default) and the request's id (echoed in the answer)."""

    inputs: dict[str, Tensor]
    outputs: dict[str, bool]
    binary_by_default: bool = False
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body under ``Content-Encoding`` gzip or deflate (as tritonclient's ``request_compression_algorithm``
    sends it), inflated to at most ``limit`` bytes: a compressed body over the limit once inflated is refused
    (:class:`RequestTooLargeError`) before it is all inflated."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestError(f"Content-Encoding {encoding!r} is not supported; send the body as it is, or gzip or "
                           "deflate it")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise RequestError(f"the body is not valid {encoding} data ({exc})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise RequestTooLargeError(f"the body inflates to more than this service's limit of {limit} bytes; send "
                                   "smaller tensors")
    return out


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """An inference request from its body; ``header_length`` is the ``Inference-Header-Content-Length`` header
    (None: the whole body is JSON)."""
    json_part, binary = _split(body, header_length)
    try:
        doc = json.loads(json_part)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"the request's JSON does not parse ({exc}); send {{\"inputs\": [{{\"name\", "
                           "\"datatype\", \"shape\", \"data\"}}]}} (the Open Inference Protocol)") from None
    if not isinstance(doc, dict):
        raise RequestError("the request's JSON is not an object; send {\"inputs\": [...]}")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError("the request has no \"inputs\" list; send {\"inputs\": [{\"name\", \"datatype\", "
                           "\"shape\", \"data\"}]}")
    parameters = _parameters(doc, "the request")
    inputs: dict[str, Tensor] = {}
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor, used = _input(raw, i, binary, offset)
        if tensor.name in inputs:
            raise RequestError(f"input {tensor.name!r} is given twice; send each input once")
        inputs[tensor.name] = tensor
        offset += used
    if offset != len(binary):
        raise RequestError(f"{len(binary) - offset} bytes of binary data follow the inputs' binary_data_size "
                           f"({offset} bytes in all); {HEADER_LENGTH} or a binary_data_size is wrong")
    outputs: dict[str, bool] = {}
    binary_by_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_by_default, bool):
        raise RequestError("parameters.binary_data_output must be true or false")
    raw_outputs = doc.get("outputs")
    if raw_outputs is None:  # absent or null (the schema's optional fields may be null): dist
        raw_outputs = []
    if not isinstance(raw_outputs, list):
        raise RequestError("\"outputs\" must be a list of {\"name\": ...}")
    for raw in raw_outputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise RequestError("each requested output needs a \"name\" (a string)")
        wanted = _parameters(raw, f"output {raw['name']!r}")
        if "classification" in wanted:
            raise RequestError(f"output {raw['name']!r}: the classification extension is not supported; ask for "
                               "the tensor itself")
        binary_out = wanted.get("binary_data", binary_by_default)
        if not isinstance(binary_out, bool):
            raise RequestError(f"output {raw['name']!r}: parameters.binary_data must be true or false")
        outputs[raw["name"]] = binary_out
    request_id = doc.get("id")
    return InferRequest(inputs, outputs, binary_by_default, str(request_id) if request_id is not None else None,
                        parameters)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise RequestError(f"{HEADER_LENGTH} {header_length!r} is not a number") from None
    if not 0 <= length <= len(body):
        raise RequestError(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes; it is the length of "
                           "the JSON part, the binary tensors follow it")
    return body[:length], body[length:]


def _parameters(doc: dict, what: str) -> dict[str, Any]:
    parameters = doc.get("parameters")
    if parameters is None:  # absent or null: none
        return {}
    if not isinstance(parameters, dict):
        raise RequestError(f"{what}: \"parameters\" must be an object")
    return parameters


def _input(raw: Any, index: int, binary: bytes, offset: int) -> tuple[Tensor, int]:
    """One input tensor and how many bytes of the binary section it took."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise RequestError(f"inputs[{index}] needs a \"name\" (a string)")
    name = raw["name"]
    datatype, shape = raw.get("datatype"), raw.get("shape")
    if not isinstance(shape, list):
        raise RequestError(f"input {name!r}: \"shape\" must be a list of non-negative integers, got {shape!r}")
    shape = _checked_shape(name, datatype, shape)
    size = _parameters(raw, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if raw.get("data") is not None:
            raise RequestError(f"input {name!r} has both \"data\" and parameters.binary_data_size; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
            raise RequestError(f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary) - offset} "
                               "bytes of binary data left after the JSON")
        return tensor_from_raw(name, datatype, shape, binary[offset:offset + size]), size
    if raw.get("data") is None:
        raise RequestError(f"input {name!r} has no \"data\" and no parameters.binary_data_size")
    if datatype == BYTES:
        return _shaped(Tensor(name, datatype, shape, _bytes_from_json(raw["data"], name))), 0
    return _shaped(Tensor(name, datatype, shape, _fixed_from_json(raw["data"], datatype, name))), 0


def tensor_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> Tensor:
    """A tensor from its raw little-endian bytes (the binary-data extension; gRPC's ``raw_input_contents``)."""
    shape = _checked_shape(name, datatype, shape)
    data = _bytes_elements(raw, name) if datatype == BYTES else _fixed_from_binary(raw, datatype, math.prod(shape),
                                                                                     name)
    return _shaped(Tensor(name, datatype, shape, data))


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]) -> Tensor:
    """A tensor from its elements as values (gRPC's typed ``contents``: numbers, or bytes for BYTES)."""
    shape = _checked_shape(name, datatype, shape)
    if datatype == BYTES:
        data: np.ndarray | list[bytes] = [bytes(v) for v in values]
    else:
        data = _fixed_from_json(list(values), datatype, name)
    return _shaped(Tensor(name, datatype, shape, data))


def _checked_shape(name: str, datatype: str, shape: Sequence[int]) -> tuple[int, ...]:
    if not isinstance(datatype, str) or (datatype != BYTES and datatype not in FIXED_DATATYPES):  # {} is no key
        raise RequestError(f"input {name!r}: datatype {datatype!r} is not one of the protocol's "
                           f"({', '.join([*FIXED_DATATYPES, BYTES])})")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(f"input {name!r}: \"shape\" must be a list of non-negative integers, got {list(shape)!r}")
    return tuple(shape)


def _shaped(tensor: Tensor) -> Tensor:
    """The tensor with its element count checked against its shape, and a fixed-size one reshaped."""
    count = math.prod(tensor.shape)
    got = len(tensor.data) if isinstance(tensor.data, list) else tensor.data.size
    if got != count:
        raise RequestError(f"input {tensor.name!r}: shape {list(tensor.shape)} holds {count} elements, the data has "
                           f"{got}")
    if isinstance(tensor.data, np.ndarray):
        tensor.data = tensor.data.reshape(tensor.shape)
    return tensor


def _fixed_from_binary(chunk: bytes, datatype: str, count: int, name: str) -> np.ndarray:
    dtype = FIXED_DATATYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        raise RequestError(f"input {name!r}: {len(chunk)} bytes of binary data, {datatype} of that shape is "
                           f"{count * dtype.itemsize} bytes")
    return np.frombuffer(chunk, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)


def _fixed_from_json(data: Any, datatype: str, name: str) -> np.ndarray:
    dtype = FIXED_DATATYPES[datatype]
    try:
        values = np.asarray(data, dtype=np.float64 if dtype.kind in "fiu" else bool)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(f"input {name!r}: \"data\" is not a (nested) list of numbers of one shape") from None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)) \
                or np.any(values < info.min) or np.any(values > info.max):
            raise RequestError(f"input {name!r}: {datatype} data must be whole numbers from {info.min} to "
                               f"{info.max}")
    return values.astype(dtype.newbyteorder("=")).ravel()


def _bytes_elements(chunk: bytes, name: str) -> list[bytes]:
    """BYTES in the binary extension: each element as a 4-byte little-endian length, then that many bytes."""
    out, at = [], 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise RequestError(f"input {name!r}: BYTES binary data ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", chunk, at)
        at += 4
        if at + length > len(chunk):
            raise RequestError(f"input {name!r}: a BYTES element says {length} bytes, {len(chunk) - at} are left")
        out.append(chunk[at:at + length])
        at += length
    return out


def _bytes_from_json(data: Any, name: str) -> list[bytes]:
    """BYTES in JSON: each element a base64 string of the bytes (a JSON string cannot hold raw bytes)."""
    flat = list(_flatten(data))
    out = []
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise RequestError(f"input {name!r}: BYTES data in JSON are base64 strings; element {i} is not a string")
        try:
            out.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise RequestError(f"input {name!r}: element {i} is not base64; send each file base64-encoded, or as "
                               "binary data (tritonclient: set_data_from_numpy(..., binary_data=True))") from None
    return out


def _flatten(data: Any) -> Any:
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def encode_answer(model_name: str, version: str, request_id: str | None,
                  outputs: Sequence[tuple[str, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """The answer's body and, where any output is binary, the length of its JSON part (the
    ``Inference-Header-Content-Length`` header). ``outputs``: (name, array, binary) in the order to answer.
    Float32 values in JSON are their shortest decimals, which read back as the same float32 bit for bit."""
    doc: dict[str, Any] = {"model_name": model_name, "model_version": version}
    if request_id is not None:
        doc["id"] = request_id
    entries, chunks = [], []
    for name, array, binary in outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array.dtype.name), "shape": list(array.shape)}
        if binary:
            chunk = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        elif array.dtype == np.float32:
            entry["data"] = [json_distance(v) for v in array.ravel()]
        else:
            entry["data"] = array.ravel().tolist()
        entries.append(entry)
    doc["outputs"] = entries
    head = json.dumps(doc, separators=(",", ":")).encode()
    return (head + b"".join(chunks), len(head)) if chunks else (head, None)
