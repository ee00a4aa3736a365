"""Two exports of the same models, A against B: pairs per CPU second of one thread (so other jobs on the machine
cost both the same), alternating rounds in one process, onnxruntime CPU (float32) and OpenVINO bf16. For a graph
change's speed-up, before and after:

    python scripts/compare_graphs.py OLD_DIR NEW_DIR --nets alex,vgg

scripts/bench_default_graph.py asks the same question of two files through the Scorer, per wall second, on the CPU
provider only; this one runs bare sessions on one thread and adds OpenVINO bf16, so that a loaded machine does
not decide the answer.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

CONFIGS = ((64, 16), (256, 4))


def onnxruntime_run(path: str, a: np.ndarray, b: np.ndarray) -> Callable[[], object]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_mem_pattern = False
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda: session.run(["dist"], {"in0": a, "in1": b})


def openvino_run(path: str, a: np.ndarray, b: np.ndarray) -> Callable[[], object]:
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "bf16",
                                                     "INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda: request.infer({"in0": a, "in1": b})


def rate(run: Callable[[], object], batch: int, seconds: float) -> float:
    count, start = 0, time.thread_time()
    while time.thread_time() - start < seconds:
        run()
        count += 1
    return count * batch / (time.thread_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="folder of the first exports (stlpips_NET_st.onnx)")
    parser.add_argument("b", help="folder of the second exports")
    parser.add_argument("--nets", default="alex,vgg")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| model | size, batch | engine | A pairs per CPU s | B | B / A (median, rounds) |")
    print("|---|---|---|---|---|---|")
    for net in args.nets.split(","):
        for size, batch in CONFIGS:
            a, b = rng.uniform(-1, 1, (2, batch, 3, size, size)).astype(np.float32)
            for engine, make in (("onnxruntime CPU fp32", onnxruntime_run), ("OpenVINO bf16", openvino_run)):
                runs = [make(f"{folder}/stlpips_{net}_st.onnx", a, b) for folder in (args.a, args.b)]
                for run in runs:
                    run()
                rates = np.array([[rate(run, batch, args.seconds) for run in runs] for _ in range(args.rounds)])
                ratios = rates[:, 1] / rates[:, 0]
                spread = f"{ratios.min():.3f}-{ratios.max():.3f}"
                print(f"| {net}-st | {size}x{size}, {batch} | {engine} | {np.median(rates[:, 0]):.1f} | "
                      f"{np.median(rates[:, 1]):.1f} | {np.median(ratios):.3f}x ({spread}) |", flush=True)


if __name__ == "__main__":
    main()
