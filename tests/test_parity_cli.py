"""`stlpips-parity`: runtime providers against the PyTorch reference, with a verdict and exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stlpips_export import parity
from stlpips_rt import precision


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(parity.main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def test_cpu_exact_passes_fp32_tolerance_on_random_and_real_images(exported_model, tmp_path: Path) -> None:
    model = exported_model("alex", "st", spatial=True, layers=True)
    code, out = invoke("--model", model, "--providers", "cpu", "--precision", "exact", "-v", "--json",
                       tmp_path / "p.json")
    assert code == 0, out
    assert "broadcast: 1 reference vs 3" in out and "2AFC" in out
    assert "real astronaut" in out  # scikit-image's photos (the eval extra) are the real-image cases
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [(r["provider"], r["precision"], r["passed"]) for r in rows] == [("cpu", "fp32", True)]
    assert rows[0]["max_abs"] <= 1e-5 and rows[0]["rank_agreement"] == 1.0


def test_error_above_tolerance_fails_with_exit_1(exported_model, monkeypatch: pytest.MonkeyPatch) -> None:
    model = exported_model("alex", "st")  # exported under the real tolerance, before it is tightened
    monkeypatch.setattr(parity, "real_images", lambda _dir: [])
    # stricter than float32 arithmetic can meet
    monkeypatch.setitem(precision.TOLERANCES, "fp32", precision.Tolerance(1e-12, 1.0))
    code, out = invoke("--model", model, "--providers", "cpu", "--precision", "exact")
    assert code == 1
    assert "FAIL" in out and "parity FAIL" in out  # the per-case table is printed for a failing provider


def test_all_providers_are_compared_and_the_missing_ones_named(exported_model, monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setattr(parity, "real_images", lambda _dir: [])
    code, out = invoke("--model", exported_model("alex", "st"), "--precision", "exact", "--json", tmp_path / "p.json")
    assert code == 0, out
    rows = json.loads((tmp_path / "p.json").read_text())
    available = parity.available_providers()
    assert [r["provider"] for r in rows] == available  # one exact row per available provider, in auto order
    assert all(r["passed"] and r["precision"] == "fp32" for r in rows)
    missing = [p for p in ("tensorrt", "cuda", "openvino", "cpu") if p not in available]
    if missing:
        assert f"not available here: {', '.join(missing)}" in out


def test_not_an_stlpips_model_exits_2(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    code, out = invoke("--model", tmp_path / "junk.onnx")
    assert code == 2 and "cannot load it" in out
