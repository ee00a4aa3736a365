"""``stlpips-serve``: start the scoring service (stlpips_rt.scale.service) on a local or existing Ray cluster."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from ..engine.model_files import resolve_model
from ..errors import StlpipsError
from ..scale.http import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_PIXELS, TOKEN_ENV, Limits, load_token, token_sha256
from .options import CONTEXT, fail, max_memory_option, model_option, models_dir_option, runtime_options

TOOL = "stlpips-serve"


@click.command(context_settings=CONTEXT)
@model_option()
@models_dir_option()
@runtime_options()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the service to the network.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=None,
              help="Also serve the Open Inference Protocol over gRPC (inference.GRPCInferenceService) on --host at "
                   "this port (e.g. 8001, Triton's); default: HTTP only.")
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True,
              help="Serve replicas, each with its own model.")
@click.option("--max-batch", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most concurrent /v1/score requests gathered into one batch (1: no dynamic batching).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=None,
              help="Longest a request waits for others to join its batch (default: 5 where a batch is stacked into "
                   "one run, CUDA/TensorRT; 0 where its pairs run one by one, CPU: a wait would only add latency).")
@click.option("--stack/--no-stack", default=None,
              help="Run a gathered batch as one stacked graph run (default: on CUDA/TensorRT only; on CPU each pair "
                   "runs alone, which keeps answers bit-identical to Scorer.score).")
@click.option("--gpus", "gpus_per_replica", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs per replica (fractions share one GPU).")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=DEFAULT_MAX_BODY_BYTES / 2**20,
              show_default=True, help="Largest request body (413 above).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Largest image, from its header (413 above; decompression bombs).")
@max_memory_option()
@click.option("--max-ongoing-requests", type=click.IntRange(min=1), default=32, show_default=True,
              help="Requests one replica works on at once (decoding, gathering, scoring): two batches' worth by "
                   "default. Bounds a replica's memory (about this many decoded requests).")
@click.option("--max-queued-requests", type=click.IntRange(min=-1), default=32, show_default=True,
              help="Requests the HTTP proxy holds for busy replicas; any request beyond them is answered 503 with "
                   "Retry-After at once. -1: no limit (the queue, and the wait, grow with the load).")
@click.option("--retry-after", "retry_after_s", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds the 503 answer's Retry-After header asks a client to wait.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Require 'Authorization: Bearer <token>' on every route (and gRPC call) but the health checks and "
                   f"the API docs; the token is the file's first line (at least 16 characters). Default: ${TOKEN_ENV} "
                   "if set, else no token.")
@click.option("--address", default=None, help="A running Ray cluster (auto, HOST:PORT); default: start a local one, "
                                              "every Ray port on 127.0.0.1.")
@click.option("--dashboard", is_flag=True, default=False,
              help="Start Ray's dashboard (127.0.0.1:8265) with the local cluster; off by default.")
def main(model: str, models_dir: Path | None, providers: str, precision: str, threads: int | None, host: str,
         port: int, grpc_port: int | None, replicas: int, max_batch: int, batch_wait_ms: float | None,
         stack: bool | None, gpus_per_replica: float, max_body_mb: float, max_pixels: int, max_memory: int | None,
         max_ongoing_requests: int, max_queued_requests: int, retry_after_s: float, token_file: Path | None,
         address: str | None, dashboard: bool) -> None:
    """Serve perceptual distances over HTTP on Ray Serve, until interrupted (Ctrl-C or SIGTERM).

    POST /v1/score (multipart ref, dist), POST /v1/score_many (ref, dist, dist, ...), GET /v1/models, GET /healthz;
    the Open Inference Protocol (KServe v2, Triton's protocol) under /v2 (and over gRPC with --grpc-port); the
    OpenAPI schema at GET /openapi.json and interactive docs at GET /docs. See docs/serving.md.
    --threads is per replica (each reserves that many CPUs from Ray, at least one). See docs/at_scale.md."""
    if dashboard and address is not None:
        raise click.UsageError("--dashboard starts Ray's dashboard with a local cluster; a running cluster "
                               "(--address) has its own settings")
    try:
        token = load_token(token_file)
    except ValueError as exc:
        fail(TOOL, str(exc))
    try:
        from ..scale import ray_env

        ray_env.require_ray()
        from ..scale import service
    except ImportError as exc:
        fail(TOOL, str(exc))
    try:
        model_path = resolve_model(model, [models_dir] if models_dir else [])
    except StlpipsError as exc:
        fail(TOOL, str(exc))
    limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_pixels=max_pixels,
                    max_request_pixels=max(2 * max_pixels, Limits().max_request_pixels))
    config = service.ServiceConfig(model=str(model_path), providers=providers, precision=precision, threads=threads,
                                   replicas=replicas, max_batch=max_batch, batch_wait_ms=batch_wait_ms, stack=stack,
                                   gpus_per_replica=gpus_per_replica, limits=limits,
                                   max_memory=str(max_memory) if max_memory is not None else None,
                                   max_ongoing_requests=max_ongoing_requests, max_queued_requests=max_queued_requests,
                                   retry_after_s=retry_after_s, token_sha256=token_sha256(token) if token else None)
    stopping = threading.Event()
    with ray_env.cluster(address, cpus_needed=int(replicas * config.cpus + 0.999), dashboard=dashboard):
        # SIGTERM (kill, docker stop, Kubernetes) stops as Ctrl-C does, so the local cluster is shut down too. Taken
        # after Ray has started (ray.init installs a SIGTERM handler of its own, which aborts the process) and before
        # the service starts, and acted on once the start is complete: a SIGTERM that came while serve.run was still
        # waiting (after /healthz already answered) killed the process without removing anything.
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
        failed = False
        try:
            try:
                service.start(config, host=host, port=port, grpc_port=grpc_port)
            except (StlpipsError, OSError) as exc:
                failed = True
                fail(TOOL, str(exc))
            grpc = f" and grpc://{host}:{grpc_port}" if grpc_port else ""
            click.echo(f"stlpips-serve: {model} on http://{host}:{port}{grpc} ({replicas} replica(s), max batch "
                       f"{max_batch}{', token required' if token else ''}); Ctrl-C stops", err=True)
            while not stopping.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            if not failed:  # a failed start has said why; what it started goes with the cluster
                service.stop(keep_serve=address is not None)
