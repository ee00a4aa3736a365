"""The exported graph's spatial mean (export/stlpips_export/spatial_mean.py): block sums that stay within
``precision.SPATIAL_MEAN_MAX_REL`` of a float64 mean at every size, and a gate that refuses a graph whose mean does
not."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from stlpips_export.errors import ParityError
from stlpips_export.spatial_mean import levels_for_stride, replace_spatial_means
from stlpips_export.verify import CaseResult, ParityReport, spatial_mean_error
from stlpips_rt.precision import SPATIAL_MEAN_MAX_REL
from stlpips_rt.tiling import Window


def mean_graph(layers: int = 1, opset: int = 18) -> onnx.ModelProto:
    """``layers`` inputs ``[N, 1, H, W]``, each through ReduceMean over (2, 3) as the traced head has it."""
    nodes, inputs, outputs = [], [], []
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    for i in range(layers):
        inputs.append(helper.make_tensor_value_info(f"map{i}", TensorProto.FLOAT, ["N", 1, f"H{i}", f"W{i}"]))
        outputs.append(helper.make_tensor_value_info(f"mean{i}", TensorProto.FLOAT, ["N", 1]))
        nodes.append(helper.make_node("ReduceMean", [f"map{i}", "axes"], [f"mean{i}"], keepdims=0))
    graph = helper.make_graph(nodes, "means", inputs, outputs, [axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def run(graph: onnx.ModelProto, maps: list[np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {f"map{i}": m for i, m in enumerate(maps)})


def test_levels_bring_an_8192_pixel_side_down_to_one_value() -> None:
    assert [levels_for_stride(s) for s in (1, 2, 4, 8, 16, 32)] == [7, 6, 6, 5, 5, 4]
    for stride in (1, 2, 3, 8, 16):
        side = -(-8192 // stride)
        for _ in range(levels_for_stride(stride)):
            side = -(-side // 4)
        assert side == 1


@pytest.mark.parametrize("h, w", [(1, 1), (1, 7), (5, 3), (31, 64), (129, 257), (700, 1031), (2048, 1536)])
def test_block_sums_stay_within_the_bound_of_a_float64_mean(h: int, w: int) -> None:
    graph = replace_spatial_means(mean_graph(), [Window(stride=1)])
    assert not [n for n in graph.graph.node if n.op_type == "ReduceMean"]
    onnx.checker.check_model(graph, full_check=True)
    rng = np.random.default_rng(h * w)
    # Positive maps with a wide dynamic range and large-scale structure, as the head's squared differences are.
    maps = (rng.lognormal(-6, 1.5, (2, 1, h, w)) * np.linspace(0.2, 3, w)).astype(np.float32)
    (got,) = run(graph, [maps])
    exact = maps.astype(np.float64).mean(axis=(2, 3))
    assert got.shape == (2, 1)
    assert np.abs(got - exact).max() / exact.max() <= SPATIAL_MEAN_MAX_REL


def test_each_layer_gets_its_own_levels_and_the_opset_17_form_works() -> None:
    graph = mean_graph(layers=2, opset=17)
    for node in graph.graph.node:  # opset 17 ReduceMean takes axes as an attribute
        del node.input[1]
        node.attribute.append(helper.make_attribute("axes", [2, 3]))
    replace_spatial_means(graph, [Window(stride=1), Window(stride=16)])
    convs = [n.name for n in graph.graph.node if n.op_type == "Conv"]
    assert sum(c.startswith("/spatial_mean0/") for c in convs) == 7
    assert sum(c.startswith("/spatial_mean1/") for c in convs) == 5
    maps = [np.full((1, 1, 9, 13), 0.5, np.float32), np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)]
    got = run(graph, maps)
    assert float(got[0][0, 0]) == 0.5 and float(got[1][0, 0]) == 5.5


def test_a_graph_without_one_mean_per_layer_is_refused() -> None:
    with pytest.raises(ValueError, match="one spatial ReduceMean per layer"):
        replace_spatial_means(mean_graph(layers=2), [Window(stride=1)])


def test_the_gate_refuses_an_inaccurate_mean_and_says_so() -> None:
    report = ParityReport(1e-5, [CaseResult("random", "[1, 3, 64, 64]", 1e-7, 1e-6)])
    report.mean_rel_error = SPATIAL_MEAN_MAX_REL / 2
    assert report.passed
    report.mean_rel_error = 3 * SPATIAL_MEAN_MAX_REL
    assert not report.passed
    with pytest.raises(ParityError, match="spatial mean is 6e-07 relative from a float64 mean"):
        report.raise_if_failed("stlpips_alex_st.onnx")


def toy_distance_graph(scale: float = 1.0) -> onnx.ModelProto:
    """A graph with the contract's inputs, two layer maps (the channel sum of squared differences, and its 2x2
    average pool) and ``dist``: the sum of their float32 ReduceMeans, times ``scale`` (an error put in on purpose)."""
    def mean(name: str, out: str) -> onnx.NodeProto:
        return helper.make_node("ReduceMean", [name, "axes"], [out], keepdims=0)

    nodes = [
        helper.make_node("Sub", ["in0", "in1"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["squared"]),
        helper.make_node("ReduceSum", ["squared", "channel"], ["layer_map0"], keepdims=1),
        helper.make_node("AveragePool", ["layer_map0"], ["layer_map1"], kernel_shape=[2, 2], strides=[2, 2]),
        mean("layer_map0", "mean0"), mean("layer_map1", "mean1"),
        helper.make_node("Add", ["mean0", "mean1"], ["sum"]),
        helper.make_node("Mul", ["sum", "scale"], ["scaled"]),
        helper.make_node("Squeeze", ["scaled", "one"], ["dist"]),
    ]
    images = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3, "H", "W"]) for n in ("in0", "in1")]
    outputs = [helper.make_tensor_value_info("dist", TensorProto.FLOAT, ["N"])]
    outputs += [helper.make_tensor_value_info(f"layer_map{i}", TensorProto.FLOAT, ["N", 1, None, None]) for i in (0, 1)]
    constants = [numpy_helper.from_array(np.array([2, 3], np.int64), "axes"),
                 numpy_helper.from_array(np.array([1], np.int64), "channel"),
                 numpy_helper.from_array(np.array([1], np.int64), "one"),
                 numpy_helper.from_array(np.array(scale, np.float32), "scale")]
    graph = helper.make_graph(nodes, "toy", images, outputs, constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


class RecordingSession:
    """An onnxruntime session that keeps what each run was given and gave back."""

    def __init__(self, graph: onnx.ModelProto) -> None:
        self.session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        self.runs: list[tuple[dict[str, np.ndarray], list[np.ndarray]]] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = self.session.run(names, feeds)
        self.runs.append((feeds, outputs))
        return outputs


def test_the_gate_measures_the_mean_against_a_float64_mean_of_the_layer_maps() -> None:
    """spatial_mean_error on a graph whose float32 means are off by a known factor: it returns that factor's error,
    and exactly what this test computes in float64 from the very maps the graph returned."""
    for scale, low, high in ((1 + 3e-6, 2.5e-6, 3.5e-6), (1 - 4e-5, 3.9e-5, 4.1e-5), (1.0, 0.0, 2e-7)):
        session = RecordingSession(toy_distance_graph(scale))
        measured = spatial_mean_error(session, ["layer_map0", "layer_map1"], 96, 128)
        assert low <= measured <= high, (scale, measured)
        (feeds, (dist, map0, map1)), = session.runs
        assert feeds["in0"].shape == feeds["in1"].shape == (1, 3, 96, 128)
        assert not np.array_equal(feeds["in0"], feeds["in1"])
        exact = map0.astype(np.float64).mean() + map1.astype(np.float64).mean()
        assert measured == pytest.approx(abs(float(dist[0]) - exact) / exact, rel=1e-9, abs=1e-15)
