"""The provenance guard of every output (stlpips_rt.io.manifest), without a model: where a manifest lies, what it
records over resumed runs, where the provenance is read from (manifest, else Parquet metadata), which set-ups
``--resume`` refuses, and the cached sha256 that names a model file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from refusals import refused_fields

from stlpips_rt.errors import OutputMismatchError
from stlpips_rt.io import manifest
from stlpips_rt.io.manifest import (
    MANIFEST_VERSION,
    PARQUET_KEY,
    RESUME_FIELDS,
    check_resume,
    file_sha256,
    manifest_path,
    parquet_metadata,
    read_provenance,
    write_manifest,
)

PROVENANCE = {"model": {"sha256": "a" * 64, "file": "stlpips_alex_st.onnx"}, "precision": "fp32", "provider": "cpu",
              "resize": None, "cpu": "AMD EPYC", "engine": {"name": "onnxruntime", "version": "1.32.0"},
              "stlpips_deploy": "0.2.0", "threads": 1}


def test_a_manifest_lies_beside_a_file_and_inside_a_folder(tmp_path: Path) -> None:
    assert manifest_path(tmp_path / "rows.csv") == tmp_path / "rows.csv.manifest.json"
    assert manifest_path(tmp_path / "shards") == tmp_path / "shards.manifest.json"  # not a folder yet
    (tmp_path / "shards").mkdir()
    assert manifest_path(tmp_path / "shards") == tmp_path / "shards" / "manifest.json"


def test_the_first_write_records_the_provenance_and_no_run(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    path = write_manifest(out, PROVENANCE)
    assert path == manifest_path(out)
    doc = {"manifest": 1, "output": "rows.csv", "provenance": PROVENANCE, "runs": []}
    assert MANIFEST_VERSION == 1 and path.read_text() == json.dumps(doc, indent=2) + "\n"  # the documented form
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # written under a temporary name, then renamed


def test_resumed_runs_keep_the_first_provenance_and_add_one_entry_each(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    write_manifest(out, PROVENANCE)
    write_manifest(out, PROVENANCE, rows=3, resumed=True)
    later = {**PROVENANCE, "cpu": "another CPU", "engine": {"name": "onnxruntime", "version": "9"},
             "stlpips_deploy": "9.9"}
    write_manifest(out, later, rows=4, resumed=True)
    doc = json.loads(manifest_path(out).read_text())
    assert doc["provenance"] == PROVENANCE
    assert [{k: r[k] for k in ("rows_written", "cpu", "engine", "stlpips_deploy")} for r in doc["runs"]] == [
        {"rows_written": 3, "cpu": "AMD EPYC", "engine": PROVENANCE["engine"], "stlpips_deploy": "0.2.0"},
        {"rows_written": 4, "cpu": "another CPU", "engine": later["engine"], "stlpips_deploy": "9.9"}]
    assert all(len(r["finished"]) >= 19 and r["finished"][4] == "-" for r in doc["runs"])
    write_manifest(out, later, rows=1)  # not resumed: a new output, a new record
    doc = json.loads(manifest_path(out).read_text())
    assert doc["provenance"] == later and [r["rows_written"] for r in doc["runs"]] == [1]


def test_a_damaged_manifest_is_started_afresh_when_resumed(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    manifest_path(out).write_text("{not json")
    write_manifest(out, PROVENANCE, rows=2, resumed=True)
    doc = json.loads(manifest_path(out).read_text())
    assert doc["provenance"] == PROVENANCE and [r["rows_written"] for r in doc["runs"]] == [2]


@pytest.mark.parametrize("text", ["{not json", "[]", '{"runs": []}', '"provenance"'])
def test_a_manifest_without_a_readable_provenance_gives_none(tmp_path: Path, text: str) -> None:
    out = tmp_path / "rows.csv"
    out.write_text("ref,dist\n")
    manifest_path(out).write_text(text)
    assert read_provenance(out) is None


def test_parquet_carries_its_provenance_without_a_manifest(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert parquet_metadata(PROVENANCE) == {PARQUET_KEY: json.dumps(PROVENANCE, sort_keys=True)}
    out = tmp_path / "rows.parquet"
    table = pa.table({"distance": pa.array([0.5], pa.float32())})
    pq.write_table(table.replace_schema_metadata(parquet_metadata(PROVENANCE)), out)
    assert read_provenance(out) == PROVENANCE
    write_manifest(out, {**PROVENANCE, "provider": "openvino"})  # a manifest, where there is one, comes first
    assert read_provenance(out)["provider"] == "openvino"
    manifest_path(out).unlink()
    pq.write_table(table, out)  # no key
    assert read_provenance(out) is None
    out.write_bytes(b"PAR1 not really")
    assert read_provenance(out) is None
    for suffix in (".csv", ".txt", ".PARQUET"):  # only .parquet files (any case) are read as Parquet
        other = tmp_path / f"rows{suffix}"
        pq.write_table(table.replace_schema_metadata(parquet_metadata(PROVENANCE)), other)
        assert read_provenance(other) == (PROVENANCE if suffix == ".PARQUET" else None), suffix
    assert read_provenance(tmp_path / "missing.parquet") is None


def test_resume_without_a_provenance_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    out.write_text("ref,dist\n")
    with pytest.raises(OutputMismatchError) as refused:
        check_resume(out, PROVENANCE)
    message = str(refused.value)
    assert message.startswith(f"--resume: {out} has no manifest (rows.csv.manifest.json)")
    assert "score into a new file" in message


def test_resume_names_every_field_that_differs_in_order(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    write_manifest(out, PROVENANCE)
    now = {**PROVENANCE, "model": {"sha256": "b" * 64}, "precision": "int8", "provider": "openvino",
           "resize": [64, 48]}
    with pytest.raises(OutputMismatchError) as refused:
        check_resume(out, now)
    fields = refused_fields(str(refused.value))
    assert list(fields) == list(RESUME_FIELDS)
    assert fields["resize"] == ("None", "[64, 48]") and fields["model.sha256"] == (repr("a" * 64), repr("b" * 64))
    assert "mix two models' distances" in str(refused.value)


def test_resume_compares_a_missing_field_as_none(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    write_manifest(out, {k: v for k, v in PROVENANCE.items() if k != "model"})
    with pytest.raises(OutputMismatchError) as refused:
        check_resume(out, PROVENANCE)
    assert refused_fields(str(refused.value)) == {"model.sha256": ("None", repr("a" * 64))}
    write_manifest(out, {**PROVENANCE, "model": "not a record"})
    with pytest.raises(OutputMismatchError, match="model.sha256: None in the file"):
        check_resume(out, PROVENANCE)


def test_the_sha256_is_the_file_s_and_follows_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    data = os.urandom(3 * 2**20 + 5)  # more than one read block
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert (str(path.resolve()), len(data), path.stat().st_mtime_ns) in manifest._SHA_CACHE
    changed = bytes([data[0] ^ 1]) + data[1:]
    path.write_bytes(changed)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a new mtime, the same size
    assert file_sha256(path) == hashlib.sha256(changed).hexdigest()
    manifest._SHA_CACHE[(str(path.resolve()), len(changed), path.stat().st_mtime_ns)] = "cached"
    assert file_sha256(path) == "cached"  # read once per (path, size, mtime)
