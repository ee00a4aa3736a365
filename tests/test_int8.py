"""int8 files: the one definition of "fast", the gate that refuses a badly calibrated graph and writes nothing, and
a gated int8 file that describes itself and that ``precision="fast"`` picks."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from stlpips_rt import resolve_model
from stlpips_rt.contract import ModelSpec
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


def test_the_gate_passes_matching_rankings_and_fails_flipped_ones():
    from stlpips_export.int8 import gate_report

    rng = np.random.default_rng(0)
    fp32 = rng.uniform(0.05, 0.6, (400, 2, 4))
    assert gate_report(fp32, fp32 * 1.03).passed  # a uniform scale keeps every ranking
    flipped = fp32.copy()
    flipped[:8] = flipped[:8, ::-1]  # 8 of 400 triplets decided the other way at every shift: 98% agreement
    report = gate_report(fp32, flipped)
    assert report.rank_agreement == pytest.approx(0.98) and not report.passed
    assert "FAIL" in report.summary()


def test_fast_loads_the_int8_sibling_and_says_so(int8_sibling_folder):
    from stlpips_rt import Scorer

    exact = Scorer(resolve_model("alex-st", [int8_sibling_folder]), providers="cpu")
    fast = Scorer(resolve_model("alex-st", [int8_sibling_folder]), providers="cpu", precision="fast")
    by_path = Scorer(exact.info.path, providers="cpu", precision="fast")
    assert exact.info.path.name == "stlpips_alex_st.onnx" and exact.precision == "fp32"
    assert fast.info.path.name == by_path.info.path.name == "stlpips_alex_st_int8.onnx"
    assert fast.precision == by_path.precision == "int8"
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    candidates = [np.clip(ref + rng.normal(0, s, ref.shape), 0, 255).astype(np.uint8) for s in (4, 16, 48)]
    # Growing noise: both rank the candidates the same way, int8 within its parity bound.
    d_exact, d_fast = exact.score_many(ref, candidates), fast.score_many(ref, candidates)
    assert list(np.argsort(d_exact)) == list(np.argsort(d_fast)) == [0, 1, 2]
    assert np.max(np.abs(d_exact - d_fast)) < 0.1


def test_an_int8_image_gets_the_same_quantization_on_either_input(int8_sibling_folder):
    """Each input has its own backbone pass, each pass its own quantizers: calibrated on the same images, they
    hold the same scales, so swapping the two images of a pair gives the same bits."""
    import onnx
    from onnx import numpy_helper

    from stlpips_rt import Scorer

    graph = onnx.load(str(int8_sibling_folder / "stlpips_alex_st_int8.onnx"))
    constants = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    scales = [constants[n.input[1]].item() for n in graph.graph.node if n.op_type == "QuantizeLinear"]
    assert len(scales) == 8 and scales[:4] == scales[4:], scales
    fast = Scorer(int8_sibling_folder / "stlpips_alex_st_int8.onnx", providers="cpu")
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (2, 48, 56, 3), dtype=np.uint8)
    assert fast.score(a, b) == fast.score(b, a)


def test_without_an_int8_file_fast_on_the_cpu_provider_stays_float32(exported_model):
    from stlpips_rt import Scorer

    fp32 = exported_model("alex", "st")
    if (fp32.parent / "stlpips_alex_st_int8.onnx").exists():
        pytest.skip("another test exported an int8 file into the shared folder")
    fast = Scorer(fp32, providers="cpu", precision="fast")
    assert fast.info.path == fp32 and fast.precision == "fp32"
