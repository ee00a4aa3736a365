"""The BAPPS 2AFC loader and scoring, on a small directory generated in BAPPS's layout."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stlpips_export.evaluate.bapps import find_categories, load_bapps
from stlpips_export.evaluate.cli import main
from stlpips_export.evaluate.metrics import L2
from stlpips_export.evaluate.study import SetResult, score_set


def make_bapps(root: Path, judges: dict[str, list[float]], size: int = 32) -> Path:
    """Categories in the 2AFC layout: p0 is the reference itself, p1 a noisy copy, so L2 always prefers p0."""
    rng = np.random.default_rng(0)
    for category, values in judges.items():
        for part in ("ref", "p0", "p1", "judge"):
            (root / category / part).mkdir(parents=True)
        for i, judge in enumerate(values):
            stem = f"{i:06d}"
            ref = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            noisy = np.clip(ref + rng.normal(0, 40, ref.shape), 0, 255).astype(np.uint8)
            Image.fromarray(ref).save(root / category / "ref" / f"{stem}.png")
            Image.fromarray(ref).save(root / category / "p0" / f"{stem}.png")
            Image.fromarray(noisy).save(root / category / "p1" / f"{stem}.png")
            np.save(root / category / "judge" / f"{stem}.npy", np.array([judge], dtype=np.float32))
    return root


def test_loader_reads_every_category_with_its_judgements(tmp_path):
    root = make_bapps(tmp_path / "val", {"cnn": [0.25, 0.5], "traditional": [1.0, 0.0, 0.75]})
    assert list(find_categories(root)) == ["cnn", "traditional"]
    data = load_bapps(root, size=None)
    assert len(data) == 5 and data.size == (32, 32)
    assert list(data.category) == ["cnn", "cnn", "traditional", "traditional", "traditional"]
    assert list(data.judge) == pytest.approx([0.25, 0.5, 1.0, 0.0, 0.75])
    assert np.array_equal(data.ref[0], data.d0[0]) and not np.array_equal(data.ref[0], data.d1[0])


def test_loader_resizes_limits_and_accepts_a_single_category_folder(tmp_path):
    root = make_bapps(tmp_path / "val", {"color": [0.1, 0.2, 0.3]})
    data = load_bapps(root / "color", size=16, limit=2)
    assert data.ref.shape == (2, 16, 16, 3) and list(data.category) == ["color", "color"]


def test_two_afc_is_the_mean_of_per_category_means(tmp_path):
    # L2 prefers p0 everywhere, so each triplet scores 1 - judge: cnn 0.5, traditional 0.9.
    data = load_bapps(make_bapps(tmp_path / "val", {"cnn": [0.5, 0.5], "traditional": [0.1, 0.1, 0.1, 0.1]}),
                      size=None)
    run = score_set(L2(), data)
    assert run.full.shape == (6, 2) and np.all(run.full[:, 0] == 0)
    assert SetResult("bapps", data, [run]).two_afc(run) == pytest.approx((0.5 + 0.9) / 2)  # pooled: 0.7667


def test_loader_names_the_missing_judgement(tmp_path):
    root = make_bapps(tmp_path / "val", {"cnn": [0.5, 0.5]})
    (root / "cnn" / "judge" / "000001.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"000001 of cnn has no judge/000001.npy"):
        load_bapps(root)


def test_loader_refuses_a_folder_without_categories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no BAPPS 2AFC category"):
        load_bapps(tmp_path)


def test_eval_cli_scores_bapps_and_writes_markdown_csv_and_plot(tmp_path):
    root = make_bapps(tmp_path / "val", {"cnn": [0.2] * 3, "deblur": [0.6] * 3})
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["shift", "--no-builtin", "--bapps", str(root), "--bapps-size", "native",
                                       "--metrics", "l2,ssim", "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "shift_eval.md").read_text()
    assert "BAPPS val 32x32" in md and "2AFC" in md and "| L2 | numpy | 6 | 60.00 |" in md  # (0.8 + 0.4) / 2
    rows = (out / "shift_eval.csv").read_text().splitlines()
    assert rows[0].startswith("set,metric,backend,shift_px") and len(rows) == 1 + 2 * 3
    assert (out / "shift_eval.png").read_bytes()[:4] == b"\x89PNG"
