"""Each backbone convolution alone: onnxruntime's CPU kernels (MLAS, the blocked NCHWc layout) against the oneDNN
kernels a compiled PyTorch peer calls (``torch.compile`` with inductor freezing, ``channels_last``), same shapes,
same weights, same threads.

Where the exact runtime trails the compiled peer on a convolution-bound model, this says which layers carry the
gap: the graph around the convolutions can be changed, the kernels cannot.

    python scripts/compare_conv_kernels.py --net vgg --size 64 --batch 16

Each input runs its own backbone pass in the exported graph, so ``--batch`` images go through every layer per
pass. Times are the best of ``--rounds`` alternating rounds of ``--seconds`` each.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from stlpips_export.model import build_model


def backbone_convolutions(net: str, size: int) -> list[tuple[torch.nn.Conv2d, tuple[int, ...]]]:
    """Each dense convolution of the ST variant's backbone with its input shape (batch 1) at ``size`` x ``size``,
    in order. Depthwise BlurPool filters and 1x1 head convolutions are left out: they are a few percent."""
    model = build_model(net, "st").eval()
    found: dict[torch.nn.Conv2d, tuple[int, ...]] = {}

    def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        found.setdefault(module, tuple(args[0].shape))  # a hook that returned a value would replace the output

    hooks = [m.register_forward_hook(record) for m in model.net.modules()
             if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    with torch.no_grad():
        image = torch.zeros(1, 3, size, size)
        model(image, image)
    for hook in hooks:
        hook.remove()
    return list(found.items())


def onnxruntime_conv(conv: torch.nn.Conv2d, threads: int) -> ort.InferenceSession:
    weight = numpy_helper.from_array(conv.weight.detach().numpy(), "w")
    bias = numpy_helper.from_array(conv.bias.detach().numpy(), "b")
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[conv.padding[0]] * 2 + [conv.padding[1]] * 2,
                            strides=list(conv.stride), kernel_shape=list(conv.kernel_size))
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             ["N", conv.in_channels, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, bias])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def best_seconds(call: Callable[[], object], seconds: float) -> float:
    call()
    call()
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default="vgg", choices=["alex", "vgg"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()

    import torch._inductor.config

    torch._inductor.config.freezing = True
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for conv, shape in backbone_convolutions(args.net, args.size):
        x = rng.uniform(0, 1, (args.batch, *shape[1:])).astype(np.float32)
        session = onnxruntime_conv(conv, args.threads)
        module = torch.compile(torch.nn.Sequential(conv).to(memory_format=torch.channels_last), dynamic=False)
        tensor = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            module(tensor)  # compiles
            ort_s = torch_s = float("inf")
            for _ in range(args.rounds):
                ort_s = min(ort_s, best_seconds(lambda: session.run(None, {"x": x}), args.seconds))  # noqa: B023
                torch_s = min(torch_s, best_seconds(lambda: module(tensor), args.seconds))  # noqa: B023
        out_h = (shape[2] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        out_w = (shape[3] + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
        flops = 2 * args.batch * conv.out_channels * conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] \
            * out_h * out_w
        rows.append((f"{conv.in_channels}->{conv.out_channels} {conv.kernel_size[0]}x{conv.kernel_size[1]} "
                     f"at {shape[2]}x{shape[3]}", ort_s, torch_s, flops))
        print(f"measured {rows[-1][0]}", flush=True)

    print(f"\n{args.net}-st backbone at {args.size}x{args.size}, batch {args.batch}, {args.threads} threads; "
          f"best of {args.rounds} rounds\n")
    print("| convolution | onnxruntime ms | GFLOP/s | compiled PyTorch ms | GFLOP/s | onnxruntime / compiled time |")
    print("|---|---|---|---|---|---|")
    for name, ort_s, torch_s, flops in rows:
        print(f"| {name} | {ort_s * 1e3:.2f} | {flops / ort_s / 1e9:.0f} | {torch_s * 1e3:.2f} | "
              f"{flops / torch_s / 1e9:.0f} | {ort_s / torch_s:.2f} |")
    total_ort, total_torch = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"| all, one pass | {total_ort * 1e3:.1f} | | {total_torch * 1e3:.1f} | | {total_ort / total_torch:.2f} |")


if __name__ == "__main__":
    main()
