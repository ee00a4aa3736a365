"""The authors' example pairs, ``ex_ref.png`` against ``ex_p0.png`` and ``ex_p1.png`` (the ``imgs/`` folder of the
released ST-LPIPS repository, github.com/abhijay9/ShiftTolerant-LPIPS; beside CI's checkout in ../shared/data), and
the distances tests hold an engine to, each with its source:

- :func:`authors_published_distance`: the one number the authors published. Their README, shipped as the long
  description of the released ``stlpips-pytorch`` 0.0.2 package (installed with the export extra), scores
  ``img0 = ex_p0.png`` against ``img1 = ex_ref.png`` with alex-st and prints ``# 0.7777554988861084`` (float32,
  upstream PyTorch); it is read from the installed package's metadata, not copied here.
- :func:`float64_distances`: the project's PyTorch model (its float32 weights) evaluated in float64 here, for any
  variant and both pairs: the LPIPS head written out in float64 over the model's own backbone and weights.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np

PAIRS = (("ex_ref.png", "ex_p0.png"), ("ex_ref.png", "ex_p1.png"))


def authors_published_distance() -> float:
    """alex-st's distance of ex_p0.png and ex_ref.png as the authors' README prints it."""
    readme = metadata.metadata("stlpips_pytorch").get_payload()
    call = re.search(r"stlpips_metric\(img0,\s*img1\)\s*\n#\s*([0-9.]+)", readme)
    paths = re.findall(r'path[01] = ".*?/imgs/(ex_\w+\.png)"', readme)
    assert call is not None and paths == ["ex_p0.png", "ex_ref.png"], "the README's example changed"
    assert 'net="alex", variant="shift_tolerant"' in readme
    return float(call.group(1))


def _load(path: Path):  # noqa: ANN202 - a torch tensor
    import torch
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    return torch.from_numpy((rgb / 127.5 - 1.0).transpose(2, 0, 1)[None].copy())  # as upstream's im2tensor


@cache
def float64_distances(folder: Path, net: str, variant: str) -> tuple[float, float]:
    """(ex_ref vs ex_p0, ex_ref vs ex_p1) of ``net``-``variant``, computed in float64."""
    import torch

    from stlpips_export.model import build_model, unit_normalize

    model = build_model(net, variant).double()
    out = []
    with torch.no_grad():
        for a, b in PAIRS:
            x = model.scaling_layer(torch.cat([_load(folder / a), _load(folder / b)]))
            total = 0.0
            for feature, lin in zip(model.net(x), model.lins, strict=True):
                feature = unit_normalize(feature)
                total += float(lin((feature[:1] - feature[1:]) ** 2).mean())
            out.append(total)
    return out[0], out[1]
