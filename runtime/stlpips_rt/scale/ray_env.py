"""Where the Ray pieces meet the runtime: importing ray lazily, joining or starting a cluster, and getting the model
file to workers that may run on other machines."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..engine.cpus import available_cpus
from ..engine.model_files import resolve_model

INSTALL_HINT = "pip install 'stlpips-deploy[ray]'"


def require_ray() -> ModuleType:
    """Import ray, or fail with one line that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"this feature runs on Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


LOOPBACK = "127.0.0.1"


@contextlib.contextmanager
def cluster(address: str | None = None, cpus_needed: int = 1, quiet: bool = False,
            dashboard: bool = False) -> Iterator[ModuleType]:
    """Use the cluster this process is already connected to; else join ``address`` (``auto``, ``HOST:PORT`` or
    ``ray://HOST:10001``); else start a local one (:func:`start_local`) for the duration of the block.

    A local cluster gets at least ``cpus_needed + 1`` logical CPUs: Ray Data hangs when actors hold every CPU
    and no task can be scheduled to feed them, so one is always left over. ``dashboard``: start Ray's dashboard
    with a local cluster (on 127.0.0.1:8265); off by default."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING if quiet else logging.INFO,
                              "log_to_driver": not quiet}
    if address is None:
        start_local(num_cpus=max(available_cpus(), cpus_needed + 1), include_dashboard=dashboard, **kwargs)
    else:
        ray.init(address=address, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


def start_local(**init_options: Any) -> ModuleType:
    """``ray.init(**init_options)`` of a new single-machine cluster whose every port listens on 127.0.0.1 only:
    the GCS, the raylet's node and object managers, the dashboard agent (gRPC, HTTP, metrics), the runtime-env
    agent, each worker's gRPC port and, when ``include_dashboard=True``, the dashboard. Nothing of a local
    cluster needs to be reached from another machine. The dashboard is off unless asked for. Always a new
    cluster, never one that already runs on this machine.

    The node's IP is checked afterwards: a Ray that placed it elsewhere is shut down with an error rather than
    left listening on the network."""
    ray = require_ray()
    options = {"include_dashboard": False, **init_options}
    options.setdefault("dashboard_host", LOOPBACK)
    with loopback_node():
        # "local": a new cluster even where another runs on this machine (ray.init() alone would join that one,
        # found through $RAY_ADDRESS or among the machine's processes)
        ray.init(address="local", _node_ip_address=LOOPBACK, **options)
    node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(f"Ray {ray.__version__} started its local node on {node_ip}, not {LOOPBACK}, so its "
                           "ports would be reachable from the network; it was shut down. Start a cluster yourself "
                           "(ray start --head --node-ip-address ...) and pass its --address")
    return ray


@contextlib.contextmanager
def loopback_node() -> Iterator[None]:
    """Within the block, Ray nodes started by this process (``ray.init``, ``ray.cluster_utils.Cluster``) take
    127.0.0.1 as this machine's address, and so listen on loopback only.

    Ray binds its servers to loopback exactly when the node's IP is loopback, but on Linux it replaces a loopback
    node IP with the machine's network address unless its single-machine switch
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read once when ray is imported, so too late to set here) is off:
    the switch's module constant is turned off for the block."""
    require_ray()
    from ray._private import ray_constants

    clusters_enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters_enabled


@dataclass(frozen=True)
class ModelPayload:
    """A model file as workers receive it: the driver's path, and its bytes in Ray's object store for workers on
    machines where that path does not exist (a cluster without shared storage). Resolved on the driver, so short
    names (``alex-st``) follow the driver's ``$STLPIPS_MODEL_DIR`` and ``./models``."""

    path: str
    sha256: str
    data: Any  # ray.ObjectRef of the file's bytes

    @classmethod
    def put(cls, model: str | os.PathLike[str]) -> ModelPayload:
        ray = require_ray()
        path = resolve_model(model).resolve()
        data = path.read_bytes()
        return cls(str(path), hashlib.sha256(data).hexdigest(), ray.put(data))

    def local_path(self) -> Path:
        """The model file on this worker's machine: the driver's path where it holds the same file (same
        sha256), else a copy written from the object store once per process, under the same file name."""
        path = Path(self.path)
        if _sha256(path) == self.sha256:
            return path
        copy = Path(tempfile.gettempdir()) / f"stlpips-model-{os.getpid()}" / path.name
        if _sha256(copy) != self.sha256:
            ray = require_ray()
            copy.parent.mkdir(parents=True, exist_ok=True)
            tmp = copy.with_name(copy.name + ".tmp")
            tmp.write_bytes(ray.get(self.data))
            os.replace(tmp, copy)
        return copy


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def keep_serve_replica_on_loopback() -> None:
    """Call in a Serve replica's constructor: on a node whose IP is loopback (a cluster from :func:`start_local`),
    make the replica's inter-deployment gRPC server listen on 127.0.0.1 as well. Ray Serve 2.60 binds that server
    to ``[::]:0`` (every interface) whatever the node's address, right after the constructor returns; its callers
    reach it at the node's IP, so on a loopback node 127.0.0.1 is where they look. On any other node, and where a
    Ray version has no such hook, nothing changes."""
    ray = require_ray()
    if ray.util.get_node_ip_address() != LOOPBACK:
        return
    try:
        from ray.serve._private import replica as serve_replica
    except ImportError:
        return
    bind = getattr(serve_replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "on_loopback", False):
        return

    def bind_on_loopback(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{LOOPBACK}:{address.removeprefix('[::]:')}"
        return bind(server, address)

    bind_on_loopback.on_loopback = True  # type: ignore[attr-defined]
    serve_replica.add_port_to_grpc_server = bind_on_loopback
