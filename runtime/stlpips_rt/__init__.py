"""Torch-free runtime of stlpips-deploy: score image pairs with exported ST-LPIPS / LPIPS ONNX graphs."""

__version__ = "0.1.0"
