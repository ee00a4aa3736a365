"""Scoring tensors that already live on the GPU: bound to the graph with I/O binding, no host round trip.

The inputs are bound by pointer (``IOBinding.bind_input(name, "cuda", device_id, float32, shape, ptr)``), chunks of
``batch_size`` items by pointer offsets, and every chunk's outputs are written by onnxruntime straight into one
preallocated buffer: a numpy array (host scores, copied by onnxruntime) or an OrtValue on the device
(:class:`~stlpips_rt.device_tensors.DeviceArray`).

Ordering with the producer's CUDA stream: ``IOBinding.synchronize_inputs()`` waits for the device (the CUDA
provider's ``Sync`` is a device synchronisation) before the first run, so work queued on any stream by the library
that made the tensor is finished before onnxruntime reads it; ``synchronize_outputs()`` does the same before the
scores are handed back.

Device tensors cannot be inspected without a copy, so they must already be what the graph takes: float32 NCHW
RGB in [-1, 1], C-contiguous. Shapes, dtype, device and layout are checked; values are not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from ..errors import ChannelError, DeviceTensorError, ImageSizeError, InferenceError
from .device_tensors import DeviceArray, DeviceTensor, device_tensor

# Which session providers can read memory on which device.
PROVIDERS_FOR_DEVICE = {"cuda": ("cuda", "tensorrt"), "cpu": ("cpu",)}


def _device_items(items: Any, name: str) -> DeviceTensor | None:
    found = device_tensor(items, name)
    if found is None and isinstance(items, (list, tuple)) and items and device_tensor(items[0], f"{name}[0]"):
        raise DeviceTensorError(name, "a list of GPU tensors would have to be stacked (a copy); pass one "
                                      "[N, 3, H, W] tensor (torch.stack(...) on the device)")
    return found


def device_pair(a: Any, b: Any, names: tuple[str, str] = ("a", "b")) -> tuple[DeviceTensor, DeviceTensor] | None:
    """Both inputs as device tensors, None when neither is one; one on the GPU and one on the host is an error."""
    x0, x1 = _device_items(a, names[0]), _device_items(b, names[1])
    if x0 is None and x1 is None:
        return None
    if x0 is None or x1 is None:
        host = names[0] if x0 is None else names[1]
        raise DeviceTensorError(host, "is a host array while the other input is a GPU tensor; pass both on the "
                                      "GPU (zero-copy) or both on the host")
    return x0, x1


def check_float_range(float_range: str | None, name: str) -> None:
    if float_range not in (None, "-1,1"):
        raise DeviceTensorError(name, f"GPU tensors are bound as they are and must already be in [-1, 1], not "
                                      f"{float_range}; convert on the device (x * 2 - 1)")


class DeviceRunner:
    """Runs device tensors through one Scorer's onnxruntime session."""

    def __init__(self, session: Any, provider: str, device_id: int, min_size: int,
                 static_hw: tuple[int, int] | None, num_layers: int | None = None) -> None:
        self.session, self.provider, self.device_id = session, provider, device_id
        self.min_size, self.static_hw, self.num_layers = min_size, static_hw, num_layers
        # Declared output shapes (OpenVINO's own runtime declares none; it takes no device tensors anyway).
        self.output_shapes = {o.name: list(getattr(o, "shape", None) or []) for o in session.get_outputs()}

    # --- checks ----------------------------------------------------------------------------------------------
    def _check(self, x: DeviceTensor, name: str) -> DeviceTensor:
        if x.device not in PROVIDERS_FOR_DEVICE or self.provider not in PROVIDERS_FOR_DEVICE[x.device]:
            raise DeviceTensorError(name, f"tensor in {x.device} memory, but this Scorer runs on {self.provider}; "
                                          "create it with providers='cuda' for GPU tensors, or pass host arrays")
        if not hasattr(self.session, "io_binding"):
            raise DeviceTensorError(name, f"the {self.provider} session here has no I/O binding; pass host arrays")
        if x.device == "cuda" and x.device_id is not None and x.device_id != self.device_id:
            raise DeviceTensorError(name, f"tensor on cuda:{x.device_id}, but this Scorer runs on "
                                          f"cuda:{self.device_id}; create it with device_id={x.device_id}")
        if x.dtype != np.float32:
            raise DeviceTensorError(name, f"tensor of dtype {x.dtype}; the graph takes float32 in [-1, 1] "
                                          "(x.float())")
        x = x.with_batch_axis()
        if len(x.shape) != 4:
            raise DeviceTensorError(name, f"tensor of shape {x.shape}; expected [N, 3, H, W] (or [3, H, W])")
        if x.shape[1] != 3:
            raise ChannelError(name, f"tensor of shape {x.shape} has {x.shape[1]} channels on axis 1; GPU tensors "
                                     "must be NCHW RGB (x.permute(0, 3, 1, 2).contiguous() for NHWC)")
        h, w = x.shape[2:]
        if min(h, w) < self.min_size:
            raise ImageSizeError(name, f"{h}x{w} is below this model's minimum size {self.min_size}x{self.min_size}")
        if self.static_hw and (h, w) != tuple(self.static_hw):
            raise ImageSizeError(name, f"{h}x{w}, but this model was exported for "
                                       f"{self.static_hw[0]}x{self.static_hw[1]} only")
        return x

    def _output_shape(self, name: str, n: int, h: int, w: int) -> list[int]:
        """The contract's output shapes: dist [N], dist_layers [N, L], dist_map [N, 1, H, W]."""
        if name == "dist":
            return [n]
        if name == "dist_map":
            return [n, 1, h, w]
        declared = self.output_shapes.get(name, [])
        layers = self.num_layers or (declared[1] if len(declared) == 2 and isinstance(declared[1], int) else None)
        if not layers:
            raise InferenceError(f"the number of layers of {name} is not known (no stlpips.num_layers); score it "
                                 "with host arrays")
        return [n, layers]

    # --- running ---------------------------------------------------------------------------------------------
    def run(self, in0: DeviceTensor, in1: DeviceTensor, outputs: Sequence[str], batch_size: int,
            device_output: bool = False, names: tuple[str, str] = ("in0", "in1")) -> list[np.ndarray | DeviceArray]:
        """Score ``in0`` against ``in1`` (equal batches, or either of batch 1: broadcast) in runs of at most
        ``batch_size`` items; every output comes back whole, as numpy or (``device_output``) as DeviceArray."""
        in0, in1 = self._check(in0, names[0]), self._check(in1, names[1])
        if in0.device != in1.device:
            raise DeviceTensorError(names[1], f"in {in1.device} memory while {names[0]} is in {in0.device} memory")
        if in0.shape[2:] != in1.shape[2:]:
            raise ImageSizeError(f"{names[0]} vs {names[1]}", f"sizes differ: {in0.shape[2:]} vs {in1.shape[2:]}")
        n0, n1 = in0.shape[0], in1.shape[0]
        if n0 != n1 and (1 not in (n0, n1) or 0 in (n0, n1)):
            raise ImageSizeError(f"{names[0]} vs {names[1]}", f"batches of {n0} and {n1}; pass equal batches, or "
                                                              "one of batch 1 (one reference against many)")
        n, (h, w) = max(n0, n1), in0.shape[2:]
        device, device_id = in0.device, self.device_id
        shapes = {name: self._output_shape(name, n, h, w) for name in outputs}
        if n == 0:
            return [np.zeros(shape, dtype=np.float32) for shape in shapes.values()]
        if device_output:
            buffers: dict[str, Any] = {
                name: ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, device, device_id)
                for name, shape in shapes.items()}
            pointers = {name: int(v.data_ptr()) for name, v in buffers.items()}
            out_device = device
        else:
            buffers = {name: np.empty(shape, dtype=np.float32) for name, shape in shapes.items()}
            pointers = {name: int(a.ctypes.data) for name, a in buffers.items()}
            out_device = "cpu"
        row_bytes = {name: 4 * int(np.prod(shape[1:], dtype=np.int64)) for name, shape in shapes.items()}
        try:
            binding = None
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                part0 = in0 if n0 == 1 and n > 1 else in0.rows(start, stop)
                part1 = in1 if n1 == 1 and n > 1 else in1.rows(start, stop)
                binding = self.session.io_binding()
                binding.bind_input("in0", device, device_id, np.float32, list(part0.shape), part0.ptr)
                binding.bind_input("in1", device, device_id, np.float32, list(part1.shape), part1.ptr)
                for name in outputs:
                    binding.bind_output(name, out_device, device_id if out_device == device else 0, np.float32,
                                        [stop - start, *shapes[name][1:]], pointers[name] + start * row_bytes[name])
                if start == 0:
                    binding.synchronize_inputs()  # the producer's queued work on the inputs is done
                self.session.run_with_iobinding(binding)
            if binding is not None:
                binding.synchronize_outputs()
        except Exception as exc:
            raise InferenceError(f"onnxruntime failed on GPU tensors of shapes {in0.shape} and {in1.shape} on "
                                 f"{self.provider}: {exc}") from None
        if device_output:
            return [DeviceArray(buffers[name], tuple(shapes[name]), device, device_id) for name in outputs]
        return [buffers[name] for name in outputs]
