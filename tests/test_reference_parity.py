"""The project's PyTorch models reproduce upstream stlpips_pytorch, and the exported graphs the published numbers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from example_pairs import authors_published_distance, float64_distances
from PIL import Image

from stlpips_export.model import build_model
from stlpips_export.upstream import load_upstream
from stlpips_rt.precision import tolerance

SHAPES = [(1, 64, 64), (2, 256, 256), (1, 67, 93), (3, 45, 38)]

#: Variants whose exported graph is held to float64 references on the authors' example pairs (tests/example_pairs.py).
REFERENCE_VARIANTS = [("alex", "st"), ("vgg", "st"), ("alex", "lpips")]


def _random_pair(shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, h, w = shape
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1, torch.rand(n, 3, h, w, generator=g) * 2 - 1


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_st_models_match_upstream_within_1e6(net: str) -> None:
    upstream = load_upstream(net)
    ours = build_model(net, "st")
    for seed, shape in enumerate(SHAPES):
        in0, in1 = _random_pair(shape, seed)
        with torch.no_grad():
            expected = upstream(in0, in1).flatten()
            actual = ours(in0, in1)[0]
        assert actual.shape == (shape[0],)
        assert (expected - actual).abs().max().item() <= 1e-6, shape


@pytest.mark.parametrize("upstream_variant, variant", [("antialiased", "aa"), ("vanilla", "scratch")])
def test_users_upstream_checkpoint_loads_unchanged(tmp_path, upstream_variant: str, variant: str) -> None:
    """A checkpoint saved from upstream's own (randomly initialised) architecture loads via --weights and gives
    upstream's numbers."""
    torch.manual_seed(0)
    upstream = load_upstream("alex", upstream_variant)
    for lin in upstream.lins:  # upstream leaves the linear layers random; make them non-negative like trained ones
        lin.model[1].weight.data.abs_()
    checkpoint = tmp_path / "mine.pth"
    torch.save(upstream.state_dict(), checkpoint)
    ours = build_model("alex", variant, weights=str(checkpoint))
    in0, in1 = _random_pair((2, 80, 72), 3)
    with torch.no_grad():
        assert (upstream(in0, in1).flatten() - ours(in0, in1)[0]).abs().max().item() <= 1e-6


def _load(path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    return (rgb / 127.5 - 1.0).transpose(2, 0, 1)[None].copy()


@pytest.mark.parametrize("net, variant", REFERENCE_VARIANTS)
def test_exported_graph_reproduces_reference_numbers(exported_model, shared_data, net: str, variant: str) -> None:
    session = ort.InferenceSession(str(exported_model(net, variant)), providers=["CPUExecutionProvider"])
    ref = _load(shared_data / "ex_ref.png")
    candidates = np.concatenate([_load(shared_data / "ex_p0.png"), _load(shared_data / "ex_p1.png")])
    dist = session.run(["dist"], {"in0": ref, "in1": candidates})[0]
    expected = float64_distances(shared_data, net, variant)
    assert np.abs(dist - expected).max() <= tolerance("fp32").max_abs
    if (net, variant) == ("alex", "st"):
        assert abs(float(dist[0]) - authors_published_distance()) <= tolerance("fp32").max_abs
