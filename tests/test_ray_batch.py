"""Batch scoring on Ray Data: exact against the single-process Scorer (==), bad files as error rows, a worker killed
mid-job, --engine ray with Parquet output and --resume, the per-pair seam (map_pairs). One shared local cluster
(the ray_cluster fixture); actors use 1 of its 2 CPUs."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from refusals import refused_fields
from sample_images import write_image

from stlpips_rt import Scorer, StlpipsError
from stlpips_rt.cli.score import main as score_cli
from stlpips_rt.io.images import check_pair
from stlpips_rt.io.pairs import from_csv

BATCH = 16
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


@pytest.fixture(scope="module")
def scorer(model: Path) -> Scorer:
    return Scorer(model, providers="cpu", batch_size=BATCH)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """refs/ and dists/ with 40 pairs (every fifth 48x48, the rest 64x64) and three bad files."""
    root = tmp_path_factory.mktemp("ray-images")
    for sub in ("refs", "dists"):
        (root / sub).mkdir()
    for i in range(40):
        size = (48, 48) if i % 5 == 4 else (64, 64)
        write_image(root / "refs" / f"p{i:03d}.png", i, size)
        write_image(root / "dists" / f"p{i:03d}.png", 1000 + i, size)
    data = (root / "dists" / "p000.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not an image")
    return root


def reference(scorer: Scorer, refs: list[Path | None], dists: list[Path | None], broadcast: bool = False
              ) -> list[float | None]:
    """What the single-process stlpips-score computes: consecutive chunks of BATCH pairs; the pairs of a chunk
    that load go through one evaluate (evaluate_many for one reference) call; None where a pair fails."""
    out: list[float | None] = []
    for start in range(0, len(dists), BATCH):
        loaded = []
        for r, d in zip(refs[start:start + BATCH], dists[start:start + BATCH], strict=True):
            try:
                pair = (scorer.load(r), scorer.load(d)) if r is not None and d is not None else None
                if pair is not None:
                    check_pair(*pair, str(r), str(d))
                loaded.append(pair)
            except StlpipsError:  # a failing pair is None in the reference
                loaded.append(None)
        good = [x for x in loaded if x is not None]
        if broadcast:
            values = iter(scorer.evaluate_many(good[0][0], [g[1] for g in good])["dist"]) if good else iter(())
        else:
            values = iter(scorer.evaluate([g[0] for g in good], [g[1] for g in good])["dist"]) if good else iter(())
        out += [float(next(values)) if x is not None else None for x in loaded]
    return out


def test_score_dataset_is_exact_and_turns_bad_files_into_rows(ray_cluster, model, scorer, images) -> None:
    """ref as image bytes, dist as local paths, file:// URIs, and four kinds of bad input, in one job."""
    from stlpips_rt.scale import pairs_dataset, score_dataset

    refs = [images / "refs" / f"p{i:03d}.png" for i in range(40)]
    dists: list[Path | None] = [images / "dists" / f"p{i:03d}.png" for i in range(40)]
    cells: list[str] = [str(d) for d in dists]
    cells[3] = (images / "dists" / "p003.png").as_uri()  # file://
    bad = {7: images / "missing.png", 12: images / "truncated.png", 21: images / "notes.txt"}
    for i, path in bad.items():
        cells[i], dists[i] = str(path), None
    cells[30], dists[30] = str(images / "dists" / "p034.png"), None  # 48x48 against a 64x64 reference
    rows = [{"id": i, "ref": refs[i].read_bytes(), "dist": cells[i], "error": ""} for i in range(40)]
    rows[33]["error"], dists[33] = "no partner for this reference", None  # passed through unscored

    result = score_dataset(pairs_dataset(rows, BATCH), model, providers="cpu", batch_size=BATCH).to_pandas()
    result = result.sort_values("id").reset_index(drop=True)
    assert list(result["id"]) == list(range(40))  # every pair exactly once, input columns kept

    expected = reference(scorer, refs, dists)
    got = [None if s == "error" else float(d) for s, d in zip(result["status"], result["distance"], strict=True)]
    assert got == expected  # bit for bit
    errors = dict(zip(result["id"], result["error"], strict=True))
    assert "does not exist" in errors[7]
    assert "truncated" in errors[12]
    assert "cannot decode it as an image" in errors[21]
    assert "sizes differ" in errors[30]
    assert errors[33] == "no partner for this reference"
    assert all(errors[i] == "" for i in range(40) if expected[i] is not None)


def test_one_reference_uses_the_broadcast_graph_exactly(ray_cluster, model, scorer, images) -> None:
    from stlpips_rt.scale import pairs_dataset, score_dataset

    ref = images / "refs" / "p000.png"
    dists = [images / "dists" / f"p{i:03d}.png" for i in range(40) if i % 5 != 4]  # the 64x64 ones
    rows = [{"dist": str(d)} for d in dists]
    result = score_dataset(pairs_dataset(rows, BATCH), model, ref=str(ref), providers="cpu",
                           batch_size=BATCH).to_pandas()
    got = dict(zip(result["dist"], result["distance"].astype(float), strict=True))
    expected = reference(scorer, [ref] * len(dists), dists, broadcast=True)
    assert [got[str(d)] for d in dists] == expected
    assert expected == [float(v) for v in scorer.score_many(ref, dists)]  # the Scorer's own broadcast call


def test_the_actor_runs_the_broadcast_graph_for_one_reference(model, images) -> None:
    """What score_dataset's actor (PairScorer) runs, counted by its Scorer: with ``ref`` one broadcast run per Ray
    batch (the reference once against the batch), without it runs of pairs only."""
    import pyarrow as pa

    from stlpips_rt.scale.batch import PairScorer, ScoringOptions, _ScorerSpec

    spec = _ScorerSpec.from_options(ScoringOptions(model=model, providers="cpu", batch_size=BATCH))
    dists = [str(images / "dists" / f"p{i:03d}.png") for i in range(12) if i % 5 != 4]
    table = pa.table({"ref": [str(images / "refs" / "p000.png")] * len(dists), "dist": dists})
    broadcast = PairScorer(spec, "ref", "dist", ref=str(images / "refs" / "p000.png"))
    pairwise = PairScorer(spec, "ref", "dist")
    a, b = broadcast(table), pairwise(table)
    assert broadcast.scorer.runs == {"broadcast": 1, "pairs": 0}
    assert pairwise.scorer.runs == {"broadcast": 0, "pairs": 1}
    assert a.column("distance").to_pylist() == b.column("distance").to_pylist()  # the same bits either way


def test_map_pairs_runs_a_function_per_pair_and_keeps_going(ray_cluster, model, scorer, images) -> None:
    """The seam for per-pair work (videos later): any function of (scorer, row), one row per task."""
    from stlpips_rt.scale import map_pairs, pairs_dataset

    def score_and_size(s: Scorer, row: dict) -> dict:
        if row["dist"].endswith("p002.png"):
            raise RuntimeError("a bug on one input")
        return {"distance": s.score(row["ref"], row["dist"]), "height": s.load(row["ref"]).shape[1]}

    rows = [{"ref": str(images / "refs" / f"p{i:03d}.png"), "dist": str(images / "dists" / f"p{i:03d}.png")}
            for i in range(5)]
    rows.append({"ref": rows[0]["ref"], "dist": str(images / "missing.png")})
    out = map_pairs(pairs_dataset(rows, BATCH, rows_per_block=1), score_and_size, columns=("distance", "height"),
                    model=model, providers="cpu").to_pandas()
    by_dist = {r["dist"]: r for r in out.to_dict("records")}
    assert len(out) == 6
    for row in rows[:5]:
        got = by_dist[row["dist"]]
        if row["dist"].endswith("p002.png"):
            assert got["status"] == "error" and got["error"] == "RuntimeError: a bug on one input"
        else:
            assert got["status"] == "ok" and got["distance"] == scorer.score(row["ref"], row["dist"])
            assert got["height"] == (48 if row["dist"].endswith("p004.png") else 64)
    assert "does not exist" in by_dist[rows[5]["dist"]]["error"]


def _pairs_csv(images: Path, n: int, name: str) -> Path:
    path = images / name
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ref", "dist"])
        for i in range(n):
            dist = f"dists/p{(i * 7 + i // 40) % 40:03d}.png" if i % 9 else f"missing{i}.png"  # no pair twice
            w.writerow([f"refs/p{i % 40:03d}.png", dist])
    return path


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_engine_ray_equals_the_plain_command(ray_cluster, model, scorer, images, tmp_path) -> None:
    pairs_csv = _pairs_csv(images, 45, "pairs45.csv")
    plain, ray_out = tmp_path / "plain.csv", tmp_path / "ray.parquet"
    runner = CliRunner()
    r1 = runner.invoke(score_cli, ["--model", str(model), "--providers", "cpu", "--pairs", str(pairs_csv),
                                   "-o", str(plain), "-q"])
    r2 = runner.invoke(score_cli, ["--model", str(model), "--providers", "cpu", "--pairs", str(pairs_csv),
                                   "-o", str(ray_out), "-q", "--engine", "ray", "--workers", "1"])
    assert r1.exit_code == 1 and r2.exit_code == 1, r2.output  # both report the failed pairs
    rows = _read_parquet(ray_out)
    with plain.open(newline="") as f:
        plain_rows = list(csv.DictReader(f))
    assert [(r["ref"], r["dist"]) for r in rows] == [(r["ref"], r["dist"]) for r in plain_rows]  # input order
    assert [r["status"] for r in rows] == [r["status"] for r in plain_rows]
    for r, p in zip(rows, plain_rows, strict=True):
        if r["status"] == "ok":
            assert np.float32(r["distance"]) == np.float32(p["distance"])  # the CSV's text gives the float32 back
    pairs = from_csv(pairs_csv)
    expected = reference(scorer, [p.ref_path for p in pairs],
                         [p.dist_path if p.dist_path.exists() else None for p in pairs])
    assert [r["distance"] for r in rows] == expected  # full float32, bit for bit


def test_killed_worker_is_replaced_and_every_pair_comes_out_once(ray_cluster, model, scorer, images, tmp_path):
    from stlpips_rt.scale.batch import ScoringOptions
    from stlpips_rt.scale.job import run_job

    pairs = from_csv(_pairs_csv(images, 160, "pairs160.csv"))
    killed: list[tuple[int, int]] = []

    def kill_a_worker(done: int, total: int) -> None:
        if killed:
            return
        pids = _scoring_actor_pids()
        assert pids, "no scoring actor process found"
        os.kill(pids[0], signal.SIGKILL)
        killed.append((pids[0], done))

    out = tmp_path / "killed.parquet"
    result = run_job(pairs, out, ScoringOptions(model=model, providers="cpu", batch_size=BATCH), quiet=True,
                     progress=kill_a_worker)
    assert killed and killed[0][1] < len(pairs)  # killed while pairs were still being scored
    assert not Path(f"/proc/{killed[0][0]}").exists()
    rows = _read_parquet(out)
    assert sorted((r["ref"], r["dist"]) for r in rows) == sorted(p.key for p in pairs)  # each once
    assert result.scored == len(pairs)
    expected = reference(scorer, [p.ref_path for p in pairs],
                         [p.dist_path if p.dist_path.exists() else None for p in pairs])
    assert [r["distance"] for r in rows] == expected


def _scoring_actor_pids() -> list[int]:
    """Processes whose title Ray set to the scoring actor's (``ray::MapWorker(MapBatches(PairScorer))...``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and "PairScorer" in title:
                pids.append(int(entry.name))
    return pids


def test_resume_after_an_interruption_scores_only_what_is_missing(ray_cluster, model, scorer, images, tmp_path):
    from stlpips_rt.scale.batch import ScoringOptions
    from stlpips_rt.scale.job import run_job

    pairs = from_csv(_pairs_csv(images, 96, "pairs96.csv"))
    out = tmp_path / "resumed.parquet"
    options = ScoringOptions(model=model, providers="cpu", batch_size=BATCH)

    def interrupt(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(pairs, out, options, quiet=True, progress=interrupt)
    assert not out.exists()  # the single file is only assembled at the end
    first = [r for p in sorted((out.parent / "resumed.parquet.parts").glob("part-*.parquet"))
             for r in _read_parquet(p)]
    ok_before = {(r["ref"], r["dist"]) for r in first if r["status"] == "ok"}
    assert 0 < len(first) < len(pairs)

    runner = CliRunner()
    res = runner.invoke(score_cli, ["--model", str(model), "--providers", "cpu", "--pairs",
                                    str(images / "pairs96.csv"), "-o", str(out), "--engine", "ray", "--resume"])
    assert res.exit_code == 1  # the missing.png rows still fail
    assert f"{len(ok_before)} already done" in res.stderr
    assert f"of {len(pairs) - len(ok_before)} pairs scored" in res.stderr  # only the rest was scored
    rows = _read_parquet(out)
    assert [(r["ref"], r["dist"]) for r in rows] == [p.key for p in pairs]  # each once, input order
    assert not (out.parent / "resumed.parquet.parts").exists()
    fresh = {(r["ref"], r["dist"]): r["distance"] for r in rows}
    for r in first:
        if r["status"] == "ok":
            assert fresh[(r["ref"], r["dist"])] == r["distance"]  # kept, not rescored
    # The resumed run chunks only the remaining pairs; a pair's distance does not depend on its batch
    # (docs/reproducibility.md), so the kept and the new rows are the reference's bits.
    expected = reference(scorer, [p.ref_path for p in pairs],
                         [p.dist_path if p.dist_path.exists() else None for p in pairs])
    assert [r["distance"] for r in rows] == expected


def test_resume_on_ray_refuses_another_set_up_before_starting(ray_cluster, model, images, tmp_path) -> None:
    """The output of a plain run, resumed on Ray with another --resize or model file: refused (exit 2, naming
    what differs) and left byte for byte, before any actor starts."""
    import onnx

    pairs_csv = _pairs_csv(images, 6, "pairs6.csv")
    out = tmp_path / "rows.parquet"
    first = CliRunner().invoke(score_cli, ["--model", str(model), "--providers", "cpu", "--pairs", str(pairs_csv),
                                           "-o", str(out), "-q"])
    assert first.exit_code == 1, first.output  # the missing.png row
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    copy = tmp_path / "copy" / model.name
    copy.parent.mkdir()
    proto = onnx.load(str(model))
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, "note": "a copy"})
    onnx.save(proto, str(copy))
    for args, field in ((["--resize", "48"], "resize"), ([], "model.sha256")):
        chosen = str(copy) if field == "model.sha256" else str(model)
        res = CliRunner().invoke(score_cli, ["--model", chosen, "--providers", "cpu", "--pairs", str(pairs_csv),
                                             "-o", str(out), "--engine", "ray", "--resume", "-q",
                                             *args])
        assert res.exit_code == 2, res.output
        assert set(refused_fields(res.stderr)) == {field}, res.stderr
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_importing_the_runtime_does_not_import_ray() -> None:
    code = ("import sys, stlpips_rt, stlpips_rt.cli.score, stlpips_rt.scale, stlpips_rt.scale.batch, "
            "stlpips_rt.scale.job, stlpips_rt.cli.serve\n"
            "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_without_ray_the_engine_names_the_extra(model, images) -> None:
    blocker = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] == 'ray': raise ImportError('blocked')\n"
               "sys.meta_path.insert(0, Block())\nfrom stlpips_rt.cli.score import main\nmain(sys.argv[1:])\n")
    result = subprocess.run([sys.executable, "-c", blocker, "--model", str(model), "--engine", "ray",
                             str(images / "refs" / "p000.png"), str(images / "dists" / "p000.png"), "-o",
                             str(images / "x.parquet")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "pip install 'stlpips-deploy[ray]'" in result.stderr


def test_ray_options_need_the_ray_engine(model, images) -> None:
    result = CliRunner().invoke(score_cli, ["--model", str(model), "--workers", "2", str(images / "refs" / "p000.png"),
                                            str(images / "dists" / "p000.png")])
    assert result.exit_code == 2 and "need --engine ray" in result.output


def test_a_worker_without_the_model_file_gets_a_copy_from_the_object_store(ray_cluster, model) -> None:
    import dataclasses

    from stlpips_rt.scale.ray_env import ModelPayload

    payload = ModelPayload.put(model)
    assert payload.local_path() == model.resolve()  # same machine: the driver's file
    elsewhere = dataclasses.replace(payload, path=f"/nonexistent-{os.getpid()}/{model.name}")
    copy = elsewhere.local_path()
    assert copy.name == model.name and copy.read_bytes() == model.read_bytes()
    assert Scorer(copy, providers="cpu").info.short_name == "alex-st"
