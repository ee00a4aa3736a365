"""GPU tensors from any library, read without a copy and without importing that library.

Two protocols are understood:

- ``__cuda_array_interface__`` (PyTorch, CuPy, Numba): a dict with the data pointer, shape, ``typestr`` and
  strides. It carries no device index: ``__dlpack_device__()`` gives it where the object has one, otherwise the
  CUDA driver is asked which device owns the pointer.
- DLPack (PyTorch, CuPy, JAX, ...): ``__dlpack_device__()`` says where the data lives, without side effects;
  ``__dlpack__()`` returns a capsule holding a ``DLManagedTensor`` (or the versioned struct), read here with
  ctypes. The capsule is not consumed (its name stays "dltensor"), so the producer's deleter runs when the capsule
  is collected, which happens after the run that used it: :class:`DeviceTensor` keeps it alive until then.

Anything else (numpy arrays, lists, paths, PIL images, CPU tensors) is left to the host path (``images.py``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DeviceTensorError

# DLPack device types (dlpack.h, DLDeviceType).
KDL_CPU, KDL_CUDA, KDL_CUDA_HOST, KDL_CUDA_MANAGED = 1, 2, 3, 13
CUDA_DEVICE_TYPES = (KDL_CUDA, KDL_CUDA_MANAGED)
DEVICE_NAMES = {KDL_CPU: "cpu", KDL_CUDA: "cuda", KDL_CUDA_HOST: "cuda_host", KDL_CUDA_MANAGED: "cuda"}
# DLPack dtype codes (DLDataTypeCode) -> numpy kind; bfloat16 (code 4) has no numpy dtype.
_DL_KINDS = {0: "i", 1: "u", 2: "f", 5: "c", 6: "b"}


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", _DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    ]


_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype, _capsule_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype, _capsule_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]


@dataclass(frozen=True)
class DeviceTensor:
    """A dense C-contiguous tensor in device (or host) memory: where it is, what it holds, and what keeps it alive."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype
    device: str  # "cuda" or "cpu"
    device_id: int | None  # None: not known (a __cuda_array_interface__ pointer the driver was not asked about)
    keepalive: tuple[Any, ...] = ()

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def rows(self, start: int, stop: int) -> DeviceTensor:
        """Items ``start:stop`` along the first axis: the same memory at an offset (no copy)."""
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.itemsize
        return DeviceTensor(self.ptr + start * row, (stop - start, *self.shape[1:]), self.dtype, self.device,
                            self.device_id, self.keepalive)

    def with_batch_axis(self) -> DeviceTensor:
        """``[C, H, W]`` -> ``[1, C, H, W]``; 4-D tensors unchanged."""
        if len(self.shape) == 3:
            return DeviceTensor(self.ptr, (1, *self.shape), self.dtype, self.device, self.device_id, self.keepalive)
        return self


def _check_contiguous(shape: Sequence[int], strides: Sequence[int] | None, itemsize: int, name: str) -> None:
    """``strides`` in bytes (None: C-contiguous). Axes of length 1 may have any stride."""
    if strides is None:
        return
    expected = itemsize
    for size, stride in zip(reversed(shape), reversed(strides), strict=True):
        if size != 1 and stride != expected:
            raise DeviceTensorError(name, f"tensor of shape {tuple(shape)} is not C-contiguous (strides "
                                          f"{tuple(strides)} bytes); pass a contiguous tensor (x.contiguous())")
        expected *= size


def _cuda_pointer_device(ptr: int) -> int | None:
    """The CUDA device that owns ``ptr``, asked of the driver (cuPointerGetAttribute); None where it cannot say."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    query = cuda.cuPointerGetAttribute
    query.restype, query.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64]
    ordinal = ctypes.c_int(-1)
    pointer_attribute_device_ordinal = 9  # CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
    status = query(ctypes.byref(ordinal), pointer_attribute_device_ordinal, ptr)
    return ordinal.value if status == 0 and ordinal.value >= 0 else None


def _dlpack_device(obj: Any) -> tuple[int, int] | None:
    method = getattr(obj, "__dlpack_device__", None)
    if method is None:
        return None
    device_type, device_id = method()
    return int(device_type), int(device_id)


def from_cuda_array_interface(obj: Any, name: str, interface: dict[str, Any] | None = None) -> DeviceTensor:
    """Read ``obj.__cuda_array_interface__`` (versions 0-3)."""
    cai = interface if interface is not None else obj.__cuda_array_interface__
    if cai.get("mask") is not None:
        raise DeviceTensorError(name, "masked __cuda_array_interface__ arrays are not supported; pass a plain tensor")
    try:
        dtype = np.dtype(cai["typestr"])
        ptr, _readonly = cai["data"]
        shape = tuple(int(s) for s in cai["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DeviceTensorError(name, f"malformed __cuda_array_interface__ ({exc})") from None
    strides = cai.get("strides")
    _check_contiguous(shape, None if strides is None else [int(s) for s in strides], dtype.itemsize, name)
    where = _dlpack_device(obj)
    device_id = where[1] if where is not None else (_cuda_pointer_device(ptr) if ptr else None)
    return DeviceTensor(int(ptr or 0), shape, dtype, "cuda", device_id, (obj,))


def from_dlpack(obj: Any, name: str) -> DeviceTensor:
    """Read the tensor behind ``obj.__dlpack__()`` (or a DLPack capsule itself) without consuming the capsule."""
    capsule = obj.__dlpack__() if hasattr(obj, "__dlpack__") else obj
    try:
        kind = _capsule_name(capsule)
    except (TypeError, ValueError):
        raise DeviceTensorError(name, f"__dlpack__ returned {type(capsule).__name__}, not a DLPack capsule") from None
    if kind == b"dltensor":
        managed = _DLManagedTensor.from_address(_capsule_pointer(capsule, kind))
    elif kind == b"dltensor_versioned":
        managed = _DLManagedTensorVersioned.from_address(_capsule_pointer(capsule, kind))
    else:
        raise DeviceTensorError(name, f"DLPack capsule named {kind!r} was already consumed or is not a tensor")
    t = managed.dl_tensor
    shape = tuple(int(t.shape[i]) for i in range(t.ndim))
    code, bits, lanes = t.dtype.code, t.dtype.bits, t.dtype.lanes
    if lanes != 1 or code not in _DL_KINDS:
        label = "bfloat16" if code == 4 and bits == 16 else f"DLPack dtype code {code}, {bits} bits, {lanes} lanes"
        raise DeviceTensorError(name, f"tensor of dtype {label}; the graph takes float32 (x.float())")
    dtype = np.dtype(f"{_DL_KINDS[code]}{bits // 8}") if code != 6 else np.dtype(bool)
    strides = None
    if t.strides:
        strides = [int(t.strides[i]) * dtype.itemsize for i in range(t.ndim)]
    _check_contiguous(shape, strides, dtype.itemsize, name)
    device = DEVICE_NAMES.get(t.device.device_type, f"DLPack device {t.device.device_type}")
    return DeviceTensor(int(t.data or 0) + int(t.byte_offset), shape, dtype, device, int(t.device.device_id),
                        (obj, capsule))


def device_tensor(obj: Any, name: str) -> DeviceTensor | None:
    """A CUDA tensor as a :class:`DeviceTensor`; None for anything else, which the host path takes."""
    if isinstance(obj, (np.ndarray, str, bytes, list, tuple)) or obj is None:
        return None
    try:
        interface = obj.__cuda_array_interface__
    except AttributeError:
        interface = None
    except Exception as exc:  # e.g. PyTorch refuses tensors that require grad
        raise DeviceTensorError(name, f"{type(obj).__name__} does not share its memory ({exc})") from None
    if interface is not None:
        return from_cuda_array_interface(obj, name, interface)
    try:
        where = _dlpack_device(obj)
    except Exception:  # a __dlpack_device__ that fails is not a device tensor we can use
        return None
    if where is None or where[0] not in CUDA_DEVICE_TYPES:
        return None
    try:
        return from_dlpack(obj, name)
    except DeviceTensorError:
        raise
    except Exception as exc:
        raise DeviceTensorError(name, f"{type(obj).__name__}.__dlpack__() failed ({exc})") from None


class DeviceArray:
    """Scores left in device memory, for callers whose next step is on the GPU too.

    Hand it to any library through DLPack (``torch.from_dlpack(x)``, ``cupy.from_dlpack(x)``) or
    ``__cuda_array_interface__`` (``torch.as_tensor(x, device="cuda")``, ``cupy.asarray(x)``); ``numpy()``
    copies it to the host. ``ortvalue`` is the onnxruntime value that owns the memory.
    """

    def __init__(self, ortvalue: Any, shape: tuple[int, ...], device: str, device_id: int) -> None:
        self.ortvalue = ortvalue
        self.shape = tuple(shape)
        self.dtype = np.dtype(np.float32)
        self.device = device
        self.device_id = device_id

    def __repr__(self) -> str:
        return f"DeviceArray(shape={self.shape}, dtype=float32, device='{self.device}:{self.device_id}')"

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def data_ptr(self) -> int:
        return int(self.ortvalue.data_ptr())

    def __dlpack__(self, *, stream: Any = None, **_ignored: Any) -> Any:
        if not hasattr(self.ortvalue, "__dlpack__"):
            raise TypeError("this onnxruntime's OrtValue has no DLPack export (onnxruntime >= 1.31 has); use "
                            "__cuda_array_interface__ (torch.as_tensor(x, device='cuda')) or numpy()")
        return self.ortvalue.__dlpack__(stream=stream)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (KDL_CUDA if self.device == "cuda" else KDL_CPU), self.device_id

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        if self.device != "cuda":
            raise AttributeError("__cuda_array_interface__: this DeviceArray is in host memory")
        # stream None: onnxruntime's work on it was synchronized before it was returned.
        return {"shape": self.shape, "typestr": "<f4", "data": (self.data_ptr, False), "version": 3,
                "strides": None, "stream": None}

    def numpy(self) -> np.ndarray:
        """A host copy."""
        return np.asarray(self.ortvalue.numpy(), dtype=np.float32).reshape(self.shape)
