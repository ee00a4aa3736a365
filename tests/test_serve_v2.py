"""The Open Inference Protocol's data without a service (stlpips_rt.scale.oip, oip_grpc, v2): requests parsed from
JSON, from the binary-data extension and from gRPC messages (typed contents as well as raw), answers encoded both
ways, bounded inflation, and a request's tensors turned into the Scorer's pairs. The service end to end, through
tritonclient, is in tests/test_ray_serve.py."""

from __future__ import annotations

import base64
import gzip
import json
import re
import struct

import numpy as np
import pytest

from stlpips_rt import Scorer
from stlpips_rt.errors import ImageSizeError, ImageTooLargeError, RequestError, RequestTooLargeError
from stlpips_rt.scale import oip, v2
from stlpips_rt.scale.http import Limits


def binary_request(tensors: list[tuple[str, str, list[int], bytes]], **extra) -> tuple[bytes, str]:
    head = json.dumps({"inputs": [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                                  for n, d, s, b in tensors], **extra}).encode()
    return head + b"".join(b for *_, b in tensors), str(len(head))


def test_json_and_binary_requests_give_the_same_tensors() -> None:
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) / 24
    nested = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 2, 3, 4], "data": x.tolist()},
                         {"name": "b", "datatype": "UINT8", "shape": [2], "data": [0, 255]}], "id": 7}
    from_json = oip.parse_infer_request(json.dumps(nested).encode(), None)
    body, length = binary_request([("a", "FP32", [1, 2, 3, 4], x.tobytes()),
                                   ("b", "UINT8", [2], bytes([0, 255]))])
    from_binary = oip.parse_infer_request(body, length)
    for parsed in (from_json, from_binary):
        np.testing.assert_array_equal(parsed.inputs["a"].data, x)
        assert parsed.inputs["a"].data.dtype == np.float32
        np.testing.assert_array_equal(parsed.inputs["b"].data, np.array([0, 255], np.uint8))
    assert from_json.id == "7" and from_binary.id is None


def test_bytes_elements_binary_and_base64() -> None:
    files = [b"first file", b"", b"\x00\xff third"]
    raw = b"".join(struct.pack("<I", len(f)) + f for f in files)
    body, length = binary_request([("in0", "BYTES", [3], raw)])
    assert oip.parse_infer_request(body, length).inputs["in0"].data == files
    doc = {"inputs": [{"name": "in0", "datatype": "BYTES", "shape": [3],
                       "data": [base64.b64encode(f).decode() for f in files]}]}
    assert oip.parse_infer_request(json.dumps(doc).encode(), None).inputs["in0"].data == files
    with pytest.raises(RequestError, match="ends inside an element's 4-byte length"):
        oip.parse_infer_request(*binary_request([("in0", "BYTES", [1], b"\x05\x00")]))
    with pytest.raises(RequestError, match="element 0 is not base64"):
        oip.parse_infer_request(json.dumps({"inputs": [{"name": "in0", "datatype": "BYTES", "shape": [1],
                                                        "data": ["not base64!"]}]}).encode(), None)


def test_null_optional_fields_count_as_absent() -> None:
    """The schema (/openapi.json) lets every optional field be null, as clients that write None send them: what
    schemathesis found refused with 400 ("parameters" must be an object)."""
    doc = {"id": None, "parameters": None, "outputs": None,
           "inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [0.5], "parameters": None}]}
    parsed = oip.parse_infer_request(json.dumps(doc).encode(), None)
    assert (parsed.id, parsed.parameters, parsed.outputs) == (None, {}, {})
    np.testing.assert_array_equal(parsed.inputs["a"].data, np.array([0.5], np.float32))
    body, length = binary_request([("a", "FP32", [1], np.float32(0.5).tobytes())],
                                  outputs=[{"name": "dist", "parameters": None}])
    head = json.loads(body[:int(length)])
    head["inputs"][0]["data"] = None
    text = json.dumps(head).encode()
    parsed = oip.parse_infer_request(text + np.float32(0.5).tobytes(), str(len(text)))
    assert parsed.outputs == {"dist": False} and parsed.inputs["a"].data.tolist() == [0.5]
    with pytest.raises(RequestError, match="no \"data\" and no parameters.binary_data_size"):
        oip.parse_infer_request(json.dumps({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1],
                                                        "data": None}]}).encode(), None)


@pytest.mark.parametrize(("doc", "words"), [
    ([], "not an object"),
    ({"inputs": [{"datatype": "FP32", "shape": [1], "data": [0]}]}, "needs a \"name\""),
    ({"inputs": [{"name": "a", "datatype": "FP33", "shape": [1], "data": [0]}]}, "datatype 'FP33' is not one"),
    ({"inputs": [{"name": "a", "datatype": {}, "shape": [1], "data": [0]}]}, "datatype {} is not one"),  # was a 500
    ({"inputs": [{"name": "a", "datatype": ["FP32"], "shape": [1], "data": [0]}]}, "datatype ['FP32'] is not one"),
    ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": [0]}]}, "non-negative integers"),
    ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": [[0], [1, 2]]}]}, "of one shape"),
    ({"inputs": [{"name": "a", "datatype": "UINT8", "shape": [1], "data": [256]}]}, "whole numbers from 0 to 255"),
    ({"inputs": [{"name": "a", "datatype": "UINT8", "shape": [1], "data": [1.5]}]}, "whole numbers"),
    ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}, "no \"data\""),
    ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [0]}] * 2}, "given twice"),
    ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [0]}],
      "outputs": [{"name": "dist", "parameters": {"classification": 3}}]}, "classification extension"),
])
def test_malformed_requests_say_what_is_wrong(doc, words: str) -> None:
    with pytest.raises(RequestError, match=re.escape(words)):
        oip.parse_infer_request(json.dumps(doc).encode(), None)


def test_header_length_must_fit_the_body() -> None:
    with pytest.raises(RequestError, match="Inference-Header-Content-Length is 99, but the body has 2 bytes"):
        oip.parse_infer_request(b"{}", "99")
    with pytest.raises(RequestError, match="is not a number"):
        oip.parse_infer_request(b"{}", "ten")


@pytest.mark.parametrize("binary", [False, True])
def test_answers_encode_float32_exactly_both_ways(binary: bool) -> None:
    dist = np.array([0.1, 1 / 3, 2e-9], dtype=np.float32)
    maps = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3) / 7
    body, length = oip.encode_answer("alex-st", "1", "r", [("dist", dist, binary), ("dist_map", maps, False)])
    head = json.loads(body[:length] if length else body)
    assert head["id"] == "r" and [o["shape"] for o in head["outputs"]] == [[3], [1, 1, 2, 3]]
    if binary:
        assert head["outputs"][0]["parameters"] == {"binary_data_size": 12} and body[length:] == dist.tobytes()
    else:
        assert np.array(head["outputs"][0]["data"], dtype=np.float32).tobytes() == dist.tobytes()
    assert np.array(head["outputs"][1]["data"], dtype=np.float32).tobytes() == maps.tobytes()


def test_inflation_is_bounded() -> None:
    assert oip.decompress(gzip.compress(b"abc"), "gzip", 10) == b"abc"
    with pytest.raises(RequestTooLargeError):
        oip.decompress(gzip.compress(b"a" * 11), "gzip", 10)
    with pytest.raises(RequestError, match="not valid deflate"):
        oip.decompress(b"not zlib", "deflate", 10)


@pytest.fixture(scope="module")
def scorer(exported_model) -> Scorer:
    return Scorer(exported_model("alex", "st"), providers="cpu")


def uint8_request(n0: int, n1: int, size: tuple[int, int] = (32, 40), size1: tuple[int, int] | None = None):
    rng = np.random.default_rng(n0 * 10 + n1)
    a = rng.integers(0, 256, (n0, *size, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (n1, *(size1 or size), 3), dtype=np.uint8)
    body, length = binary_request([("in0", "UINT8", list(a.shape), a.tobytes()),
                                   ("in1", "UINT8", list(b.shape), b.tobytes())])
    return oip.parse_infer_request(body, length), a, b


def test_pairs_broadcast_and_one_in1(scorer: Scorer) -> None:
    request, a, b = uint8_request(3, 3)
    pairs = v2.pairs_from_request(request, scorer, Limits())
    assert not pairs.broadcast and len(pairs.x0) == len(pairs.x1) == 3
    np.testing.assert_array_equal(pairs.x1[2], scorer.load(b[2]))
    request, a, b = uint8_request(1, 4)
    pairs = v2.pairs_from_request(request, scorer, Limits())
    assert pairs.broadcast and len(pairs.x0) == 1 and len(pairs.x1) == 4
    request, a, b = uint8_request(4, 1)
    pairs = v2.pairs_from_request(request, scorer, Limits())
    assert not pairs.broadcast and len(pairs.x1) == 4 and all(x is pairs.x1[0] for x in pairs.x1)
    with pytest.raises(RequestError, match="in0 has 2 images and in1 has 3"):
        v2.pairs_from_request(uint8_request(2, 3)[0], scorer, Limits())
    with pytest.raises(RequestError, match="over this service's limit of 4"):
        v2.pairs_from_request(uint8_request(3, 3)[0], scorer, Limits(max_fields=4))
    with pytest.raises(ImageTooLargeError, match="1280 pixels is over the limit of 1000"):
        v2.pairs_from_request(uint8_request(1, 1)[0], scorer, Limits(max_pixels=1000))
    with pytest.raises(ImageTooLargeError, match="request: 3840 pixels in all"):
        v2.pairs_from_request(uint8_request(1, 2)[0], scorer, Limits(max_request_pixels=3000))
    with pytest.raises(ImageSizeError, match="in0\\[0\\] vs in1\\[0\\]"):
        v2.pairs_from_request(uint8_request(1, 1, size1=(32, 41))[0], scorer, Limits())


def test_grpc_messages_with_typed_contents(scorer: Scorer) -> None:
    """tritonclient sends raw_input_contents; other clients may send typed contents, read the same way."""
    pb = pytest.importorskip("tritonclient.grpc.service_pb2")
    from stlpips_rt.scale import oip_grpc

    rng = np.random.default_rng(5)
    a, b = (rng.integers(0, 256, (1, 24, 24, 3), dtype=np.uint8) for _ in range(2))
    request = pb.ModelInferRequest(model_name="alex-st", id="x")
    for name, data in (("in0", a), ("in1", b)):
        tensor = request.inputs.add(name=name, datatype="UINT8", shape=list(data.shape))
        tensor.contents.uint_contents.extend(data.ravel().tolist())
    request.outputs.add(name="dist")
    parsed = oip_grpc.parse_model_infer(request)
    np.testing.assert_array_equal(parsed.inputs["in1"].data, b)
    assert parsed.outputs == {"dist": True} and parsed.id == "x"
    raw = pb.ModelInferRequest(model_name="alex-st")
    raw.inputs.add(name="in0", datatype="UINT8", shape=list(a.shape))
    raw.raw_input_contents.append(a.tobytes())
    raw.raw_input_contents.append(b.tobytes())
    with pytest.raises(RequestError, match="2 raw_input_contents for 1 inputs"):
        oip_grpc.parse_model_infer(raw)
    response = oip_grpc.model_infer_response("alex-st", "1", "x", [("dist", np.array([0.25], np.float32))])
    assert response.raw_output_contents[0] == np.array([0.25], "<f4").tobytes() and response.outputs[0].shape == [1]
