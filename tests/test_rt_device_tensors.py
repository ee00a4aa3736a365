"""GPU tensors without a GPU: the ``__cuda_array_interface__`` and DLPack readers on fake device tensors backed by
host memory and on numpy's own DLPack export, the pointer / chunk / broadcast logic through real onnxruntime I/O
binding on the CPU, and the Scorer's dispatch through a session that maps "cuda" to host memory.
tests/test_rt_gpu.py repeats the dispatch with PyTorch and CuPy tensors on a real GPU."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from stlpips_rt import ChannelError, DeviceArray, DeviceTensorError, ImageSizeError, Scorer
from stlpips_rt.engine import device_tensors as dt
from stlpips_rt.engine.device_run import DeviceRunner
from stlpips_rt.engine.device_tensors import device_tensor, from_dlpack

_new_capsule = ctypes.pythonapi.PyCapsule_New
_new_capsule.restype, _new_capsule.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def batch(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    """float32 NCHW in [-1, 1], C-contiguous."""
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


class FakeCudaArray:
    """Claims to be a CUDA tensor through ``__cuda_array_interface__``; its memory is ``host``'s."""

    def __init__(self, host: np.ndarray, device_id: int | None = 0, typestr: str | None = None,
                 strides: tuple[int, ...] | None = None, **extra: Any) -> None:
        self.host, self.device_id = host, device_id
        self.interface = {"shape": host.shape, "typestr": typestr or host.dtype.str, "version": 3,
                          "data": (host.ctypes.data, False), "strides": strides, "stream": None, **extra}

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return self.interface


class FakeCudaArrayWithDevice(FakeCudaArray):
    def __dlpack_device__(self) -> tuple[int, int]:
        return dt.KDL_CUDA, self.device_id


class FakeDLPackCuda:
    """Only DLPack: ``__dlpack__`` returns a capsule whose DLTensor says cuda:``device_id`` over ``host``'s memory."""

    def __init__(self, host: np.ndarray, device_id: int = 0, code: int = 2, bits: int = 32,
                 versioned: bool = False, name: bytes | None = None) -> None:
        self.host, self.device_id = host, device_id
        self._shape = (ctypes.c_int64 * host.ndim)(*host.shape)
        struct = dt._DLManagedTensorVersioned() if versioned else dt._DLManagedTensor()
        t = struct.dl_tensor
        t.data, t.ndim, t.byte_offset = host.ctypes.data, host.ndim, 0
        t.device.device_type, t.device.device_id = dt.KDL_CUDA, device_id
        t.dtype.code, t.dtype.bits, t.dtype.lanes = code, bits, 1
        t.shape = ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64))
        self._struct = struct
        self._name = name or (b"dltensor_versioned" if versioned else b"dltensor")

    def __dlpack_device__(self) -> tuple[int, int]:
        return dt.KDL_CUDA, self.device_id

    def __dlpack__(self, stream: Any = None) -> Any:
        # No destructor: the struct lives as long as this object, as a producer's manager context would.
        return _new_capsule(ctypes.addressof(self._struct), self._name, None)


# --- reading the protocols -----------------------------------------------------------------------------------
def test_cuda_array_interface_gives_pointer_shape_dtype_and_device() -> None:
    host = batch(2)
    t = device_tensor(FakeCudaArrayWithDevice(host, device_id=0), "a")
    assert (t.ptr, t.shape, t.dtype, t.device, t.device_id) == (host.ctypes.data, (2, 3, 40, 40), np.float32,
                                                                  "cuda", 0)


def test_cuda_array_interface_without_dlpack_asks_the_driver_for_the_device(monkeypatch) -> None:
    host = batch(1)
    monkeypatch.setattr(dt, "_cuda_pointer_device", lambda ptr: 3 if ptr == host.ctypes.data else None)
    assert device_tensor(FakeCudaArray(host), "a").device_id == 3


def test_cuda_array_interface_layouts_are_checked() -> None:
    host = batch(2)
    c_strides = host.strides
    assert device_tensor(FakeCudaArray(host, strides=c_strides), "a").ptr == host.ctypes.data
    with pytest.raises(DeviceTensorError, match=r"a: .*not C-contiguous.*x\.contiguous\(\)"):
        device_tensor(FakeCudaArray(host, strides=(c_strides[0], c_strides[1], 4, c_strides[2])), "a")
    with pytest.raises(DeviceTensorError, match="masked"):
        device_tensor(FakeCudaArray(host, mask=object()), "a")
    assert device_tensor(FakeCudaArray(host.astype(np.float16)), "a").dtype == np.float16


def test_numpy_dlpack_capsules_are_read_without_consuming_them() -> None:
    host = batch(3)
    t = from_dlpack(host, "x")
    assert (t.ptr, t.shape, t.dtype, t.device, t.device_id) == (host.ctypes.data, host.shape, np.float32, "cpu", 0)
    tail = from_dlpack(host[1:], "x")
    assert tail.ptr == host.ctypes.data + host[0].nbytes == t.rows(1, 3).ptr
    with pytest.raises(DeviceTensorError, match="not C-contiguous"):
        from_dlpack(host[:, :, :, ::2], "x")
    capsule = host.__dlpack__()
    from_dlpack(capsule, "x")
    assert "dltensor" in repr(capsule) and "used" not in repr(capsule)  # still the producer's to free


def test_fake_cuda_dlpack_tensors_plain_and_versioned() -> None:
    host = batch(2)
    for versioned in (False, True):
        t = device_tensor(FakeDLPackCuda(host, device_id=1, versioned=versioned), "b")
        assert (t.ptr, t.shape, t.dtype, t.device, t.device_id) == (host.ctypes.data, host.shape, np.float32,
                                                                      "cuda", 1)
    with pytest.raises(DeviceTensorError, match="bfloat16.*float32"):
        device_tensor(FakeDLPackCuda(host, code=4, bits=16), "b")
    with pytest.raises(DeviceTensorError, match="already consumed"):
        device_tensor(FakeDLPackCuda(host, name=b"used_dltensor"), "b")


def test_host_objects_are_left_to_the_host_path() -> None:
    class RefusesToShare:  # what PyTorch does for a CUDA tensor that requires grad
        @property
        def __cuda_array_interface__(self) -> dict:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")

    for item in (batch(1), [batch(1)], "x.png", Path("x.png"), Image.new("RGB", (8, 8)), None, 3.0):
        assert device_tensor(item, "a") is None
    with pytest.raises(DeviceTensorError, match="does not share its memory.*requires grad"):
        device_tensor(RefusesToShare(), "a")


# --- running through onnxruntime I/O binding ----------------------------------------------------------------
@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


@pytest.fixture(scope="module")
def cpu_scorer(model: Path) -> Scorer:
    return Scorer(model, providers="cpu", batch_size=2)


@pytest.mark.parametrize(("n0", "n1"), [(5, 5), (1, 5), (5, 1), (1, 1)])
def test_pointer_chunks_and_broadcast_give_the_graph_numbers(cpu_scorer: Scorer, n0: int, n1: int) -> None:
    x0, x1 = batch(n0, seed=1), batch(n1, seed=2)
    expected = cpu_scorer.run_arrays(x0, x1)[0]
    runner = cpu_scorer._device  # DLPack tensors in host memory, bound by pointer to the CPU session
    got = runner.run(from_dlpack(x0, "in0"), from_dlpack(x1, "in1"), ["dist"], batch_size=2)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    kept = runner.run(from_dlpack(x0, "in0"), from_dlpack(x1, "in1"), ["dist"], batch_size=2, device_output=True)[0]
    assert isinstance(kept, DeviceArray) and kept.shape == expected.shape
    np.testing.assert_allclose(kept.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.from_dlpack(kept), expected, rtol=0, atol=1e-6)


def test_spatial_and_layer_outputs_are_filled_chunk_by_chunk(exported_model) -> None:
    scorer = Scorer(exported_model("alex", "st", spatial=True, layers=True), providers="cpu")
    x0, x1 = batch(3, size=48, seed=3), batch(3, size=48, seed=4)
    outputs = ["dist", "dist_layers", "dist_map"]
    expected = scorer.run_arrays(x0, x1, outputs)
    got = scorer._device.run(from_dlpack(x0, "in0"), from_dlpack(x1, "in1"), outputs, batch_size=2)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)


class CudaOnHostSession:
    """A CPU session that accepts bindings to "cuda" and serves them from host memory, recording every call."""

    def __init__(self, real: ort.InferenceSession) -> None:
        self.real, self.calls = real, []

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def io_binding(self) -> Any:
        session = self

        class Binding:
            def __init__(self) -> None:
                self.real = session.real.io_binding()

            def bind_input(self, name, device, device_id, dtype, shape, ptr) -> None:
                session.calls.append(("bind_input", name, device, device_id, tuple(shape), ptr))
                self.real.bind_input(name, "cpu", 0, dtype, shape, ptr)

            def bind_output(self, name, device, device_id, dtype, shape, ptr) -> None:
                session.calls.append(("bind_output", name, device, device_id, tuple(shape), ptr))
                self.real.bind_output(name, "cpu", 0, dtype, shape, ptr)

            def synchronize_inputs(self) -> None:
                session.calls.append(("synchronize_inputs",))

            def synchronize_outputs(self) -> None:
                session.calls.append(("synchronize_outputs",))

        return Binding()

    def run_with_iobinding(self, binding: Any) -> None:
        self.real.run_with_iobinding(binding.real)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def gpu_scorer(model: Path, monkeypatch) -> Scorer:
    """A Scorer that believes it runs on cuda:0; "device" memory is host memory."""
    scorer = Scorer(model, providers="cpu", batch_size=2)
    fake = CudaOnHostSession(scorer._session)
    scorer._session, scorer.provider = fake, "cuda"
    scorer._device = DeviceRunner(fake, "cuda", 0, scorer.info.min_size, scorer.info.static_hw)
    real_alloc = ort.OrtValue.ortvalue_from_shape_and_type

    def alloc(shape: Any, dtype: Any, device: str = "cpu", device_id: int = 0) -> Any:
        assert device == "cuda"
        return real_alloc(shape, dtype, "cpu", 0)

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_shape_and_type", staticmethod(alloc))
    return scorer


@pytest.mark.parametrize("kind", [FakeCudaArrayWithDevice, FakeDLPackCuda])
def test_score_batch_binds_cuda_tensors_by_pointer_without_a_copy(gpu_scorer: Scorer, cpu_scorer: Scorer,
                                                                   kind: type) -> None:
    a, b = batch(5, seed=5), batch(5, seed=6)
    expected = cpu_scorer.score_batch(a, b, float_range="-1,1")
    got = gpu_scorer.score_batch(kind(a), kind(b))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    calls = gpu_scorer._session.calls
    inputs = [c for c in calls if c[0] == "bind_input"]
    row = 3 * 40 * 40 * 4
    assert [(c[1], c[2], c[4], c[5]) for c in inputs if c[1] == "in0"] == [
        ("in0", "cuda", (2, 3, 40, 40), a.ctypes.data), ("in0", "cuda", (2, 3, 40, 40), a.ctypes.data + 2 * row),
        ("in0", "cuda", (1, 3, 40, 40), a.ctypes.data + 4 * row)]
    assert calls.count(("synchronize_inputs",)) == 1 and calls[-1] == ("synchronize_outputs",)
    assert all(c[2] == "cpu" for c in calls if c[0] == "bind_output")  # host scores, written by onnxruntime


def test_score_many_and_device_outputs(gpu_scorer: Scorer, cpu_scorer: Scorer) -> None:
    ref, cands = batch(1, seed=7), batch(5, seed=8)
    expected = cpu_scorer.score_many(ref[0], cands, float_range="-1,1")
    np.testing.assert_allclose(gpu_scorer.score_many(FakeCudaArrayWithDevice(ref[0]),
                                                     FakeCudaArrayWithDevice(cands)), expected, atol=1e-6)
    gpu_scorer._session.calls.clear()
    kept = gpu_scorer.score_many(FakeDLPackCuda(ref), FakeDLPackCuda(cands), device_output=True)
    assert isinstance(kept, DeviceArray) and kept.device == "cuda" and len(kept) == 5
    interface = kept.__cuda_array_interface__
    assert interface["shape"] == (5,) and interface["typestr"] == "<f4" and interface["data"][0] == kept.data_ptr
    assert kept.__dlpack_device__() == (dt.KDL_CUDA, 0)
    np.testing.assert_allclose(kept.numpy(), expected, atol=1e-6)
    binds = [c for c in gpu_scorer._session.calls if c[0] == "bind_output"]
    assert [c[2] for c in binds] == ["cuda"] * 3 and [c[5] - kept.data_ptr for c in binds] == [0, 8, 16]


def test_run_arrays_takes_cuda_tensors(gpu_scorer: Scorer, cpu_scorer: Scorer) -> None:
    x0, x1 = batch(3, seed=9), batch(3, seed=10)
    (dist,) = gpu_scorer.run_arrays(FakeDLPackCuda(x0), FakeDLPackCuda(x1))
    np.testing.assert_allclose(dist, cpu_scorer.run_arrays(x0, x1)[0], atol=1e-6)


def test_bad_device_inputs_get_typed_errors_naming_the_item(gpu_scorer: Scorer, model: Path) -> None:
    a = batch(2)
    cuda = FakeCudaArrayWithDevice
    cases = [
        ((cuda(a), a), DeviceTensorError, r"^b: is a host array while the other input is a GPU tensor"),
        ((cuda(a.astype(np.float16)), cuda(a.astype(np.float16))), DeviceTensorError, r"^a: .*float16.*float32"),
        ((cuda(np.zeros((2, 4, 40, 40), np.float32)),) * 2, ChannelError, r"^a: .*4 channels"),
        ((cuda(batch(2, size=16)),) * 2, ImageSizeError, r"^a: 16x16 is below .*minimum size 21"),
        ((cuda(a), cuda(batch(3))), ImageSizeError, "batches of 2 and 3"),
        ((cuda(a), cuda(batch(2, size=48))), ImageSizeError, "sizes differ"),
        ((cuda(a, device_id=1), cuda(a, device_id=1)), DeviceTensorError, "cuda:1.*device_id=1"),
        (([cuda(a[0]), cuda(a[1])], [cuda(a[0]), cuda(a[1])]), DeviceTensorError, r"^a: a list of GPU tensors"),
    ]
    for args, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            gpu_scorer.score_batch(*args)
    with pytest.raises(DeviceTensorError, match=r"must already be in \[-1, 1\], not 0,1"):
        gpu_scorer.score_batch(cuda(a), cuda(a), float_range="0,1")
    with pytest.raises(DeviceTensorError, match="device_output=True needs GPU tensors"):
        gpu_scorer.score_batch(a, a, float_range="-1,1", device_output=True)
    with pytest.raises(ImageSizeError, match="one reference is"):
        gpu_scorer.score_many(cuda(a), cuda(a))
    with pytest.raises(DeviceTensorError, match="runs on cpu; create it with providers='cuda'"):
        Scorer(model, providers="cpu").score_batch(cuda(a), cuda(a))
