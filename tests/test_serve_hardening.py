"""stlpips-serve locked down, under overload and under faults.

- Every listening socket of the tests' Ray cluster and of the service on it, and of a whole ``stlpips-serve``
  process tree (the local cluster it starts), is on loopback.
- Token auth (opt in): without the token, or with another, every route but the health check and the API docs
  answers 401 with the error body; with it, the answers are unchanged (== Scorer, bit for bit).
- 10x overload (64 clients against 4 ongoing + 8 queued requests): every answer is the exact distance or a 503
  with Retry-After, no request outlives the client's bound, and the service answers normally afterwards.
- A replica's process killed by its PID in the middle of a load: no wrong number, no hang (the client's bound),
  every failure a 5xx with a body, and Serve has a new replica answering within a bound.

The service of this module runs on the session's ray_cluster with small queues; the replica is killed by the last
test. Every request is bounded by the client's timeout; every load is bounded in requests."""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from PIL import Image
from serve_client import HOST, Client, assert_loopback_only, free_port, listening_sockets, png

from stlpips_rt import Scorer
from stlpips_rt.io.output import json_distance

TOKEN = secrets.token_urlsafe(24)
ONGOING, QUEUED, RETRY_AFTER_S = 4, 8, 1
BOUND_S = 60  # no request may take longer (the client's timeout); far above this service's worst admitted wait
SCORING_ROUTES = [("POST", "/v1/score"), ("POST", "/v1/score_many"), ("GET", "/v1/models"), ("GET", "/v1/nothing")]


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


@pytest.fixture(scope="module")
def scorer(model: Path) -> Scorer:
    return Scorer(model, providers="cpu", threads=1)


@pytest.fixture(scope="module")
def port(ray_cluster, model: Path) -> int:
    """The service with a token, one replica of one thread, 4 ongoing and 8 queued requests."""
    pytest.importorskip("python_multipart", reason="python-multipart is not installed: pip install "
                                                   "'stlpips-deploy[ray]'")
    from stlpips_rt.scale import service
    from stlpips_rt.scale.http import token_sha256

    port = free_port()
    config = service.ServiceConfig(model=str(model), providers="cpu", threads=1, max_batch=4,
                                   max_ongoing_requests=ONGOING, max_queued_requests=QUEUED,
                                   retry_after_s=RETRY_AFTER_S, token_sha256=token_sha256(TOKEN))
    service.start(config, host=HOST, port=port)
    yield port
    service.stop()


# --- listening sockets -----------------------------------------------------------------------------------------
@pytest.mark.ray
def test_the_cluster_and_the_service_listen_on_loopback_only(port: int) -> None:
    """This process's Ray cluster (the shared fixture) with Serve's proxy, controller and the replica on it: every
    listening socket of the whole process tree is on 127.0.0.1."""
    sockets = listening_sockets(psutil.Process())
    names = {name for _, name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, names
    assert any(p == port for *_, p in sockets)  # the service's own HTTP port is among them
    assert any("ServeReplica" in name for name in names), names  # so is the replica (its gRPC server)
    assert_loopback_only(sockets)


# --- token auth ------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_without_the_token_every_route_but_health_and_docs_is_401(port: int) -> None:
    fields = [("ref", png(1)), ("dist", png(2))]
    for headers, invalid in [({}, False), ({"Authorization": "Bearer " + TOKEN[:-1] + "x"}, True),
                             ({"Authorization": "Basic " + TOKEN}, False), ({"Authorization": "Bearer"}, False)]:
        anonymous = Client(port)
        for method, path in SCORING_ROUTES:
            status, response_headers, data = anonymous.full(method, path, fields if method == "POST" else None,
                                                            headers=headers)
            assert status == 401, (headers, path, status, data)
            assert json.loads(data)["error"]["type"] == "AuthenticationError"
            challenge = response_headers["www-authenticate"]
            assert challenge.startswith("Bearer ") and ('error="invalid_token"' in challenge) == invalid
    anonymous = Client(port)
    assert anonymous.request("GET", "/healthz") == (200, {"status": "ok"})
    for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui.css", "/healthz/"):
        assert anonymous.raw("GET", path)[0] == 200, path


@pytest.mark.ray
def test_with_the_token_the_answers_are_unchanged(port: int, scorer: Scorer) -> None:
    client = Client(port, token=TOKEN)
    a, b, c = png(1), png(2), png(3)
    status, body = client.request("POST", "/v1/score", [("ref", a), ("dist", b)])
    assert status == 200 and body["distance"] == json_distance(scorer.score(decoded(a), decoded(b)))
    status, body = client.request("POST", "/v1/score_many", [("ref", a), ("dist", b), ("dist", c)])
    assert status == 200
    assert body["distances"] == [json_distance(v) for v in scorer.score_many(decoded(a), [decoded(b), decoded(c)])]
    status, card = client.request("GET", "/v1/models")
    # on CPU by default, gathered pairs run one by one, so a batch does not wait for more (no latency added)
    assert status == 200 and card["batching"] == {"max_batch": 4, "batch_wait_ms": 0.0, "stacked": False}
    assert client.request("GET", "/v1/nothing")[1]["error"]["type"] == "NotFound"  # past the token: the usual 404


def test_the_token_comes_from_the_file_or_the_environment(tmp_path: Path) -> None:
    from stlpips_rt.scale.http import TOKEN_ENV, load_token

    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}  \nsecond line ignored\n")
    assert load_token(token_file, environ={}) == TOKEN
    assert load_token(token_file, environ={TOKEN_ENV: "another-token-from-env"}) == TOKEN  # the file wins
    assert load_token(None, environ={TOKEN_ENV: "another-token-from-env"}) == "another-token-from-env"
    assert load_token(None, environ={}) is None
    token_file.write_text("short\n")
    with pytest.raises(ValueError, match="5 characters; use at least 16"):
        load_token(token_file, environ={})
    with pytest.raises(ValueError, match="cannot read the token file"):
        load_token(tmp_path / "absent", environ={})


def test_token_auth_checks_before_the_app_reads_anything() -> None:
    """TokenAuth alone: a refused request never reaches the app (its body is not read); the token is compared by
    digest; open paths and a service without a token pass through."""
    from stlpips_rt.scale.http import TokenAuth, token_sha256

    def call(headers: dict[str, str], path: str = "/v1/score", token: str | None = TOKEN) -> tuple[bool, list]:
        reached, sent = [], []

        async def app(scope, receive, send) -> None:
            reached.append(scope["path"])

        async def receive() -> dict:
            raise AssertionError("the body was read")

        async def send(message: dict) -> None:
            sent.append(message)

        guard = TokenAuth(app, lambda: token_sha256(token) if token else None, lambda p: p == "/healthz")
        scope = {"type": "http", "path": path,
                 "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]}
        asyncio.run(guard(scope, receive, send))
        return bool(reached), sent

    assert call({"Authorization": f"Bearer {TOKEN}"}) == (True, [])
    assert call({"authorization": f"bearer  {TOKEN} "}) == (True, [])  # scheme case and spaces, as RFC 7235
    assert call({}, path="/healthz/") == (True, [])
    assert call({}, token=None) == (True, [])
    reached, sent = call({"Authorization": f"Bearer {TOKEN}0"})
    assert not reached and sent[0]["status"] == 401
    assert dict(sent[0]["headers"])[b"www-authenticate"] == b'Bearer realm="stlpips-serve", error="invalid_token"'
    assert json.loads(sent[1]["body"]) == {"error": {"type": "AuthenticationError",
                                                     "message": "the token sent is not this service's token"}}


def test_the_token_check_refuses_every_malformed_authorization() -> None:
    """One ``Bearer <token>`` header or nothing: each other shape is refused, and only a wrong token is called an
    invalid token (RFC 6750's ``error="invalid_token"``)."""
    from stlpips_rt.scale.http import MIN_TOKEN_CHARS, TokenAuth, bearer_problem, load_token, token_sha256

    expected = token_sha256(TOKEN)
    assert bearer_problem([f"Bearer {TOKEN}"], expected) is None
    for values in ([f"Bearer {TOKEN}", f"Bearer {TOKEN}"],  # two headers, even with the right token
                   [f"Basic {TOKEN}"], [f"Token {TOKEN}"], [TOKEN], ["Bearer "], ["Bearer"]):
        problem = bearer_problem(values, expected)
        assert problem == ("send the token as one header 'Authorization: Bearer <token>'", False), values
    assert bearer_problem([], expected) == (
        "this service requires a token: send the header 'Authorization: Bearer <token>'", False)
    assert bearer_problem([f"Bearer {TOKEN}x"], expected) == ("the token sent is not this service's token", True)
    assert load_token(None, environ={"STLPIPS_SERVE_TOKEN": "k" * MIN_TOKEN_CHARS}) == "k" * MIN_TOKEN_CHARS

    def call(scope: dict) -> list:
        reached, sent = [], []

        async def app(scope, receive, send) -> None:
            reached.append(scope["type"])

        async def send(message: dict) -> None:
            sent.append(message)

        asyncio.run(TokenAuth(app, lambda: expected, lambda p: False)(scope, None, send))
        return reached or sent

    http = "".join(["ht", "tp"])  # built at run time, as a server builds it: compared by value, not identity
    headers = [(b"accept", b"*/*"), (b"x-request-id", b"1"), (b"authorization", f"Bearer {TOKEN}".encode())]
    assert call({"type": http, "path": "/v1/score", "headers": headers}) == [http]  # other headers are not tokens
    refused = call({"type": http, "path": "/v1/score", "headers": []})
    assert refused[0]["status"] == 401
    assert dict(refused[0]["headers"])[b"www-authenticate"] == b'Bearer realm="stlpips-serve"'  # no token: no error
    assert call({"type": "lifespan"}) == ["lifespan"]  # not a request: no token asked for


def test_serve_refuses_a_short_token_before_starting_anything(tmp_path: Path, model: Path) -> None:
    pytest.importorskip("ray", reason="ray is not installed: pip install 'stlpips-deploy[ray]'")
    from click.testing import CliRunner

    from stlpips_rt.cli.serve import main

    (tmp_path / "token").write_text("abc\n")
    result = CliRunner().invoke(main, ["--model", str(model), "--token-file", str(tmp_path / "token")])
    assert result.exit_code == 2, result.output
    assert "holds a token of 3 characters; use at least 16" in result.stderr


# --- overload --------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_ten_times_overload_answers_exactly_or_503_with_retry_after(port: int, scorer: Scorer) -> None:
    """64 clients, 2 requests each, against 4 ongoing + 8 queued requests: each answer is the exact distance or a
    503 with Retry-After (from Serve's proxy, at once); none outlives BOUND_S (the client's timeout would raise);
    afterwards the service answers normally."""
    clients, per_client = 64, 2
    pairs = {i: (png(300 + i), png(400 + i)) for i in range(4)}
    expected = {i: json_distance(scorer.score(decoded(a), decoded(b))) for i, (a, b) in pairs.items()}
    client = Client(port, token=TOKEN, timeout=BOUND_S)
    start = threading.Barrier(clients)

    def work(c: int) -> list[tuple[int, int, dict[str, str], bytes]]:
        start.wait(timeout=BOUND_S)
        out = []
        for k in range(per_client):
            i = (c + k) % len(pairs)
            out.append((i, *client.full("POST", "/v1/score", [("ref", pairs[i][0]), ("dist", pairs[i][1])])))
        return out

    with ThreadPoolExecutor(max_workers=clients) as pool:
        outcomes = [o for out in pool.map(work, range(clients)) for o in out]
    statuses = Counter(status for _, status, _, _ in outcomes)
    assert set(statuses) <= {200, 503} and statuses[200] >= 1 and statuses[503] >= 1, statuses
    for i, status, headers, data in outcomes:
        if status == 200:
            assert json.loads(data)["distance"] == expected[i]
        else:
            assert headers["retry-after"] == str(RETRY_AFTER_S) and b"backpressure" in data, (headers, data)
    a, b = pairs[0]
    status, body = client.request("POST", "/v1/score", [("ref", a), ("dist", b)])
    assert (status, body["distance"]) == (200, expected[0])


# --- faults (last: it kills this module's replica) -------------------------------------------------------------
def replica_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)
            if p.is_running() and " ".join(p.cmdline()).startswith("ray::ServeReplica:stlpips:ScoringService")}


RECOVERY_S = 180  # the documented bound: Serve's controller notices the death, starts a process, loads the model


@pytest.mark.ray
def test_a_killed_replica_costs_no_wrong_answer_and_no_hang(port: int, scorer: Scorer) -> None:
    """8 clients post 12 requests each; once 8 answers are back, the replica's process is killed (SIGKILL by its
    PID). Every answer is the exact distance or a 5xx with a body, none outlives RECOVERY_S (requests that arrive
    while no replica is up wait for the new one), and Serve has a new replica (another PID) answering /healthz and
    scoring exactly within RECOVERY_S of the kill."""
    pids = replica_pids()
    assert len(pids) == 1, pids
    victim = pids.pop()
    a, b = png(7), png(8)
    expected = json_distance(scorer.score(decoded(a), decoded(b)))
    client = Client(port, token=TOKEN, timeout=RECOVERY_S)
    answered, killed, killed_at = [], threading.Event(), []

    def work(_: int) -> list[tuple[int, bytes]]:
        out = []
        for _ in range(12):
            status, _, data = client.full("POST", "/v1/score", [("ref", a), ("dist", b)])
            out.append((status, data))
            answered.append(status)
            if len(answered) >= 8 and not killed.is_set():
                killed.set()
                os.kill(victim, signal.SIGKILL)
                killed_at.append(time.monotonic())
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = [o for out in pool.map(work, range(8)) for o in out]
    assert killed.is_set() and victim not in replica_pids()
    statuses = Counter(status for status, _ in outcomes)
    assert statuses[200] >= 8, statuses
    for status, data in outcomes:
        if status == 200:
            assert json.loads(data)["distance"] == expected
        else:
            assert 500 <= status < 600 and data, (status, data)
    while client.raw("GET", "/healthz")[0] != 200:
        assert time.monotonic() < killed_at[0] + RECOVERY_S, f"no replica answered /healthz within {RECOVERY_S} s"
        time.sleep(0.5)
    status, body = client.request("POST", "/v1/score", [("ref", a), ("dist", b)])
    assert (status, body["distance"]) == (200, expected)
    assert replica_pids() - {victim}


# --- the commands ----------------------------------------------------------------------------------------------
def command_env() -> dict[str, str]:
    """This environment for a command that starts its own cluster: the code under test first on the path, and no
    RAY_* variable that could point it at another cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(Path(__file__).resolve().parents[1] / "runtime"),
                                                     env.get("PYTHONPATH", "")] if p)
    return env


def end(process: subprocess.Popen, root: psutil.Process) -> None:
    """Kill a command that is still running, and every process it started (each by its PID)."""
    if process.poll() is None:
        for proc in [*root.children(recursive=True), root]:
            proc.kill()
    process.wait(timeout=60)
    process.stderr.close()


@pytest.mark.ray
def test_stlpips_serve_starts_a_cluster_on_loopback_only(tmp_path: Path, model: Path, scorer: Scorer) -> None:
    """``stlpips-serve`` as a user runs it (its own local Ray cluster, a token file): every listening socket of
    its process tree is on 127.0.0.1; the token is required; SIGTERM stops it and every process it started."""
    pytest.importorskip("ray", reason="ray is not installed: pip install 'stlpips-deploy[ray]'")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    command = [sys.executable, "-c", "from stlpips_rt.cli.serve import main; main()", "--model", str(model),
               "--providers", "cpu", "--threads", "1", "--port", str(port), "--token-file", str(token_file)]
    server = subprocess.Popen(command, env=command_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(server.pid)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, server.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the service did not answer within 240 s"
            try:
                if Client(port, timeout=10).raw("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(1)
        sockets = listening_sockets(root)
        names = {name for _, name, _, _ in sockets}
        assert {"gcs_server", "raylet"} <= names and any(p == port for *_, p in sockets), sockets
        assert_loopback_only(sockets)
        a, b = png(1), png(2)
        assert Client(port).request("POST", "/v1/score", [("ref", a), ("dist", b)])[0] == 401
        status, body = Client(port, token=TOKEN).request("POST", "/v1/score", [("ref", a), ("dist", b)])
        assert (status, body["distance"]) == (200, json_distance(scorer.score(decoded(a), decoded(b))))
        descendants = root.children(recursive=True)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0
        _, alive = psutil.wait_procs(descendants, timeout=60)
        assert not alive, [p.pid for p in alive]
    finally:
        end(server, root)


@pytest.mark.ray
def test_score_engine_ray_starts_its_cluster_on_loopback_only(tmp_path: Path, model: Path) -> None:
    """``stlpips-score --engine ray`` without --address starts a local cluster for the job: every socket its
    process tree listens on while it runs (sampled until it exits) is on 127.0.0.1."""
    pytest.importorskip("ray", reason="ray is not installed: pip install 'stlpips-deploy[ray]'")
    a, b, out = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "scores.parquet"
    a.write_bytes(png(1))
    b.write_bytes(png(2))
    command = [sys.executable, "-c", "from stlpips_rt.cli.score import main; main()", "--model", str(model),
               "--providers", "cpu", "--threads", "1", "--engine", "ray", "--workers", "1", str(a), str(b),
               "-o", str(out), "-q"]
    job = subprocess.Popen(command, env=command_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(job.pid)
    seen: set[tuple[int, str, str, int]] = set()
    try:
        deadline = time.monotonic() + 300
        while job.poll() is None and time.monotonic() < deadline:
            seen.update(listening_sockets(root))
            time.sleep(0.2)
        assert job.wait(timeout=30) == 0, job.stderr.read()[-3000:]
    finally:
        end(job, root)
    assert {"gcs_server", "raylet"} <= {name for _, name, _, _ in seen}, seen
    assert_loopback_only(seen)
    import pyarrow.parquet as pq

    assert pq.read_table(out).column("status").to_pylist() == ["ok"]


def test_grpc_calls_need_the_token_too() -> None:
    """The gRPC front (and Ray's gRPC proxy path) ask the same question of a call's metadata: the health checks
    answer without the token, every other RPC needs it."""
    from stlpips_rt.scale.http import token_sha256
    from stlpips_rt.scale.oip_grpc import token_problem

    digest = token_sha256(TOKEN)
    assert token_problem("ModelInfer", [("authorization", f"Bearer {TOKEN}")], digest) is None
    assert token_problem("ServerLive", [], digest) is None and token_problem("ServerReady", [], digest) is None
    assert token_problem("ModelInfer", [], None) is None  # a service without a token
    assert token_problem("ModelInfer", [], digest).startswith("this service requires a token: send the metadata")
    assert token_problem("ModelMetadata", [("authorization", f"Bearer {TOKEN}x")], digest) == \
        "the token sent is not this service's token"
