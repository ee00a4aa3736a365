"""Exact graph-level speed-ups applied at export time: the same numbers with fewer operations.

ST-LPIPS alex runs conv1 (11x11, stride 1) and then a BlurPool (3x3 binomial, stride 2, reflection pad 2) with no
activation between them. Both are linear, so away from the border the pair is one 13x13 stride-2 convolution whose
kernel is conv1's kernel convolved with the binomial filter: it computes a quarter of the positions with 169/121 of
the taps, about a third of conv1's work, and the reflection Pad (which ONNX Runtime cannot run in its blocked
layout) disappears. Reflection padding acts on conv1's *output*, so the outermost row and column on each side
differ; those are computed exactly the original way from thin strips of conv1's output.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .blurpool import BlurPool
from .model import PerceptualDistance


def fusable(conv: nn.Module, blur: nn.Module) -> bool:
    """The case the border arithmetic below is derived for (alex-st's conv1 and first BlurPool)."""
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(blur, BlurPool)
        and conv.stride == (1, 1)
        and conv.padding_mode == "zeros"
        and blur.stride == 2
        and blur.filter_size == 3
        and blur.padding == (2, 2, 2, 2)
    )


class FusedConvBlur(nn.Module):
    """``BlurPool(conv(x))`` for a stride-1 conv with zero padding and a 3x3, stride-2, reflection-pad-2 blur."""

    def __init__(self, conv: nn.Conv2d, blur: BlurPool) -> None:
        super().__init__()
        if not fusable(conv, blur):
            raise ValueError("FusedConvBlur handles a stride-1 conv followed by a 3x3 stride-2 pad-2 BlurPool")
        self.conv = conv
        self.blur = blur
        self.padding = conv.padding[0]
        channels = conv.out_channels
        # Full 2-D convolution of every conv kernel with the binomial filter: flip the filter and correlate.
        weight = conv.weight.detach().double().reshape(-1, 1, *conv.kernel_size)
        binomial = blur.filt[0:1].double().flip(-1, -2)
        fused = F.conv2d(F.pad(weight, (2, 2, 2, 2)), binomial)
        self.register_buffer("fused_weight", fused.reshape(channels, conv.in_channels, *fused.shape[-2:]).float())

    def _strip(self, padded: torch.Tensor) -> torch.Tensor:
        """The original path (conv, reflection pad, blur) on a strip of the zero-padded input."""
        return self.blur(F.conv2d(padded, self.conv.weight, self.conv.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, k = self.padding, self.conv.kernel_size[0]
        padded = F.pad(x, (p, p, p, p))
        # Interior: output (i, j) of the fused stride-2 conv is blurred output (i + 1, j + 1).
        interior = F.conv2d(padded, self.fused_weight, self.conv.bias, stride=2)
        # conv1's output is (H + 2p - k + 1) high. The last blurred row starts its window at conv-output row
        # 2 * ((rows + 1) // 2) - 2; a strip from two rows earlier puts that window at strip output row 2.
        rows = padded.shape[2] - k + 1
        cols = padded.shape[3] - k + 1
        first_row = 2 * ((rows + 1) // 2) - 4
        first_col = 2 * ((cols + 1) // 2) - 4
        top = self._strip(padded[:, :, : k + 2, :])[:, :, 0:1, :]
        bottom = self._strip(padded[:, :, first_row:, :])[:, :, 2:3, :]
        left = self._strip(padded[:, :, :, : k + 2])[:, :, 1:-1, 0:1]
        right = self._strip(padded[:, :, :, first_col:])[:, :, 1:-1, 2:3]
        middle = torch.cat([left, interior, right], dim=3)
        return torch.cat([top, middle, bottom], dim=2)


def fuse_for_export(model: PerceptualDistance) -> PerceptualDistance:
    """Replace every stride-1 Conv directly followed by a matching BlurPool inside a slice by FusedConvBlur.

    The model is changed in place; parity with an unfused copy is what the exporter then verifies.
    """
    for layers in model.net.slices:
        names = list(layers._modules)
        for first, second in pairwise(names):
            conv, blur = layers._modules[first], layers._modules[second]
            if fusable(conv, blur):
                layers._modules[first] = FusedConvBlur(conv, blur)
                layers._modules[second] = nn.Identity()
    return model
