"""Result rows of ``stlpips-score``: CSV or JSON Lines, flushed as they are written, resumable."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

FIELDS = ["ref", "dist", "distance", "status", "error"]
OK, ERROR = "ok", "error"


def read_done(path: Path, fmt: str) -> list[dict[str, str]]:
    """Rows of an earlier run that scored successfully. A torn last line (an interrupted write) and error rows
    are dropped, so that resuming retries them."""
    if not path.exists():
        return []
    text = path.read_text()
    rows: list[dict[str, Any]] = []
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
            w.writerows(keep)
        else:
            for row in keep:
                f.write(json.dumps(row) + "\n")
        f.flush()

    def write(self, row: dict[str, Any]) -> None:
        if row["status"] != OK:
            self.failed += 1
        self.written += 1
        if self.fmt == "csv":
            out = {k: ("" if row.get(k) is None else row.get(k)) for k in self.fields}
            csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore",
                           lineterminator="\n").writerow(out)
        else:
            self._file.write(json.dumps({k: row.get(k) for k in self.fields}) + "\n")

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
    group; ``close`` (also on errors and Ctrl-C, from a ``finally``) writes the rest and the footer. Use CSV or
    JSON Lines where a run may be killed outright. ``types`` maps each field to an Arrow type name
    (``"string"``, ``"int64"``, ``"float64"``, ``"float32"``)."""

    def __init__(self, target: Path, fields: list[str], types: dict[str, str], group_rows: int = 10_000) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            from ..errors import MissingExtraError

            raise MissingExtraError(f"Parquet output needs pyarrow, which is not installed: {PARQUET_EXTRA}") \
                from None
        self._pa = pa
        self.fields = fields
        self.schema = pa.schema([(name, getattr(pa, types[name])()) for name in fields])
        self.group_rows = group_rows
        self.failed = 0
        self.written = 0
        self._rows: list[dict[str, Any]] = []
        target.parent.mkdir(parents=True, exist_ok=True)
        self._writer = pq.ParquetWriter(str(target), self.schema)

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
