"""``stlpips-serve``: an online scoring service on Ray Serve, with dynamic batching across concurrent requests.

A FastAPI application behind ``@serve.ingress``; its OpenAPI schema is served at ``GET /openapi.json`` and the
interactive docs at ``GET /docs``. HTTP API (docs/at_scale.md has examples):

- ``POST /v1/score``: multipart ``ref`` and ``dist`` (image files) -> ``{"distance", "model", "model_sha256",
  "provider"}``
- ``POST /v1/score_many``: ``ref`` and one or more ``dist`` -> ``{"distances", "model", "model_sha256", "provider"}``,
  one reference through the broadcast graph
- ``GET /v1/models``: the model's metadata, the limits, the batching and the answering replica's batch counts;
  ``GET /healthz``: ``{"status": "ok"}``
- the Open Inference Protocol (KServe v2, Triton's HTTP/REST protocol; :mod:`~stlpips_rt.scale.v2`): ``GET /v2``,
  ``/v2/health/live``, ``/v2/health/ready``, ``GET /v2/models/{name}[/versions/1]`` and its ``/ready``, and
  ``POST /v2/models/{name}[/versions/1]/infer`` with JSON tensors or the binary-data extension, both ways;
  ``{name}`` is the model's short name. Errors there are the protocol's ``{"error": "..."}``.

Errors are ``{"error": {"type": <the runtime's error class>, "message": ...}}`` with 400 (bad image, size
mismatch, malformed request), 401 (no valid token, where the service has one), 413 (body or image over the
limits, decompression bombs), 415 (not an image), 404 (no such route). The token is checked by
:class:`~stlpips_rt.scale.http.TokenAuth` and the body limit by :class:`~stlpips_rt.scale.http.RequestGuard`,
both before FastAPI parses anything.

Overload: each replica works on at most ``max_ongoing_requests`` requests; Serve's HTTP proxy holds at most
``max_queued_requests`` more and answers any request beyond them at once with 503 and ``Retry-After`` (Serve's
backpressure, before the request reaches a replica). ``/docs`` serves Swagger UI from the fastapi-offline
package's files, so it renders without internet.

Exactness: concurrent ``/v1/score`` requests (and the pairs of ``/v2`` requests that ask for ``dist`` alone) are
gathered by ``serve.batch`` (up to ``max_batch``, waiting at
most ``batch_wait_ms``). On CPU each gathered pair runs as its own graph run by default: stacking bought nothing
measurable there (27.1 vs 27.8 ms a pair for alex-st 64x64 at batch 1 vs 16). With a format-1.1 file ``stack=True``
is safe on CPU too: its distances do not depend on the batch (docs/reproducibility.md), while a 0.1 file's last bit
could move with a pair's position. On CUDA and TensorRT the gathered pairs of one size are stacked into one run,
which is where batching pays; ``stack`` overrides either way. The wait follows: by default 5 ms where gathered
pairs are stacked, 0 where they run one by one (a batch then takes the requests that queued while the previous one
ran, and waiting longer only adds latency: 5 ms of each request's at one client, ``stlpips-bench serve``).
"""

import asyncio
import contextlib
import typing
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.exceptions import HTTPException

from .. import __version__
from ..engine.model_files import read_signature
from ..errors import ImageTooLargeError, MissingExtraError, RequestError, RequestTooLargeError, StlpipsError
from ..io import images
from ..io.images import ImageOptions
from ..io.output import json_distance
from . import oip, oip_grpc, v2
from .batch import _ScorerSpec
from .http import (
    Limits,
    RequestGuard,
    TokenAuth,
    check_form,
    error_answer,
    header_pixels,
    is_oip,
    load_token,
    log,
    status_of,
    token_sha256,
)
from .ray_env import ModelPayload, keep_serve_replica_on_loopback

APP_NAME = "stlpips"
STACKED_BATCH_WAIT_MS = 5.0
ROUTES = ("GET /v1/models", "POST /v1/score", "POST /v1/score_many", "GET /healthz", "GET /openapi.json", "GET /docs")
V2_ROUTES = ("GET /v2", "GET /v2/health/live", "GET /v2/health/ready", "GET /v2/models/{name}",
             "GET /v2/models/{name}/ready", "POST /v2/models/{name}/infer")
# What answers without the token: the health checks (load balancers and orchestrators probe them without secrets,
# and they tell nothing but that a replica is up) and the API's description (the page, its assets and the schema:
# the same for every deployment of this version, no data; the page's Authorize button then takes the token).
OPEN_PATHS = ("/healthz", "/v2/health/live", "/v2/health/ready", "/openapi.json", "/docs")
DOCS_ASSETS = "/docs/assets"  # Swagger UI's files, from the fastapi-offline package


def is_open(path: str) -> bool:
    """Whether ``path`` (without a trailing slash) answers without the service's token."""
    return path in OPEN_PATHS or path.startswith(DOCS_ASSETS + "/")


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``stlpips-serve`` is started with (see its --help)."""

    model: str = "alex-st"
    providers: str = "auto"
    precision: str = "exact"
    threads: int | None = 1
    replicas: int = 1
    max_batch: int = 16
    batch_wait_ms: float | None = None  # None: STACKED_BATCH_WAIT_MS where gathered pairs are stacked, else 0
    stack: bool | None = None  # None: stack gathered pairs on CUDA / TensorRT only
    batch_size: int = 16  # graph run size of score_many
    cpus_per_replica: float | None = None
    gpus_per_replica: float = 0
    # Overload (docs/at_scale.md "Overload"): requests one replica works on at once (decoding, gathering, scoring;
    # two batches' worth, one gathering while one runs), and requests Serve's proxy holds for the replicas beyond
    # those (-1: no limit); any further request is answered 503 with Retry-After: retry_after_s, at once.
    max_ongoing_requests: int = 32
    max_queued_requests: int = 32
    retry_after_s: float = 1.0
    # The hex sha256 of the bearer token every request but OPEN_PATHS must carry (http.load_token); None: no token.
    token_sha256: str | None = None
    # Working memory of one graph run (bytes, or "2G"); larger requests are tiled, exactly (docs/tiling.md).
    # None: the Scorer's default. The pixel limits stay only as a guard against decompression bombs.
    max_memory: str | None = None
    limits: Limits = field(default_factory=Limits)

    @property
    def cpus(self) -> float:
        return self.cpus_per_replica if self.cpus_per_replica is not None else float(self.threads or 1)


# --- the answers' shapes (the OpenAPI schema's components) ------------------------------------------------------
SHA_PREFIX = 16  # hex digits of the model file's sha256 in each answer (the full digest: /v1/models)
DISTANCE = ("The perceptual distance of dist from ref (0: identical): the shortest decimal that reads back as the "
            "float32 the graph computed.")


class ScoreAnswer(BaseModel):
    distance: float = Field(description=DISTANCE, examples=[0.039463382])
    model: str = Field(description="The model's short name.", examples=["alex-st"])
    model_sha256: str = Field(description=f"The first {SHA_PREFIX} hex digits of the model file's sha256.",
                              examples=["5d1c0c8a2a3f9e47"])
    provider: str = Field(description="The execution provider that scored it.", examples=["cpu"])


class ScoreManyAnswer(BaseModel):
    distances: list[float] = Field(description="One distance per dist field, in the order sent (each as "
                                               "`distance` of /v1/score).")
    model: str = Field(description="The model's short name.", examples=["alex-st"])
    model_sha256: str = Field(description=f"The first {SHA_PREFIX} hex digits of the model file's sha256.",
                              examples=["5d1c0c8a2a3f9e47"])
    provider: str = Field(description="The execution provider that scored them.", examples=["cpu"])


class LimitsAnswer(BaseModel):
    max_body_bytes: int = Field(description="Largest request body (413 above).")
    max_pixels: int = Field(description="Largest image, from its header (413 above).")
    max_request_pixels: int = Field(description="Most pixels of all of a request's images together (413 above).")
    max_fields: int = Field(description="Most multipart parts of one request (one ref, the rest dist).")


class BatchingAnswer(BaseModel):
    max_batch: int = Field(description="Most concurrent /v1/score requests (and /v2 pairs) gathered into one batch.")
    batch_wait_ms: float = Field(description="Longest a request waits for others to join its batch.")
    stacked: bool = Field(description="Whether a gathered batch runs as one stacked graph run.")


class ReplicaStats(BaseModel):
    batches: int = Field(description="Batches of single pairs (/v1/score, /v2 pairs) this replica ran.")
    pairs: int = Field(description="Pairs in them.")
    largest_batch: int = Field(description="Pairs in the largest one.")
    graph_runs: dict[str, int] = Field(description="This replica's graph runs by form (Scorer.runs): `broadcast` "
                                                   "(one reference against several images, /v1/score_many) and "
                                                   "`pairs`.", examples=[{"pairs": 12, "broadcast": 3}])


class ModelCard(BaseModel):
    model: str = Field(description="The model's short name.", examples=["alex-st"])
    file: str = Field(description="The ONNX file's name.", examples=["stlpips_alex_st.onnx"])
    sha256: str = Field(description="The ONNX file's sha256 (answers carry its first 16 hex digits).")
    provenance: dict[str, Any] = Field(description="What computes the distances (Scorer.provenance(): model file, "
                                                   "provider, precision, engine and version, CPU; "
                                                   "docs/reproducibility.md).")
    net: str = Field(description="The backbone.", examples=["alex"])
    variant: str = Field(description="st (ST-LPIPS, shift-tolerant) or lpips.", examples=["st"])
    precision: str = Field(description="The arithmetic that runs (Scorer.precision): fp32, tf32, fp16, int8, bf16.",
                           examples=["fp32"])
    provider: str = Field(description="The execution provider.", examples=["cpu"])
    min_size: int = Field(description="Smallest height and width the model scores.", examples=[21])
    outputs: list[str] = Field(description="The graph's outputs.")
    static_hw: list[int] | None = Field(description="The fixed input size of a static graph; null when dynamic.")
    metadata: dict[str, str] = Field(description="The ONNX file's metadata (stlpips.* keys).")
    limits: LimitsAnswer
    batching: BatchingAnswer
    replica_stats: ReplicaStats = Field(description="The counts of the replica that answered.")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class ErrorDetail(BaseModel):
    type: str = Field(description="The runtime's error class (or NotFound, InternalError).",
                      examples=["ImageSizeError"])
    message: str = Field(description="What was wrong, and what to do about it.")


class ErrorAnswer(BaseModel):
    error: ErrorDetail


def _errors(**statuses: str) -> dict[int | str, dict[str, Any]]:
    return {int(code[1:]): {"model": ErrorAnswer, "description": text} for code, text in statuses.items()}


SCORE_ERRORS = _errors(
    _400="ImageReadError (a truncated or corrupt image), ImageSizeError (the sizes differ, or an image is below "
         "the model's minimum), RequestError (not multipart, a field missing or repeated, too many parts)",
    _413="RequestTooLargeError (the body is over the limit, refused before it is read) or ImageTooLargeError (an "
         "image, or all of them together, over the pixel limits, from their headers: decompression bombs)",
    _415="NotAnImageError (data no image decoder recognises)",
    _500="InferenceError or InternalError (a failure of the service's; logged, no internals in the answer)",
)
IMAGE = "An image file in any format Pillow decodes (PNG, JPEG, WebP, ...); EXIF orientation is applied."


# --- the Open Inference Protocol's shapes (/v2) -------------------------------------------------------------------
class V2Error(BaseModel):
    error: str = Field(description="What was wrong, and what to do about it.")


class ServerMetadata(BaseModel):
    name: str = Field(examples=["stlpips-serve"])
    version: str = Field(description="The stlpips-deploy version.", examples=[__version__])
    extensions: list[str] = Field(description="The protocol's extensions served.", examples=[["binary_tensor_data"]])


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str = Field(examples=["alex-st"])
    ready: bool


class TensorMetadata(BaseModel):
    name: str = Field(examples=["in0"])
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(description="-1 for a dynamic axis.", examples=[[-1, 3, -1, -1]])


class ModelMetadata(BaseModel):
    name: str = Field(description="The model's short name (as /v1/models reports it).", examples=["alex-st"])
    versions: list[str] = Field(examples=[[v2.VERSION]])
    platform: str = Field(examples=[v2.PLATFORM])
    inputs: list[TensorMetadata] = Field(description="The graph's inputs, as the file declares them; in0 and in1 "
                                                     "are also accepted as UINT8 [N, H, W, 3] images and BYTES [N] "
                                                     "encoded image files.")
    outputs: list[TensorMetadata] = Field(description="The graph's outputs, as the file declares them.")


class InferInput(BaseModel):
    name: str = Field(description="in0 (references) or in1.", examples=["in0"])
    shape: list[int] = Field(examples=[[1, 3, 64, 64]])
    datatype: str = Field(description="FP32 [N, 3, H, W] in [-1, 1], UINT8 [N, H, W, 3], or BYTES [N] (image "
                                      "files: base64 strings in JSON, raw in binary data).", examples=["FP32"])
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size: the tensor's bytes in the "
                                                                "binary data after the JSON.")
    data: list[Any] | None = Field(None, description="The elements, flat or nested, row-major.")


class InferOutputRequest(BaseModel):
    name: str = Field(examples=["dist"])
    parameters: dict[str, Any] | None = Field(None, description="binary_data: answer this output as binary data.")


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="binary_data_output: every output as binary data.")
    inputs: list[InferInput]
    outputs: list[InferOutputRequest] | None = Field(None, description="The outputs to answer; default: dist.")


class InferOutput(BaseModel):
    name: str = Field(examples=["dist"])
    shape: list[int] = Field(examples=[[1]])
    datatype: str = Field(examples=["FP32"])
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size, for a binary output.")
    data: list[Any] | None = Field(None, description="The elements, row-major; float32 as their shortest "
                                                     "decimals, which read back bit for bit.")


class InferResponse(BaseModel):
    model_name: str = Field(examples=["alex-st"])
    model_version: str = Field(examples=[v2.VERSION])
    id: str | None = None
    outputs: list[InferOutput]


def _v2_errors(**statuses: str) -> dict[int | str, dict[str, Any]]:
    return {int(code[1:]): {"model": V2Error, "description": text} for code, text in statuses.items()}


V2_MODEL_ERRORS = _v2_errors(_404="No such model or version.")
V2_INFER_ERRORS = _v2_errors(
    _400="A malformed request (JSON, shapes, datatypes, binary sizes), a bad or truncated image, sizes that differ "
         "or are below the model's minimum, an output the model does not have",
    _404="No such model or version.",
    _413="The body over the limit, or images over the pixel limits (from shapes and headers)",
    _415="BYTES data that no image decoder recognises",
    _500="A failure of the service's (logged, no internals in the answer)",
)

V2_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
    oip.BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary", "description": (
        f"The binary-data extension: the JSON request (its length in the {oip.HEADER_LENGTH} header), then "
        "each binary input's bytes in order.")}}}}}
V2_INFER_DESCRIPTION = ("Distances of `in0` and `in1` (FP32 `[N, 3, H, W]` in [-1, 1], UINT8 `[N, H, W, 3]` or "
                      "BYTES `[N]` image files), as JSON tensors or with the binary-data extension both ways "
                      "(`Inference-Header-Content-Length`). Pairs asking for `dist` alone join the dynamic "
                      "batches of /v1/score; every answer equals `Scorer.score` / `score_batch` bit for bit on "
                      "CPU.")


# --- the application -------------------------------------------------------------------------------------------
def _replica() -> "ScoringService":
    """The replica that runs this request (FastAPI dependencies and middleware have no ``self``)."""
    return serve.get_replica_context().servable_object


class _ServiceApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's schema less its 422 answers (a request that fails validation is answered 400 here), with the
        forms named ScoreRequest and ScoreManyRequest rather than Body_score..., and the bearer token declared
        optional on every route but the open ones (it is required only where the service was started with one)."""
        if self.openapi_schema is None:
            schema = super().openapi()
            components = schema.get("components", {}).get("schemas", {})
            schema.setdefault("components", {})["securitySchemes"] = {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "Required where the service was started with --token-file or $STLPIPS_SERVE_TOKEN."}}
            for route, path in schema.get("paths", {}).items():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
                    if not is_open(route):
                        operation["security"] = [{}, {"bearerAuth": []}]
                        operation.setdefault("responses", {})["401"] = {
                            "description": "AuthenticationError: no token, or not this service's (only where the "
                                           "service has one)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/" + (
                                "V2Error" if is_oip(route) else "ErrorAnswer")}}}}
                    form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data", {})
                    ref = form.get("schema", {}).get("$ref", "")
                    if ref.startswith("#/components/schemas/Body_"):
                        old = ref.rsplit("/", 1)[1]
                        name = "".join(w.title() for w in old[len("Body_"):].split("_")) + "Request"
                        components[name] = {**components.pop(old), "title": name}
                        form["schema"]["$ref"] = f"#/components/schemas/{name}"
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            request = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(request.pop("$defs", {}))
            components["InferRequest"] = request
            self.openapi_schema = schema
        return self.openapi_schema


app = _ServiceApp(
    title="stlpips-serve",
    summary="Perceptual distances (ST-LPIPS, LPIPS) of image pairs, exact to the stlpips_rt Scorer.",
    description="Errors answer `{\"error\": {\"type\": ..., \"message\": ...}}` with 400 (bad image or "
                "request), 401 (no valid token, where the service has one), 413 (over the limits), 415 (not an "
                "image), 404 (no such route), 500 (ours); 503 with Retry-After when the service is full "
                "(Serve's proxy, a plain-text body). See docs/at_scale.md.",
    version="1",
    docs_url=None,  # served below, from installed files
    redoc_url=None,
    openapi_url="/openapi.json",
    generate_unique_id_function=lambda route: route.name,  # operationId: score, score_many, models, healthz
)
# The body limit sits in front of FastAPI, whose form parsing would otherwise read the whole body first; the token
# check sits in front of that (middleware added last runs first), so a request without it is not even read.
app.add_middleware(RequestGuard, max_body_bytes=lambda: _replica().limits.max_body_bytes)
app.add_middleware(TokenAuth, token_sha256=lambda: _replica().config.token_sha256, is_open=is_open)
app.mount(DOCS_ASSETS, StaticFiles(directory=str(resources.files("fastapi_offline") / "static")), name="docs_assets")


@app.get("/docs", include_in_schema=False)
async def _docs(request: Request) -> HTMLResponse:
    """Swagger UI with every asset from this service (its script, styles and icon from DOCS_ASSETS, under the
    path prefix a proxy in front declares as root_path), and no validator badge (it would call
    validator.swagger.io)."""
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="stlpips-serve - Swagger UI",
                               swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
                               swagger_ui_parameters={"validatorUrl": None})


@app.exception_handler(StlpipsError)
async def _runtime_error(request: Request, exc: StlpipsError) -> JSONResponse:
    return JSONResponse(error_answer(exc, request.url.path), status_code=status_of(exc))


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    path = request.url.path
    if exc.status_code in (404, 405):  # as before FastAPI: any other method or path is "no route"
        if is_oip(path):
            message = f"no route {request.method} {path}; see {', '.join(V2_ROUTES)}"
            return JSONResponse({"error": message}, status_code=404)
        message = f"no route {request.method} {path}; see {', '.join(ROUTES + V2_ROUTES)}"
        return JSONResponse({"error": {"type": "NotFound", "message": message}}, status_code=404)
    if exc.status_code == 400:  # the multipart parser's complaints
        return JSONResponse(error_answer(RequestError(f"cannot parse the multipart body: {exc.detail}"), path), 400)
    if is_oip(path):
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)
    return JSONResponse({"error": {"type": "HTTPError", "message": str(exc.detail)}}, exc.status_code,
                        headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # check_form refuses a bad form before FastAPI validates the fields; this is the fallback for anything else.
    problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
    return JSONResponse(error_answer(RequestError(f"malformed request: {problems}"), request.url.path),
                        status_code=400)


def _form_check(*, many: bool) -> Any:
    """A dependency of the scoring routes: it runs before FastAPI validates the declared fields, so a bad form is
    refused with the service's own 400 messages (check_form) rather than FastAPI's 422."""

    async def check(request: Request) -> None:
        form = await request.form()  # parsed once, by FastAPI, from the body RequestGuard let through
        check_form(request.headers.get("content-type", ""), [name for name, _ in form.multi_items()],
                   _replica().limits, many=many,
                   text_fields=[name for name, value in form.multi_items() if isinstance(value, str)])

    return check




@serve.ingress(app)
class ScoringService:
    """One replica: one Scorer, the HTTP routes, and the batched scoring of single pairs."""

    def __init__(self, spec: _ScorerSpec, config: ServiceConfig) -> None:
        keep_serve_replica_on_loopback()
        self.scorer = spec.build()
        self.config = config
        self.limits = config.limits
        self.stack = config.stack if config.stack is not None else self.scorer.provider in ("cuda", "tensorrt")
        self._score_pairs.set_max_batch_size(config.max_batch)
        self.batch_wait_ms = (config.batch_wait_ms if config.batch_wait_ms is not None
                              else STACKED_BATCH_WAIT_MS if self.stack else 0.0)
        self._score_pairs.set_batch_wait_timeout_s(self.batch_wait_ms / 1000.0)
        info = self.scorer.info
        provenance = self.scorer.provenance()
        sha256 = provenance["model"]["sha256"]
        self.card = {
            "model": info.short_name, "file": info.path.name, "sha256": sha256, "provenance": provenance,
            "net": info.net, "variant": info.variant,
            "precision": self.scorer.precision, "provider": self.scorer.provider, "min_size": info.min_size,
            "outputs": list(info.outputs), "static_hw": list(info.static_hw) if info.static_hw else None,
            "metadata": info.metadata, "limits": asdict(self.limits),
            "batching": {"max_batch": config.max_batch, "batch_wait_ms": self.batch_wait_ms, "stacked": self.stack},
        }
        self._answer = {"model": info.short_name, "model_sha256": sha256[:SHA_PREFIX], "provider": self.scorer.provider}
        self.stats = {"batches": 0, "pairs": 0, "largest_batch": 0}  # this replica's batches of single pairs
        self.v2_metadata = v2.model_metadata(info, read_signature(info.path)[1])
        with contextlib.suppress(MissingExtraError):  # gRPC messages unpickle here if Ray's gRPC proxy sends them
            oip_grpc.messages()

    @app.get("/healthz", response_model=Health, summary="Whether a replica answers")
    async def healthz(self) -> Health:
        return Health()

    @app.get("/v1/models", response_model=ModelCard, summary="The model, the limits and the batching")
    async def models(self) -> ModelCard:
        return ModelCard(**self.card, replica_stats=ReplicaStats(**self.stats, graph_runs=self.scorer.runs))

    @app.post("/v1/score", response_model=ScoreAnswer, responses=SCORE_ERRORS, summary="Score one pair",
              description="The distance of `dist` from `ref` (the same size). Concurrent requests are gathered "
                          "into batches (`serve.batch`); every answer equals `Scorer.score` bit for bit on CPU.",
              dependencies=[Depends(_form_check(many=False))])
    async def score(self, ref: Annotated[bytes, File(description="The reference. " + IMAGE)],
                    dist: Annotated[bytes, File(description="The distorted image, the size of ref. " + IMAGE)],
                    ) -> ScoreAnswer:
        x0, x1 = await asyncio.to_thread(self._decode_pair, ref, dist)
        return ScoreAnswer(distance=json_distance(await self._score_pairs((x0, x1))), **self._answer)

    @app.post("/v1/score_many", response_model=ScoreManyAnswer, responses=SCORE_ERRORS,
              summary="Score one reference against several images",
              description="One `ref` and one or more `dist` fields (at most `limits.max_fields` - 1), the same "
                          "size, scored through the broadcast graph; equals `Scorer.score_many` bit for bit.",
              dependencies=[Depends(_form_check(many=True))])
    async def score_many(self, ref: Annotated[bytes, File(description="The reference. " + IMAGE)],
                         dist: Annotated[list[bytes], File(min_length=1,  # the schema says so too
                                                           description="The images to score against ref, each "
                                                                       "the size of ref, in one field each. "
                                                                       + IMAGE)],
                         ) -> ScoreManyAnswer:
        distances = await asyncio.to_thread(self._run_many, ref, dist)
        return ScoreManyAnswer(distances=distances, **self._answer)

    # --- the Open Inference Protocol (/v2) ------------------------------------------------------------------------
    @app.get("/v2", response_model=ServerMetadata, summary="The server's name, version and protocol extensions")
    async def v2_server(self) -> ServerMetadata:
        return ServerMetadata(name="stlpips-serve", version=__version__, extensions=["binary_tensor_data"])

    @app.get("/v2/health/live", response_model=Live, summary="Whether a replica answers")
    async def v2_live(self) -> Live:
        return Live(live=True)

    @app.get("/v2/health/ready", response_model=Ready, summary="Whether a replica can score (its model is loaded)")
    async def v2_ready(self) -> Ready:
        return Ready(ready=True)

    @app.get("/v2/models/{model_name}", response_model=ModelMetadata, responses=V2_MODEL_ERRORS,
             summary="The model's inputs and outputs: names, datatypes, shapes")
    async def v2_model(self, model_name: str) -> ModelMetadata:
        v2.check_model(self.scorer.info, model_name)
        return ModelMetadata(**self.v2_metadata)

    @app.get("/v2/models/{model_name}/versions/{version}", response_model=ModelMetadata,
             responses=V2_MODEL_ERRORS, summary="The model's inputs and outputs (version 1, the only one)")
    async def v2_model_version(self, model_name: str, version: str) -> ModelMetadata:
        v2.check_model(self.scorer.info, model_name, version)
        return ModelMetadata(**self.v2_metadata)

    @app.get("/v2/models/{model_name}/ready", response_model=ModelReady, responses=V2_MODEL_ERRORS,
             summary="Whether the model can score")
    async def v2_model_ready(self, model_name: str) -> ModelReady:
        v2.check_model(self.scorer.info, model_name)
        return ModelReady(name=model_name, ready=True)

    @app.get("/v2/models/{model_name}/versions/{version}/ready", response_model=ModelReady,
             responses=V2_MODEL_ERRORS, summary="Whether the model can score (version 1)")
    async def v2_model_version_ready(self, model_name: str, version: str) -> ModelReady:
        v2.check_model(self.scorer.info, model_name, version)
        return ModelReady(name=model_name, ready=True)

    @app.post("/v2/models/{model_name}/infer", response_model=InferResponse, responses=V2_INFER_ERRORS,
              summary="Score pairs (Open Inference Protocol)", description=V2_INFER_DESCRIPTION,
              openapi_extra=V2_INFER_BODY)
    async def v2_infer(self, model_name: str, request: Request) -> Response:
        return await self._v2_infer(model_name, None, request)

    @app.post("/v2/models/{model_name}/versions/{version}/infer", response_model=InferResponse,
              responses=V2_INFER_ERRORS, summary="Score pairs (version 1)", description=V2_INFER_DESCRIPTION,
              openapi_extra=V2_INFER_BODY)
    async def v2_infer_version(self, model_name: str, version: str, request: Request) -> Response:
        return await self._v2_infer(model_name, version, request)

    async def _v2_infer(self, model_name: str, version: str | None, request: Request) -> Response:
        info = self.scorer.info
        v2.check_model(info, model_name, version)
        body = await request.body()  # already bounded and read by RequestGuard
        parsed, outputs, pairs = await asyncio.to_thread(
            self._v2_decode, body, request.headers.get("content-encoding"),
            request.headers.get(oip.HEADER_LENGTH.lower()))
        values = await self._v2_run(pairs, list(outputs))
        content, header_length = oip.encode_answer(
            info.short_name, v2.VERSION, parsed.id, [(name, values[name], outputs[name]) for name in outputs])
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type=oip.BINARY_CONTENT_TYPE,
                        headers={oip.HEADER_LENGTH: str(header_length)})

    def _v2_decode(self, body: bytes, encoding: str | None, header_length: str | None) \
            -> tuple[oip.InferRequest, dict[str, bool], v2.Pairs]:
        parsed = oip.parse_infer_request(oip.decompress(body, encoding, self.limits.max_body_bytes), header_length)
        outputs = v2.requested_outputs(parsed, self.scorer.info)
        return parsed, outputs, v2.pairs_from_request(parsed, self.scorer, self.limits)

    async def _v2_run(self, pairs: v2.Pairs, outputs: list[str]) -> dict[str, np.ndarray]:
        """Pairs that ask for ``dist`` alone join the dynamic batches of single pairs (each answer as
        ``Scorer.score``'s); a broadcast request, or one asking for other outputs, runs as ``Scorer.evaluate``."""
        if outputs == ["dist"] and not pairs.broadcast:
            distances = await asyncio.gather(*(self._score_pairs(pair) for pair in zip(pairs.x0, pairs.x1,
                                                                                         strict=True)))
            return {"dist": np.array(distances, dtype=np.float32)}
        x0 = pairs.x0[0] if pairs.broadcast else pairs.x0
        return await asyncio.to_thread(self.scorer.evaluate, x0, pairs.x1, outputs)

    # --- the Open Inference Protocol over gRPC (oip_grpc) -----------------------------------------------------------
    async def grpc(self, rpc: str, request: bytes) -> tuple[bytes, str, str]:
        """One call of ``stlpips-serve``'s gRPC front (:class:`~stlpips_rt.scale.oip_grpc.Front`): the request's
        bytes in; the response's bytes, the gRPC status code's name and its message out."""
        if rpc not in oip_grpc.RPCS:
            return b"", "UNIMPLEMENTED", f"{rpc} is not served; see {', '.join(oip_grpc.RPCS)}"
        try:
            message = getattr(oip_grpc.messages(), f"{rpc}Request").FromString(request)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError, or anything else it raises on bad bytes
            return b"", "INVALID_ARGUMENT", f"the {rpc}Request does not parse"
        response, code, text = await self._grpc_answer(rpc, message)
        return (response.SerializeToString() if response is not None else b""), code, text

    async def _grpc_answer(self, rpc: str, request: Any) -> tuple[Any, str, str]:
        try:
            return await self._grpc_rpc(rpc, request), "OK", ""
        except StlpipsError as exc:
            return None, oip_grpc.GRPC_CODES[status_of(exc)], str(exc)
        except Exception:  # noqa: BLE001 - a bad request answers with an error, never ends the replica
            log.exception("unexpected failure on gRPC %s", rpc)
            return None, "INTERNAL", "the service failed on this request; see its log"

    async def _grpc_rpc(self, rpc: str, request: Any) -> Any:
        pb, info = oip_grpc.messages(), self.scorer.info
        if rpc == "ServerLive":
            return pb.ServerLiveResponse(live=True)
        if rpc == "ServerReady":
            return pb.ServerReadyResponse(ready=True)
        if rpc == "ServerMetadata":
            return pb.ServerMetadataResponse(name="stlpips-serve", version=__version__)
        if rpc == "ModelReady":
            v2.check_model(info, request.name, request.version)
            return pb.ModelReadyResponse(ready=True)
        if rpc == "ModelMetadata":
            v2.check_model(info, request.name, request.version)
            return oip_grpc.model_metadata_response(self.v2_metadata)
        v2.check_model(info, request.model_name, request.model_version)  # ModelInfer
        if request.ByteSize() > self.limits.max_body_bytes:
            raise RequestTooLargeError(f"the request is {request.ByteSize()} bytes, over this service's limit of "
                                       f"{self.limits.max_body_bytes} bytes; send smaller images")
        parsed, outputs, pairs = await asyncio.to_thread(self._v2_decode_grpc, request)
        values = await self._v2_run(pairs, list(outputs))
        return oip_grpc.model_infer_response(info.short_name, v2.VERSION, parsed.id,
                                             [(name, values[name]) for name in outputs])

    def _v2_decode_grpc(self, request: Any) -> tuple[oip.InferRequest, dict[str, bool], v2.Pairs]:
        parsed = oip_grpc.parse_model_infer(request)
        return parsed, v2.requested_outputs(parsed, self.scorer.info), v2.pairs_from_request(parsed, self.scorer,
                                                                                              self.limits)

    # Ray Serve's own gRPC proxy calls these by the RPCs' names (grpc_servicer_functions:
    # stlpips_rt.scale.oip_grpc.add_servicer_to_server), with the request message and a grpc_context; hence
    # CamelCase.
    async def ServerLive(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._proxied("ServerLive", request, grpc_context)

    async def ServerReady(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._proxied("ServerReady", request, grpc_context)

    async def ServerMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._proxied("ServerMetadata", request, grpc_context)

    async def ModelReady(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._proxied("ModelReady", request, grpc_context)

    async def ModelMetadata(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._proxied("ModelMetadata", request, grpc_context)

    async def ModelInfer(self, request: Any, grpc_context: Any = None) -> Any:
        return await self._proxied("ModelInfer", request, grpc_context)

    async def _proxied(self, rpc: str, request: Any, grpc_context: Any) -> Any:
        metadata = grpc_context.invocation_metadata() if grpc_context is not None else ()
        problem = oip_grpc.token_problem(rpc, metadata, self.config.token_sha256)
        response, code, message = ((None, "UNAUTHENTICATED", problem) if problem is not None
                                   else await self._grpc_answer(rpc, request))
        if code == "OK":
            return response
        import grpc

        if grpc_context is not None:
            grpc_context.set_code(getattr(grpc.StatusCode, code))
            grpc_context.set_details(message)
        return getattr(oip_grpc.messages(), f"{rpc}Response")()

    # --- decoding and inference (worker threads) ---------------------------------------------------------------
    def _decode(self, data: bytes, name: str) -> np.ndarray:
        return self.scorer.load(images.open_bytes(data, name, self.limits.max_pixels), name)

    def _check_request_pixels(self, parts: list[bytes]) -> None:
        """Refuse a request whose images together exceed the limit before decoding any (each one alone may be
        under ``max_pixels``); headers that do not parse are left to the decoder to report."""
        total = sum(header_pixels(data) for data in parts)
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
        return [json_distance(v) for v in self.scorer.evaluate_many(x0, xs)["dist"]]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _score_pairs(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.float32]:
        self.stats["batches"] += 1
        self.stats["pairs"] += len(pairs)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(pairs))
        return await asyncio.to_thread(self._run_pairs, pairs)

    def _run_pairs(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.float32]:
        if self.stack:
            return list(self.scorer.evaluate([p[0] for p in pairs], [p[1] for p in pairs])["dist"])
        return [self.scorer.evaluate([a], [b])["dist"][0] for a, b in pairs]


def build_app(config: ServiceConfig) -> Any:
    """The Serve application (``serve.run(build_app(config))``); the model is resolved here, on the driver."""
    spec = _ScorerSpec(ModelPayload.put(config.model), config.providers, config.precision, config.threads,
                       config.batch_size, ImageOptions(max_pixels=config.limits.max_pixels), config.max_memory)
    deployment = serve.deployment(ScoringService, name="ScoringService").options(
        num_replicas=config.replicas, max_ongoing_requests=config.max_ongoing_requests,
        max_queued_requests=config.max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=config.retry_after_s),
        ray_actor_options={"num_cpus": config.cpus, "num_gpus": config.gpus_per_replica})
    return deployment.bind(spec, config)


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run stlpips_rt.scale.service:app_builder model=alex-st max_batch=16`` and KubeRay's RayService
    (``import_path`` + ``args``): ServiceConfig fields as strings; limits as max_body_bytes, max_pixels; the token
    from ``token_file=PATH`` or ``$STLPIPS_SERVE_TOKEN`` where the application is built."""
    args = dict(args)
    token = load_token(args.pop("token_file", None))
    config = config_from_args(args)
    return build_app(replace(config, token_sha256=token_sha256(token)) if token else config)


def config_from_args(args: dict[str, str]) -> ServiceConfig:
    """A ServiceConfig from string arguments (ServiceConfig and Limits field names)."""
    fields = typing.get_type_hints(ServiceConfig)
    limits, kwargs = {}, {}
    for key, value in args.items():
        if key in Limits.__dataclass_fields__:
            limits[key] = int(value)
        elif key in fields and key != "limits":
            kwargs[key] = _parse(str(value), fields[key])
        else:
            raise ValueError(f"unknown argument {key!r}; use ServiceConfig or Limits field names")
    return ServiceConfig(**kwargs, limits=Limits(**limits))


def _parse(value: str, annotation: Any) -> Any:
    kinds = typing.get_args(annotation) or (annotation,)  # int | None -> (int, NoneType)
    if value.lower() in ("none", "null", ""):
        return None
    if bool in kinds:
        return value.lower() in ("1", "true", "yes")
    if int in kinds:
        return int(value)
    if float in kinds:
        return float(value)
    return value


_grpc_front: oip_grpc.Front | None = None


def start(config: ServiceConfig, host: str = "127.0.0.1", port: int = 8000, grpc_port: int | None = None) -> Any:
    """Start Serve's HTTP proxy on ``host:port`` and deploy the service; returns its handle. With ``grpc_port``,
    also serve the Open Inference Protocol's gRPC service on ``host:grpc_port`` (0: a free port; the front's
    ``port`` says which) from this process. Needs a connected Ray (``ray.init`` or
    :func:`stlpips_rt.scale.ray_env.cluster`)."""
    global _grpc_front
    serve.start(http_options={"host": host, "port": port})
    handle = serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    if grpc_port is not None:
        oip_grpc.messages()  # the generated modules, or a clear error before anything listens

        def call(rpc: str, request: bytes) -> tuple[bytes, str, str]:
            return handle.grpc.remote(rpc, request).result()

        # gRPC refuses a message over the body limit before it reaches a replica (the replica checks it again).
        _grpc_front = oip_grpc.Front(call, host, grpc_port, max_message_bytes=config.limits.max_body_bytes,
                                     token_sha256=config.token_sha256)
    return handle


def grpc_front() -> oip_grpc.Front | None:
    """The gRPC front :func:`start` runs in this process, if any."""
    return _grpc_front


def stop(keep_serve: bool = False) -> None:
    """Remove the service from the cluster (and stop the gRPC front), and Serve's proxy with it unless
    ``keep_serve`` (a shared cluster whose Serve may run other applications)."""
    global _grpc_front
    if _grpc_front is not None:
        _grpc_front.stop()
        _grpc_front = None
    serve.delete(APP_NAME)
    if not keep_serve:
        serve.shutdown()
