"""Written distances give the computed float32 back (CSV, JSON Lines, Parquet, the printed pair, video rows), and
every output carries its provenance: a manifest beside it, Parquet's key-value metadata, and a ``--resume`` that
refuses an output another model file, precision, provider or resize wrote, leaving it byte for byte."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from refusals import refused_fields
from sample_images import write_image

from stlpips_rt import Scorer, __version__
from stlpips_rt.cli.score import main
from stlpips_rt.io.manifest import PARQUET_KEY, manifest_path
from stlpips_rt.io.output import format_distance, json_distance


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("outputs")
    refs, dists = root / "refs", root / "dists"
    refs.mkdir()
    dists.mkdir()
    for i in range(5):
        write_image(refs / f"img{i}.png", 10 + i, (48, 64) if i == 4 else (64, 64))
        write_image(dists / f"img{i}.png", 200 + i, (48, 64) if i == 4 else (64, 64))
    return refs, dists


def invoke(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def expected_distances(model: Path, refs: Path, dists: Path, chunks: list[list[str]]) -> dict[str, np.float32]:
    """What ``Scorer.evaluate`` returns for each pair, called on the chunks ``stlpips-score`` runs (its batches of
    --batch-size pairs in input order): the float32 every written distance must give back."""
    scorer = Scorer(model, providers="cpu")
    out = {}
    for chunk in chunks:
        x0 = [scorer.load(refs / name) for name in chunk]
        x1 = [scorer.load(dists / name) for name in chunk]
        out.update(zip(chunk, scorer.evaluate(x0, x1)["dist"].reshape(-1), strict=True))
    return out


NAMES = [f"img{i}.png" for i in range(5)]


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=0.0, max_value=4.0, width=32, allow_subnormal=True))
def test_format_distance_is_the_shortest_text_that_gives_the_float32_back(x: float) -> None:
    value = np.float32(x)
    text = format_distance(value)
    assert np.float32(text) == value and "e" not in text
    assert np.float32(json.loads(json.dumps(json_distance(value)))) == value
    assert len(text.lstrip("0.").replace(".", "")) <= 9  # never the widened double's 17 digits
    if len(text) > 3:  # no shorter decimal gives the same float32 back
        assert np.float32(text[:-1] or "0") != value or text[:-1].endswith(".")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_every_written_distance_reads_back_as_the_computed_float32(model: Path, folders, tmp_path: Path,
                                                                   suffix: str) -> None:
    refs, dists = folders
    out = tmp_path / f"rows{suffix}"
    code, _, err = invoke("--model", model, "--providers", "cpu", "--ref-dir", refs, "--dist-dir", dists, "-o", out,
                          "--batch-size", "3", "-q")
    assert code == 0, err
    if suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        pq = pytest.importorskip("pyarrow.parquet")
        table = pq.read_table(out)
        assert str(table.schema.field("distance").type) == "float"  # float32, the graph's own type
        rows = table.to_pylist()
    expected = expected_distances(model, refs, dists, [NAMES[:3], NAMES[3:]])  # --batch-size 3
    assert len(rows) == len(expected)
    for row in rows:
        assert np.float32(row["distance"]) == expected[Path(row["ref"]).name], row


def test_the_printed_pair_reads_back_as_the_computed_float32(model: Path, folders) -> None:
    refs, dists = folders
    for name in ("img0.png", "img4.png"):
        code, out, _ = invoke("--model", model, "--providers", "cpu", refs / name, dists / name)
        assert code == 0
        expected = np.float32(Scorer(model, providers="cpu").score(refs / name, dists / name))
        assert np.float32(out.strip()) == expected and out.strip() == format_distance(expected)


def test_manifest_and_parquet_metadata_name_what_computed_the_distances(model: Path, folders, tmp_path) -> None:
    import hashlib

    refs, dists = folders
    out = tmp_path / "rows.parquet"
    code, _, err = invoke("--model", model, "--providers", "cpu", "--ref-dir", refs, "--dist-dir", dists, "-o", out,
                          "-q")
    assert code == 0, err
    doc = json.loads(manifest_path(out).read_text())
    prov = doc["provenance"]
    assert manifest_path(out).name == "rows.parquet.manifest.json"
    assert prov["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert prov["model"]["short_name"] == "alex-st" and prov["model"]["format"]
    assert (prov["provider"], prov["precision"]) == ("cpu", "fp32")
    import onnxruntime

    assert prov["engine"] == {"name": "onnxruntime", "version": onnxruntime.__version__}
    assert prov["stlpips_deploy"] == __version__ and prov["cpu"]
    assert doc["runs"][-1]["rows_written"] == 5
    pq = pytest.importorskip("pyarrow.parquet")
    assert json.loads(pq.read_schema(out).metadata[PARQUET_KEY.encode()]) == prov


def _other_model(model: Path, tmp_path: Path) -> Path:
    """The same graph in another file (one more metadata entry): another sha256."""
    import onnx

    proto = onnx.load(str(model))
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "note": "a copy"})
    path = tmp_path / "copy" / model.name
    path.parent.mkdir()
    onnx.save(proto, str(path))
    return path


#: The change of one option on --resume -> the provenance fields the refusal must name. "precision": fast on the
#: CPU provider runs the model's int8 sibling (another file, so its sha256 differs too), which every machine has.
RESUME_CHANGES = {"model": {"model.sha256"}, "precision": {"model.sha256", "precision"}, "providers": {"provider"},
                  "resize": {"resize"}}


@pytest.mark.parametrize("change", [*RESUME_CHANGES, "no manifest"])
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_resume_refuses_another_set_up_and_changes_nothing(int8_sibling_folder: Path, folders, tmp_path: Path,
                                                           change: str, suffix: str) -> None:
    model = int8_sibling_folder / "stlpips_alex_st.onnx"
    refs, dists = folders
    out = tmp_path / f"rows{suffix}"
    base = ["--ref-dir", refs, "--dist-dir", dists, "-o", out, "-q"]
    code, _, err = invoke("--model", model, "--providers", "cpu", *base)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    args = {"model": ["--model", _other_model(model, tmp_path) if change == "model" else model],
            "precision": ["--precision", "fast" if change == "precision" else "exact"],
            "providers": ["--providers", "openvino" if change == "providers" else "cpu"],
            "resize": ["--resize", "48"] if change == "resize" else []}
    if change == "no manifest" and suffix == ".parquet":
        # A Parquet file names its set-up in its own metadata: without the manifest it still refuses what differs.
        manifest_path(out).unlink()
        before.pop(manifest_path(out).name)
        args["resize"] = ["--resize", "48"]
    elif change == "no manifest":
        manifest_path(out).unlink()
        before.pop(manifest_path(out).name)
    code, _, err = invoke(*[a for v in args.values() for a in v], *base, "--resume")
    assert code == 2 and err.startswith("stlpips-score: error: --resume:"), err
    if change == "no manifest" and suffix == ".csv":
        assert f"{out} has no manifest ({out.name}.manifest.json)" in err, err
    else:
        expected = RESUME_CHANGES.get(change, {"resize"})
        assert set(refused_fields(err)) == expected, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_resume_with_the_same_set_up_keeps_every_row(model: Path, folders, tmp_path: Path, suffix: str) -> None:
    refs, dists = folders
    out = tmp_path / f"rows{suffix}"
    first, every = tmp_path / "first.csv", tmp_path / "every.csv"
    first.write_text("ref,dist\n" + "".join(f"{refs / n},{dists / n}\n" for n in NAMES[:2]))
    every.write_text("ref,dist\n" + "".join(f"{refs / n},{dists / n}\n" for n in NAMES))
    code, _, _ = invoke("--model", model, "--providers", "cpu", "--pairs", first, "-o", out)
    assert code == 0
    code, _, err = invoke("--model", model, "--providers", "cpu", "--pairs", every, "-o", out, "--resume")
    assert code == 0 and "2 already done" in err, err
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
    elif suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = expected_distances(model, refs, dists, [NAMES[:2], NAMES[2:]])  # the first run, then the rest
    got = {Path(r["ref"]).name: np.float32(r["distance"]) for r in rows}
    assert got == expected
    assert len(json.loads(manifest_path(out).read_text())["runs"]) == 2


@pytest.mark.parametrize("field", ["model.sha256", "precision", "provider", "resize"])
def test_check_resume_names_each_field_that_differs(tmp_path: Path, field: str) -> None:
    from stlpips_rt.errors import OutputMismatchError
    from stlpips_rt.io.manifest import check_resume, write_manifest

    prov = {"model": {"sha256": "a" * 64}, "precision": "fp32", "provider": "cpu", "resize": None, "cpu": "x",
            "engine": {"name": "onnxruntime"}, "stlpips_deploy": __version__}
    out = tmp_path / "rows.csv"
    out.write_text("ref,dist,distance,status,error\n")
    write_manifest(out, prov)
    check_resume(out, prov)  # the same set-up resumes
    check_resume(out, {**prov, "cpu": "another", "threads": 4})  # fields that do not change a distance are free
    other = json.loads(json.dumps(prov))
    now = {"model.sha256": "b" * 64, "precision": "bf16", "provider": "openvino", "resize": [64, 64]}[field]
    if field == "model.sha256":
        other["model"]["sha256"] = now
    else:
        other[field] = now
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(OutputMismatchError) as refused:
        check_resume(out, other)
    was = {"model.sha256": "a" * 64, "precision": "fp32", "provider": "cpu", "resize": None}[field]
    assert refused_fields(str(refused.value)) == {field: (repr(was), repr(now))}
    assert str(out) in str(refused.value)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # it only reads
