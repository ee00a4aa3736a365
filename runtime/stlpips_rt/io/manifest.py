"""Provenance of a run's distances: which file, engine, provider and precision computed them, on which CPU.

:meth:`stlpips_rt.Scorer.provenance` is the one source of the record; ``stlpips-score`` writes it beside every
output file (``OUT.manifest.json``) and into Parquet's key-value metadata (key :data:`PARQUET_KEY`), and
``--resume`` refuses an output that another set-up wrote (:func:`check_resume`): another model file (sha256),
precision, provider or resize would mix two models' distances in one file. docs/reproducibility.md has the
fields and how to re-check a number from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from ..errors import OutputMismatchError

MANIFEST_VERSION = 1
PARQUET_KEY = "stlpips.provenance"
#: Provenance fields a resumed output must share with the run that wrote it (dotted paths).
RESUME_FIELDS = ("model.sha256", "precision", "provider", "resize")

_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_READ_BYTES = 1 << 20  # how much of a file is hashed per read: speed only, the digest does not depend on it


def content_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, read afresh every time (what the feature cache knows an image by)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached per (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = content_sha256(path)
    return _SHA_CACHE[key]


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s "model name", else ``platform.processor()``), e.g. "AMD EPYC"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def manifest_path(output: Path) -> Path:
    """Where an output's manifest lies: ``scores.csv`` -> ``scores.csv.manifest.json`` (a folder of Parquet
    shards: ``folder/manifest.json``)."""
    return output / "manifest.json" if output.is_dir() else output.with_name(output.name + ".manifest.json")


def _get(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def read_provenance(output: Path) -> dict[str, Any] | None:
    """The provenance an output was written with: its manifest's, else (Parquet) its key-value metadata's; None
    when it has neither."""
    manifest = manifest_path(output)
    if manifest.is_file():
        try:
            return json.loads(manifest.read_text())["provenance"]
        except (ValueError, KeyError, TypeError):
            return None
    if output.is_file() and output.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq

            meta = pq.read_schema(output).metadata or {}
        except Exception:  # noqa: BLE001 - not a readable Parquet file: no provenance
            return None
        raw = meta.get(PARQUET_KEY.encode())
        return json.loads(raw) if raw else None
    return None


def check_resume(output: Path, provenance: dict[str, Any]) -> None:
    """Raise :class:`OutputMismatchError` unless ``output`` (which exists) was written with the same
    :data:`RESUME_FIELDS` as ``provenance``. Reads only: the output is left as it was."""
    before = read_provenance(output)
    if before is None:
        raise OutputMismatchError(
            f"--resume: {output} has no manifest ({manifest_path(output).name}) saying which model, provider and "
            "precision wrote it, so its distances cannot be told apart from this run's; score into a new file "
            "(or remove it to start over)")
    differ = [(f, _get(before, f), _get(provenance, f)) for f in RESUME_FIELDS
              if _get(before, f) != _get(provenance, f)]
    if differ:
        what = "; ".join(f"{f}: {a!r} in the file, {b!r} now" for f, a, b in differ)
        raise OutputMismatchError(
            f"--resume: {output} was written by another set-up ({what}); resuming would mix two models' distances "
            "in one file. Resume with the same --model, --precision, --providers and --resize, or score into a new "
            "file")


def write_manifest(output: Path, provenance: dict[str, Any], rows: int | None = None, resumed: bool = False) -> Path:
    """Write (atomically) the manifest beside ``output``: the provenance of the run that first wrote it, and one
    entry per finished run (end time, rows written, CPU, engine); ``rows`` None writes no entry (a run's start, so
    that an interrupted run leaves a manifest). A resumed run keeps the first provenance and appends its entry."""
    path = manifest_path(output)
    runs: list[dict[str, Any]] = []
    first = provenance
    if resumed and path.is_file():
        try:
            old = json.loads(path.read_text())
            runs, first = list(old.get("runs", [])), old.get("provenance", provenance)
        except (ValueError, AttributeError):
            pass
    if rows is not None:
        runs.append({"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows_written": rows,
                     "cpu": provenance["cpu"], "engine": provenance["engine"],
                     "stlpips_deploy": provenance["stlpips_deploy"]})
    doc = {"manifest": MANIFEST_VERSION, "output": output.name, "provenance": first, "runs": runs}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def parquet_metadata(provenance: dict[str, Any]) -> dict[str, str]:
    """Parquet key-value metadata carrying ``provenance``."""
    return {PARQUET_KEY: json.dumps(provenance, sort_keys=True)}
