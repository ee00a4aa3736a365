"""int8 files: the one definition of "fast", the gate that refuses a badly calibrated graph and writes nothing, and
a gated int8 file that describes itself and that ``precision="fast"`` picks."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stlpips_rt.contract import Key, ModelSpec
from stlpips_rt.precision import FastPath, fast_path, session_mode

#: Small enough for CI; the real gate scores 2000 (docs/int8.md). The graph must still clear 99.5% on these.
TEST_GATE_TRIPLETS = 60


@pytest.mark.parametrize(("providers", "int8_file", "expected"), [
    (["tensorrt", "cuda", "openvino", "cpu"], True, FastPath("tensorrt", "fp32", "fp16")),
    (["cuda", "cpu"], True, FastPath("cuda", "fp32", "tf32")),
    (["openvino", "cpu"], True, FastPath("openvino", "int8", "int8")),
    (["cpu"], True, FastPath("cpu", "int8", "int8")),
    (["openvino", "cpu"], False, FastPath("openvino", "fp32", "bf16")),
    (["cpu"], False, FastPath("cpu", "fp32", "fp32")),
])
def test_fast_is_the_fastest_reduced_precision_path_there_is(providers, int8_file, expected):
    assert fast_path(providers, int8_file) == expected


def test_int8_files_keep_their_float_parts_float32_in_both_modes():
    assert session_mode("fast", "int8") == "exact"
    assert session_mode("fast", "fp32") == "fast"


@pytest.mark.parametrize("short", ["alex-st", "alex-st-int8", "vgg-lpips-fp16-spatial", "alex-st-64x64"])
def test_file_names_map_back_to_their_spec(short):
    spec = ModelSpec.parse(short)
    assert ModelSpec.from_file_name(spec.file_name) == spec
    assert ModelSpec.from_file_name("my_model.onnx") is None


def test_a_graph_calibrated_on_a_flat_image_misses_the_gate_and_nothing_is_written(tmp_path):
    from stlpips_export.cli import main

    flat = tmp_path / "flat"
    flat.mkdir()
    for i, grey in enumerate((118, 121)):
        Image.fromarray(np.full((96, 96, 3), grey, dtype=np.uint8)).save(flat / f"grey{i}.png")
    out = tmp_path / "models"
    result = CliRunner().invoke(main, ["--net", "alex", "--variant", "st", "--int8", "--calibration", str(flat),
                                       "--calibration-only", "--gate-triplets", str(TEST_GATE_TRIPLETS),
                                       "--out", str(out), "-q"])
    assert result.exit_code == 1, result.output
    assert "misses its gate; nothing was written" in result.output
    assert not list(out.glob("*.onnx")) and not list(out.glob("*.partial"))


def test_calibration_folder_without_usable_images_is_refused(tmp_path):
    from stlpips_export.errors import CalibrationError
    from stlpips_export.int8 import calibration_set

    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(CalibrationError, match="usable"):
        calibration_set(tmp_path, only_folder=True)
    with pytest.raises(CalibrationError, match="needs --calibration"):
        calibration_set(None, only_folder=True)


@pytest.fixture(scope="module")
def int8_model(exported_model):
    return exported_model("alex", "st", int8=True, gate_triplets=TEST_GATE_TRIPLETS)


def test_a_gated_int8_file_describes_its_quantization_and_gate(int8_model):
    from stlpips_export.onnx_export import read_metadata

    assert int8_model.name == "stlpips_alex_st_int8.onnx"
    meta = read_metadata(int8_model)
    assert meta[Key.PRECISION] == "int8"
    assert "scikit-image" in meta[Key.CALIBRATION] and "onnxruntime" in meta[Key.QUANTIZER]
    assert int(meta[Key.GATE_TRIPLETS]) == TEST_GATE_TRIPLETS
    assert float(meta[Key.GATE_RANK_AGREEMENT]) >= 0.995
    assert meta[Key.GATE_FLIP_RATES].count("px") == 3
    assert meta[Key.FLOAT_NODES]  # the first convolution stays float32


def test_fast_loads_the_int8_sibling_and_says_so(int8_model, exported_model):
    from stlpips_rt import Scorer

    folder = exported_model("alex", "st").parent
    assert folder == int8_model.parent
    exact = Scorer("alex-st", providers="cpu", models_dir=folder)
    fast = Scorer("alex-st", providers="cpu", precision="fast", models_dir=folder)
    assert exact.info.path.name == "stlpips_alex_st.onnx" and exact.precision == "fp32"
    assert fast.info.path.name == "stlpips_alex_st_int8.onnx" and fast.precision == "int8"
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    candidates = [np.clip(ref + rng.normal(0, s, ref.shape), 0, 255).astype(np.uint8) for s in (4, 16, 48)]
    # Growing noise: both rank the candidates the same way, with int8 within its parity bound.
    d_exact, d_fast = exact.score_many(ref, candidates), fast.score_many(ref, candidates)
    assert list(np.argsort(d_exact)) == list(np.argsort(d_fast)) == [0, 1, 2]
    assert np.max(np.abs(d_exact - d_fast)) < 0.1
