"""The Open Inference Protocol's view of one stlpips model, free of Ray and of any web framework: the model's
metadata in the protocol's terms (names, datatypes and shapes read from the file), and a parsed inference request
(:mod:`~stlpips_rt.scale.oip`) turned into checked image pairs for the Scorer, with the service's limits.

Inputs ``in0`` (the references) and ``in1`` (the images compared with them), each in one of three forms:

- ``FP32 [N, 3, H, W]`` in [-1, 1]: the graph's own tensors (as the metadata declares them);
- ``UINT8 [N, H, W, 3]``: RGB images, normalised as the Scorer normalises uint8 images;
- ``BYTES [N]``: encoded image files (PNG, JPEG, ...), decoded with ``/v1``'s reader and limits; in JSON each
  element is the file in base64, in the binary-data extension its raw bytes.

``N0 == N1`` scores pairs; one ``in0`` against ``N1`` images runs through the broadcast graph (each reference's
features once, as ``/v1/score_many``), and one ``in1`` is compared with every ``in0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contract import INPUTS, ModelInfo
from ..engine.model_files import Signature
from ..errors import ImageTooLargeError, NoSuchModelError, RequestError
from ..io import images
from . import oip
from .http import Limits, header_pixels

if TYPE_CHECKING:
    from ..scorer import Scorer

#: The one version each served model has.
VERSION = "1"
#: The platform the metadata names: what Triton calls a model run by its onnxruntime backend.
PLATFORM = "onnxruntime_onnx"
#: Outputs answered when a request names none (the protocol's default would be every output).
DEFAULT_OUTPUTS = ("dist",)
FORMS = ("FP32 [N, 3, H, W] in [-1, 1]", "UINT8 [N, H, W, 3]", "BYTES [N] (encoded image files)")


def model_metadata(info: ModelInfo, signature: Signature) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the model's name (its short name), version, platform, and the graph's inputs
    and public outputs (``stlpips.outputs``) as the file declares them, dynamic axes as -1."""

    def tensor(name: str, spec: Any) -> dict[str, Any]:
        return {"name": name, "datatype": oip.datatype_of(spec.dtype), "shape": list(spec.dims)}

    return {"name": info.short_name, "versions": [VERSION], "platform": PLATFORM,
            "inputs": [tensor(n, signature.input(n)) for n in INPUTS],
            "outputs": [tensor(n, signature.output(n)) for n in info.outputs]}


def check_model(info: ModelInfo, name: str, version: str | None = None) -> None:
    """Refuse (404) a model name other than the served one's short name, or a version other than :data:`VERSION`."""
    if name != info.short_name:
        raise NoSuchModelError(f"no model {name!r} here; this service serves {info.short_name!r} "
                               f"(GET /v2/models/{info.short_name})")
    if version not in (None, "", VERSION):
        raise NoSuchModelError(f"model {name!r} has no version {version!r}; it has version {VERSION}")


@dataclass
class Pairs:
    """A request's images, ready for :meth:`Scorer.evaluate`: pairs ``(x0[i], x1[i])``, or with ``broadcast`` one
    reference ``x0[0]`` against every ``x1``."""

    x0: list[np.ndarray]
    x1: list[np.ndarray]
    broadcast: bool


def requested_outputs(request: oip.InferRequest, info: ModelInfo) -> dict[str, bool]:
    """The outputs to answer (name -> binary), refusing names the model does not have."""
    if not request.outputs:
        return {name: request.binary_by_default for name in DEFAULT_OUTPUTS}
    for name in request.outputs:
        if name not in info.outputs:
            raise RequestError(f"model {info.short_name!r} has no output {name!r}; it has {', '.join(info.outputs)}"
                               + ("" if info.has_spatial else " (dist_map needs a model exported with --spatial)"))
    return request.outputs


def pairs_from_request(request: oip.InferRequest, scorer: Scorer, limits: Limits) -> Pairs:
    """The request's ``in0`` and ``in1`` as checked float32 ``[3, H, W]`` images, with the service's limits: at
    most ``max_fields`` images in all, each at most ``max_pixels`` and together at most ``max_request_pixels``
    (from the tensors' shapes, or the files' headers, before anything is decoded)."""
    unknown = sorted(set(request.inputs) - set(INPUTS))
    if unknown:
        raise RequestError(f"unknown input(s) {', '.join(unknown)}; this model takes in0 (references) and in1, each "
                           f"as {', '.join(FORMS)}")
    for name in INPUTS:
        if name not in request.inputs:
            raise RequestError(f"input {name!r} is missing; send in0 (references) and in1, each as "
                               f"{', '.join(FORMS)}")
    t0, t1 = (request.inputs[name] for name in INPUTS)
    n0, n1 = (_count(t) for t in (t0, t1))
    if n0 == 0 or n1 == 0:
        raise RequestError("in0 and in1 each need at least one image")
    if n0 + n1 > limits.max_fields:
        raise RequestError(f"{n0 + n1} images in one request, over this service's limit of {limits.max_fields}; "
                           "send fewer per request")
    if n0 != n1 and 1 not in (n0, n1):
        raise RequestError(f"in0 has {n0} images and in1 has {n1}: send as many of each (pairs), or one in0 "
                           "(scored against every in1), or one in1")
    total = 0
    for tensor in (t0, t1):
        total += _check_pixels(tensor, limits.max_pixels)
    if total > limits.max_request_pixels:
        raise ImageTooLargeError("request", f"{total} pixels in all, over the limit of {limits.max_request_pixels}; "
                                            "send fewer or smaller images")
    x0, x1 = _images(t0, scorer, limits), _images(t1, scorer, limits)
    broadcast = n0 == 1 and n1 > 1
    if n1 == 1 and n0 > 1:
        x1 = x1 * n0  # one in1 against every in0: the same array, paired n0 times
    for i, b in enumerate(x1):
        a = x0[0] if broadcast else x0[i]
        images.check_pair(a, b, f"in0[{0 if broadcast else i}]", f"in1[{i if n1 > 1 else 0}]")
    return Pairs(x0, x1, broadcast)


def _count(tensor: oip.Tensor) -> int:
    """Images in one input, with its form checked."""
    shape = tensor.shape
    if tensor.datatype == "FP32":
        if len(shape) != 4 or shape[1] != 3:
            raise RequestError(f"input {tensor.name!r}: FP32 shape {list(shape)}; the graph's tensors are "
                               "[N, 3, H, W] (RGB, channels first) in [-1, 1]")
    elif tensor.datatype == "UINT8":
        if len(shape) != 4 or shape[3] != 3:
            raise RequestError(f"input {tensor.name!r}: UINT8 shape {list(shape)}; images are [N, H, W, 3] (RGB, "
                               "channels last)")
    elif tensor.datatype == oip.BYTES:
        if len(shape) != 1:
            raise RequestError(f"input {tensor.name!r}: BYTES shape {list(shape)}; encoded image files are [N], "
                               "one file per element")
    else:
        raise RequestError(f"input {tensor.name!r}: datatype {tensor.datatype} is not accepted; send "
                           f"{', '.join(FORMS)}")
    return shape[0]


def _check_pixels(tensor: oip.Tensor, max_pixels: int) -> int:
    """The pixels of one input's images, each checked against ``max_pixels`` (413 over it)."""
    if tensor.datatype == oip.BYTES:
        sizes = [header_pixels(data) for data in tensor.data]
    else:
        h, w = tensor.shape[2:4] if tensor.datatype == "FP32" else tensor.shape[1:3]
        sizes = [h * w] * tensor.shape[0]
    for i, pixels in enumerate(sizes):
        if pixels > max_pixels:
            raise ImageTooLargeError(f"{tensor.name}[{i}]", f"{pixels} pixels is over the limit of {max_pixels} "
                                                            "(decompression-bomb guard); send smaller images")
    return sum(sizes)


def _images(tensor: oip.Tensor, scorer: Scorer, limits: Limits) -> list[np.ndarray]:
    """One input's images through the Scorer's own loader (the same conversion and checks as Scorer.score)."""
    out = []
    for i in range(tensor.shape[0]):
        name = f"{tensor.name}[{i}]"
        if tensor.datatype == oip.BYTES:
            item = images.open_bytes(tensor.data[i], name, limits.max_pixels)
            out.append(scorer.load(item, name))
        elif tensor.datatype == "UINT8":
            out.append(scorer.load(tensor.data[i], name))
        else:  # FP32 [3, H, W], passed channels-last so that no H or W of size 3 is taken for the channels
            out.append(scorer.load(tensor.data[i].transpose(1, 2, 0), name, float_range="-1,1"))
    return out
