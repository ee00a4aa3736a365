"""stlpips-export: the written file meets the ONNX contract of DESIGN.md, and a failed check writes nothing."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from stlpips_export import cli
from stlpips_export.errors import ParityError
from stlpips_export.model import build_model
from stlpips_export.onnx_export import ExportOptions, export_model, read_metadata
from stlpips_export.verify import find_min_size, rank_agreement

REQUIRED_METADATA = [
    "stlpips.format", "stlpips.net", "stlpips.variant", "stlpips.input_range", "stlpips.min_size",
    "stlpips.outputs", "stlpips.weights_sha256", "stlpips.toolkit_version", "stlpips.torch_version",
    "stlpips.opset", "stlpips.parity_max_abs",
]


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _rand(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    return rng.uniform(-1, 1, (n, 3, h, w)).astype(np.float32)


def test_file_passes_full_checker_and_declares_dynamic_io(exported_model) -> None:
    path = exported_model("alex", "st")
    assert path.name == "stlpips_alex_st.onnx"
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert dims == {"in0": ["N0", 3, "H", "W"], "in1": ["N1", 3, "H", "W"]}
    # Format 1.1: each layer's distance map beside dist, so the one file also tiles (docs/tiling.md).
    maps = [f"layer_map{i}" for i in range(5)]
    assert [o.name for o in graph.graph.output] == ["dist", *maps]
    assert read_metadata(path)["stlpips.layer_maps"] == ",".join(maps)
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for i in graph.graph.input)


def test_metadata_describes_the_model(exported_model) -> None:
    meta = read_metadata(exported_model("vgg", "lpips"))
    assert set(REQUIRED_METADATA) <= set(meta)
    assert (meta["stlpips.format"], meta["stlpips.format_minor"]) == ("1", "1")
    assert meta["stlpips.spatial_mean"] == "pairwise"
    assert (meta["stlpips.net"], meta["stlpips.variant"]) == ("vgg", "lpips")
    assert meta["stlpips.input_range"] == "-1,1"
    assert meta["stlpips.outputs"] == "dist"
    assert meta["stlpips.precision"] == "fp32"
    assert meta["stlpips.torch_version"] == torch.__version__
    assert len(meta["stlpips.weights_sha256"]) == 64
    assert float(meta["stlpips.parity_max_abs"]) <= 1e-5


@pytest.mark.parametrize("net, variant", [("alex", "st"), ("vgg", "st")])
def test_dynamic_sizes_and_batches_match_pytorch(exported_model, net: str, variant: str) -> None:
    session = _session(exported_model(net, variant))
    model = build_model(net, variant)
    rng = np.random.default_rng(7)
    for n, h, w in [(1, 64, 64), (4, 32, 48), (2, 129, 70), (1, 256, 256)]:
        in0, in1 = _rand(rng, n, h, w), _rand(rng, n, h, w)
        (dist,) = session.run(["dist"], {"in0": in0, "in1": in1})
        with torch.no_grad():
            expected = model(torch.from_numpy(in0), torch.from_numpy(in1))[0].numpy()
        assert dist.shape == (n,)
        np.testing.assert_allclose(dist, expected, atol=1e-5, rtol=0)


def test_one_reference_broadcasts_against_many_candidates(exported_model) -> None:
    session = _session(exported_model("alex", "st"))
    rng = np.random.default_rng(3)
    ref, candidates = _rand(rng, 1, 48, 40), _rand(rng, 5, 48, 40)
    (many,) = session.run(["dist"], {"in0": ref, "in1": candidates})
    (reverse,) = session.run(["dist"], {"in0": candidates, "in1": ref})
    (pairs,) = session.run(["dist"], {"in0": np.repeat(ref, 5, axis=0), "in1": candidates})
    np.testing.assert_allclose(many, pairs, atol=1e-6, rtol=0)
    np.testing.assert_allclose(reverse, pairs, atol=1e-6, rtol=0)
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type for incompatible batches
        session.run(["dist"], {"in0": _rand(rng, 2, 48, 40), "in1": candidates})


def test_minimum_size_runs_and_one_pixel_less_does_not(exported_model) -> None:
    path = exported_model("alex", "st")
    min_size = int(read_metadata(path)["stlpips.min_size"])
    assert min_size == find_min_size(build_model("alex", "st"))
    session = _session(path)
    x = np.zeros((1, 3, min_size, min_size), np.float32)
    assert session.run(["dist"], {"in0": x, "in1": x})[0].shape == (1,)
    too_small = np.zeros((1, 3, min_size - 1, min_size + 5), np.float32)
    with pytest.raises(Exception):  # noqa: B017
        session.run(["dist"], {"in0": too_small, "in1": too_small})


def test_spatial_and_layer_outputs(exported_model) -> None:
    path = exported_model("alex", "st", spatial=True, layers=True)
    assert path.name == "stlpips_alex_st_spatial_layers.onnx"
    assert read_metadata(path)["stlpips.outputs"] == "dist,dist_layers,dist_map"
    rng = np.random.default_rng(5)
    in0, in1 = _rand(rng, 2, 40, 56), _rand(rng, 2, 40, 56)
    dist, layers, dist_map = _session(path).run(["dist", "dist_layers", "dist_map"], {"in0": in0, "in1": in1})
    assert layers.shape == (2, 5) and dist_map.shape == (2, 1, 40, 56)
    np.testing.assert_allclose(layers.sum(axis=1), dist, rtol=1e-5)
    assert (layers >= 0).all()


def test_static_size_export_fixes_height_and_width(exported_model) -> None:
    graph = onnx.load(str(exported_model("alex", "st", static_hw=(64, 64))))
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N0", 3, 64, 64]


def test_failed_parity_check_writes_nothing(tmp_path) -> None:
    with pytest.raises(ParityError, match="nothing was written"):
        export_model(ExportOptions(net="alex", variant="st", out_dir=tmp_path, tolerance=0.0))
    assert list(tmp_path.iterdir()) == []


def test_cli_exit_code_is_nonzero_on_parity_failure_and_leaves_no_file(tmp_path) -> None:
    result = CliRunner().invoke(cli.main, ["--net", "alex", "--variant", "st", "--out", str(tmp_path),
                                           "--tolerance", "0", "--quiet"])
    assert result.exit_code == 1
    assert "nothing was written" in result.output
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_file_and_reports_steps(tmp_path) -> None:
    result = CliRunner().invoke(cli.main, ["--net", "alex", "--variant", "lpips", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for step in ("build", "trace", "simplify", "verify", "write"):
        assert f"] {step}" in result.output
    assert (tmp_path / "stlpips_alex_lpips.onnx").is_file()


def test_cli_rejects_bad_static_size(tmp_path) -> None:
    result = CliRunner().invoke(cli.main, ["--static", "64by64", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "HxW" in result.output
    result = CliRunner().invoke(cli.main, ["--static", "8x8", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 1 and "minimum input size" in result.output


def test_fp16_export_keeps_float32_interface_and_ranks(exported_model) -> None:
    path = exported_model("alex", "st", fp16=True)
    assert path.name == "stlpips_alex_st_fp16.onnx"
    meta = read_metadata(path)
    assert meta["stlpips.precision"] == "fp16"
    graph = onnx.load(str(path))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.graph.initializer)
    rng = np.random.default_rng(11)
    ref, candidates = _rand(rng, 1, 64, 64), np.clip(_rand(rng, 1, 64, 64) * 0.1 + np.linspace(
        -0.5, 0.5, 16, dtype=np.float32)[:, None, None, None], -1, 1)
    fp32 = _session(exported_model("alex", "st")).run(["dist"], {"in0": ref, "in1": candidates})[0]
    fp16 = _session(path).run(["dist"], {"in0": ref, "in1": candidates})[0]
    assert np.abs(fp32 - fp16).max() <= 1e-2
    assert rank_agreement(fp32, fp16) >= 0.95


def test_rank_agreement_counts_pairwise_orderings() -> None:
    assert rank_agreement(np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0])) == 1.0
    assert rank_agreement(np.array([0.1, 0.2, 0.3]), np.array([3.0, 2.0, 1.0])) == 0.0
    assert rank_agreement(np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.3, 0.2])) == pytest.approx(2 / 3)
