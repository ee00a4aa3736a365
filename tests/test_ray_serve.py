"""stlpips-serve on Ray Serve: the HTTP API, exact answers (== Scorer), typed 4xx errors, and 32 concurrent clients
on loopback mixing good and bad requests while /healthz keeps answering. Binds to 127.0.0.1 only; every request
loop is bounded in count and has a timeout."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stlpips_rt import Scorer

pytestmark = pytest.mark.ray
HOST = "127.0.0.1"
TIMEOUT_S = 120
MAX_BODY = 200_000
MAX_PIXELS = 200 * 200


def png(seed: int, size: tuple[int, int] = (64, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[0] // 8, size[1] // 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(coarse).resize((size[1], size[0]), Image.Resampling.BICUBIC).save(buf, format="PNG")
    return buf.getvalue()


def multipart(fields: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for name, data in fields)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, fields: list[tuple[str, bytes]] | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=TIMEOUT_S)
        try:
            if fields is None:
                conn.request(method, path)
            else:
                body, content_type = multipart(fields)
                conn.request(method, path, body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


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

    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    config = service.ServiceConfig(model=str(model), providers="cpu", max_batch=8, batch_wait_ms=5,
                                   limits=Limits(max_body_bytes=MAX_BODY, max_pixels=MAX_PIXELS,
                                                 max_request_pixels=4 * MAX_PIXELS))
    service.start(config, host=HOST, port=port)
    yield Client(port)
    service.stop()


def test_health_and_model_card(client: Client) -> None:
    assert client.request("GET", "/healthz") == (200, {"status": "ok"})
    status, card = client.request("GET", "/v1/models")
    assert status == 200
    assert card["model"] == "alex-st" and card["provider"] == "cpu" and card["min_size"] == 21
    assert card["metadata"]["stlpips.net"] == "alex"
    assert card["limits"]["max_body_bytes"] == MAX_BODY
    assert card["batching"] == {"max_batch": 8, "batch_wait_ms": 5, "stacked": False}


def test_score_equals_the_scorer_bit_for_bit(client: Client, scorer: Scorer) -> None:
    a, b = png(1), png(2)
    status, body = client.request("POST", "/v1/score", [("ref", a), ("dist", b)])
    assert status == 200
    assert body["distance"] == scorer.score(Image.open(io.BytesIO(a)), Image.open(io.BytesIO(b)))
    assert (body["model"], body["provider"]) == ("alex-st", "cpu")


def test_score_many_uses_the_broadcast_graph_exactly(client: Client, scorer: Scorer) -> None:
    ref, dists = png(3), [png(10 + i) for i in range(5)]
    status, body = client.request("POST", "/v1/score_many", [("ref", ref)] + [("dist", d) for d in dists])
    assert status == 200
    expected = scorer.score_many(Image.open(io.BytesIO(ref)), [Image.open(io.BytesIO(d)) for d in dists])
    assert body["distances"] == [float(v) for v in expected]


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


def test_unknown_route_and_non_multipart(client: Client) -> None:
    assert client.request("GET", "/v2/nothing")[0] == 404
    conn = http.client.HTTPConnection(HOST, client.port, timeout=TIMEOUT_S)
    conn.request("POST", "/v1/score", body=b"{}", headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 400 and json.loads(response.read())["error"]["type"] == "RequestError"
    conn.close()


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
            assert status == 200 and body["distance"] == expected[key], body
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
    from stlpips_rt.scale.batch import _ScorerSpec
    from stlpips_rt.scale.ray_env import ModelPayload
    from stlpips_rt.scale.service import config_from_args

    tiles_model = exported_model("alex", "st", tiles=True)
    config = config_from_args({"model": str(tiles_model), "max_memory": "24M"})
    spec = _ScorerSpec(ModelPayload.put(config.model), "cpu", config.precision, config.threads, config.batch_size,
                       None, config.limits.max_pixels, config.max_memory)
    replica_scorer = spec.build()
    assert replica_scorer.max_memory == 24 * 2**20
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, (240, 260, 3), dtype=np.uint8) for _ in range(2))
    assert replica_scorer.plan(240, 260).tiled
    full_frame = Scorer(tiles_model, providers="cpu", max_memory="64G")
    assert replica_scorer.score(a, b) == pytest.approx(full_frame.score(a, b), rel=1e-6)
