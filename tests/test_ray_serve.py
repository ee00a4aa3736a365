"""stlpips-serve on Ray Serve (FastAPI behind serve.ingress): the HTTP API, exact answers (== Scorer), typed 4xx
errors with their messages, the body limit enforced before the body is read, the OpenAPI schema (every route with
its request and answer shapes, and the real answers valid against it), /docs, and 32 concurrent clients on
loopback mixing good and bad requests while /healthz keeps answering. The Open Inference Protocol's routes (/v2)
through tritonclient, the protocol's own client, are tested on the same service (tests/test_serve_v2.py holds the
checks that need no service). Binds to 127.0.0.1 only; every request loop is bounded in count and has a timeout."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_client import HOST, TIMEOUT_S, Client, free_port, png

from stlpips_rt import Scorer
from stlpips_rt.io.output import json_distance

pytestmark = pytest.mark.ray
MAX_BODY = 1_000_000  # room for a 67x93 pair as /v2 JSON tensors (about 0.4 MB)
MAX_PIXELS = 200 * 200


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    """alex-st with dist_map and dist_layers (the export other tests share), so that /v2 can answer them too."""
    return exported_model("alex", "st", spatial=True, layers=True)


@pytest.fixture(scope="module")
def scorer(model: Path) -> Scorer:
    return Scorer(model, providers="cpu")


@pytest.fixture(scope="module")
def client(ray_cluster, model: Path):
    """The service on a free loopback port, with small limits so that the 413 cases stay small."""
    pytest.importorskip("python_multipart", reason="python-multipart is not installed: pip install "
                                                   "'stlpips-deploy[ray]'")
    from stlpips_rt.scale import service
    from stlpips_rt.scale.http import Limits

    port = free_port()
    config = service.ServiceConfig(model=str(model), providers="cpu", max_batch=8, batch_wait_ms=5,
                                   limits=Limits(max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS,
                                                 max_request_pixels=4 * MAX_PIXELS))
    service.start(config, host=HOST, port=port, grpc_port=0)  # gRPC on a free loopback port too
    yield Client(port)
    service.stop()


def test_health_and_model_card(client: Client, model: Path) -> None:
    assert client.request("GET", "/healthz") == (200, {"status": "ok"})
    status, card = client.request("GET", "/v1/models")
    assert status == 200
    assert card["model"] == "alex-st" and card["provider"] == "cpu" and card["min_size"] == 21
    assert card["metadata"]["stlpips.net"] == "alex"
    assert card["sha256"] == card["provenance"]["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert card["provenance"]["engine"]["name"] == "onnxruntime"
    assert card["limits"]["max_body_bytes"] == MAX_BODY
    assert card["batching"] == {"max_batch": 8, "batch_wait_ms": 5, "stacked": False}


def test_score_equals_the_scorer_bit_for_bit(client: Client, scorer: Scorer) -> None:
    a, b = png(1), png(2)
    status, body = client.request("POST", "/v1/score", [("ref", a), ("dist", b)])
    assert status == 200
    expected = scorer.score(Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b)))
    # the JSON number is the shortest decimal of the float32, and reads back as it bit for bit
    assert body["distance"] == json_distance(expected) and np.float32(body["distance"]) == np.float32(expected)
    assert (body["model"], body["provider"]) == ("alex-st", "cpu")
    assert body["model_sha256"] == hashlib.sha256(scorer.info.path.read_bytes()).hexdigest()[:16]


def test_score_many_uses_the_broadcast_graph_exactly(client: Client, scorer: Scorer) -> None:
    ref, dists = png(3), [png(10 + i) for i in range(5)]
    before = client.request("GET", "/v1/models")[1]["replica_stats"]["graph_runs"]
    status, body = client.request("POST", "/v1/score_many", [("ref", ref)] + [("dist", d) for d in dists])
    assert status == 200
    after = client.request("GET", "/v1/models")[1]["replica_stats"]["graph_runs"]
    # one run of the broadcast form (the reference once, five candidates), and no run of pairs
    assert (after["broadcast"] - before["broadcast"], after["pairs"] - before["pairs"]) == (1, 0)
    expected = scorer.score_many(Image.open(io.BytesIO(ref)), [Image.open(io.BytesIO(d)) for d in dists])
    assert body["distances"] == [json_distance(v) for v in expected]
    assert body["model_sha256"] == hashlib.sha256(scorer.info.path.read_bytes()).hexdigest()[:16]


def bomb() -> bytes:
    """A flat PNG whose header claims more pixels than the limit: a few hundred bytes, 16x the pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (800, 800), (10, 20, 30)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


BAD_REQUESTS = {
    "not an image": ([("ref", png(1)), ("dist", b"just some text")], 415, "NotAnImageError"),
    "truncated": ([("ref", png(1)), ("dist", png(2)[:300])], 400, "ImageReadError"),
    "size mismatch": ([("ref", png(1)), ("dist", png(2, (48, 48)))], 400, "ImageSizeError"),
    "too small": ([("ref", png(1, (16, 16))), ("dist", png(2, (16, 16)))], 400, "ImageSizeError"),
    "missing field": ([("ref", png(1))], 400, "RequestError"),
    "body too large": ([("ref", png(1)), ("dist", b"\0" * (MAX_BODY + 1))], 413, "RequestTooLargeError"),
    "decompression bomb": ([("ref", png(1)), ("dist", bomb())], 413, "ImageTooLargeError"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_their_4xx_and_type(client: Client, case: str) -> None:
    fields, status, kind = BAD_REQUESTS[case]
    got, body = client.request("POST", "/v1/score", fields)
    assert (got, body["error"]["type"]) == (status, kind), body
    assert body["error"]["message"]


V2_ROUTES = ("GET /v2, GET /v2/health/live, GET /v2/health/ready, GET /v2/models/{name}, "
             "GET /v2/models/{name}/ready, POST /v2/models/{name}/infer")
ROUTES = ("GET /v1/models, POST /v1/score, POST /v1/score_many, GET /healthz, GET /openapi.json, GET /docs, "
          + V2_ROUTES)


def test_unknown_route_and_non_multipart(client: Client) -> None:
    assert client.request("GET", "/v1/nothing") == (404, {"error": {
        "type": "NotFound", "message": f"no route GET /v1/nothing; see {ROUTES}"}})
    # under /v2, the Open Inference Protocol's error shape and routes
    assert client.request("GET", "/v2/nothing") == (404, {"error": f"no route GET /v2/nothing; see {V2_ROUTES}"})
    # Another method on a known path is no route either, as before FastAPI (not FastAPI's 405).
    assert client.request("GET", "/v1/score") == (404, {"error": {
        "type": "NotFound", "message": f"no route GET /v1/score; see {ROUTES}"}})
    status, _, data = client.raw("POST", "/v1/score", body=b"{}", headers={"Content-Type": "application/json"})
    assert (status, json.loads(data)) == (400, {"error": {"type": "RequestError", "message": (
        "Content-Type is 'application/json'; send multipart/form-data with image files in the fields ref and dist "
        "(curl -F ref=@a.png -F dist=@b.png)")}})


FORM_ERRORS = {  # the messages the service answered before FastAPI, kept word for word
    "missing dist": ("/v1/score", [("ref", png(1))],
                     "expected one 'dist' field with an image file, got 0; fields sent: ref"),
    "repeated ref": ("/v1/score", [("ref", png(1)), ("ref", png(1)), ("dist", png(2))],
                     "expected one 'ref' field with an image file, got 2; fields sent: dist, ref"),
    "no ref": ("/v1/score_many", [("dist", png(2))],
               "expected one 'ref' field with an image file, got 0; fields sent: dist"),
    "no dist": ("/v1/score_many", [("ref", png(1)), ("other", b"x")],
                "expected one or more 'dist' fields with image files, got none"),
}


@pytest.mark.parametrize("case", sorted(FORM_ERRORS))
def test_form_errors_keep_their_messages(client: Client, case: str) -> None:
    path, fields, message = FORM_ERRORS[case]
    assert client.request("POST", path, fields) == (400, {"error": {"type": "RequestError", "message": message}})


def test_a_text_field_is_a_request_error_and_size_hints_name_no_resize_option(client: Client) -> None:
    boundary = "stlpips-test"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="ref"\r\n\r\nhello\r\n--{boundary}\r\n'
            'Content-Disposition: form-data; name="dist"; filename="d.png"\r\nContent-Type: image/png\r\n\r\n'
            ).encode() + png(2) + f"\r\n--{boundary}--\r\n".encode()
    status, _, data = client.raw("POST", "/v1/score", body=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert (status, json.loads(data)["error"]) == (400, {"type": "RequestError", "message": (
        "field 'ref' is a text value, not a file; send the image as a file upload (curl -F ref=@image.png)")})
    status, answer = client.request("POST", "/v1/score", [("ref", png(1)), ("dist", png(2, (48, 48)))])
    message = answer["error"]["message"]
    assert status == 400 and "the service does not resize: send images of one size" in message, message
    assert "resize=" not in message and "--resize" not in message


def test_malformed_and_oversized_forms_are_400(client: Client) -> None:
    status, _, data = client.raw("POST", "/v1/score", body=b"--x\r\n",
                                 headers={"Content-Type": "multipart/form-data"})  # no boundary
    assert status == 400 and json.loads(data)["error"] == {
        "type": "RequestError", "message": "cannot parse the multipart body: Missing boundary in multipart."}
    status, body = client.request("POST", "/v1/score_many", [("ref", b"x")] + [("dist", b"x")] * 257)
    assert status == 400 and body["error"]["type"] == "RequestError", body
    assert "258 parts, over this service's limit of 257" in body["error"]["message"]


def test_a_trailing_slash_is_ignored_as_before(client: Client, scorer: Scorer) -> None:
    a, b = png(1), png(2)
    status, body = client.request("POST", "/v1/score/", [("ref", a), ("dist", b)])
    assert status == 200 and body["distance"] == json_distance(scorer.score(Image.open(io.BytesIO(a)),
                                                                            Image.open(io.BytesIO(b))))
    assert client.request("GET", "/healthz/") == (200, {"status": "ok"})


def raw_request(port: int, head: bytes, parts: list[bytes]) -> tuple[int, dict, float]:
    """Send ``head`` and ``parts`` on one connection without ever finishing the body, then read the answer:
    (status, JSON body, seconds it took). An answer at all proves the service did not wait for the whole body."""
    start = time.monotonic()
    with socket.create_connection((HOST, port), timeout=TIMEOUT_S) as sock:
        try:
            sock.sendall(head)
            for part in parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed while we were still sending: fine, the answer is still in the socket
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read()), time.monotonic() - start


def test_an_over_limit_content_length_is_refused_before_reading_the_body(client: Client) -> None:
    """A client that declares 1 GB and sends 1 KB of it gets its 413 at once: the limit is checked from the
    header, before any of the body is awaited."""
    head = (f"POST /v1/score HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {10**9}\r\n\r\n").encode()
    status, body, _ = raw_request(client.port, head, [b"--b\r\n" + b"\0" * 1024])
    assert status == 413 and body["error"]["type"] == "RequestTooLargeError", body
    assert f"the body is {10**9} bytes, over this service's limit of {MAX_BODY} bytes" in body["error"]["message"]


def test_a_chunked_body_is_refused_as_it_crosses_the_limit(client: Client) -> None:
    """No Content-Length (chunked), twice the limit sent and the body never finished: the 413 comes while the
    body is still open, so the service counted the bytes as they came instead of reading the body to its end."""
    head = (f"POST /v1/score HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"\0" * 16_384
    parts = [b"%x\r\n" % len(chunk) + chunk + b"\r\n"] * (2 * MAX_BODY // len(chunk))  # no terminating 0-chunk
    status, body, _ = raw_request(client.port, head, parts)
    assert (status, body["error"]["type"]) == (413, "RequestTooLargeError"), body
    assert body["error"]["message"].startswith(f"the body is over this service's limit of {MAX_BODY} bytes")
    assert client.request("GET", "/healthz") == (200, {"status": "ok"})


def resolve(doc: dict, ref: str) -> dict:
    node = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in refs(v)]
    return [r for v in node for r in refs(v)] if isinstance(node, list) else []


def test_openapi_lists_every_route_with_its_request_and_answer_shapes(client: Client, scorer: Scorer) -> None:
    status, content_type, data = client.raw("GET", "/openapi.json")
    assert status == 200 and content_type.startswith("application/json")
    doc = json.loads(data)
    from openapi_spec_validator import validate  # the [dev] extra

    validate(doc)  # raises on any departure from the OpenAPI 3.1 specification
    assert doc["openapi"].startswith("3.") and doc["info"]["title"] == "stlpips-serve"
    for ref in refs(doc):  # every reference resolves
        resolve(doc, ref)
    routes = {path: set(ops) for path, ops in doc["paths"].items()}
    assert routes == {"/healthz": {"get"}, "/v1/models": {"get"}, "/v1/score": {"post"}, "/v1/score_many": {"post"},
                      **{path: {"get"} for path in V2_ANSWERS if not path.endswith("/infer")},
                      **{path: {"post"} for path in V2_ANSWERS if path.endswith("/infer")}}
    answers = {"/healthz": "Health", "/v1/models": "ModelCard", "/v1/score": "ScoreAnswer",
               "/v1/score_many": "ScoreManyAnswer", **V2_ANSWERS}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            ok = op["responses"]["200"]["content"]["application/json"]["schema"]
            assert ok == {"$ref": f"#/components/schemas/{answers[path]}"}, path
            assert "422" not in op["responses"], path  # validation failures answer 400 here
    for path, fields in {"/v1/score": {"ref": "string", "dist": "string"},
                         "/v1/score_many": {"ref": "string", "dist": "array"}}.items():
        op = doc["paths"][path]["post"]
        form = resolve(doc, op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"])
        assert {k: v["type"] for k, v in form["properties"].items()} == fields and set(form["required"]) == set(fields)
        for code in ("400", "413", "415", "500"):
            assert op["responses"][code]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorAnswer"}, (path, code)
    card = doc["components"]["schemas"]["ModelCard"]
    assert {"model", "limits", "batching", "replica_stats", "metadata"} <= set(card["required"])

    # The real answers fit their documented shapes.
    jsonschema = pytest.importorskip("jsonschema")

    def check(answer: dict, name: str) -> None:
        jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **doc}).validate(answer)

    a, b = png(1), png(2)
    check(client.request("GET", "/healthz")[1], "Health")
    check(client.request("GET", "/v1/models")[1], "ModelCard")
    check(client.request("POST", "/v1/score", [("ref", a), ("dist", b)])[1], "ScoreAnswer")
    check(client.request("POST", "/v1/score_many", [("ref", a), ("dist", b), ("dist", a)])[1], "ScoreManyAnswer")
    check(client.request("POST", "/v1/score", [("ref", a)])[1], "ErrorAnswer")
    with pytest.raises(jsonschema.ValidationError):
        check({"distance": "near"}, "ScoreAnswer")


V2_ANSWERS = {"/v2": "ServerMetadata", "/v2/health/live": "Live", "/v2/health/ready": "Ready",
              "/v2/models/{model_name}": "ModelMetadata", "/v2/models/{model_name}/versions/{version}": "ModelMetadata",
              "/v2/models/{model_name}/ready": "ModelReady",
              "/v2/models/{model_name}/versions/{version}/ready": "ModelReady",
              "/v2/models/{model_name}/infer": "InferResponse",
              "/v2/models/{model_name}/versions/{version}/infer": "InferResponse"}


def test_docs_render_from_the_service_alone(client: Client) -> None:
    """/docs works without internet: every script, stylesheet and icon the page references, and the schema its
    script loads, is a path on the service itself (no other host), and the service answers each with content of
    its type (Swagger UI's files come from an installed package)."""
    status, content_type, data = client.raw("GET", "/docs")
    assert status == 200 and content_type.startswith("text/html")
    page = data.decode()
    references = re.findall(r'(?:src|href)="([^"]*)"', page) + re.findall(r"url: '([^']*)'", page)
    assert len(references) == 4, references  # styles, icon, script, schema
    assert not re.search(r"https?:|//", page), "the page names another host"
    types = {}
    for ref in references:
        assert ref.startswith("/"), ref
        status, content_type, data = client.raw("GET", ref)
        assert status == 200 and len(data) > 1000, (ref, status, len(data))
        types[ref.rsplit(".", 1)[-1]] = content_type.split(";")[0]
    assert types == {"css": "text/css", "png": "image/png", "js": "text/javascript", "json": "application/json"}
    assert b"SwaggerUIBundle" in client.raw("GET", "/docs/assets/swagger-ui-bundle.js")[2]


def test_32_concurrent_clients_mixing_good_and_bad(client: Client, scorer: Scorer) -> None:
    """32 client threads, 4 requests each (every third one bad), plus a /healthz poller throughout."""
    clients, per_client = 32, 4
    goods = {i: (png(100 + i), png(200 + i)) for i in range(8)}
    expected = {i: scorer.score(Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b))) for i, (a, b) in goods.items()}
    bad_cases = sorted(BAD_REQUESTS)
    stop = threading.Event()
    health: list[int] = []

    def poll_health() -> None:
        deadline = time.monotonic() + 5 * TIMEOUT_S
        while not stop.is_set() and time.monotonic() < deadline and len(health) < 1000:
            health.append(client.request("GET", "/healthz")[0])
            time.sleep(0.05)

    def work(c: int) -> list[tuple[str, object, int, dict]]:
        results = []
        for k in range(per_client):
            n = c * per_client + k
            if n % 3 == 2:
                case = bad_cases[n % len(bad_cases)]
                fields, _, _ = BAD_REQUESTS[case]
                results.append(("bad", case, *client.request("POST", "/v1/score", fields)))
            else:
                i = n % len(goods)
                results.append(("good", i, *client.request("POST", "/v1/score",
                                                           [("ref", goods[i][0]), ("dist", goods[i][1])])))
        return results

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        with ThreadPoolExecutor(max_workers=clients) as pool:
            outcomes = [r for rs in pool.map(work, range(clients)) for r in rs]
    finally:
        stop.set()
        poller.join(timeout=TIMEOUT_S)
    assert len(outcomes) == clients * per_client
    for kind, key, status, body in outcomes:
        if kind == "good":
            assert status == 200 and body["distance"] == json_distance(expected[key]), body
        else:
            _, want_status, want_type = BAD_REQUESTS[key]
            assert (status, body["error"]["type"]) == (want_status, want_type), (key, body)
    assert health and all(s == 200 for s in health)
    assert client.request("GET", "/healthz")[0] == 200  # the replica survived all of it
    stats = client.request("GET", "/v1/models")[1]["replica_stats"]
    assert stats["largest_batch"] >= 2  # concurrent requests were gathered (and still answered exactly)


def test_serve_run_and_rayservice_arguments_become_a_config() -> None:
    pytest.importorskip("ray", reason="ray is not installed: pip install 'stlpips-deploy[ray]'")
    from stlpips_rt.scale import service

    config = service.config_from_args({"model": "vgg-st", "max_batch": "4", "stack": "false", "max_pixels": "1000",
                                       "batch_wait_ms": "2.5", "threads": "none"})
    assert (config.model, config.max_batch, config.stack, config.batch_wait_ms, config.threads) == \
        ("vgg-st", 4, False, 2.5, None)
    assert config.limits.max_pixels == 1000
    with pytest.raises(ValueError, match="unknown argument"):
        service.config_from_args({"max_batchsize": "4"})


def test_serve_command_refuses_a_missing_model_before_starting_anything(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray is not installed: pip install 'stlpips-deploy[ray]'")
    from click.testing import CliRunner

    from stlpips_rt.cli.serve import main

    result = CliRunner().invoke(main, ["--model", str(tmp_path / "nothing.onnx")])
    assert result.exit_code == 2
    assert "stlpips-serve: error:" in result.stderr and "nothing.onnx" in result.stderr


def test_service_replicas_build_their_scorer_with_the_memory_budget(ray_cluster, exported_model) -> None:
    """stlpips-serve's --max-memory reaches each replica's Scorer, which then tiles a large upload exactly instead
    of needing the memory of its full frame (the pixel limits stay a decompression-bomb guard only)."""
    from stlpips_rt.io.images import ImageOptions
    from stlpips_rt.scale.batch import _ScorerSpec
    from stlpips_rt.scale.ray_env import ModelPayload
    from stlpips_rt.scale.service import config_from_args

    tiles_model = exported_model("alex", "st")
    config = config_from_args({"model": str(tiles_model), "max_memory": "24M"})
    spec = _ScorerSpec(ModelPayload.put(config.model), "cpu", config.precision, config.threads, config.batch_size,
                       ImageOptions(max_pixels=config.limits.max_pixels), config.max_memory)
    replica_scorer = spec.build()
    assert replica_scorer.max_memory == 24 * 2**20
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, (240, 260, 3), dtype=np.uint8) for _ in range(2))
    assert replica_scorer.plan(240, 260).tiled
    full_frame = Scorer(tiles_model, providers="cpu", max_memory="64G")
    assert replica_scorer.score(a, b) == pytest.approx(full_frame.score(a, b), rel=1e-6)


def run_guard(headers: list[tuple[bytes, bytes]], receive, limit: int, path: str = "/v1/score", app=None):
    """RequestGuard on one fake request: (what the inner app saw, what was sent back)."""
    from stlpips_rt.scale.http import RequestGuard

    seen: list[tuple[dict, bytes]] = []

    async def inner(scope, receive, send) -> None:
        message = await receive()
        seen.append((scope, message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    asyncio.run(RequestGuard(app or inner, lambda: limit)(scope, receive, send))
    return seen, sent


def endless_body(pulled: list[int], size: int = 1000):
    async def receive() -> dict:
        pulled.append(size)
        return {"type": "http.request", "body": b"\0" * size, "more_body": True}

    return receive


def test_guard_refuses_a_declared_length_without_reading_anything() -> None:
    pulled: list[int] = []
    seen, sent = run_guard([(b"content-length", b"10001")], endless_body(pulled), 10_000)
    assert pulled == [] and seen == []
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["type"] == "RequestTooLargeError"


def test_guard_stops_reading_at_the_first_chunk_over_the_limit() -> None:
    pulled: list[int] = []
    seen, sent = run_guard([(b"transfer-encoding", b"chunked")], endless_body(pulled), 10_000)
    assert sum(pulled) == 11_000 and seen == []  # 11 chunks of 1000 bytes, then no more
    assert sent[0]["status"] == 413


def test_guard_replays_a_body_within_the_limit_and_drops_a_trailing_slash() -> None:
    chunks = [b"a" * 400, b"b" * 400, b""]

    async def receive() -> dict:
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    seen, sent = run_guard([], receive, 800, path="/v1/score/")
    assert [(scope["path"], body) for scope, body in seen] == [("/v1/score", b"a" * 400 + b"b" * 400)]
    assert sent[0]["status"] == 200


def test_guard_answers_an_unexpected_failure_with_500_and_no_internals() -> None:
    async def failing(scope, receive, send) -> None:
        raise RuntimeError("secret internals")

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    _, sent = run_guard([], receive, 10, app=failing)
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"error": {"type": "InternalError",
                                                     "message": "the service failed on this request; see its log"}}


# --- the Open Inference Protocol (/v2), through tritonclient ---------------------------------------------------
ODD = (67, 93)  # H, W: no multiple of any stride


def rgb(seed: int, size: tuple[int, int] = ODD) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png(seed, size))).convert("RGB"))


def as_tensor(images: list[np.ndarray]) -> np.ndarray:
    """uint8 HWC images -> the graph's float32 [N, 3, H, W] in [-1, 1]."""
    return np.stack([img.astype(np.float32) / 127.5 - 1.0 for img in images]).transpose(0, 3, 1, 2).copy()


@pytest.fixture(scope="module")
def triton(client: Client):
    """tritonclient.http's InferenceServerClient on the service: the same client code any OIP server takes."""
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: bash scripts/setup.sh")
    with httpclient.InferenceServerClient(f"{HOST}:{client.port}", connection_timeout=TIMEOUT_S,
                                          network_timeout=TIMEOUT_S) as triton_client:
        yield triton_client


def infer(triton, datatype: str, in0, in1, binary: bool, outputs: tuple[str, ...] | None = ("dist",)) \
        -> dict[str, np.ndarray]:
    """One request through tritonclient.http; in0/in1 as numpy arrays of the datatype's form, inputs and outputs
    as JSON or binary data. ``outputs=None`` names none (tritonclient then asks for every output as binary)."""
    import tritonclient.http as httpclient

    inputs = []
    for name, data in (("in0", in0), ("in1", in1)):
        tensor = httpclient.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        inputs.append(tensor)
    wanted = None if outputs is None else [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs]
    result = triton.infer("alex-st", inputs, outputs=wanted)
    return {name: result.as_numpy(name) for name in outputs or ("dist",)}


def files(*images: np.ndarray) -> np.ndarray:
    """PNG files as a BYTES tensor [N]."""
    out = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        out.append(buf.getvalue())
    return np.array(out, dtype=np.object_)


def test_v2_health_and_metadata_come_from_the_model_file(triton, model: Path) -> None:
    from stlpips_rt.contract import INPUTS
    from stlpips_rt.engine.model_files import read_signature

    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("alex-st")
    assert not triton.is_model_ready("vgg-st")
    server = triton.get_server_metadata()
    assert server["name"] == "stlpips-serve" and "binary_tensor_data" in server["extensions"]
    meta = triton.get_model_metadata("alex-st")
    info, signature = read_signature(model)
    dtype = {"float32": "FP32"}
    assert meta["name"] == info.short_name and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": n, "datatype": dtype[signature.input(n).dtype],
                               "shape": list(signature.input(n).dims)} for n in INPUTS]
    assert meta["outputs"] == [{"name": n, "datatype": dtype[signature.output(n).dtype],
                                "shape": list(signature.output(n).dims)} for n in info.outputs]
    assert [o["name"] for o in meta["outputs"]] == ["dist", "dist_layers", "dist_map"]
    assert meta["inputs"][0]["shape"] == [-1, 3, -1, -1]
    assert triton.get_model_metadata("alex-st", model_version="1") == meta


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_pair_of_odd_size_equals_the_scorer_bit_for_bit(triton, scorer: Scorer, binary: bool) -> None:
    a, b = rgb(1), rgb(2)
    expected = np.float32(scorer.score(a, b))
    for datatype, in0, in1 in (("FP32", as_tensor([a]), as_tensor([b])), ("UINT8", a[None], b[None])):
        got = infer(triton, datatype, in0, in1, binary)["dist"]
        assert got.dtype == np.float32 and got.shape == (1,), datatype
        assert got.tobytes() == expected.tobytes(), (datatype, got, expected)
    if binary:  # encoded files travel as raw bytes in the binary extension only (JSON takes base64: below)
        got = infer(triton, "BYTES", files(a), files(b), binary)["dist"]
        assert got.tobytes() == expected.tobytes()


def test_v2_a_batch_of_pairs_equals_score_batch_and_joins_the_dynamic_batches(triton, client: Client,
                                                                                scorer: Scorer) -> None:
    refs, dists = [rgb(10 + i) for i in range(4)], [rgb(20 + i) for i in range(4)]
    expected = scorer.score_batch(refs, dists)
    before = client.request("GET", "/v1/models")[1]["replica_stats"]["pairs"]
    got = infer(triton, "FP32", as_tensor(refs), as_tensor(dists), binary=True, outputs=None)["dist"]
    assert got.tobytes() == expected.astype(np.float32).tobytes()
    # the four pairs went through the batcher of single pairs (as /v1/score's do)
    assert client.request("GET", "/v1/models")[1]["replica_stats"]["pairs"] - before == 4
    got = infer(triton, "UINT8", np.stack(refs), np.stack(dists), binary=False)["dist"]
    assert got.tobytes() == expected.astype(np.float32).tobytes()
    got = infer(triton, "BYTES", files(*refs), files(*dists), binary=True)["dist"]
    assert got.tobytes() == expected.astype(np.float32).tobytes()


def test_v2_one_reference_against_several_is_score_many(triton, scorer: Scorer) -> None:
    ref, dists = rgb(30), [rgb(31 + i) for i in range(3)]
    got = infer(triton, "UINT8", ref[None], np.stack(dists), binary=True)["dist"]
    assert got.tobytes() == scorer.score_many(ref, dists).astype(np.float32).tobytes()
    # and one in1 against several in0: each pair as score_batch scores it
    got = infer(triton, "UINT8", np.stack(dists), ref[None], binary=True)["dist"]
    assert got.tobytes() == scorer.score_batch(dists, [ref] * 3).astype(np.float32).tobytes()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_v2_other_outputs_on_request(triton, scorer: Scorer, binary: bool) -> None:
    a, b = [rgb(40), rgb(41)], [rgb(42), rgb(43)]
    got = infer(triton, "UINT8", np.stack(a), np.stack(b), binary, outputs=("dist", "dist_map", "dist_layers"))
    assert got["dist"].tobytes() == scorer.score_batch(a, b).astype(np.float32).tobytes()
    assert got["dist_map"].shape == (2, 1, *ODD)
    np.testing.assert_array_equal(got["dist_map"][:, 0], scorer.spatial_batch(a, b))
    np.testing.assert_array_equal(got["dist_layers"], scorer.layers_batch(a, b))


def test_v2_json_bytes_are_base64_files_and_the_id_is_echoed(client: Client, scorer: Scorer) -> None:
    import base64

    a, b = png(50, ODD), png(51, ODD)
    request = {"id": "pair-7", "inputs": [
        {"name": "in0", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(a).decode()]},
        {"name": "in1", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(b).decode()]}]}
    status, content_type, data = client.raw("POST", "/v2/models/alex-st/infer", body=json.dumps(request).encode(),
                                            headers={"Content-Type": "application/json"})
    assert status == 200 and content_type.startswith("application/json")
    answer = json.loads(data)
    expected = scorer.score(Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b)))
    assert answer == {"model_name": "alex-st", "model_version": "1", "id": "pair-7", "outputs": [
        {"name": "dist", "datatype": "FP32", "shape": [1], "data": [json_distance(expected)]}]}


V2_BAD = {  # request JSON -> (status, words of the message)
    "not json": (b"{nope", 400, "does not parse"),
    "no inputs": (json.dumps({"inputs": []}).encode(), 400, "no \"inputs\""),
    "missing in1": (json.dumps({"inputs": [{"name": "in0", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                           "data": [0] * 3072}]}).encode(), 400, "input 'in1' is missing"),
    "wrong count": (json.dumps({"inputs": [{"name": n, "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                           "data": [0] * 3000} for n in ("in0", "in1")]}).encode(), 400,
                    "holds 3072 elements, the data has 3000"),
    "datatype": (json.dumps({"inputs": [{"name": n, "datatype": "INT32", "shape": [1, 32, 32, 3],
                                        "data": [0] * 3072} for n in ("in0", "in1")]}).encode(), 400,
                 "datatype INT32 is not accepted"),
    "out of range": (json.dumps({"inputs": [{"name": n, "datatype": "FP32", "shape": [1, 3, 32, 32],
                                            "data": [5.0] * 3072} for n in ("in0", "in1")]}).encode(), 400,
                     "outside the declared [-1,1]"),
    "sizes differ": (json.dumps({"inputs": [{"name": "in0", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                            "data": [0] * 3072},
                                           {"name": "in1", "datatype": "UINT8", "shape": [1, 32, 30, 3],
                                            "data": [0] * 2880}]}).encode(), 400, "sizes differ"),
    "no such output": (json.dumps({"inputs": [{"name": n, "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                              "data": [0] * 3072} for n in ("in0", "in1")],
                                   "outputs": [{"name": "logits"}]}).encode(), 400, "has no output 'logits'"),
    "not an image": (json.dumps({"inputs": [{"name": n, "datatype": "BYTES", "shape": [1],
                                            "data": ["aGVsbG8="]} for n in ("in0", "in1")]}).encode(), 415,
                     "cannot decode it as an image"),
}


@pytest.mark.parametrize("case", sorted(V2_BAD))
def test_v2_bad_requests_get_the_protocols_error(client: Client, case: str) -> None:
    body, status, words = V2_BAD[case]
    got, content_type, data = client.raw("POST", "/v2/models/alex-st/infer", body=body,
                                         headers={"Content-Type": "application/json"})
    answer = json.loads(data)
    assert got == status and content_type.startswith("application/json"), answer
    assert set(answer) == {"error"} and isinstance(answer["error"], str) and words in answer["error"], answer


def test_v2_errors_reach_tritonclient_with_their_status(triton, client: Client) -> None:
    from tritonclient.utils import InferenceServerException

    a = rgb(1)
    with pytest.raises(InferenceServerException) as error:
        infer(triton, "UINT8", a[None], rgb(2, (48, 48))[None], binary=True)
    assert error.value.status() == "400" and "sizes differ" in error.value.message()
    with pytest.raises(InferenceServerException) as error:
        triton.get_model_metadata("vgg-st")
    assert error.value.status() == "404" and "this service serves 'alex-st'" in error.value.message()
    with pytest.raises(InferenceServerException) as error:
        triton.get_model_metadata("alex-st", model_version="2")
    assert error.value.status() == "404" and "no version '2'" in error.value.message()
    # a body over the limit is refused before it is read, in the protocol's shape
    status, _, data = client.raw("POST", "/v2/models/alex-st/infer", body=b"\0" * (MAX_BODY + 1))
    assert status == 413 and "over this service's limit" in json.loads(data)["error"]


def test_v2_compressed_requests_are_inflated_within_the_body_limit(triton, client: Client, scorer: Scorer) -> None:
    import gzip

    import tritonclient.http as httpclient

    a, b = rgb(80), rgb(81)
    inputs = []
    for name, data in (("in0", a[None]), ("in1", b[None])):
        tensor = httpclient.InferInput(name, list(data.shape), "UINT8")
        tensor.set_data_from_numpy(data, binary_data=True)
        inputs.append(tensor)
    for algorithm in ("gzip", "deflate"):
        got = triton.infer("alex-st", inputs, request_compression_algorithm=algorithm).as_numpy("dist")
        assert got.tobytes() == np.float32(scorer.score(a, b)).tobytes(), algorithm
    # a small body that inflates past the limit is refused (a compression bomb), as an unknown encoding is
    bomb = gzip.compress(b" " * (2 * MAX_BODY))
    assert len(bomb) < MAX_BODY // 100
    status, _, data = client.raw("POST", "/v2/models/alex-st/infer", body=bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413 and "inflates to more than this service's limit" in json.loads(data)["error"]
    status, _, data = client.raw("POST", "/v2/models/alex-st/infer", body=b"x", headers={"Content-Encoding": "br"})
    assert status == 400 and "Content-Encoding 'br' is not supported" in json.loads(data)["error"]


def test_v2_images_over_the_pixel_limit_are_413(client: Client) -> None:
    head = json.dumps({"inputs": [{"name": n, "datatype": "UINT8", "shape": [1, 300, 300, 3],
                                   "parameters": {"binary_data_size": 270_000}} for n in ("in0", "in1")]}).encode()
    status, _, data = client.raw("POST", "/v2/models/alex-st/infer", body=head + b"\0" * 540_000,
                                 headers={"Inference-Header-Content-Length": str(len(head))})
    assert status == 413 and json.loads(data) == {"error": f"in0[0]: 90000 pixels is over the limit of {MAX_PIXELS} "
                                                           "(decompression-bomb guard); send smaller images"}


def test_v2_binary_sizes_that_do_not_add_up_are_400(client: Client) -> None:
    head = json.dumps({"inputs": [{"name": n, "datatype": "UINT8", "shape": [1, 32, 32, 3],
                                   "parameters": {"binary_data_size": 3072}} for n in ("in0", "in1")]}).encode()
    for tail, words in ((b"\0" * 3072, "does not fit"), (b"\0" * 6200, "56 bytes of binary data follow")):
        status, _, data = client.raw("POST", "/v2/models/alex-st/infer", body=head + tail,
                                     headers={"Inference-Header-Content-Length": str(len(head))})
        assert status == 400 and words in json.loads(data)["error"], data


def test_v2_answers_fit_the_openapi_schema(client: Client, triton) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads(client.raw("GET", "/openapi.json")[2])
    for path in ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{version}/infer"):
        op = doc["paths"][path]["post"]
        body = op["requestBody"]["content"]
        assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/InferRequest"}
        assert body["application/octet-stream"]["schema"]["format"] == "binary"
        for code in ("400", "404", "413", "415", "500"):
            assert op["responses"][code]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/V2Error"}, (path, code)

    def check(answer: dict, name: str) -> None:
        jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}", **doc}).validate(answer)

    request = {"inputs": [{"name": n, "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [7] * 3072}
                          for n in ("in0", "in1")], "outputs": [{"name": "dist"}]}
    check(request, "InferRequest")
    status, _, data = client.raw("POST", "/v2/models/alex-st/infer", body=json.dumps(request).encode())
    assert status == 200
    check(json.loads(data), "InferResponse")
    check(client.request("GET", "/v2/models/alex-st")[1], "ModelMetadata")
    check(client.request("GET", "/v2")[1], "ServerMetadata")
    check(client.request("GET", "/v2/models/nothing")[1], "V2Error")
    with pytest.raises(jsonschema.ValidationError):
        check({"inputs": "in0"}, "InferRequest")


# --- the Open Inference Protocol over gRPC, through tritonclient.grpc ------------------------------------------
@pytest.fixture(scope="module")
def triton_grpc(client: Client):
    """tritonclient.grpc's client on the service's gRPC front (127.0.0.1, a free port)."""
    grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed: bash scripts/setup.sh")
    from stlpips_rt.scale import service

    front = service.grpc_front()
    assert front is not None and front.port > 0
    with grpcclient.InferenceServerClient(f"{HOST}:{front.port}") as triton_client:
        yield triton_client


def grpc_infer(triton, datatype: str, in0, in1, outputs: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, data in (("in0", in0), ("in1", in1)):
        tensor = grpcclient.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    wanted = [grpcclient.InferRequestedOutput(name) for name in outputs] or None
    result = triton.infer("alex-st", inputs, outputs=wanted, client_timeout=TIMEOUT_S)
    return {name: result.as_numpy(name) for name in outputs or ("dist",)}


def test_grpc_health_and_metadata(triton_grpc, triton) -> None:
    assert triton_grpc.is_server_live() and triton_grpc.is_server_ready() and triton_grpc.is_model_ready("alex-st")
    meta = triton_grpc.get_model_metadata("alex-st", as_json=True)
    http_meta = triton.get_model_metadata("alex-st")
    assert meta["name"] == "alex-st" and meta["versions"] == ["1"]
    # the same tensors as over HTTP (JSON of the protobuf writes int64 shapes as strings)
    for kind in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta[kind]] == \
            [(t["name"], t["datatype"], t["shape"]) for t in http_meta[kind]]


def test_grpc_pairs_equal_the_scorer_bit_for_bit(triton_grpc, scorer: Scorer) -> None:
    a, b = [rgb(60 + i) for i in range(3)], [rgb(70 + i) for i in range(3)]
    expected = scorer.score_batch(a, b).astype(np.float32).tobytes()
    assert grpc_infer(triton_grpc, "FP32", as_tensor(a), as_tensor(b))["dist"].tobytes() == expected
    assert grpc_infer(triton_grpc, "UINT8", np.stack(a), np.stack(b))["dist"].tobytes() == expected
    assert grpc_infer(triton_grpc, "BYTES", files(*a), files(*b))["dist"].tobytes() == expected
    got = grpc_infer(triton_grpc, "UINT8", a[0][None], np.stack(b), outputs=("dist", "dist_map"))
    assert got["dist"].tobytes() == scorer.score_many(a[0], b).astype(np.float32).tobytes()
    assert got["dist_map"].shape == (3, 1, *ODD)


def test_grpc_errors_carry_their_status_codes(triton_grpc) -> None:
    from tritonclient.utils import InferenceServerException

    a = rgb(1)
    with pytest.raises(InferenceServerException) as error:
        grpc_infer(triton_grpc, "UINT8", a[None], rgb(2, (48, 48))[None])
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT" and "sizes differ" in error.value.message()
    with pytest.raises(InferenceServerException) as error:
        triton_grpc.get_model_metadata("vgg-st")
    assert error.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as error:  # over the pixel limit, as over HTTP
        grpc_infer(triton_grpc, "UINT8", np.zeros((1, 300, 300, 3), np.uint8), np.zeros((1, 300, 300, 3), np.uint8))
    assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "90000 pixels" in error.value.message()
    with pytest.raises(InferenceServerException) as error:  # over the body limit: refused by gRPC itself
        grpc_infer(triton_grpc, "UINT8", np.zeros((1, 600, 600, 3), np.uint8), np.zeros((1, 600, 600, 3), np.uint8))
    assert error.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "larger than max" in error.value.message()
    with pytest.raises(InferenceServerException) as error:  # an RPC this service does not offer
        triton_grpc.get_inference_statistics("alex-st")
    assert error.value.status() == "StatusCode.UNIMPLEMENTED"
    assert triton_grpc.is_server_live()  # and the front goes on


# --- the API tested from its own schema (schemathesis) -----------------------------------------------------------
SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_every_answer_fits_the_schema_and_none_is_a_5xx(client: Client, tmp_path: Path) -> None:
    """schemathesis generates requests from /openapi.json, /v1 and /v2 (valid and invalid forms and tensors,
    random bytes as images; a bounded number per operation, the same on every run: tests/schemathesis.toml) and
    checks every answer: no 5xx, a documented status code, content type and headers, a body valid against its
    schema, invalid requests refused. Run as its command line tool, on 127.0.0.1."""
    cli = Path(sys.executable).with_name("schemathesis")
    assert cli.is_file(), "schemathesis is not installed: pip install 'stlpips-deploy[dev]' (scripts/setup.sh does)"
    report = tmp_path / "schemathesis.json"
    done = subprocess.run([str(cli), "--config-file", str(SCHEMATHESIS_CONFIG), "run",
                           f"http://{HOST}:{client.port}/openapi.json", "--phases", "examples,coverage,fuzzing",
                           "--report", "json", "--report-json-path", str(report), "--no-color"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=10 * TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    result = json.loads(report.read_text())
    operations = sum(len(ops) for ops in json.loads(client.raw("GET", "/openapi.json")[2])["paths"].values())
    assert result["operations"]["tested"] == operations and result["complete"], result["operations"]
    assert result["failures"] == [] and result["errors"] == []
    assert result["test_cases"]["generated"] >= 25 * operations, result["test_cases"]
