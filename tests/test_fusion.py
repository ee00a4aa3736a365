"""conv1 + BlurPool fusion (alex-st): the same numbers as the unfused reference at every size parity."""

from __future__ import annotations

import pytest
import torch

from stlpips_export.fusion import FusedConvBlur, fuse_for_export
from stlpips_export.model import build_model


@pytest.fixture(scope="module")
def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    return build_model("alex", "st"), fuse_for_export(build_model("alex", "st"))


def test_fusion_replaces_only_the_conv_blur_pair_of_alex_st(models) -> None:
    _, fused = models
    assert isinstance(fused.net.slice1[0], FusedConvBlur)
    assert isinstance(fused.net.slice1[1], torch.nn.Identity)
    assert not any(isinstance(m, FusedConvBlur) for m in fused.net.slice2.modules())
    vgg = fuse_for_export(build_model("vgg", "st"))
    assert not any(isinstance(m, FusedConvBlur) for m in vgg.modules())


# Every parity of conv1's output along each axis (it has the input's parity): the border is a copy of the interior
# (odd) or one extra row/column/corner convolution (even).
@pytest.mark.parametrize("h, w", [(21, 21), (22, 23), (23, 22), (64, 64), (67, 93), (30, 41), (128, 97)])
def test_fused_features_and_distances_match_unfused(models, h: int, w: int) -> None:
    reference, fused = models
    g = torch.Generator().manual_seed(h * w)
    in0, in1 = (torch.rand(2, 3, h, w, generator=g) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        expected_features = reference.net.slice1(in0)
        actual_features = fused.net.slice1(in0)
        assert actual_features.shape == expected_features.shape
        # Float32 rounding of another order of the same sums (fused kernels, computed in float64 then rounded).
        assert (actual_features - expected_features).abs().max().item() <= 2e-6
        assert (reference(in0, in1)[0] - fused(in0, in1)[0]).abs().max().item() <= 1e-6


def test_fusion_refuses_a_blur_it_was_not_derived_for() -> None:
    from stlpips_export.blurpool import BlurPool

    conv = torch.nn.Conv2d(3, 8, 5, padding=2)
    with pytest.raises(ValueError, match="stride-2 pad-2"):
        FusedConvBlur(conv, BlurPool(8, filter_size=3, pad_more=False))
