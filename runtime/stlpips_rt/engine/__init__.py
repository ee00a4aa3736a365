"""Engines: execution providers and their options, building sessions that never fall to the CPU by surprise,
OpenVINO's own runtime, GPU tensors bound without a copy, and finding model files."""
