"""`stlpips-bench`: throughput, latency, cold start and memory of the runtime against upstream ST-LPIPS.

Each side (upstream ``stlpips_pytorch`` eager, the project's PyTorch reference, the runtime per provider and
precision) runs in its own long-lived worker process (`worker`); the parent (`cli`) asks them in turn, so
measurements alternate and no side shares its process, threads or allocator with another.
"""
