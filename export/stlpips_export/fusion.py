"""Exact graph-level speed-ups applied at export time: the same numbers with fewer operations.

ST-LPIPS alex runs conv1 (11x11, stride 1) and then a BlurPool (3x3 binomial, stride 2, reflection pad 2) with no
activation between them. Both are linear, so the pair is one 13x13 stride-2 convolution whose kernel is conv1's
kernel convolved with the binomial filter: it computes a quarter of the positions with 169/121 of the taps, about a
third of conv1's work, and the reflection Pad (which ONNX Runtime cannot run in its blocked layout) disappears.

Reflection padding acts on conv1's *output*, so the border needs care. Along each axis, with conv1 giving ``R``
values and the blur's 1-D filter ``f = (f0, f1, f2)`` (symmetric):

- the first blurred value reads conv outputs (2, 1, 0) with weights (f0, f1, f2): the same as the second, which
  reads (0, 1, 2). It is a copy of the first interior value;
- the last one, when R is odd, reads (R-1, R-2, R-3): the last interior value's window in reverse order, so a copy
  of it; when R is even it reads (R-2, R-1, R-2), weights (f0 + f2, f1) on (R-2, R-1): one more convolution, with a
  12-wide kernel, at a single position.

So the border costs one row, one column and one corner of extra convolution (for even sizes), where computing it
the original way took four strips of conv1 three rows deep (a third of conv1's work at 64x64).
"""

from __future__ import annotations

import copy
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .blurpool import BlurPool
from .model import PerceptualDistance


def fusable(conv: nn.Module, blur: nn.Module) -> bool:
    """The case the border arithmetic above is derived for (alex-st's conv1 and first BlurPool)."""
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(blur, BlurPool)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.padding[0] == conv.padding[1]
        and conv.kernel_size[0] == conv.kernel_size[1]
        and blur.stride == 2
        and blur.filter_size == 3
        and blur.padding == (2, 2, 2, 2)
        and torch.equal(blur.filt[0, 0], blur.filt[0, 0].flip(0, 1))
    )


def _full_convolution(weight: torch.Tensor, vertical: torch.Tensor, horizontal: torch.Tensor) -> torch.Tensor:
    """Every kernel of ``weight [O, I, k, k]`` convolved (full, not valid) with the separable filter
    ``vertical x horizontal``, in float64: the kernel of "conv, then that filter"."""
    out_channels, in_channels, k, _ = weight.shape
    filt = torch.outer(vertical, horizontal).flip(0, 1)[None, None]
    kh, kw = filt.shape[-2:]
    flat = F.pad(weight.reshape(-1, 1, k, k), (kw - 1, kw - 1, kh - 1, kh - 1))
    return F.conv2d(flat, filt).reshape(out_channels, in_channels, k + kh - 1, k + kw - 1)


def _pick(candidates: list[torch.Tensor], dim: int, even: torch.SymInt | int) -> torch.Tensor:
    """``candidates[1]`` if ``even`` else ``candidates[0]``, each one value thick along ``dim``: a Slice with a
    computed start, so the exported graph serves odd and even sizes alike."""
    return torch.cat(candidates, dim).narrow(dim, even, 1)


class FusedConvBlur(nn.Module):
    """``BlurPool(conv(x))`` for a stride-1 conv with zero padding and a 3x3, stride-2, reflection-pad-2 blur."""

    def __init__(self, conv: nn.Conv2d, blur: BlurPool) -> None:
        super().__init__()
        if not fusable(conv, blur):
            raise ValueError("FusedConvBlur handles a stride-1 conv followed by a 3x3 stride-2 pad-2 BlurPool")
        self.padding = conv.padding[0]
        self.kernel = conv.kernel_size[0]
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        weight = conv.weight.detach().double()
        filt = blur.filt[0, 0].double()
        inner = filt.sum(1)  # the 1-D filter (f0, f1, f2) along either axis
        edge = torch.stack([inner[0] + inner[2], inner[1]])  # the last value of an even axis
        for name, vertical, horizontal in (("interior", inner, inner), ("last_row", edge, inner),
                                           ("last_col", inner, edge), ("corner", edge, edge)):
            self.register_buffer(f"{name}_weight", _full_convolution(weight, vertical, horizontal).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, k = self.padding, self.kernel
        height, width = x.shape[2], x.shape[3]
        rows, cols = height + 2 * p - k + 1, width + 2 * p - k + 1  # conv1's output size
        even_rows, even_cols = (rows + 1) % 2, (cols + 1) % 2
        # The extra values read k + 1 padded rows (columns) from conv output R - 2 on: the input's last
        # k + 1 - p rows and p rows of zero padding.
        bottom = x.narrow(2, height - (k + 1 - p), k + 1 - p)
        right = x.narrow(3, width - (k + 1 - p), k + 1 - p)
        corner = bottom.narrow(3, width - (k + 1 - p), k + 1 - p)
        interior = F.conv2d(x, self.interior_weight, self.bias, stride=2, padding=p)
        last_row = F.conv2d(F.pad(bottom, (p, p, 0, p)), self.last_row_weight, self.bias, stride=(1, 2))
        last_col = F.conv2d(F.pad(right, (0, p, p, p)), self.last_col_weight, self.bias, stride=(2, 1))
        corner = F.conv2d(F.pad(corner, (0, p, 0, p)), self.corner_weight, self.bias)
        # Rows: a copy of the first interior row, the interior, then the last row (a copy, or the extra row).
        middle = torch.cat([interior.narrow(2, 0, 1), interior,
                            _pick([interior.narrow(2, interior.shape[2] - 1, 1), last_row], 2, even_rows)], 2)
        right_col = torch.cat([last_col.narrow(2, 0, 1), last_col,
                               _pick([last_col.narrow(2, last_col.shape[2] - 1, 1), corner], 2, even_rows)], 2)
        # Columns likewise, over every row.
        return torch.cat([middle.narrow(3, 0, 1), middle,
                          _pick([middle.narrow(3, middle.shape[3] - 1, 1), right_col], 3, even_cols)], 3)


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


def export_copy(model: PerceptualDistance, fuse: bool = True) -> PerceptualDistance:
    """The copy of ``model`` a file's graph is traced from (the reference itself stays untouched, to verify the
    graph against): channel sums per image (``PerceptualDistance.sum_channels_per_image``) and, with ``fuse``,
    conv1 fused with its BlurPool."""
    exported = copy.deepcopy(model).sum_channels_per_image()
    return fuse_for_export(exported) if fuse else exported
