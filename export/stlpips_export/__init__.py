"""Export stage of stlpips-deploy: PyTorch reference models for ST-LPIPS / LPIPS and their ONNX export."""

__version__ = "0.1.0"
