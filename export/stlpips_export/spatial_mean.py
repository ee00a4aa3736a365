"""An accurate spatial mean in the exported graph: each layer's ReduceMean over H and W becomes block sums.

Why: ONNX Runtime's float32 ReduceMean adds a map's values one after another, and its error grows with the map
and depends on the CPU's kernels: against a float64 mean of the same layer maps, alex-st's distance was 1.8e-6
relative off at 700x1031 and 2.3e-5 at 2048x2048 on an Intel Xeon with AMX (onnxruntime 1.31.1), up to 2.2e-7 on
an AMD EPYC (scripts/measure_mean.py). Summing BLOCK x BLOCK blocks level by level keeps every addition between
numbers of similar size, so the error stays at a few float32 roundings at any size, for a few small convolutions
(docs/contract.md, "Spatial mean").

The rewrite is made on the ONNX graph, after tracing: the PyTorch reference keeps ``Tensor.mean`` (its own sums are
already pairwise), and the tracer does not have to carry the nested symbolic shapes of the block sums (which doubled
the dynamo exporter's trace time). The export gate verifies the result like every other graph change.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from stlpips_rt.tiling import Window

#: Each level sums BLOCK x BLOCK values (a stride-BLOCK convolution with a kernel of ones; its padding of BLOCK - 1
#: zeros lets every size through and changes no sum) ...
BLOCK = 4
#: ... until a layer map of an input up to MAX_SIDE pixels a side is down to one value. Then the last ReduceSum adds
#: nothing, and no sum depends on where a pair's row lies in memory: onnxruntime's CPU reductions add a row in an
#: order set by its alignment, i.e. by the pair's position in its batch (docs/reproducibility.md). Stopping at 32x32
#: values was as accurate but left that batch effect at sizes above about 512 pixels; the extra levels run on 1x1
#: maps at small sizes (a few microseconds each).
MAX_SIDE = 8192


def levels_for_stride(stride: int) -> int:
    """Rounds of block sums a layer of cumulative ``stride`` needs."""
    side, levels = -(-MAX_SIDE // stride), 0
    while side > 1:
        side, levels = -(-side // BLOCK), levels + 1
    return levels


def _axes(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> list[int] | None:
    for attribute in node.attribute:
        if attribute.name == "axes":
            return list(attribute.ints)
    if len(node.input) > 1 and node.input[1] in constants:
        return [int(a) for a in constants[node.input[1]]]
    return None


def _keepdims(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "keepdims"), 1)


def replace_spatial_means(graph: onnx.ModelProto, windows: Sequence[Window]) -> onnx.ModelProto:
    """Rewrite, in place, the ReduceMean over axes (2, 3) of each layer's ``[N, 1, H_l, W_l]`` distance map (one
    per layer, in layer order) into block sums divided by ``H_l * W_l``. Raises ``ValueError`` when the graph does
    not hold exactly one such mean per layer (a change in how the head is traced)."""
    body = graph.graph
    constants = {t.name: numpy_helper.to_array(t) for t in body.initializer}
    for node in body.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    means = [i for i, n in enumerate(body.node)
             if n.op_type == "ReduceMean" and sorted(_axes(n, constants) or []) in ([2, 3], [-2, -1])]
    if len(means) != len(windows):
        raise ValueError(f"expected one spatial ReduceMean per layer ({len(windows)}), found {len(means)}")

    ones = numpy_helper.from_array(np.ones((1, 1, BLOCK, BLOCK), np.float32), "spatial_mean_block")
    spatial_axes = numpy_helper.from_array(np.array([2, 3], np.int64), "spatial_mean_axes")
    hw_start = numpy_helper.from_array(np.array([2], np.int64), "spatial_mean_hw_start")
    hw_end = numpy_helper.from_array(np.array([4], np.int64), "spatial_mean_hw_end")
    body.initializer.extend([ones, spatial_axes, hw_start, hw_end])
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for layer, (index, window) in enumerate(zip(means, windows, strict=True)):
        mean = body.node[index]
        prefix = f"/spatial_mean{layer}"
        source, nodes = mean.input[0], []
        for level in range(levels_for_stride(window.stride)):
            out = f"{prefix}/sum{level}"
            nodes.append(helper.make_node("Conv", [source, ones.name], [out], name=out, kernel_shape=[BLOCK, BLOCK],
                                          strides=[BLOCK, BLOCK], pads=[0, 0, BLOCK - 1, BLOCK - 1]))
            source = out
        total, shape, hw, count, count_f = (f"{prefix}/{n}" for n in ("total", "shape", "hw", "count", "count_f"))
        nodes += [
            helper.make_node("ReduceSum", [source, spatial_axes.name], [total], name=total,
                             keepdims=_keepdims(mean)),
            helper.make_node("Shape", [mean.input[0]], [shape], name=shape),
            helper.make_node("Slice", [shape, hw_start.name, hw_end.name], [hw], name=hw),
            helper.make_node("ReduceProd", [hw], [count], name=count, keepdims=0),
            helper.make_node("Cast", [count], [count_f], name=count_f, to=onnx.TensorProto.FLOAT),
            helper.make_node("Div", [total, count_f], [mean.output[0]], name=f"{prefix}/mean"),
        ]
        replaced[index] = nodes
    rebuilt = []
    for index, node in enumerate(body.node):
        rebuilt.extend(replaced.get(index, [node]))
    del body.node[:]
    body.node.extend(rebuilt)
    return graph
