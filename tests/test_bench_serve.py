"""`stlpips-bench serve`, the service's load client, without a service: its requests are what the protocols'
parsers read, its answers' distances are read back bit for bit, a level stops at its request bound, a client told
Retry-After waits before its next request, the stability rule of its rounds, its report, and it refuses to load
anything but loopback. (Its figures come from runs, docs/serving.md and docs/at_scale.md; no timing is
asserted.)"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner

from stlpips_rt import Scorer
from stlpips_rt.scale import oip, v2
from stlpips_rt.scale.http import Limits

serve_bench = pytest.importorskip("stlpips_export.bench.serve")


@pytest.fixture(scope="module")
def scorer(exported_model) -> Scorer:
    return Scorer(exported_model("alex", "st"), providers="cpu")


@pytest.mark.parametrize("name", ["v2-json", "v2-binary"])
def test_v2_requests_parse_as_the_pair_and_answers_read_back_exactly(scorer: Scorer, name: str) -> None:
    [pair] = serve_bench.make_pairs(scorer, 1, 37, 45)
    request = serve_bench.PROTOCOLS[name].build(pair, "alex-st")
    parsed = oip.parse_infer_request(request.body, request.headers.get("Inference-Header-Content-Length"))
    pairs = v2.pairs_from_request(parsed, scorer, Limits())
    np.testing.assert_array_equal(pairs.x0[0], scorer.load(pair.ref))
    np.testing.assert_array_equal(pairs.x1[0], scorer.load(pair.dist))
    binary = parsed.outputs["dist"]
    assert binary == (name == "v2-binary")
    body, length = oip.encode_answer("alex-st", "1", None, [("dist", np.array([pair.expected]), binary)])
    headers = {"inference-header-content-length": str(length)} if length else {}
    assert serve_bench.PROTOCOLS[name].distance(body, headers).tobytes() == pair.expected.tobytes()


def test_v1_answers_read_back_exactly(scorer: Scorer) -> None:
    from stlpips_rt.io.output import json_distance

    [pair] = serve_bench.make_pairs(scorer, 1, 32, 32)
    request = serve_bench.PROTOCOLS["v1"].build(pair, "alex-st")
    assert request.path == "/v1/score" and pair.ref_png in request.body and pair.dist_png in request.body
    body = json.dumps({"distance": json_distance(pair.expected)}).encode()
    assert serve_bench.PROTOCOLS["v1"].distance(body, {}).tobytes() == pair.expected.tobytes()


@contextlib.contextmanager
def refusing_server(body: bytes, headers: dict[str, str] | None = None) -> Iterator[tuple[int, list[str]]]:
    """A server on 127.0.0.1 that answers every POST 503 with ``body`` and ``headers``; yields its port and the
    paths it was sent, in order."""
    seen: list[str] = []

    class Refusing(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.path)
            self.send_response(503)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_level_stops_at_its_request_bound_and_counts_statuses(scorer: Scorer) -> None:
    with refusing_server(b'{"error": "busy"}') as (port, seen):
        pairs = serve_bench.make_pairs(scorer, 2, 32, 32)
        level = serve_bench.Level("v2-binary", 3)
        serve_bench.run_level("127.0.0.1", port, serve_bench.PROTOCOLS["v2-binary"], "alex-st",
                              pairs, clients=3, requests=7, deadline_s=60, level=level)
    assert len(seen) == 7 and set(seen) == {"/v2/models/alex-st/infer"}
    assert level.statuses == {503: 7} and level.ok == 0 and np.isnan(level.p50_ms)
    assert level.row()["statuses"] == {"503": 7}


def test_it_refuses_anything_but_loopback(monkeypatch) -> None:
    result = CliRunner().invoke(serve_bench.main, ["--url", "http://192.0.2.1:8000"])
    assert result.exit_code == 2 and "stays on loopback" in result.stderr


def test_stlpips_bench_serve_dispatches_and_plain_bench_is_unchanged(monkeypatch, capsys) -> None:
    from stlpips_export import entry

    monkeypatch.setattr(sys, "argv", ["stlpips-bench", "serve", "--protocols", "v3"])
    with pytest.raises(SystemExit) as code:
        entry.bench()
    assert code.value.code == 2 and "unknown protocol(s) v3" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["stlpips-bench", "--help"])
    with pytest.raises(SystemExit) as code:
        entry.bench()
    assert code.value.code == 0 and "Benchmark ST-LPIPS" in capsys.readouterr().out


def test_a_client_told_retry_after_waits_and_a_level_is_stable_when_three_rounds_agree(scorer: Scorer) -> None:
    """A 503 with Retry-After makes the client wait (here: longer than the level's deadline, so each client sends
    one request and stops); requests/s of rounds decide stability as perf_analyzer's rule does."""

    with refusing_server(b"Request dropped due to backpressure", {"Retry-After": "3600"}) as (port, _):
        level = serve_bench.Level("v1", 2)
        serve_bench.run_level("127.0.0.1", port, serve_bench.PROTOCOLS["v1"], "alex-st",
                              serve_bench.make_pairs(scorer, 1, 32, 32), clients=2, requests=50, deadline_s=1,
                              level=level)
    assert level.statuses == {503: 2} and len(level.round_rates) == 1  # one request each, then the wait
    assert not serve_bench.agree([100.0, 100.0], 0.1)
    assert serve_bench.agree([50.0, 98.0, 100.0, 104.0], 0.1) and not serve_bench.agree([80.0, 100.0, 120.0], 0.1)


def test_the_report_has_the_overhead_the_soak_and_the_killed_replica() -> None:
    usage = {role: {"rss_mb": 100.0, "fds": 10, "processes": 1} for role in ("replica", "proxy", "tree")}
    level = serve_bench.Level("v1", 8, latencies=[0.1] * 10, statuses={200: 10}, wall_s=1.0).row()
    report = {"model": "m.onnx", "size": "64x64", "service": "started here", "load_after": [1.0, 1.0, 1.0],
              "machine": {"cpu": "Some CPU", "cores": 2, "load_average": [1.0, 1.0, 1.0]},
              "levels": [{**level, "stable": False}],
              "overhead": {"rounds": 2, "requests": 16, "overhead_p50_ms": 4.2, "healthz_p50_ms": 3.1,
                           "sides": {side: {**level, "round_p50_ms": [10.0, 11.0]}
                                     for side in ("scorer", "v1", "healthz")}},
              "soak": {**level, "start": usage, "end": usage},
              "kill_replica": {**level, "statuses": {"200": 9, "500": 1}, "recovery_s": 5.1, "max_latency_s": 5.0}}
    text = serve_bench.markdown(report)
    assert "(not stable)" in text and "**4.2 ms** over `Scorer.score`" in text and "[10.0, 11.0]" in text
    assert "| replica (1 process(es)) | 100 | 100 | 10 | 10 |" in text
    assert "'500': 1" in text and "after it: 5.1 s" in text
