"""Working memory of one pair per pixel of an image, onnxruntime CPU provider, with its arena (as the Scorer runs)
and without it (what the graph's own tensors need), each in a fresh process. For comparing two exports of a graph:

    python scripts/measure_bytes_per_pixel.py OLD.onnx NEW.onnx --sizes 768x1024,1024x1536
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import sys, numpy as np, onnxruntime as ort
path, h, w, arena = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
options = ort.SessionOptions()
options.log_severity_level = 3
options.enable_mem_pattern = False  # as stlpips_rt's sessions
options.intra_op_num_threads = 2
options.enable_cpu_mem_arena = arena
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
small = np.zeros((1, 3, 32, 32), np.float32)
session.run(["dist"], {"in0": small, "in1": small})
rng = np.random.default_rng(0)
a, b = rng.uniform(-1, 1, (2, 1, 3, h, w)).astype(np.float32)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak mark
before = status("VmRSS")
session.run(["dist"], {"in0": a, "in1": b})
print(round((status("VmHWM") - before) / (h * w)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--sizes", default="768x1024,1024x1536", help="HxW,... of the pair")
    args = parser.parse_args()
    print("| model | size | with arena, bytes per pixel | without arena |")
    print("|---|---|---|---|")
    for model in args.models:
        for size in args.sizes.split(","):
            h, w = size.split("x")
            rates = [subprocess.run([sys.executable, "-c", CHILD, model, h, w, arena], capture_output=True,
                                    text=True, check=True).stdout.strip() for arena in ("1", "0")]
            print(f"| {model} | {size} | {rates[0]} | {rates[1]} |")


if __name__ == "__main__":
    main()
