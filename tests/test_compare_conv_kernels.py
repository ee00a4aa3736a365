"""scripts/compare_conv_kernels.py finds each dense backbone convolution with the input shape it runs at."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest


def _script(repo_root: Path):
    spec = importlib.util.spec_from_file_location("compare_conv_kernels", repo_root / "scripts/compare_conv_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vgg_st_convolutions_and_their_sizes_at_64(repo_root: Path) -> None:
    convs = _script(repo_root).backbone_convolutions("vgg", 64)
    # BlurPool with pad_more leaves odd sizes: 64, 33, 17, 9, 5
    assert [(c.in_channels, c.out_channels, shape[2]) for c, shape in convs] == [
        (3, 64, 64), (64, 64, 64), (64, 128, 33), (128, 128, 33), (128, 256, 17), (256, 256, 17), (256, 256, 17),
        (256, 512, 9), (512, 512, 9), (512, 512, 9), (512, 512, 5), (512, 512, 5), (512, 512, 5)]


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_the_onnxruntime_convolution_computes_the_layer(repo_root: Path, net: str) -> None:
    script = _script(repo_root)
    conv, shape = script.backbone_convolutions(net, 32)[1]
    x = np.random.default_rng(0).uniform(0, 1, (2, *shape[1:])).astype(np.float32)
    got = script.onnxruntime_conv(conv, threads=1).run(None, {"x": x})[0]
    import torch

    with torch.no_grad():
        want = conv(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
