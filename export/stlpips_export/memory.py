"""Measured memory model of an exported graph: peak working memory per pixel of one pair, as ONNX Runtime's CPU
provider runs it (written to ``stlpips.bytes_per_pixel``; the runtime plans tiles with it, docs/tiling.md).

Each measurement runs in a fresh interpreter (no torch in it): after a tiny warm-up run it resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``), creates one pair of ``side x side`` random images, runs it, and reports
the new peak minus the resident set before: the working memory of that run alone (the interpreter, onnxruntime and
the weights are in the baseline; the two input tensors count, as they do per tile).

ONNX Runtime's CPU arena grows by doubling its regions, so the resident set is not linear in pixels: depending on
where a size falls in a doubling cycle the rate varies by up to ~25%. The probe therefore samples sizes whose
working memory spans one full doubling and keeps the largest rate.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

#: Working memory of the smallest sampled size; the largest is twice this (one arena doubling cycle).
PROBE_BYTES = 128 << 20
PROBE_STEPS = 4  # sizes between PROBE_BYTES and 2 * PROBE_BYTES, geometrically spaced (both ends included)
_ROUGH_SIDE = 256  # first probe: a rough rate that sizes the others

_PROBE = r"""
import json, resource, sys
import numpy as np
import onnxruntime as ort


def status(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: peak since start (coarser)


path, height, width, warm_h, warm_w, arena = sys.argv[1], *map(int, sys.argv[2:7])
opts = ort.SessionOptions()
opts.log_severity_level = 3
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.enable_mem_pattern = False  # as stlpips_rt.engine.providers.session_options
opts.enable_cpu_mem_arena = bool(arena)
session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
small = np.zeros((1, 3, warm_h, warm_w), np.float32)
session.run(None, {"in0": small, "in1": small})
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (the peak resident set) to the current resident set
except OSError:
    pass
before = status("VmRSS")
rng = np.random.default_rng(0)
pair = []
for _ in range(2):
    x = rng.random((1, 3, height, width), dtype=np.float32)
    x *= 2
    x -= 1
    pair.append(x)
session.run(None, {"in0": pair[0], "in1": pair[1]})
after = status("VmHWM")
print(json.dumps({"bytes": after - before}))
"""


def probe(path: Path, height: int, width: int, warm: tuple[int, int], arena: bool = True) -> int:
    """Peak working memory (bytes) of one ``height x width`` pair through the graph at ``path``, in a fresh
    process warmed up with a ``warm`` pair; ``arena=False`` without onnxruntime's CPU arena (what the graph's own
    tensors need, for comparing graphs)."""
    command = [sys.executable, "-c", _PROBE, str(path), str(height), str(width), *map(str, warm), str(int(arena))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"memory probe of {path.name} at {height}x{width} failed: {done.stderr.strip()[-400:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["bytes"])


def measure_bytes_per_pixel(path: Path, min_size: int, static_hw: tuple[int, int] | None = None) \
        -> tuple[int, dict[str, int]]:
    """The largest per-pixel rate over sizes spanning one arena doubling (rounded up to 8 bytes), and every
    sampled rate by size. A static-size graph runs one size only, and is measured at it."""
    if static_hw:
        rate = probe(path, *static_hw, static_hw) / (static_hw[0] * static_hw[1])
        return int(math.ceil(rate / 8) * 8), {f"{static_hw[0]}x{static_hw[1]}": round(rate)}
    warm = (max(min_size, 32),) * 2
    rough = max(64.0, probe(path, _ROUGH_SIDE, _ROUGH_SIDE, warm) / _ROUGH_SIDE**2)
    rates: dict[str, float] = {}
    for step in range(PROBE_STEPS):
        target = PROBE_BYTES * 2 ** (step / (PROBE_STEPS - 1))
        side = max(min_size, _ROUGH_SIDE // 2, round(math.sqrt(target / rough) / 16) * 16)
        if f"{side}x{side}" not in rates:
            rates[f"{side}x{side}"] = probe(path, side, side, warm) / side**2
    worst = max(rates.values())
    return int(math.ceil(worst / 8) * 8), {size: round(rate) for size, rate in rates.items()}
