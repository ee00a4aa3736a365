"""The variant table: every supported backbone is a row of layer specifications, and one builder turns a row into
modules.

Layers are numbered in one flat sequence and grouped into five slices, exactly as upstream numbers them, so that
state-dict keys such as ``net.slice1.0.weight`` or ``net.slice2.4.filt`` of the released checkpoints (and of users'
own upstream-trained checkpoints) load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stlpips_rt.variants import VARIANTS, Variant, get_variant

from .blurpool import BlurPool
from .errors import UnknownModelError


@dataclass(frozen=True)
class Conv:
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0


@dataclass(frozen=True)
class ReLU:
    pass


@dataclass(frozen=True)
class MaxPool:
    kernel: int
    stride: int


@dataclass(frozen=True)
class Blur:
    pad_more: bool
    filter_size: int = 3
    stride: int = 2


LayerSpec = Conv | ReLU | MaxPool | Blur


@dataclass(frozen=True)
class Architecture:
    """One row of the variant table: a registered variant and the layers of each of its five feature slices."""

    variant: Variant
    slices: tuple[tuple[LayerSpec, ...], ...]

    @property
    def key(self) -> str:
        return self.variant.key


def _vgg16_slices(pool: tuple[LayerSpec, ...]) -> tuple[tuple[LayerSpec, ...], ...]:
    """VGG-16's feature slices (relu1_2 .. relu5_3); ``pool`` is what each 2x downsampling becomes."""

    def convs(channels: int, count: int) -> tuple[LayerSpec, ...]:
        return tuple(layer for _ in range(count) for layer in (Conv(channels, 3, padding=1), ReLU()))

    return (
        convs(64, 2),
        pool + convs(128, 2),
        pool + convs(256, 3),
        pool + convs(512, 3),
        pool + convs(512, 3),
    )


def _alexnet_tail(stem: tuple[LayerSpec, ...], pool: tuple[LayerSpec, ...]) -> tuple[tuple[LayerSpec, ...], ...]:
    """AlexNet's feature slices (relu1 .. relu5) after a variant-specific first slice."""
    return (
        stem,
        pool + (Conv(192, 5, padding=2), ReLU()),
        pool + (Conv(384, 3, padding=1), ReLU()),
        (Conv(256, 3, padding=1), ReLU()),
        (Conv(256, 3, padding=1), ReLU()),
    )


_ST_POOL = (MaxPool(3, 1), Blur(pad_more=True))
_AA_POOL = (MaxPool(3, 1), Blur(pad_more=False))
_PLAIN_POOL = (MaxPool(3, 2),)

#: Layers of every registered variant (stlpips_rt.variants.VARIANTS), keyed like it.
_SLICES: dict[str, tuple[tuple[LayerSpec, ...], ...]] = {
    # conv1 stride 1 and BlurPool (reflection pad) before each ReLU / downsampling
    "alex-st": _alexnet_tail((Conv(64, 11, stride=1, padding=2), Blur(pad_more=True), ReLU()), _ST_POOL),
    "vgg-st": _vgg16_slices((MaxPool(2, 1), Blur(pad_more=True))),
    "alex-lpips": _alexnet_tail((Conv(64, 11, stride=4, padding=2), ReLU()), _PLAIN_POOL),
    "vgg-lpips": _vgg16_slices((MaxPool(2, 2),)),
    # upstream 'antialiased': conv1 stride 2, BlurPool with centred padding
    "alex-aa": (
        (Conv(64, 11, stride=2, padding=2), ReLU()),
        (Blur(pad_more=False), *_AA_POOL, Conv(192, 5, padding=2), ReLU()),
        (*_AA_POOL, Conv(384, 3, padding=1), ReLU()),
        (Conv(256, 3, padding=1), ReLU()),
        (Conv(256, 3, padding=1), ReLU()),
    ),
    "alex-scratch": _alexnet_tail((Conv(64, 11, stride=4, padding=2), ReLU()), _PLAIN_POOL),
}
assert _SLICES.keys() == VARIANTS.keys(), "every registered variant needs its layers here"
ARCHITECTURES: dict[str, Architecture] = {key: Architecture(VARIANTS[key], _SLICES[key]) for key in VARIANTS}


def get_architecture(net: str, variant: str | None = None) -> Architecture:
    """By ``("alex", "st")`` or ``"alex-st"``; an unknown name raises :class:`UnknownModelError`."""
    try:
        return ARCHITECTURES[get_variant(net, variant).key]
    except ValueError as exc:
        raise UnknownModelError(str(exc)) from None


class Backbone(nn.Module):
    """Feature extractor returning the activations at the end of each slice."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.channels: list[int] = []
        in_channels, index = 3, 0
        for number, specs in enumerate(arch.slices, start=1):
            layers = nn.Sequential()
            for spec in specs:
                layers.add_module(str(index), _build_layer(spec, in_channels))
                if isinstance(spec, Conv):
                    in_channels = spec.out_channels
                index += 1
            self.add_module(f"slice{number}", layers)
            self.channels.append(in_channels)
        self.slices = [getattr(self, f"slice{n}") for n in range(1, len(arch.slices) + 1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layers in self.slices:
            x = layers(x)
            features.append(x)
        return features


def _build_layer(spec: LayerSpec, in_channels: int) -> nn.Module:
    if isinstance(spec, Conv):
        return nn.Conv2d(in_channels, spec.out_channels, spec.kernel, stride=spec.stride, padding=spec.padding)
    if isinstance(spec, ReLU):
        return nn.ReLU()
    if isinstance(spec, MaxPool):
        return nn.MaxPool2d(spec.kernel, stride=spec.stride)
    return BlurPool(in_channels, spec.filter_size, spec.stride, pad_more=spec.pad_more)
