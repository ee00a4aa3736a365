"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``, the service Triton and KServe speak),
free of Ray: its messages (the modules tritonclient ships, ``tritonclient.grpc.service_pb2``) to and from the
protocol's data (:mod:`~stlpips_rt.scale.oip`), and a gRPC front bound to an address of your choice that forwards
each call's bytes to the service's replicas.

Why a front of our own: Ray Serve's gRPC proxy carries this service (its RPCs reach the deployment's methods of
the same names, :class:`~stlpips_rt.scale.service.ScoringService`, given :func:`add_servicer_to_server`), but binds
every interface (``[::]``) with no option for the address in Ray 2.60, where ``stlpips-serve`` binds 127.0.0.1
unless told otherwise. The front listens where ``--host`` says and calls the same code through a deployment handle,
passing bytes (no pickled messages); on KubeRay, Ray's proxy can carry it instead (docs/serving.md;
scripts/check_ray_grpc_proxy.sh runs that path in a network namespace of its own).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import numpy as np

from ..errors import MissingExtraError, RequestError
from . import oip
from .http import bearer_problem

log = logging.getLogger("stlpips.serve")
SERVICE = "inference.GRPCInferenceService"
#: The unary RPCs served; the others (streaming, repository, shared memory, statistics) answer UNIMPLEMENTED.
RPCS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")
#: HTTP statuses of the service's errors -> gRPC status codes (grpc.StatusCode names).
GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED",
              415: "INVALID_ARGUMENT", 500: "INTERNAL"}
#: The RPCs that answer without the service's token, as /healthz does over HTTP: the health checks.
OPEN_RPCS = ("ServerLive", "ServerReady")


def token_problem(rpc: str, metadata: Any, token_sha256: str | None) -> str | None:
    """None when ``rpc`` may run: the service has no token, the RPC is a health check, or the call's metadata
    carries ``authorization: Bearer <token>`` with the service's token; else what is wrong (the call is answered
    UNAUTHENTICATED). ``metadata``: the call's (key, value) pairs."""
    if token_sha256 is None or rpc in OPEN_RPCS:
        return None
    values = [str(v) for k, v in (metadata or ()) if str(k).lower() == "authorization"]
    problem = bearer_problem(values, token_sha256)
    return None if problem is None else problem[0].replace("the header", "the metadata")


#: The module name tritonclient's generated message classes give themselves: the .proto's, not the file's.
PICKLED_MODULE = "grpc_service_pb2"


def messages() -> Any:
    """``tritonclient.grpc.service_pb2``, or a :class:`MissingExtraError` naming what to install.

    Its message classes say they live in ``grpc_service_pb2`` (the .proto's name; tritonclient renamed the file),
    a module that does not exist, so they cannot be pickled, and Ray Serve's gRPC proxy pickles each request to
    pass it to a replica. This makes that name resolve to the real module in the calling process (the proxy, through
    :func:`add_servicer_to_server`; a replica, when the service starts)."""
    try:
        from tritonclient.grpc import service_pb2
    except ImportError as exc:
        raise MissingExtraError(f"serving gRPC needs tritonclient's generated modules and grpcio ({exc}); "
                                "pip install 'stlpips-deploy[ray,grpc]'") from None
    sys.modules.setdefault(PICKLED_MODULE, service_pb2)
    return service_pb2


def add_servicer_to_server(servicer: Any, server: Any) -> None:
    """For Ray Serve's gRPC proxy: ``grpc_servicer_functions: ["stlpips_rt.scale.oip_grpc.add_servicer_to_server"]``
    registers ``inference.GRPCInferenceService`` (tritonclient's servicer), with the module alias
    :func:`messages` explains, in the proxy's process."""
    messages()
    from tritonclient.grpc import service_pb2_grpc

    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)


def parse_model_infer(request: Any) -> oip.InferRequest:
    """A ``ModelInferRequest`` as the protocol's data: inputs from ``raw_input_contents`` (one per input, in
    order, as tritonclient sends them) or from their typed ``contents``; every output answered raw."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise RequestError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input")
    inputs: dict[str, oip.Tensor] = {}
    for i, tensor in enumerate(request.inputs):
        shape = [int(d) for d in tensor.shape]
        if raw:
            parsed = oip.tensor_from_raw(tensor.name, tensor.datatype, shape, raw[i])
        else:
            parsed = oip.tensor_from_values(tensor.name, tensor.datatype, shape, _contents(tensor))
        if parsed.name in inputs:
            raise RequestError(f"input {parsed.name!r} is given twice; send each input once")
        inputs[parsed.name] = parsed
    outputs = {output.name: True for output in request.outputs}
    return oip.InferRequest(inputs, outputs, binary_by_default=True, id=request.id or None)


def _contents(tensor: Any) -> Sequence[Any]:
    contents = tensor.contents
    for field in ("fp32_contents", "uint_contents", "int_contents", "int64_contents", "uint64_contents",
                  "fp64_contents", "bool_contents", "bytes_contents"):
        values = getattr(contents, field)
        if len(values):
            return values
    return []


def model_infer_response(model_name: str, version: str, request_id: str | None,
                         outputs: Sequence[tuple[str, np.ndarray]]) -> Any:
    """A ``ModelInferResponse`` with each output's raw little-endian bytes."""
    pb = messages()
    response = pb.ModelInferResponse(model_name=model_name, model_version=version, id=request_id or "")
    for name, array in outputs:
        response.outputs.add(name=name, datatype=oip.datatype_of(array.dtype.name), shape=list(array.shape))
        response.raw_output_contents.append(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
                                            .tobytes())
    return response


def model_metadata_response(metadata: dict[str, Any]) -> Any:
    pb = messages()
    response = pb.ModelMetadataResponse(name=metadata["name"], versions=metadata["versions"],
                                        platform=metadata["platform"])
    for kind in ("inputs", "outputs"):
        for tensor in metadata[kind]:
            getattr(response, kind).add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
    return response


class Front:
    """A gRPC server on ``host:port`` that serves :data:`SERVICE` by passing each call's request bytes to
    ``call(rpc, request) -> (response bytes, gRPC status code name, message)`` (the deployment, through its
    handle) and answering its bytes or its status. Messages over ``max_message_bytes`` are refused by gRPC itself
    (RESOURCE_EXHAUSTED) before they reach a replica."""

    def __init__(self, call: Callable[[str, bytes], tuple[bytes, str, str]], host: str, port: int,
                 max_message_bytes: int, threads: int = 16, token_sha256: str | None = None) -> None:
        import grpc

        self._grpc = grpc
        self._call = call
        self._token_sha256 = token_sha256  # the service's token (token_problem), checked here before any call
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max(max_message_bytes, 64 * 2**20)),
                   ("grpc.so_reuseport", 0)]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stlpips-grpc"),
                                  options=options)
        handlers = {rpc: grpc.unary_unary_rpc_method_handler(self._handler(rpc)) for rpc in RPCS}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        self.server.start()

    def _handler(self, rpc: str) -> Callable[[bytes, Any], bytes]:
        def handle(request: bytes, context: Any) -> bytes:
            problem = token_problem(rpc, context.invocation_metadata(), self._token_sha256)
            if problem is not None:
                context.abort(self._grpc.StatusCode.UNAUTHENTICATED, problem)
            try:
                response, code, message = self._call(rpc, request)
            except Exception:  # noqa: BLE001 - a failed call answers INTERNAL, never ends the front
                log.exception("gRPC %s failed", rpc)
                context.abort(self._grpc.StatusCode.INTERNAL, "the service failed on this request; see its log")
            if code != "OK":
                context.abort(getattr(self._grpc.StatusCode, code), message)
            return response

        return handle

    def stop(self, grace_s: float = 2.0) -> None:
        self.server.stop(grace_s).wait()
