"""BlurPool: anti-aliased downsampling as a fixed binomial filter applied by a depthwise convolution.

In the exported graph this becomes a reflection ``Pad`` followed by a ``Conv`` with ``group = C`` and a constant
initializer, so every ONNX consumer runs it without custom operators.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MAX_FILTER_SIZE = 7


def binomial_filter(size: int) -> torch.Tensor:
    """Normalised 2-D binomial kernel of side ``size`` (1..7): the outer product of a Pascal-triangle row."""
    if not 1 <= size <= MAX_FILTER_SIZE:
        raise ValueError(f"BlurPool filter size must be 1..{MAX_FILTER_SIZE}, got {size}")
    row = torch.tensor([math.comb(size - 1, i) for i in range(size)], dtype=torch.float64)
    kernel = torch.outer(row, row)
    # Normalise in float32, as the released checkpoints' stored filters were computed.
    kernel = kernel.float()
    return kernel / kernel.sum()


def blur_padding(size: int, pad_more: bool) -> tuple[int, int, int, int]:
    """Reflection padding (left, right, top, bottom).

    ``pad_more`` (ST-LPIPS) pads ``size - 1`` on every side, so the blurred map keeps its border content after the
    stride; otherwise the filter is centred, padding ``(size - 1) // 2`` before and the rest after.
    """
    if pad_more:
        return (size - 1,) * 4
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    return (before, after, before, after)


class BlurPool(nn.Module):
    """Low-pass filter then subsample by ``stride``; input ``[N, C, H, W]`` of any range.

    The filter is a buffer named ``filt``, never trained, so upstream checkpoints (which store it) load unchanged.
    """

    def __init__(self, channels: int, filter_size: int = 3, stride: int = 2, pad_more: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.filter_size = filter_size
        self.stride = stride
        self.padding = blur_padding(filter_size, pad_more)
        self.register_buffer("filt", binomial_filter(filter_size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filter_size == 1:
            return x[:, :, :: self.stride, :: self.stride]
        x = F.pad(x, self.padding, mode="reflect")
        return F.conv2d(x, self.filt, stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, filter_size={self.filter_size}, stride={self.stride}, pad={self.padding}"
