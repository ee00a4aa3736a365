"""`stlpips-parity` over GPU providers, wired on a CPU machine through tests/fake_gpu.py: TensorRT that falls back
to CUDA is reported once, CUDA's fast mode is checked both ways (fp16 export and TF32), and the real-photo 2AFC
agreement is part of the verdict."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fake_gpu import FakeOnnxruntimeGpu

from stlpips_export import parity
from stlpips_rt import precision


@pytest.fixture(scope="module")
def model_pair(exported_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("parity-pair")
    for path in (exported_model("alex", "st"), exported_model("alex", "st", fp16=True)):
        shutil.copy(path, folder / path.name)
    return folder / "stlpips_alex_st.onnx"


def one_photo(_data_dir: Path | None) -> list[tuple[str, np.ndarray]]:
    try:
        from skimage import data
    except ImportError:
        rng = np.random.default_rng(0)
        return [("noise", rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))]
    return [("astronaut", np.ascontiguousarray(data.astronaut()[::4, ::4]))]


def test_gpu_rows_cover_cuda_exact_fp16_and_tf32_and_report_tensorrt_fallback_once(
        model_pair: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeOnnxruntimeGpu(monkeypatch, missing={"tensorrt": "libnvinfer.so.10: cannot open shared object file"})
    monkeypatch.setattr(parity, "real_images", one_photo)
    result = CliRunner().invoke(parity.main, ["-m", str(model_pair), "--providers", "tensorrt,cuda", "--precision",
                                              "both", "--json", str(tmp_path / "p.json")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "tensorrt exact: runs on cuda here, checked there" in result.output
    assert "libnvinfer.so.10" in result.output
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [(r["provider"], r["mode"], r["precision"]) for r in rows] == [
        ("cuda", "exact", "fp32"), ("cuda", "fast", "fp16"), ("cuda", "fast", "tf32")]
    for r in rows:  # one real photo: its 2AFC set counts
        assert r["passed"] and 0.995 <= r["real_2afc"] <= 1.0
    # fp32 needs 100% on every set already; the GPU's fast modes also >= 99.5% pooled over real photos
    assert [r["min_real_2afc"] for r in rows[1:]] == [0.995, 0.995] and math.isnan(rows[0]["min_real_2afc"])


def test_real_photo_disagreement_fails_a_fast_mode(model_pair: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeOnnxruntimeGpu(monkeypatch)
    monkeypatch.setattr(parity, "real_images", one_photo)
    monkeypatch.setitem(precision.TOLERANCES, "fp16", precision.Tolerance(1e-2, 0.98, 1.01))  # unreachable
    result = CliRunner().invoke(parity.main, ["-m", str(model_pair), "--providers", "cuda", "--precision", "fast"],
                                catch_exceptions=False)
    assert result.exit_code == 1
    assert "fp16" in result.output and "FAIL" in result.output
