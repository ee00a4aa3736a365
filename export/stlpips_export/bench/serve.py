"""``stlpips-bench serve``: a bounded HTTP load client for ``stlpips-serve``, on loopback only.

It measures requests/s and latency percentiles of the service's protocols side by side, in one run: ``v1``
(``POST /v1/score``, multipart PNG files), ``v2-json`` and ``v2-binary`` (``POST /v2/models/<name>/infer`` with
UINT8 image tensors, as JSON or with the binary-data extension), at each number of concurrent closed-loop clients
(1, 2, 4, ... 64, in the manner of Triton's perf_analyzer). Each level is bounded in requests and in time; every
answer is checked against ``Scorer.score`` on the same pair. The protocols take turns inside each level, in an
order that rotates round by round, so that drifts in the machine's load hit them alike; rounds repeat until the
last three of every protocol agree (requests/s within ``--stability`` percent of their mean), or ``--max-rounds``.
A client told ``Retry-After`` (a 503 of the service's bounded queue) waits that long, as a well-behaved client
does.

Then, on a service it started: the overhead per request (``--overhead-rounds``: one client, rounds alternating
``Scorer.score`` on the same pair's PNG files in this process, ``POST /v1/score`` and ``GET /healthz``, the way
through Serve without any work; the median of the rounds' p50 differences), a soak (``--soak N``: N requests, the
resident memory and open file descriptors of the replica, Serve's proxy and the whole process tree at its start and
end), and ``--kill-replica`` (the replica's process killed by its PID in the middle of a load: the answers, any
wrong distance, and the time until a request sent after the kill is answered by the replica Serve starts).

Built to be extended: a protocol is a :class:`Protocol` (how to build a request from a pair and read the distance
from an answer) in :data:`PROTOCOLS`; one level's outcome is a :class:`Level` (latencies, statuses, wall time), whose
figures are properties (:meth:`Level.percentile_ms` gives any percentile); :func:`run_level` is the closed loop.

It starts its own service (a local Ray cluster, the service on 127.0.0.1) unless ``--url`` names a running one.
Not a test: the figures depend on the machine and on what else runs on it (the report states the CPU and load).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import platform
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import numpy as np
from PIL import Image

from stlpips_rt import Scorer
from stlpips_rt.cli.options import CONTEXT, fail, model_option, models_dir_option
from stlpips_rt.engine.model_files import resolve_model
from stlpips_rt.errors import StlpipsError

TOOL = "stlpips-bench serve"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TIMEOUT_S = 120.0


# --- what is sent ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """One pair of RGB uint8 images, their PNG files, and the distance ``Scorer.score`` gives them."""

    ref: np.ndarray
    dist: np.ndarray
    ref_png: bytes
    dist_png: bytes
    expected: np.float32


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Protocol:
    """How one protocol asks for a pair's distance and where the answer has it."""

    name: str
    build: Callable[[Pair, str], Request]  # (pair, model name) -> request
    # (answer body, answer headers) -> distance; None: an answer without one (the health probe)
    distance: Callable[[bytes, dict[str, str]], np.float32] | None


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def _v1_request(pair: Pair, model: str) -> Request:
    boundary = uuid.uuid4().hex
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                    f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n"
                    for name, data in (("ref", pair.ref_png), ("dist", pair.dist_png)))
    body += f"--{boundary}--\r\n".encode()
    return Request("POST", "/v1/score", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def _v2_inputs(pair: Pair) -> list[tuple[str, np.ndarray]]:
    return [("in0", pair.ref[None]), ("in1", pair.dist[None])]


def _v2_json_request(pair: Pair, model: str) -> Request:
    doc = {"inputs": [{"name": name, "datatype": "UINT8", "shape": list(a.shape), "data": a.ravel().tolist()}
                      for name, a in _v2_inputs(pair)], "outputs": [{"name": "dist"}]}
    return Request("POST", f"/v2/models/{model}/infer", json.dumps(doc).encode(),
                   {"Content-Type": "application/json"})


def _v2_binary_request(pair: Pair, model: str) -> Request:
    arrays = _v2_inputs(pair)
    doc = {"inputs": [{"name": name, "datatype": "UINT8", "shape": list(a.shape),
                       "parameters": {"binary_data_size": a.nbytes}} for name, a in arrays],
           "outputs": [{"name": "dist", "parameters": {"binary_data": True}}]}
    head = json.dumps(doc).encode()
    return Request("POST", f"/v2/models/{model}/infer", head + b"".join(a.tobytes() for _, a in arrays),
                   {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})


def _v1_distance(body: bytes, headers: dict[str, str]) -> np.float32:
    return np.float32(json.loads(body)["distance"])


def _v2_distance(body: bytes, headers: dict[str, str]) -> np.float32:
    length = headers.get("inference-header-content-length")
    head = json.loads(body[:int(length)] if length else body)
    [output] = [o for o in head["outputs"] if o["name"] == "dist"]
    if length:
        return np.frombuffer(body[int(length):int(length) + 4], dtype="<f4")[0]
    return np.float32(output["data"][0])


PROTOCOLS: dict[str, Protocol] = {
    "v1": Protocol("v1", _v1_request, _v1_distance),
    "v2-json": Protocol("v2-json", _v2_json_request, _v2_distance),
    "v2-binary": Protocol("v2-binary", _v2_binary_request, _v2_distance),
}
#: ``GET /healthz``: the way through Serve's proxy to the application and back, without any work.
HEALTH = Protocol("healthz", lambda pair, model: Request("GET", "/healthz", b"", {}), None)


def make_pairs(scorer: Scorer, count: int, height: int, width: int, seed: int = 0) -> list[Pair]:
    """``count`` distinct smooth random pairs (coarse noise, upsampled), with their expected distances."""
    rng = np.random.default_rng(seed)

    def image() -> np.ndarray:
        coarse = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
        return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))

    pairs = []
    for _ in range(count):
        a, b = image(), image()
        pairs.append(Pair(a, b, _png(a), _png(b), np.float32(scorer.score(a, b))))
    return pairs


# --- one level: N closed-loop clients ----------------------------------------------------------------------------
@dataclass
class Level:
    """One protocol at one number of clients, all its rounds together."""

    protocol: str
    clients: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    statuses: Counter = field(default_factory=Counter)  # HTTP status (or "error: <kind>") -> count
    wrong: int = 0  # 200 answers whose distance was not Scorer.score's
    wall_s: float = 0.0
    round_rates: list[float] = field(default_factory=list)  # requests/s of each round (all statuses)
    stable: bool = False
    answers: list[tuple[float, float, int | str]] = field(default_factory=list)  # (end, seconds, status) each

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else float("nan")

    def percentile_ms(self, q: float) -> float:
        return 1000 * float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)

    def row(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "clients": self.clients, "requests": sum(self.statuses.values()),
                "ok": self.ok, "wrong": self.wrong, "statuses": {str(k): v for k, v in self.statuses.items()},
                "wall_s": round(self.wall_s, 3), "requests_per_s": round(self.requests_per_s, 2),
                "p50_ms": round(self.p50_ms, 1), "p90_ms": round(self.percentile_ms(90), 1),
                "p99_ms": round(self.p99_ms, 1), "rounds": len(self.round_rates), "stable": self.stable}


def agree(rates: list[float], tolerance: float) -> bool:
    """The last three rounds' rates all within ``tolerance`` (a fraction) of their mean: perf_analyzer's rule."""
    if len(rates) < 3:
        return False
    mean = sum(rates[-3:]) / 3
    return mean > 0 and all(abs(r - mean) <= tolerance * mean for r in rates[-3:])


def run_level(host: str, port: int, protocol: Protocol, model: str, pairs: list[Pair], clients: int,
              requests: int, deadline_s: float, level: Level) -> None:
    """``clients`` threads, each with its own keep-alive connection, send requests back to back until
    ``requests`` have been sent in all or ``deadline_s`` has passed; outcomes are added to ``level``."""
    prepared = [protocol.build(pair, model) for pair in pairs]
    lock = threading.Lock()
    sent = 0
    stop_at = time.monotonic() + deadline_s
    before = sum(level.statuses.values())

    def take() -> int | None:
        nonlocal sent
        with lock:
            if sent >= requests or time.monotonic() >= stop_at:
                return None
            sent += 1
            return sent - 1

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        try:
            while (n := take()) is not None:
                request, pair = prepared[n % len(pairs)], pairs[n % len(pairs)]
                start = time.perf_counter()
                try:
                    conn.request(request.method, request.path, body=request.body, headers=request.headers)
                    response = conn.getresponse()
                    body = response.read()
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
                    with lock:
                        level.statuses[f"error: {type(exc).__name__}"] += 1
                    continue
                end = time.perf_counter()
                headers = {k.lower(): v for k, v in response.getheaders()}
                with lock:
                    level.statuses[response.status] += 1
                    level.answers.append((end, end - start, response.status))
                    if response.status == 200:
                        level.latencies.append(end - start)
                        if protocol.distance is not None and \
                                protocol.distance(body, headers).tobytes() != pair.expected.tobytes():
                            level.wrong += 1
                retry_after = headers.get("retry-after") if response.status != 200 else None
                if retry_after is not None:  # the service's queue is full: come back when it says
                    time.sleep(max(0.0, min(float(retry_after), stop_at - time.monotonic())))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, name=f"bench-client-{i}") for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + TIMEOUT_S)
    wall = time.perf_counter() - start
    level.wall_s += wall
    level.round_rates.append((sum(level.statuses.values()) - before) / wall if wall else float("nan"))


def measure(host: str, port: int, model: str, pairs: list[Pair], protocols: list[str], clients: list[int],
            requests: int, rounds: int, deadline_s: float, warmup: int, max_rounds: int | None = None,
            stability: float = 0.1, progress: Callable[[str], None] = lambda _: None) -> list[Level]:
    """Every protocol at every number of clients: rounds of ``requests / rounds`` requests each (at least 4 a
    client), the protocols' order rotating round by round, at least ``rounds`` of them and then more until the
    last three of every protocol agree within ``stability`` (a fraction), up to ``max_rounds``; ``warmup``
    requests per protocol first (not counted)."""
    for name in protocols:
        run_level(host, port, PROTOCOLS[name], model, pairs, 1, warmup, deadline_s, Level(name, 1))
    levels = []
    max_rounds = max(rounds, max_rounds or rounds)
    for n in clients:
        per_round = max(requests // rounds, 4 * n)
        found = {name: Level(name, n) for name in protocols}
        for r in range(max_rounds):
            order = protocols[r % len(protocols):] + protocols[:r % len(protocols)]
            for name in order:
                run_level(host, port, PROTOCOLS[name], model, pairs, n, per_round, deadline_s / rounds, found[name])
            for level in found.values():
                level.stable = agree(level.round_rates, stability)
            if r + 1 >= rounds and all(level.stable for level in found.values()):
                break
        for name in protocols:
            level = found[name]
            progress(f"{name:>9} x{n:<3} {level.requests_per_s:7.1f} req/s  p50 {level.p50_ms:7.1f} ms  "
                     f"p99 {level.p99_ms:7.1f} ms  {dict(level.statuses)}{'' if level.stable else ' (not stable)'}")
            levels.append(level)
    return levels


# --- the overhead per request, the soak, a killed replica (a service started here) -------------------------------
def measure_overhead(host: str, port: int, model: str, scorer: Scorer, pair: Pair, rounds: int, requests: int,
                     folder: Path) -> dict[str, Any]:
    """Rounds of ``requests`` one at a time each: ``Scorer.score`` on the pair's PNG files (read and decoded, as
    the service does), one client on ``POST /v1/score``, one on ``GET /healthz``."""
    files = [folder / "ref.png", folder / "dist.png"]
    files[0].write_bytes(pair.ref_png)
    files[1].write_bytes(pair.dist_png)
    scorer.score(*files)  # warm-up
    sides = {"scorer": Level("Scorer.score", 1), "v1": Level("v1", 1), "healthz": Level("healthz", 1)}
    p50s: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(rounds):
        start, latencies = time.perf_counter(), []
        for _ in range(requests):
            t = time.perf_counter()
            scorer.score(*files)
            latencies.append(time.perf_counter() - t)
        sides["scorer"].latencies += latencies
        sides["scorer"].wall_s += time.perf_counter() - start
        p50s["scorer"].append(1000 * float(np.median(latencies)))
        for side, protocol in (("v1", PROTOCOLS["v1"]), ("healthz", HEALTH)):
            round_level = Level(side, 1)
            run_level(host, port, protocol, model, [pair], 1, requests, TIMEOUT_S, round_level)
            sides[side].latencies += round_level.latencies
            sides[side].wall_s += round_level.wall_s
            sides[side].wrong += round_level.wrong
            p50s[side].append(round_level.p50_ms)
    return {"rounds": rounds, "requests": requests,
            "sides": {side: {**level.row(), "round_p50_ms": [round(v, 1) for v in p50s[side]]}
                      for side, level in sides.items()},
            "overhead_p50_ms": round(float(np.median(np.subtract(p50s["v1"], p50s["scorer"]))), 1),
            "healthz_p50_ms": round(float(np.median(p50s["healthz"])), 1)}


#: What the service's processes' command lines start with.
ROLES = {"replica": "ray::ServeReplica:", "proxy": "ray::ProxyActor"}


def process_usage() -> dict[str, dict[str, float]]:
    """Resident memory (MB) and open file descriptors of the replica(s), Serve's proxy, and this process's whole
    tree (the bench, and the local cluster it started)."""
    import psutil

    usage = {role: {"rss_mb": 0.0, "fds": 0, "processes": 0} for role in [*ROLES, "tree"]}
    root = psutil.Process()
    for proc in [root, *root.children(recursive=True)]:
        try:
            rss, fds, title = proc.memory_info().rss / 2**20, proc.num_fds(), " ".join(proc.cmdline())
        except psutil.Error:
            continue
        for role in ["tree", *(r for r, prefix in ROLES.items() if title.startswith(prefix))]:
            usage[role]["rss_mb"] = round(usage[role]["rss_mb"] + rss, 1)
            usage[role]["fds"] += fds
            usage[role]["processes"] += 1
    return usage


def soak(host: str, port: int, model: str, pairs: list[Pair], requests: int, clients: int) -> dict[str, Any]:
    """``requests`` ``/v1/score`` requests from ``clients`` clients, every answer checked; usage before and after."""
    before = process_usage()
    level = Level("v1", clients)
    run_level(host, port, PROTOCOLS["v1"], model, pairs, clients, requests, requests * TIMEOUT_S, level)
    return {**level.row(), "start": before, "end": process_usage()}


def replica_fault(host: str, port: int, model: str, pairs: list[Pair], clients: int = 8, after: int = 40,
                 requests: int = 96) -> dict[str, Any]:
    """``clients`` clients post ``requests``; after ``after`` answers the replica's process is killed (SIGKILL by
    its PID). Returns the answers by status, wrong distances, and the seconds from the kill to the first 200 of a
    request sent after it (the replica Serve started in its place)."""
    import signal

    import psutil

    replicas = [p for p in psutil.Process().children(recursive=True)
                if " ".join(p.cmdline()).startswith(ROLES["replica"])]
    if len(replicas) != 1:
        raise click.ClickException(f"--kill-replica needs one replica; found {len(replicas)}")
    level, killed_at = Level("v1", clients), []

    def killer() -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while sum(level.statuses.values()) < after and time.monotonic() < deadline:
            time.sleep(0.01)
        killed_at.append(time.perf_counter())
        os.kill(replicas[0].pid, signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    run_level(host, port, PROTOCOLS["v1"], model, pairs, clients, requests, 3 * TIMEOUT_S, level)
    thread.join()
    after_kill = [end for end, seconds, status in level.answers if status == 200 and end - seconds > killed_at[0]]
    return {**level.row(), "recovery_s": round(min(after_kill) - killed_at[0], 2) if after_kill else None,
            "max_latency_s": round(max(seconds for _, seconds, _ in level.answers), 2)}


# --- the service under load ----------------------------------------------------------------------------------------
@contextmanager
def local_service(model: Path, threads: int, max_batch: int, batch_wait_ms: float | None,
                  max_ongoing_requests: int = 32, max_queued_requests: int = 32) -> Iterator[tuple[str, int]]:
    """``stlpips-serve`` on 127.0.0.1 (a free port) in a local Ray cluster, for the duration of the block."""
    from stlpips_rt.scale import ray_env, service

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = service.ServiceConfig(model=str(model), providers="cpu", threads=threads, max_batch=max_batch,
                                   batch_wait_ms=batch_wait_ms, max_ongoing_requests=max_ongoing_requests,
                                   max_queued_requests=max_queued_requests)
    with ray_env.cluster(None, cpus_needed=int(config.cpus + 0.999), quiet=True):
        service.start(config, host="127.0.0.1", port=port)
        try:
            yield "127.0.0.1", port
        finally:
            service.stop()


def machine() -> dict[str, Any]:
    from stlpips_rt.io import manifest

    return {"cpu": manifest.cpu_name(), "cores": os.cpu_count(), "machine": platform.machine(),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# stlpips-bench serve: {report['model']}, {report['size']} pairs", "",
             f"CPU: {report['machine']['cpu']} ({report['machine']['cores']} cores); load average before "
             f"{report['machine']['load_average']}, after {report['load_after']}. Service: {report['service']}.", "",
             "| protocol | clients | requests/s | p50 (ms) | p99 (ms) | ok | wrong | statuses |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["levels"]:
        lines.append(f"| {row['protocol']} | {row['clients']} | {row['requests_per_s']} | {row['p50_ms']} | "
                     f"{row['p99_ms']} | {row['ok']} | {row['wrong']} | {row['statuses']}"
                     f"{'' if row.get('stable', True) else ' (not stable)'} |")
    if "overhead" in report:
        o = report["overhead"]
        lines += ["", f"Overhead per request, one client, {o['rounds']} alternating rounds of {o['requests']}: "
                      f"**{o['overhead_p50_ms']} ms** over `Scorer.score` (median of the rounds' p50 differences); "
                      f"`GET /healthz` alone p50 {o['healthz_p50_ms']} ms.", "",
                  "| one at a time | p50 (ms) | p90 (ms) | p50 per round (ms) |", "|---|---|---|---|"]
        for side, name in (("scorer", "`Scorer.score(ref, dist)`, this process"), ("v1", "`POST /v1/score`"),
                           ("healthz", "`GET /healthz`")):
            row = o["sides"][side]
            lines.append(f"| {name} | {row['p50_ms']} | {row['p90_ms']} | {row['round_p50_ms']} |")
    if "soak" in report:
        k = report["soak"]
        lines += ["", f"Soak: {k['requests']} requests from {k['clients']} clients in {k['wall_s']:.0f} s "
                      f"({k['requests_per_s']} req/s, p50 {k['p50_ms']} ms, p99 {k['p99_ms']} ms), answers "
                      f"{k['statuses']}, wrong distances: {k['wrong']}.", "",
                  "| process | RSS at start (MB) | RSS at end (MB) | open fds at start | open fds at end |",
                  "|---|---|---|---|---|"]
        for role in ("replica", "proxy", "tree"):
            a, b = k["start"][role], k["end"][role]
            lines.append(f"| {role} ({b['processes']} process(es)) | {a['rss_mb']:.0f} | {b['rss_mb']:.0f} | "
                         f"{a['fds']} | {b['fds']} |")
    if "kill_replica" in report:
        k = report["kill_replica"]
        recovery = "none" if k["recovery_s"] is None else f"{k['recovery_s']} s"
        lines += ["", f"Replica killed (SIGKILL) under {k['clients']} clients: {k['requests']} requests, answers "
                      f"{k['statuses']}, wrong distances: {k['wrong']}; from the kill to the first answer of a "
                      f"request sent after it: {recovery}; longest request {k['max_latency_s']} s."]
    return "\n".join(lines) + "\n"


def _int_list(_ctx: click.Context, _param: click.Parameter, value: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {value!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive numbers, got {value!r}")
    return values


def _protocols(_ctx: click.Context, _param: click.Parameter, value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise click.BadParameter(f"unknown protocol(s) {', '.join(unknown) or '(none)'}; choose from "
                                 f"{', '.join(PROTOCOLS)}")
    return names


@click.command(context_settings=CONTEXT)
@model_option()
@models_dir_option()
@click.option("--url", default=None, help="A running stlpips-serve on loopback (http://127.0.0.1:8000); default: "
                                          "start one on 127.0.0.1 for the run.")
@click.option("--protocols", default=",".join(PROTOCOLS), show_default=True, callback=_protocols,
              help="The protocols to measure, side by side.")
@click.option("--clients", default="1,2,4,8,16,32,64", show_default=True, callback=_int_list,
              help="Concurrent closed-loop clients, one level each.")
@click.option("--requests", type=click.IntRange(min=1), default=96, show_default=True,
              help="Requests per protocol and level (split over the rounds).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rounds per level at least; the protocols' order rotates each round.")
@click.option("--max-rounds", type=click.IntRange(min=1), default=8, show_default=True,
              help="Rounds per level at most: more are run until the last three agree (--stability).")
@click.option("--stability", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Percent: a level is stable when its last three rounds' requests/s are within this of their "
                   "mean, for every protocol.")
@click.option("--max-seconds", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Longest a protocol may take at one level (all its rounds together).")
@click.option("--warmup", type=click.IntRange(min=0), default=8, show_default=True,
              help="Requests per protocol before measuring (not counted).")
@click.option("--size", default="64x64", show_default=True, help="HxW of the generated pairs.")
@click.option("--pairs", "pair_count", type=click.IntRange(min=1), default=16, show_default=True,
              help="Distinct pairs sent in turn.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="The started service's threads per replica.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="The started service's dynamic batching.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=None,
              help="The started service's batch wait (default: stlpips-serve's).")
@click.option("--max-ongoing-requests", type=click.IntRange(min=1), default=32, show_default=True,
              help="The started service's requests per replica at once.")
@click.option("--max-queued-requests", type=click.IntRange(min=-1), default=32, show_default=True,
              help="The started service's queue (503 with Retry-After beyond it).")
@click.option("--overhead-rounds", type=click.IntRange(min=0), default=5, show_default=True,
              help="Started service only: rounds of Scorer.score, /v1/score and /healthz at one client (0: none).")
@click.option("--soak", "soak_requests", type=click.IntRange(min=0), default=0, show_default=True,
              help="Started service only: requests of a soak run (RSS and open fds at its start and end).")
@click.option("--soak-clients", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--kill-replica", is_flag=True,
              help="Started service only, last: kill the replica's process mid-load (8 clients), report the answers "
                   "and the time to the new replica's first answer.")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write serve_bench.json and serve_bench.md there.")
def main(model: str, models_dir: Path | None, url: str | None, protocols: list[str], clients: list[int],
         requests: int, rounds: int, max_rounds: int, stability: float, max_seconds: float, warmup: int, size: str,
         pair_count: int, threads: int, max_batch: int, batch_wait_ms: float | None, max_ongoing_requests: int,
         max_queued_requests: int, overhead_rounds: int, soak_requests: int, soak_clients: int, kill_replica: bool,
         out: Path | None) -> None:
    """Requests/s and p50/p99 latency of stlpips-serve's /v1/score against /v2 infer (JSON and binary), at each
    number of concurrent clients, on loopback, bounded in requests and time; every answer checked against
    Scorer.score. See docs/serving.md."""
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected HxW such as 64x64, got {size!r}", param_hint="--size") from None
    target = urlsplit(url) if url is not None else None
    if target is not None and (target.hostname not in LOOPBACK or target.port is None):
        fail(TOOL, f"--url {url!r}: this load client stays on loopback; give http://127.0.0.1:PORT")
    try:
        path = resolve_model(model, [models_dir] if models_dir else [])
        scorer = Scorer(path, providers="cpu", threads=threads)
        pairs = make_pairs(scorer, pair_count, h, w)
    except StlpipsError as exc:
        fail(TOOL, str(exc))
    name = scorer.info.short_name
    before = machine()

    def run(host: str, port: int, service: str) -> dict[str, Any]:
        levels = measure(host, port, name, pairs, protocols, clients, requests, rounds, max_seconds, warmup,
                         max_rounds=max_rounds, stability=stability / 100,
                         progress=lambda line: click.echo(line, err=True))
        return {"model": path.name, "size": f"{h}x{w}", "service": service, "machine": before,
                "load_after": [round(v, 2) for v in os.getloadavg()], "requests": requests, "rounds": rounds,
                "levels": [level.row() for level in levels]}

    if target is not None:
        if soak_requests or kill_replica:
            fail(TOOL, "--soak and --kill-replica need a service started here (no --url)")
        report = run(target.hostname, target.port, f"running at {url}")
    else:
        wait = "stlpips-serve's default" if batch_wait_ms is None else f"{batch_wait_ms} ms"
        try:
            with local_service(path, threads, max_batch, batch_wait_ms, max_ongoing_requests,
                               max_queued_requests) as (host, port):
                report = run(host, port, f"started here: 1 replica, {threads} thread(s), CPU provider, max batch "
                                         f"{max_batch}, batch wait {wait}, {max_ongoing_requests} ongoing + "
                                         f"{max_queued_requests} queued requests")
                if overhead_rounds:
                    click.echo("overhead: Scorer.score, /v1/score and /healthz, one at a time ...", err=True)
                    with tempfile.TemporaryDirectory() as folder:
                        report["overhead"] = measure_overhead(host, port, name, scorer, pairs[0], overhead_rounds,
                                                              max(16, requests // rounds), Path(folder))
                if soak_requests:
                    click.echo(f"soak: {soak_requests} requests from {soak_clients} clients ...", err=True)
                    report["soak"] = soak(host, port, name, pairs, soak_requests, soak_clients)
                if kill_replica:
                    click.echo("killing the replica's process in the middle of a load ...", err=True)
                    report["kill_replica"] = replica_fault(host, port, name, pairs)
        except ImportError as exc:
            fail(TOOL, f"{exc}; pip install 'stlpips-deploy[ray]'")
    text = markdown(report)
    click.echo(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "serve_bench.json").write_text(json.dumps(report, indent=2))
        (out / "serve_bench.md").write_text(text)
    extra = [report[k] for k in ("soak", "kill_replica") if k in report]
    if any(row["wrong"] for row in [*report["levels"], *extra]):
        fail(TOOL, "some answers differed from Scorer.score (see the wrong column)", code=1)
