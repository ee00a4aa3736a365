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

from ..engine.model_files import resolve_model

INSTALL_HINT = "pip install 'stlpips-deploy[ray]'"


def require_ray() -> ModuleType:
    """Import ray, or fail with one line that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise ImportError(f"this feature runs on Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def cluster(address: str | None = None, cpus_needed: int = 1, quiet: bool = False) -> Iterator[ModuleType]:
    """Use the cluster this process is already connected to; else join ``address`` (``auto``, ``HOST:PORT`` or
    ``ray://HOST:10001``); else start a local one for the duration of the block.

    A local cluster gets at least ``cpus_needed + 1`` logical CPUs: Ray Data hangs when actors hold every CPU
    and no task can be scheduled to feed them, so one is always left over."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING if quiet else logging.INFO,
                              "log_to_driver": not quiet}
    if address is None:
        kwargs.update(num_cpus=max(os.cpu_count() or 1, cpus_needed + 1), include_dashboard=False)
    ray.init(address=address, **kwargs)
    try:
        yield ray
    finally:
        ray.shutdown()


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
