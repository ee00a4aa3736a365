"""BlurPool: binomial filters, both padding modes, and its form in the exported graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from stlpips_export.blurpool import BlurPool, binomial_filter, blur_padding


def test_binomial_filters_are_normalised_pascal_rows() -> None:
    np.testing.assert_allclose(binomial_filter(3).numpy(), np.outer([1, 2, 1], [1, 2, 1]) / 16.0)
    np.testing.assert_allclose(binomial_filter(5)[2].numpy(), np.array([1, 4, 6, 4, 1]) * 6 / 256.0)
    for size in range(1, 8):
        kernel = binomial_filter(size)
        assert kernel.shape == (size, size)
        assert torch.isclose(kernel.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("size", [0, 8])
def test_filter_size_outside_1_to_7_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="1..7"):
        binomial_filter(size)


def test_padding_modes() -> None:
    assert blur_padding(3, pad_more=True) == (2, 2, 2, 2)
    assert blur_padding(3, pad_more=False) == (1, 1, 1, 1)
    assert blur_padding(4, pad_more=False) == (1, 2, 1, 2)
    assert blur_padding(5, pad_more=True) == (4, 4, 4, 4)


@pytest.mark.parametrize("pad_more", [True, False])
def test_blurpool_equals_reflect_pad_then_strided_depthwise_binomial(pad_more: bool) -> None:
    x = torch.randn(2, 4, 13, 10)
    pool = BlurPool(4, filter_size=3, pad_more=pad_more)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (torch.outer(kernel, kernel) / 16).expand(4, 1, 3, 3)
    pad = 2 if pad_more else 1
    expected = F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), kernel, stride=2, groups=4)
    torch.testing.assert_close(pool(x), expected)


def test_blurpool_has_no_trainable_parameters() -> None:
    pool = BlurPool(8)
    assert list(pool.parameters()) == []
    assert "filt" in pool.state_dict()


@pytest.mark.parametrize("fuse", [False, True])
def test_exported_blurpool_is_grouped_conv_with_constant_binomial_initializer(exported_model, fuse: bool) -> None:
    graph = onnx.load(str(exported_model("alex", "st", fuse=fuse))).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    blur_convs, kernel_sizes = [], []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight = initializers.get(node.input[1])
        assert weight is not None, "convolution weights must be constant initializers"
        kernel_sizes.append(weight.shape[-1])
        if group > 1:
            blur_convs.append((group, weight))
    for group, weight in blur_convs:
        assert weight.shape == (group, 1, 3, 3)
        np.testing.assert_allclose(weight[0, 0], np.outer([1, 2, 1], [1, 2, 1]) / 16.0, rtol=1e-7)
    # Each input has its own backbone pass, so every BlurPool appears twice.
    if fuse:
        # conv1's BlurPool is inside one 13x13 stride-2 conv (its border: copies, and a 12-wide kernel once);
        # those after pool1 (64) and pool2 (192) remain.
        assert sorted(g for g, _ in blur_convs) == [64, 64, 192, 192]
        assert {13, 12} <= set(kernel_sizes)
    else:
        # alex-st: BlurPool after conv1 (64), after pool1 (64), after pool2 (192).
        assert sorted(g for g, _ in blur_convs) == [64, 64, 64, 64, 192, 192]
    pads = [n for n in graph.node if n.op_type == "Pad"]
    reflect = [n for n in pads if next((a.s for a in n.attribute if a.name == "mode"), b"constant") == b"reflect"]
    assert len(reflect) == len(blur_convs)
    assert not [n for n in graph.node if n.domain not in ("", "ai.onnx")], "no custom operators"
