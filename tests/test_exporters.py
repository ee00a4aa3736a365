"""Both ONNX exporters (dynamo, the default, and torchscript) meet the same contract: separate batch axes N0/N1 with
broadcasting, dynamic H/W, BlurPool as a grouped Conv with a constant binomial filter, the parity gate."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import helper, numpy_helper

from stlpips_export import cli
from stlpips_export.architectures import get_architecture
from stlpips_export.errors import ExporterUnavailableError, InvalidOptionError
from stlpips_export.exporters import (
    DEFAULT_EXPORTER,
    EXPORTERS,
    check_opset,
    default_opset,
    drop_paired_expands,
    export_graph,
)
from stlpips_export.model import PerceptualDistance, build_model
from stlpips_export.onnx_export import ExportOptions, export_model, read_metadata
from stlpips_export.verify import verify_parity
from stlpips_rt.precision import tolerance

FP32_TOLERANCE = tolerance("fp32").max_abs  # the export's parity gate for float32 files

EXPECTED_OPSET = {"dynamo": 18, "torchscript": 17}


@pytest.fixture(scope="module")
def alex_st() -> torch.nn.Module:
    return build_model("alex", "st", layer_maps=True)  # the outputs of the default export


def _dims(values) -> dict[str, list]:
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def _rand(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    return rng.uniform(-1, 1, (n, 3, h, w)).astype(np.float32)


def test_dynamo_is_the_default() -> None:
    assert DEFAULT_EXPORTER == "dynamo"
    assert ExportOptions().exporter == "dynamo" and ExportOptions().opset == 18
    assert ExportOptions(exporter="torchscript").opset == 17


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_interface_has_separate_batch_axes_and_dynamic_hw(exported_model, exporter: str) -> None:
    path = exported_model("alex", "st", exporter=exporter)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    assert _dims(graph.graph.input) == {"in0": ["N0", 3, "H", "W"], "in1": ["N1", 3, "H", "W"]}
    assert _dims(graph.graph.output) == {"dist": ["N"], **{f"layer_map{i}": ["N", 1, f"H{i}", f"W{i}"]
                                                           for i in range(5)}}
    # The spatial means are block sums (spatial_mean.py), not a float32 ReduceMean whose error grows with the map.
    assert not [n for n in graph.graph.node if n.op_type == "ReduceMean"]
    assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [EXPECTED_OPSET[exporter]]
    meta = read_metadata(path)
    assert meta["stlpips.exporter"] == exporter
    assert meta["stlpips.opset"] == str(EXPECTED_OPSET[exporter])
    assert float(meta["stlpips.parity_max_abs"]) <= FP32_TOLERANCE
    # The explicit broadcast torch.export needs is gone again: Sub broadcasts by itself (drop_paired_expands).
    assert not [n for n in graph.graph.node if n.op_type == "Expand"]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_blurpool_is_a_grouped_conv_with_a_constant_binomial_filter(exported_model, exporter: str) -> None:
    graph = onnx.load(str(exported_model("alex", "st", exporter=exporter))).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    groups = []
    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if node.op_type == "Conv" and group > 1:
            weight = initializers[node.input[1]]  # KeyError: the filter is computed in the graph, not constant
            assert weight.shape == (group, 1, 3, 3)
            np.testing.assert_allclose(weight[0, 0], np.outer([1, 2, 1], [1, 2, 1]) / 16.0, rtol=1e-7)
            groups.append(group)
    # Fused alex-st: conv1's BlurPool is inside the fused 13x13 convolution (its border is copies and one extra
    # row/column, fusion.py); the BlurPools after pool1 (64) and pool2 (192) remain, once per input's backbone.
    assert sorted(groups) == [64, 64, 192, 192]
    pads = [n for n in graph.node if n.op_type == "Pad"]
    modes = [next((a.s for a in n.attribute if a.name == "mode"), b"constant") for n in pads]
    assert modes.count(b"reflect") == len(groups)
    assert all(n.domain in ("", "ai.onnx") for n in graph.node), "no custom operators"


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_each_input_has_its_own_backbone_pass(exported_model, exporter: str) -> None:
    """No Concat of in0 and in1 into one batch, no Slice of each layer's activations back into the two: every
    Concat joins along height or width (the fused border) and no Slice cuts the batch axis."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(exported_model("alex", "st", exporter=exporter)))).graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in (*graph.input, *graph.value_info, *graph.output)}
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                      if n.op_type == "Constant" and n.attribute[0].name == "value"})
    activations = [n for n in graph.node if n.input and ranks.get(n.input[0]) == 4]  # shape arithmetic aside
    concats = [n for n in activations if n.op_type == "Concat"]
    assert concats, "the fused border is assembled by Concat along height and width"
    for node in concats:
        assert next(a.i for a in node.attribute if a.name == "axis") in (2, 3, -1, -2), node.name
    slices = [n for n in activations if n.op_type == "Slice"]
    for node in slices:
        axes = constants[node.input[3]].tolist() if len(node.input) > 3 else [0, 1, 2, 3]
        assert 0 not in axes, f"{node.name} slices the batch axis"


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_batches_broadcast_and_sizes_vary_like_pytorch(exported_model, alex_st, exporter: str) -> None:
    session = ort.InferenceSession(str(exported_model("alex", "st", exporter=exporter)),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(17)
    # None of these shapes is the example the exporter saw (batch 2 and 2 or 1 and 2, 64x64).
    for n0, n1, h, w in [(1, 5, 33, 47), (5, 1, 33, 47), (3, 3, 128, 96), (1, 1, 21, 30), (7, 7, 24, 24)]:
        in0, in1 = _rand(rng, n0, h, w), _rand(rng, n1, h, w)
        (dist,) = session.run(["dist"], {"in0": in0, "in1": in1})
        with torch.no_grad():
            expected = alex_st(torch.from_numpy(in0), torch.from_numpy(in1))[0].numpy()
        assert dist.shape == (max(n0, n1),)
        np.testing.assert_allclose(dist, expected, atol=FP32_TOLERANCE, rtol=0)
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error: 2 vs 5 is neither equal nor broadcast
        session.run(["dist"], {"in0": _rand(rng, 2, 32, 32), "in1": _rand(rng, 5, 32, 32)})


def test_the_two_exporters_graphs_agree(exported_model) -> None:
    sessions = [ort.InferenceSession(str(exported_model("alex", "st", exporter=e)), providers=["CPUExecutionProvider"])
                for e in EXPORTERS]
    rng = np.random.default_rng(23)
    in0, in1 = _rand(rng, 1, 70, 52), _rand(rng, 4, 70, 52)
    dynamo, torchscript = (s.run(["dist"], {"in0": in0, "in1": in1})[0] for s in sessions)
    np.testing.assert_allclose(dynamo, torchscript, atol=1e-6, rtol=0)


def test_reloaded_dynamo_file_passes_the_parity_gate_again(exported_model, alex_st) -> None:
    """The gate ran before the file was written; run it once more on the file as written."""
    graph = onnx.load(str(exported_model("alex", "st")))
    report = verify_parity(graph, alex_st, int(read_metadata(exported_model("alex", "st"))["stlpips.min_size"]),
                           FP32_TOLERANCE)
    assert report.passed, report.summary()
    assert report.rank_agreement == 1.0


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_all_zero_features_give_zero_not_nan(exporter: str) -> None:
    """unit_normalize divides by norm + 1e-10, so a position whose features are all zero (ReLU) contributes 0.
    onnxscript's optimizer takes the 1e-10 for 0 and would make that 0/0 = NaN; the exporter must keep it."""
    model = PerceptualDistance(get_architecture("alex", "st"))
    with torch.no_grad():
        for parameter in model.net.parameters():
            parameter.zero_()  # every feature map is 0
    graph = export_graph(model, exporter, default_opset(exporter), min_size=21, static_hw=(32, 32))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        assert model(torch.from_numpy(x), torch.from_numpy(x[::-1].copy()))[0].tolist() == [0.0, 0.0]
    (dist,) = session.run(["dist"], {"in0": x, "in1": x[::-1].copy()})
    assert dist.tolist() == [0.0, 0.0]


def test_int8_defaults_to_torchscript_and_refuses_dynamo() -> None:
    """int8.backbone_convs picks convolutions by the tracer's /net/ node names; a dynamo graph would go unquantized."""
    assert ExportOptions(int8=True).exporter == "torchscript"
    with pytest.raises(InvalidOptionError, match="--int8 needs --exporter torchscript"):
        ExportOptions(int8=True, exporter="dynamo")


def test_dynamo_refuses_opsets_below_18() -> None:
    with pytest.raises(InvalidOptionError, match="opset 18 or newer"):
        check_opset("dynamo", 17)
    with pytest.raises(InvalidOptionError, match="unknown exporter"):
        ExportOptions(exporter="tracer")
    check_opset("torchscript", 17)
    result = CliRunner().invoke(cli.main, ["--opset", "17", "--quiet"])
    assert result.exit_code == 2 and "--exporter torchscript" in result.output


def test_missing_onnxscript_is_a_typed_error_naming_the_extra(tmp_path, monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxscript" else find_spec(name, *args))
    with pytest.raises(ExporterUnavailableError, match=r"stlpips-deploy\[export\]"):
        export_model(ExportOptions(net="alex", variant="st", out_dir=tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_cli_records_the_chosen_exporter(tmp_path) -> None:
    result = CliRunner().invoke(cli.main, ["--net", "alex", "--variant", "st", "--exporter", "torchscript",
                                           "--static", "32x32", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "stlpips_alex_st_32x32.onnx")
    recorded = (meta["stlpips.exporter"], meta["stlpips.opset"], meta["stlpips.static_hw"])
    assert recorded == ("torchscript", "17", "32x32")


def _expand_graph(same_shape: bool) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Expand", ["a", "s"], ["ea"]),
        helper.make_node("Expand", ["b", "s" if same_shape else "t"], ["eb"]),
        helper.make_node("Sub", ["ea", "eb"], ["d"]),
    ]
    tensor = helper.make_tensor_value_info
    inputs = [tensor(n, onnx.TensorProto.FLOAT, ["N0", 2]) for n in "ab"]
    inputs += [tensor(n, onnx.TensorProto.INT64, [2]) for n in "st"]
    graph = helper.make_graph(nodes, "g", inputs, [tensor("d", onnx.TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_drop_paired_expands_rewrites_only_expands_to_one_shape() -> None:
    graph = _expand_graph(same_shape=True)
    assert drop_paired_expands(graph) == 1
    assert [(n.op_type, list(n.input)) for n in graph.graph.node] == [("Sub", ["a", "b"])]
    untouched = _expand_graph(same_shape=False)
    assert drop_paired_expands(untouched) == 0
    assert [n.op_type for n in untouched.graph.node] == ["Expand", "Expand", "Sub"]
