"""`stlpips-score`: every input mode, output formats, error rows, interruption + resume, heat maps."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from example_pairs import authors_published_distance
from PIL import Image
from sample_images import write_image

from stlpips_rt import Scorer
from stlpips_rt.cli.score import main
from stlpips_rt.io.progress import Progress
from stlpips_rt.precision import tolerance


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


@pytest.fixture(scope="module")
def spatial_model(exported_model) -> Path:
    return exported_model("alex", "st", spatial=True, layers=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """refs/ and dists/ with four matching names, one reference without a partner, one extra distorted image."""
    root = tmp_path_factory.mktemp("cli")
    refs, dists = root / "refs", root / "dists"
    refs.mkdir()
    dists.mkdir()
    for i in range(4):
        write_image(refs / f"img{i}.png", i)
        write_image(dists / f"img{i}.png", 100 + i)
    write_image(refs / "lonely.png", 9)
    write_image(dists / "extra.png", 99)
    return refs, dists


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def same_distance(written: str | float, expected: float) -> bool:
    """A row's distance (scored in a batch, on the CPU provider) against the CPU provider's number for the pair
    alone: a distance does not depend on its batch (docs/reproducibility.md), and the written text gives the
    float32 back, so they are equal."""
    return np.float32(written) == np.float32(expected)


def test_single_pair_prints_the_distance(model: Path, folders: tuple[Path, Path]) -> None:
    refs, dists = folders
    code, out, _ = invoke("--model", model, refs / "img0.png", dists / "img0.png")
    assert code == 0
    scorer = Scorer(model)  # the engine "auto" picks, as the command's
    assert np.float32(out.strip()) == np.float32(scorer.score(refs / "img0.png", dists / "img0.png"))


def test_single_pair_reproduces_the_reference_number(model: Path, shared_data: Path) -> None:
    # The number the authors' README prints for this pair (tests/example_pairs.py): upstream PyTorch, another
    # engine, so the comparison takes the tolerance of the arithmetic that ran here.
    code, out, _ = invoke("--model", model, shared_data / "ex_p0.png", shared_data / "ex_ref.png")
    ran = Scorer(model).precision
    assert code == 0 and abs(float(out) - authors_published_distance()) <= tolerance(ran).max_abs


def test_short_model_name_is_resolved_in_models_folder(model: Path, folders, monkeypatch, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "stlpips_alex_st.onnx").symlink_to(model)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STLPIPS_MODEL_DIR", raising=False)
    refs, dists = folders
    code, out, _ = invoke("--model", "alex-st", refs / "img1.png", dists / "img1.png")
    expected = Scorer(model).score(refs / "img1.png", dists / "img1.png")  # the same engine: the same float32
    assert code == 0 and np.float32(out.strip()) == np.float32(expected)


def test_folders_are_matched_by_name_and_a_missing_partner_is_an_error_row(model: Path, folders, tmp_path) -> None:
    refs, dists = folders
    out = tmp_path / "rows.csv"
    code, _, err = invoke("--model", model, "--providers", "cpu", "--ref-dir", refs, "--dist-dir", dists, "-o", out)
    rows = read_csv(out)
    assert [Path(r["ref"]).name for r in rows] == ["img0.png", "img1.png", "img2.png", "img3.png", "lonely.png"]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["error"]
    assert "no file named lonely.png" in rows[4]["error"]
    assert code == 1 and "1 pair(s) failed" in err
    scorer = Scorer(model, providers="cpu")
    for r in rows[:4]:
        assert same_distance(r["distance"], scorer.score(r["ref"], r["dist"]))


def test_one_reference_against_a_folder_matches_pairwise_scores(model: Path, folders, tmp_path) -> None:
    refs, dists = folders
    out = tmp_path / "rows.jsonl"
    code, _, _ = invoke("--model", model, "--providers", "cpu", "--ref", refs / "img0.png", "--dist-dir", dists,
                        "-o", out, "--batch-size", "2")
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    scorer = Scorer(model, providers="cpu")
    for r in rows:
        assert same_distance(r["distance"], scorer.score(r["ref"], r["dist"]))


def test_pairs_csv_bad_files_become_error_rows_and_the_run_goes_on(model: Path, folders, tmp_path) -> None:
    refs, dists = folders
    (tmp_path / "cut.png").write_bytes((refs / "img1.png").read_bytes()[:200])
    write_image(tmp_path / "wide.png", 5, (64, 96))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "ref,dist\n"
        f"{refs / 'img0.png'},{dists / 'img0.png'}\n"
        f"{refs / 'img1.png'},cut.png\n"
        f"{refs / 'img2.png'},missing.png\n"
        f"{refs / 'img3.png'},wide.png\n"
        f"{refs / 'img3.png'},{dists / 'img3.png'}\n"
    )
    code, out, err = invoke("--model", model, "--pairs", pairs, "--format", "csv", "--batch-size", "2")
    rows = list(csv.DictReader(out.splitlines()))
    assert [r["status"] for r in rows] == ["ok", "error", "error", "error", "ok"]
    assert "truncated" in rows[1]["error"] and "cut.png" in rows[1]["error"]
    assert "does not exist" in rows[2]["error"]
    assert "sizes differ" in rows[3]["error"] and "--resize SIZE" in rows[3]["error"]  # the CLI's option
    assert "resize=" not in rows[3]["error"]
    assert code == 1 and "3 pair(s) failed" in err


def test_interrupted_run_keeps_flushed_rows_and_resume_scores_only_the_rest(
        model: Path, folders, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refs, dists = folders
    out = tmp_path / "rows.csv"
    calls = {"n": 0}
    original = Scorer.evaluate

    def evaluate_then_die(self, x0, x1, outputs=("dist",)):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user presses Ctrl-C during the third batch
        return original(self, x0, x1, outputs)

    monkeypatch.setattr(Scorer, "evaluate", evaluate_then_die)
    code, _, err = invoke("--model", model, "--ref-dir", refs, "--dist-dir", dists, "-o", out, "--batch-size", "1")
    assert code != 0 and "Aborted" in err  # click turns Ctrl-C into "Aborted!"
    assert [Path(r["ref"]).name for r in read_csv(out)] == ["img0.png", "img1.png"]

    monkeypatch.setattr(Scorer, "evaluate", original)
    seen: list[int] = []
    monkeypatch.setattr(Scorer, "evaluate", lambda self, x0, x1, outputs=("dist",):
                        seen.append(len(x0)) or original(self, x0, x1, outputs))
    code, _, err = invoke("--model", model, "--ref-dir", refs, "--dist-dir", dists, "-o", out, "--resume",
                          "--batch-size", "1")
    rows = read_csv(out)
    assert sum(seen) == 2  # img2, img3 (lonely.png fails before scoring)
    assert [Path(r["ref"]).name for r in rows] == ["img0.png", "img1.png", "img2.png", "img3.png", "lonely.png"]
    assert "2 already done" in err and code == 1

    # A second resume retries only the error row.
    seen.clear()
    code, _, _ = invoke("--model", model, "--ref-dir", refs, "--dist-dir", dists, "-o", out, "--resume")
    assert seen == [] and len(read_csv(out)) == 5 and code == 1


def test_heatmap_writes_one_png_per_pair_bright_where_images_differ(spatial_model: Path, tmp_path: Path) -> None:
    ref = write_image(tmp_path / "ref.png", 1)
    (tmp_path / "d").mkdir()
    for k in range(2):
        pixels = np.asarray(Image.open(ref)).copy()
        pixels[32:, 32:] = np.asarray(Image.open(write_image(tmp_path / f"o{k}.png", 50 + k)))[32:, 32:]
        Image.fromarray(pixels).save(tmp_path / "d" / f"changed{k}.png")
    code, out, _ = invoke("--model", spatial_model, "--ref", ref, "--dist-dir", tmp_path / "d",
                          "--heatmap", tmp_path / "heat", "--format", "jsonl")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    pngs = sorted((tmp_path / "heat").glob("*.png"))
    assert len(pngs) == len(rows) == 2
    assert {Path(r["heatmap"]) for r in rows} == set(pngs)
    panel = Image.open(pngs[0])
    assert panel.mode == "RGB" and panel.width == 3 * panel.height  # reference | distorted | heat map
    heat = np.asarray(panel, dtype=np.float32)[:, 2 * panel.height:].sum(axis=2)
    half = panel.height // 2
    assert heat[half:, half:].mean() > 2 * heat[: half // 2, : half // 2].mean()


def test_heatmap_needs_a_spatial_model(model: Path, folders, tmp_path: Path) -> None:
    refs, dists = folders
    code, _, err = invoke("--model", model, "--ref-dir", refs, "--dist-dir", dists, "--heatmap", tmp_path)
    assert code == 2 and "needs a spatial model" in err and "--spatial" in err


@pytest.mark.parametrize(
    "args",
    [[], ["a.png"], ["--ref-dir", "."], ["--resume", "a.png", "b.png"], ["a.png", "b.png", "--pairs", __file__]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    code, _, _ = invoke(*args)
    assert code == 2


def test_unknown_model_and_provider_are_reported(model: Path, folders) -> None:
    refs, dists = folders
    code, _, err = invoke("--model", "/nonexistent/m.onnx", refs / "img0.png", dists / "img0.png")
    assert code == 2 and "does not exist" in err
    code, _, err = invoke("--model", model, "--providers", "warp-drive", refs / "img0.png", dists / "img0.png")
    assert code == 2 and "unknown provider" in err


def test_no_progress_bar_when_stderr_is_not_a_terminal(model: Path, folders) -> None:
    refs, dists = folders
    _, _, err = invoke("--model", model, "--ref-dir", refs, "--dist-dir", dists)
    assert "\r" not in err and "pairs scored" in err


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_rate_and_eta_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = Progress(total=10, enabled=True)
    bar.update(1)
    assert term.getvalue() == ""  # the first second stays quiet
    bar._bar.start_t -= 2.0  # as if the run had taken two seconds
    bar.update(5)
    bar.close()
    drawn = term.getvalue()
    assert "5/10" in drawn and "pairs/s" in drawn and "<" in drawn  # count, rate, elapsed<ETA
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal: nothing drawn
    quiet = Progress(total=10, enabled=True)
    quiet.update(5)
    quiet.close()
    assert sys.stderr.getvalue() == ""
