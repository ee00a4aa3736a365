"""Result rows of ``stlpips-score``: CSV, JSON Lines or Parquet, flushed as they are written, resumable.

Every distance written anywhere (rows, the printed single pair, the service's answers) goes through
:func:`format_distance`: the shortest decimal that reads back as the very float32 the graph computed, so a written
number gives the computed one back bit for bit (``np.float32(text) == distance``). Parquet stores the float32
itself.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np

FIELDS = ["ref", "dist", "distance", "status", "error"]
OK, ERROR = "ok", "error"
#: Columns that hold distances (formatted by :func:`format_distance` in text, float32 in Parquet).
DISTANCE_FIELDS = frozenset({"distance"})
#: Arrow types of the image rows' columns (Parquet output).
ROW_TYPES = {"ref": "string", "dist": "string", "distance": "float32", "status": "string", "error": "string",
             "heatmap": "string"}


def format_distance(value: float | np.floating[Any] | str) -> str:
    """A distance as text: the shortest decimal that round-trips the float32 ``value`` (numpy's float32 repr,
    positional: ``0.77775556``, not the widened double's ``0.7777555584907532`` nor a 7-decimal rounding that
    can name a neighbouring float32). ``np.float32(format_distance(x)) == np.float32(x)`` for every float32."""
    return np.format_float_positional(np.float32(value), unique=True, trim="-")


def json_distance(value: float | np.floating[Any] | str | None) -> float | None:
    """A distance for JSON: the Python float whose repr is :func:`format_distance`'s text (json writes floats by
    repr), so a JSON reader gets the same shortest decimal. None (no distance) stays None."""
    return None if value is None else float(format_distance(value))


def _text_cells(row: dict[str, Any], fields: list[str], json_out: bool) -> dict[str, Any]:
    out = {}
    for k in fields:
        v = row.get(k)
        if k in DISTANCE_FIELDS and v is not None and v != "":
            v = json_distance(v) if json_out else format_distance(v)
        out[k] = v if json_out else ("" if v is None else v)
    return out


def read_done(path: Path, fmt: str) -> list[dict[str, Any]]:
    """Rows of an earlier run that scored successfully. A torn last line (an interrupted write) and error rows
    are dropped, so that resuming retries them."""
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        return [r for r in rows if r.get("status") == OK and r.get("ref") is not None and r.get("dist") is not None]
    text = path.read_text()
    if fmt == "jsonl":
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    else:
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        rows = list(csv.DictReader(io.StringIO(complete)))
    return [r for r in rows if r.get("status") == OK and r.get("ref") is not None and r.get("dist") is not None]


def report_run(scored: int, failed: int, skipped: int | None, where: str, quiet: bool) -> int:
    """The end of a ``stlpips-score`` run on stderr, whatever the engine; returns the exit status (1 if any row
    failed). ``skipped`` is None unless the run resumed."""
    if not quiet:
        resumed = f", {skipped} already done" if skipped is not None else ""
        print(f"stlpips-score: {scored - failed} of {scored} pairs scored{resumed} {where}", file=sys.stderr)
    if failed:
        print(f"stlpips-score: {failed} pair(s) failed; see the rows with status=error", file=sys.stderr)
        return 1
    return 0


class RowWriter:
    """Writes one row per pair and flushes after every batch so that an interrupted run keeps its rows."""

    def __init__(self, target: Path | None, fmt: str, fields: list[str], keep: list[dict[str, Any]]) -> None:
        self.fmt = fmt
        self.fields = fields
        self.failed = 0
        self.written = 0
        if target is None:
            self._file: IO[str] = sys.stdout
            self._close = False
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Rewrite kept rows first (atomically), so a resumed file has each pair once.
            tmp = target.with_name(target.name + ".tmp")
            with tmp.open("w", newline="") as f:
                self._start(f, keep)
            os.replace(tmp, target)
            self._file = target.open("a", newline="")
            self._close = True
            return
        self._start(self._file, keep)

    def _start(self, f: IO[str], keep: list[dict[str, Any]]) -> None:
        if self.fmt == "csv":
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n")
            w.writeheader()
            w.writerows(_text_cells(row, self.fields, False) for row in keep)
        else:
            for row in keep:
                f.write(json.dumps(_text_cells(row, self.fields, True)) + "\n")
        f.flush()

    def write(self, row: dict[str, Any]) -> None:
        if row["status"] != OK:
            self.failed += 1
        self.written += 1
        if self.fmt == "csv":
            csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore",
                           lineterminator="\n").writerow(_text_cells(row, self.fields, False))
        else:
            self._file.write(json.dumps(_text_cells(row, self.fields, True)) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self.flush()
        if self._close:
            self._file.close()


PARQUET_EXTRA = "pip install 'stlpips-deploy[parquet]'"


class ParquetRowWriter:
    """RowWriter's interface for Parquet: rows are buffered and written as row groups of ``group_rows``.

    A Parquet file is readable only once closed (its footer comes last), so ``flush`` writes no partial row
    group; ``close`` (also on errors and Ctrl-C, from a ``finally``) writes the rest and the footer. The file is
    written beside the target (``NAME.tmp``) and renamed over it on close, so a run killed outright leaves the
    earlier file (and the rows it kept, ``keep``: written first) as it was; use CSV or JSON Lines where the rows of
    a run that may be killed must survive. ``types`` maps each field to an Arrow type name (``"string"``,
    ``"int64"``, ``"float64"``, ``"float32"``); ``metadata`` goes into the file's key-value metadata."""

    def __init__(self, target: Path, fields: list[str], types: dict[str, str], group_rows: int = 10_000,
                 keep: list[dict[str, Any]] | None = None, metadata: dict[str, str] | None = None) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            from ..errors import MissingExtraError

            raise MissingExtraError(f"Parquet output needs pyarrow, which is not installed: {PARQUET_EXTRA}") \
                from None
        self._pa = pa
        self.fields = fields
        self.schema = pa.schema([(name, getattr(pa, types[name])()) for name in fields], metadata=metadata)
        self.group_rows = group_rows
        self.failed = 0
        self.written = 0
        self._rows: list[dict[str, Any]] = [{k: row.get(k) for k in self.fields} for row in keep or []]
        target.parent.mkdir(parents=True, exist_ok=True)
        self._target = target
        self._tmp = target.with_name(target.name + ".tmp")
        self._writer = pq.ParquetWriter(str(self._tmp), self.schema)

    def write(self, row: dict[str, Any]) -> None:
        if row["status"] != OK:
            self.failed += 1
        self.written += 1
        self._rows.append({k: row.get(k) for k in self.fields})
        if len(self._rows) >= self.group_rows:
            self._write_group()

    def _write_group(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows = []

    def flush(self) -> None:
        """Nothing to do until a row group is full: a Parquet file cannot be read before it is closed."""

    def close(self) -> None:
        self._write_group()
        self._writer.close()
        os.replace(self._tmp, self._target)
