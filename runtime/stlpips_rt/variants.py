"""The variant registry: every model the toolkit knows, one row each, keyed ``"{net}-{variant}"``.

Everything else derives from these rows: the exporter's architecture table and weight registry are keyed by
``Variant.key``, the CLIs' ``--net``/``--variant`` choices come from here, and evaluation names metrics by the same
key. Torch-free, so the runtime can name and describe models without the export stage.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    net: str
    variant: str
    display_name: str
    description: str
    released_weights: bool  # a registry package ships weights for it (otherwise only --weights PATH)
    fusable: bool = False  # conv1 and its BlurPool fuse into one convolution at export (stlpips_export.fusion)

    @property
    def key(self) -> str:
        return f"{self.net}-{self.variant}"


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        Variant("alex", "st", "ST-LPIPS alex",
                "ST-LPIPS AlexNet: conv1 stride 1, BlurPool (reflection pad) before each downsampling", True,
                fusable=True),
        Variant("vgg", "st", "ST-LPIPS vgg", "ST-LPIPS VGG-16: max-pool stride 1, then BlurPool (reflection pad)",
                True),
        Variant("alex", "lpips", "LPIPS alex", "LPIPS v0.1 AlexNet: the ImageNet backbone", True),
        Variant("vgg", "lpips", "LPIPS vgg", "LPIPS v0.1 VGG-16: the ImageNet backbone", True),
        Variant("alex", "aa", "anti-aliased alex",
                "upstream 'antialiased' AlexNet: conv1 stride 2, BlurPool with centred padding", False),
        Variant("alex", "scratch", "scratch alex",
                "upstream 'vanilla' AlexNet trained from scratch (plain strided pooling)", False),
    )
}
NETS = tuple(dict.fromkeys(v.net for v in VARIANTS.values()))
VARIANT_NAMES = tuple(dict.fromkeys(v.variant for v in VARIANTS.values()))
#: The metrics of the paper and of this toolkit's evidence: the four variants with released weights.
RELEASED = tuple(k for k, v in VARIANTS.items() if v.released_weights)
DEFAULT = "alex-st"


def get_variant(net: str, variant: str | None = None) -> Variant:
    """Look a variant up by ``("alex", "st")`` or by its key ``"alex-st"``; a ValueError lists the known ones."""
    key = net if variant is None else f"{net}-{variant}"
    try:
        return VARIANTS[key]
    except KeyError:
        raise ValueError(f"unknown model {key!r}; known: {', '.join(VARIANTS)}") from None
