"""The PyTorch reference: LPIPS head (scaling, unit-normalisation, squared difference, learned 1x1 weights, spatial
mean) on top of a backbone from the variant table.

Inputs are RGB ``[N, 3, H, W]`` in ``[-1, 1]``. ``in0`` and ``in1`` may have different batch sizes when one of them
is 1. Each goes through the backbone on its own, as upstream runs them: a single reference is computed once and
broadcast against many candidates, and the exported graph has no Concat of the inputs and no Slice of each layer's
activations to undo it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from stlpips_rt.contract import layer_map_outputs

from .architectures import Architecture, Backbone, get_architecture
from .errors import CheckpointMismatchError

NORMALIZE_EPS = 1e-10


class ScalingLayer(nn.Module):
    """Maps ``[-1, 1]`` inputs to the backbone's ImageNet-like statistics (LPIPS v0.1)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class LinearWeights(nn.Module):
    """Learned non-negative channel weights as a 1x1 convolution to one channel.

    The convolution is registered as ``model.1`` because upstream keeps a dropout at ``model.0`` (a no-op at
    inference), and its checkpoints store the weight as ``linK.model.1.weight``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(OrderedDict([("1", nn.Conv2d(channels, 1, 1, bias=False))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def paired_difference(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``first - second``: in0's rows against in1's, a batch of 1 broadcast against the other."""
    if torch.compiler.is_exporting():
        # torch.export (the dynamo ONNX exporter) takes implicit broadcasting between two symbolic batch sizes as
        # N0 == N1 and would merge the two batch axes. Expanding both sides to max(N0, N1) states the contract
        # instead (torch.sym_max adds no guard); exporters.py drops the Expand nodes again, since ONNX Sub
        # broadcasts the same way. Eager mode and the TorchScript tracer take the plain subtraction.
        pairs = torch.sym_max(first.shape[0], second.shape[0])
        first, second = first.expand(pairs, -1, -1, -1), second.expand(pairs, -1, -1, -1)
    return first - second


def square(x: torch.Tensor) -> torch.Tensor:
    """``x * x``: the same bits as ``x ** 2`` (one rounding of the exact product either way), but it exports as a
    ``Mul``, which onnxruntime's CPU provider runs in its blocked layout, where a ``Pow`` first needs the tensor
    reordered out of it and back (measured 1.6-1.7% of an alex-st or vgg-st pair at 64x64, no change on OpenVINO)."""
    return x * x


def unit_normalize(features: torch.Tensor, eps: float = NORMALIZE_EPS, ones: torch.Tensor | None = None) \
        -> torch.Tensor:
    """Divide each spatial position's channel vector by its L2 norm (plus ``eps``, as the released weights expect).

    The sum of squares over the channels is ``torch.sum`` (as upstream computes it), or, given ``ones``
    (``[1, C, 1, 1]``), a 1x1 convolution with it: what exported graphs compute (:meth:`PerceptualDistance.
    sum_channels_per_image`)."""
    squares = square(features)
    total = torch.sum(squares, dim=1, keepdim=True) if ones is None else F.conv2d(squares, ones)
    return features / (torch.sqrt(total) + eps)


class PerceptualDistance(nn.Module):
    """LPIPS / ST-LPIPS distance. ``forward`` returns a tuple: ``dist [N]``, then ``dist_layers [N, L]`` if
    ``layers``, then ``dist_map [N, 1, H, W]`` if ``spatial`` (the per-layer maps upsampled bilinearly to the input
    size and summed), then, if ``layer_maps``, each layer's map ``[N, 1, H_l, W_l]`` before the spatial mean (what
    tiled scoring recomposes)."""

    def __init__(self, arch: Architecture, spatial: bool = False, layers: bool = False,
                 layer_maps: bool = False) -> None:
        super().__init__()
        self.arch = arch
        self.spatial = spatial
        self.layers = layers
        self.layer_maps = layer_maps
        # float16 runs only the backbone in half precision: the head's eps (1e-10) and its sums need float32.
        self.backbone_dtype = torch.float32
        self.scaling_layer = ScalingLayer()
        self.net = Backbone(arch)
        for index, channels in enumerate(self.net.channels):
            self.add_module(f"lin{index}", LinearWeights(channels))
        self.lins = [getattr(self, f"lin{i}") for i in range(len(self.net.channels))]
        self.weights_sha256 = ""  # set by build_model; recorded in the exported file's metadata
        self.weights_origin = ""
        self.per_image_sums = False  # sum_channels_per_image()
        self.eval()

    def sum_channels_per_image(self) -> PerceptualDistance:
        """Sum each position's squared channels with a 1x1 convolution of ones instead of ``torch.sum`` (for the
        graph a file holds; the reference keeps ``torch.sum``). onnxruntime's CPU ``ReduceSum`` over the channels
        adds them in one order for a batch of one image and another for several (the last bit of an image's
        features moved by up to 1.2e-7, alex-st 64x64), and each input runs its own backbone pass, so a pair
        alone and the same pair in a batch would differ; a ``Conv`` sums every image the same way in any batch."""
        for index, lin in enumerate(self.lins):
            self.register_buffer(f"channel_ones{index}", torch.ones(1, lin.model[0].weight.shape[1], 1, 1))
        self.per_image_sums = True
        return self

    def load_checkpoint(self, state_dict: Mapping[str, torch.Tensor], origin: str = "checkpoint") -> None:
        """Load upstream-format weights. Every learned parameter must be present with its shape; constant buffers
        (scaling, blur filters) are taken from the checkpoint when it has them, as upstream does."""
        expected = self.state_dict()
        parameters = {name for name, _ in self.named_parameters()}
        missing = sorted(parameters - state_dict.keys())
        unexpected = sorted(state_dict.keys() - expected.keys())
        wrong_shape = [
            f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
            for k in state_dict
            if k in expected and state_dict[k].shape != expected[k].shape
        ]
        if missing or unexpected or wrong_shape:
            problems = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
                if keys:
                    shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
                    problems.append(f"{label}: {shown}")
            raise CheckpointMismatchError(
                f"{origin} does not fit {self.arch.key} ({'; '.join(problems)}). Check --net/--variant match the "
                "checkpoint; keys must be as upstream saves them (e.g. net.slice1.0.weight, lin0.model.1.weight)."
            )
        self.load_state_dict(state_dict, strict=False)

    def half_backbone(self) -> PerceptualDistance:
        """Switch the backbone to float16 (inputs, outputs and head stay float32)."""
        self.net.half()
        self.backbone_dtype = torch.float16
        return self

    @property
    def output_names(self) -> list[str]:
        names = ["dist"] + (["dist_layers"] if self.layers else []) + (["dist_map"] if self.spatial else [])
        return names + (list(layer_map_outputs(len(self.lins))) if self.layer_maps else [])

    def normalized_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Scaling, backbone and unit normalisation: each layer's features ``[N, C_l, H_l, W_l]`` as the head compares
        them (float32 whatever the backbone runs in)."""
        features = self.net(self.scaling_layer(images).to(self.backbone_dtype))
        return [unit_normalize(f.float(), ones=getattr(self, f"channel_ones{index}") if self.per_image_sums else None)
                for index, f in enumerate(features)]

    def forward(self, in0: torch.Tensor, in1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pairs = zip(self.normalized_features(in0), self.normalized_features(in1), self.lins, strict=True)
        layer_maps = [lin(square(paired_difference(first, second))) for first, second, lin in pairs]

        layer_means = [m.mean(dim=[2, 3]) for m in layer_maps]  # each [N, 1]
        total = layer_means[0]
        for mean in layer_means[1:]:
            total = total + mean
        outputs = [total[:, 0]]
        if self.layers:
            outputs.append(torch.cat(layer_means, dim=1))
        if self.spatial:
            size = in0.shape[2:]
            upsampled = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in layer_maps]
            dist_map = upsampled[0]
            for m in upsampled[1:]:
                dist_map = dist_map + m
            outputs.append(dist_map)
        if self.layer_maps:
            outputs.extend(layer_maps)
        return tuple(outputs)


def build_model(
    net: str,
    variant: str,
    *,
    weights: str | None = None,
    spatial: bool = False,
    layers: bool = False,
    layer_maps: bool = False,
) -> PerceptualDistance:
    """Build a variant and load its weights: the registered checkpoint, or ``weights`` (an upstream-format
    checkpoint path) when given. Raises :class:`~stlpips_export.errors.ExportError` subclasses with actionable
    messages."""
    from .weights import load_weights

    arch = get_architecture(net, variant)
    model = PerceptualDistance(arch, spatial=spatial, layers=layers, layer_maps=layer_maps)
    loaded = load_weights(arch, weights)
    model.load_checkpoint(loaded.state_dict, origin=loaded.origin)
    model.weights_sha256 = loaded.sha256
    model.weights_origin = loaded.origin
    return model
