"""Export stage of stlpips-deploy: PyTorch reference models for ST-LPIPS / LPIPS and their ONNX export."""

from stlpips_rt import __version__  # one version for the distribution (pyproject.toml)

__all__ = ["__version__"]
