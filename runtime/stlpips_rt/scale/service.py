"""``stlpips-serve``: an online scoring service on Ray Serve, with dynamic batching across concurrent requests.

HTTP API (docs/at_scale.md has examples):

- ``POST /v1/score``: multipart fields ``ref`` and ``dist`` (image files) -> ``{"distance", "model", "provider"}``
- ``POST /v1/score_many``: ``ref`` and one or more ``dist`` -> ``{"distances": [...], "model", "provider"}``,
  one reference through the broadcast graph
- ``GET /v1/models``: the model's metadata, the limits, the batching and the answering replica's batch counts;
  ``GET /healthz``: ``{"status": "ok"}``

Errors are ``{"error": {"type": <the runtime's error class>, "message": ...}}`` with 400 (bad image, size
mismatch, malformed request), 413 (body or image over the limits, decompression bombs), 415 (not an image).

Exactness: concurrent ``/v1/score`` requests are gathered by ``serve.batch`` (up to ``max_batch``, waiting at
most ``batch_wait_ms``). On CPU each gathered pair still runs as its own graph run, because onnxruntime's CPU
kernels can move the last bit of a distance with its position in a stacked batch; so every answer equals
``Scorer.score`` bit for bit (stacking buys nothing on CPU: measured 27.1 vs 27.8 ms a pair for alex-st 64x64 at
batch 1 vs 16). On CUDA and TensorRT the gathered pairs of one size are stacked into one run, which is where
batching pays; ``stack`` overrides either way.
"""

from __future__ import annotations

import asyncio
import io
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ImageTooLargeError, RequestError, StlpipsError
from ..io import images
from ..io.images import ImageOptions
from .batch import _ScorerSpec
from .http import Limits, error_body, one_field, read_body, read_images, status_of
from .ray_env import ModelPayload

log = logging.getLogger("stlpips.serve")
APP_NAME = "stlpips"


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``stlpips-serve`` is started with (see its --help)."""

    model: str = "alex-st"
    providers: str = "auto"
    precision: str = "exact"
    threads: int | None = 1
    replicas: int = 1
    max_batch: int = 16
    batch_wait_ms: float = 5.0
    stack: bool | None = None  # None: stack gathered pairs on CUDA / TensorRT only
    batch_size: int = 16  # graph run size of score_many
    cpus_per_replica: float | None = None
    gpus_per_replica: float = 0
    max_ongoing_requests: int = 64
    # Working memory of one graph run (bytes, or "2G"); larger requests are tiled, exactly (docs/tiling.md).
    # None: the Scorer's default. The pixel limits stay only as a guard against decompression bombs.
    max_memory: str | None = None
    limits: Limits = field(default_factory=Limits)

    @property
    def cpus(self) -> float:
        return self.cpus_per_replica if self.cpus_per_replica is not None else float(self.threads or 1)


class ScoringService:
    """One replica: one Scorer, the HTTP routes, and the batched scoring of single pairs."""

    def __init__(self, spec: _ScorerSpec, config: ServiceConfig) -> None:
        self.scorer = spec.build()
        self.config = config
        self.limits = config.limits
        self.stack = config.stack if config.stack is not None else self.scorer.provider in ("cuda", "tensorrt")
        self._score_pairs.set_max_batch_size(config.max_batch)
        self._score_pairs.set_batch_wait_timeout_s(config.batch_wait_ms / 1000.0)
        info = self.scorer.info
        self.card = {
            "model": info.short_name, "file": info.path.name, "net": info.net, "variant": info.variant,
            "precision": self.scorer.precision, "provider": self.scorer.provider, "min_size": info.min_size,
            "outputs": list(info.outputs), "static_hw": list(info.static_hw) if info.static_hw else None,
            "metadata": info.metadata, "limits": asdict(self.limits),
            "batching": {"max_batch": config.max_batch, "batch_wait_ms": config.batch_wait_ms, "stacked": self.stack},
        }
        self._answer = {"model": info.short_name, "provider": self.scorer.provider}
        self.stats = {"batches": 0, "pairs": 0, "largest_batch": 0}  # this replica's /v1/score batches

    async def __call__(self, request: Request) -> JSONResponse:
        route = (request.method, request.url.path.rstrip("/") or "/")
        try:
            if route == ("GET", "/healthz"):
                return JSONResponse({"status": "ok"})
            if route == ("GET", "/v1/models"):
                return JSONResponse({**self.card, "replica_stats": self.stats})
            if route == ("POST", "/v1/score"):
                return JSONResponse(await self._score(request))
            if route == ("POST", "/v1/score_many"):
                return JSONResponse(await self._score_many(request))
            return JSONResponse({"error": {"type": "NotFound", "message": f"no route {route[0]} {route[1]}; see "
                                           "GET /v1/models, POST /v1/score, POST /v1/score_many, GET /healthz"}},
                                status_code=404)
        except Exception as exc:  # noqa: BLE001 - a bad request answers with an error, never ends the replica
            if not isinstance(exc, StlpipsError):
                log.exception("unexpected failure on %s %s", *route)
            return JSONResponse(error_body(exc), status_code=status_of(exc))

    async def _form(self, request: Request) -> dict[str, list[bytes]]:
        body = await read_body(request.headers, request.stream(), self.limits.max_body_bytes)
        return await read_images(request.headers, body, self.limits)

    async def _score(self, request: Request) -> dict[str, Any]:
        fields = await self._form(request)
        ref, dist = one_field(fields, "ref"), one_field(fields, "dist")
        x0, x1 = await asyncio.to_thread(self._decode_pair, ref, dist)
        return {"distance": await self._score_pairs((x0, x1)), **self._answer}

    async def _score_many(self, request: Request) -> dict[str, Any]:
        fields = await self._form(request)
        ref, dists = one_field(fields, "ref"), fields.get("dist", [])
        if not dists:
            raise RequestError("expected one or more 'dist' fields with image files, got none")
        distances = await asyncio.to_thread(self._run_many, ref, dists)
        return {"distances": distances, **self._answer}

    # --- decoding and inference (worker threads) ---------------------------------------------------------------
    def _decode(self, data: bytes, name: str) -> np.ndarray:
        return self.scorer.load(images.open_bytes(data, name, self.limits.max_pixels), name)

    def _check_request_pixels(self, parts: list[bytes]) -> None:
        """Refuse a request whose images together exceed the limit before decoding any (each one alone may be
        under ``max_pixels``); headers that do not parse are left to the decoder to report."""
        total = 0
        for data in parts:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    total += img.width * img.height
            except Exception:  # noqa: BLE001, S112 - reported with its proper type by _decode
                continue
        if total > self.limits.max_request_pixels:
            raise ImageTooLargeError("request", f"{total} pixels in all, over the limit of "
                                                f"{self.limits.max_request_pixels}; send fewer or smaller images")

    def _decode_pair(self, ref: bytes, dist: bytes) -> tuple[np.ndarray, np.ndarray]:
        self._check_request_pixels([ref, dist])
        x0, x1 = self._decode(ref, "ref"), self._decode(dist, "dist")
        images.check_pair(x0, x1, "ref", "dist")
        return x0, x1

    def _run_many(self, ref: bytes, dists: list[bytes]) -> list[float]:
        self._check_request_pixels([ref, *dists])
        x0 = self._decode(ref, "ref")
        xs = [self._decode(d, f"dist[{i}]") for i, d in enumerate(dists)]
        for i, x in enumerate(xs):
            images.check_pair(x0, x, "ref", f"dist[{i}]")
        return [float(v) for v in self.scorer.evaluate_many(x0, xs)["dist"]]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _score_pairs(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
        self.stats["batches"] += 1
        self.stats["pairs"] += len(pairs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(pairs))
        return await asyncio.to_thread(self._run_pairs, pairs)

    def _run_pairs(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
        if self.stack:
            d = self.scorer.evaluate([p[0] for p in pairs], [p[1] for p in pairs])["dist"]
            return [float(v) for v in d]
        return [float(self.scorer.evaluate([a], [b])["dist"][0]) for a, b in pairs]


def build_app(config: ServiceConfig) -> Any:
    """The Serve application (``serve.run(build_app(config))``); the model is resolved here, on the driver."""
    spec = _ScorerSpec(ModelPayload.put(config.model), config.providers, config.precision, config.threads,
                       config.batch_size, ImageOptions(max_pixels=config.limits.max_pixels), config.max_memory)
    deployment = serve.deployment(ScoringService, name="ScoringService").options(
        num_replicas=config.replicas, max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.cpus, "num_gpus": config.gpus_per_replica})
    return deployment.bind(spec, config)


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run stlpips_rt.scale.service:app_builder model=alex-st max_batch=16`` and KubeRay's RayService
    (``import_path`` + ``args``): ServiceConfig fields as strings; limits as max_body_bytes, max_pixels."""
    return build_app(config_from_args(args))


def config_from_args(args: dict[str, str]) -> ServiceConfig:
    """A ServiceConfig from string arguments (ServiceConfig and Limits field names)."""
    fields = {f.name: f.type for f in ServiceConfig.__dataclass_fields__.values()}
    limits, kwargs = {}, {}
    for key, value in args.items():
        if key in Limits.__dataclass_fields__:
            limits[key] = int(value)
        elif key in fields and key != "limits":
            kwargs[key] = _parse(str(value), str(fields[key]))
        else:
            raise ValueError(f"unknown argument {key!r}; use ServiceConfig or Limits field names")
    return ServiceConfig(**kwargs, limits=Limits(**limits))


def _parse(value: str, annotation: str) -> Any:
    if value.lower() in ("none", "null", ""):
        return None
    if annotation.startswith("bool"):
        return value.lower() in ("1", "true", "yes")
    if annotation.startswith("int"):
        return int(value)
    if annotation.startswith("float"):
        return float(value)
    return value


def start(config: ServiceConfig, host: str = "127.0.0.1", port: int = 8000) -> Any:
    """Start Serve's HTTP proxy on ``host:port`` and deploy the service; returns its handle. Needs a connected
    Ray (``ray.init`` or :func:`stlpips_rt.scale.ray_env.cluster`)."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build_app(config), name=APP_NAME, route_prefix="/")


def stop(keep_serve: bool = False) -> None:
    """Remove the service from the cluster, and Serve's proxy with it unless ``keep_serve`` (a shared cluster
    whose Serve may run other applications)."""
    serve.delete(APP_NAME)
    if not keep_serve:
        serve.shutdown()
