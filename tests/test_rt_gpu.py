"""The CUDA path on a real GPU: provider chain and fallback, exactness against the CPU, zero-copy PyTorch / CuPy /
DLPack inputs, device outputs, stream ordering, CUDA's fast modes. Every test is marked ``gpu`` and skips, with
the reason, where onnxruntime has no working CUDA provider (or where PyTorch / CuPy with CUDA are missing).
scripts/gpu/device.sh runs this file on the GPU machine; tests/test_rt_gpu_fallback.py and
tests/test_rt_device_tensors.py check the same logic on any machine."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from stlpips_rt import CudaOptions, DeviceArray, DeviceTensorError, ProviderError, Scorer
from stlpips_rt.engine.cuda_libraries import provider_library_problem
from stlpips_rt.errors import ProviderFallbackWarning


def cuda_reason() -> str:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} ({ort.get_device()}) has no CUDAExecutionProvider"
    return provider_library_problem("cuda")


# Decided before any fixture runs (the session-scoped export fixture would run first otherwise).
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(cuda_reason()), reason=f"no CUDA provider: {cuda_reason()}")]


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


@pytest.fixture(scope="module")
def cuda_scorer(model: Path) -> Scorer:
    try:
        return Scorer(model, providers="cuda", batch_size=4)
    except ProviderError as exc:
        pytest.skip(f"no CUDA provider here: {exc}")


@pytest.fixture(scope="module")
def torch_cuda() -> Any:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    return torch


def batches(n: int = 6, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(rng.uniform(-1, 1, (n, 3, size, size)).astype(np.float32) for _ in range(2))


@pytest.fixture(scope="module")
def host_scores(model: Path) -> np.ndarray:
    return Scorer(model, providers="cpu").score_batch(*batches(), float_range="-1,1")


# --- providers -------------------------------------------------------------------------------------------------
def test_cuda_session_registers_cuda_and_exact_matches_the_cpu(cuda_scorer: Scorer, host_scores: np.ndarray) -> None:
    assert cuda_scorer._session.get_providers()[0] == "CUDAExecutionProvider"
    assert (cuda_scorer.provider, cuda_scorer.precision) == ("cuda", "fp32")
    assert cuda_scorer._session.get_provider_options()["CUDAExecutionProvider"]["use_tf32"] == "0"
    np.testing.assert_allclose(cuda_scorer.score_batch(*batches(), float_range="-1,1"), host_scores, atol=1e-5)


def test_auto_runs_on_a_gpu_provider(cuda_scorer: Scorer, model: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProviderFallbackWarning)
        assert Scorer(model).provider in ("tensorrt", "cuda")


def test_tensorrt_listed_without_its_libraries_runs_cuda_with_one_warning(cuda_scorer: Scorer, model: Path) -> None:
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime does not list TensorRT")
    problem = provider_library_problem("tensorrt")
    if not problem:
        pytest.skip("TensorRT's libraries load here: the fallback is not exercised")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = Scorer(model, providers="tensorrt")
    fallbacks = [w for w in caught if issubclass(w.category, ProviderFallbackWarning)]
    assert scorer.provider == "cuda" and scorer._session.get_providers()[0] == "CUDAExecutionProvider"
    assert len(fallbacks) == 1 and problem.split(":")[0] in str(fallbacks[0].message)


# --- zero-copy inputs ------------------------------------------------------------------------------------------
def test_torch_cuda_tensors_are_scored_in_place(cuda_scorer: Scorer, torch_cuda: Any) -> None:
    a, b = batches()
    expected = cuda_scorer.run_arrays(a, b)[0]  # the host-copy path on the same session
    ta, tb = torch_cuda.from_numpy(a).cuda(), torch_cuda.from_numpy(b).cuda()
    np.testing.assert_allclose(cuda_scorer.score_batch(ta, tb), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cuda_scorer.run_arrays(ta, tb)[0], expected, rtol=0, atol=1e-6)


class OnlyDLPack:
    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor

    def __dlpack__(self, stream: Any = None) -> Any:
        return self.tensor.__dlpack__(stream=stream)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.tensor.__dlpack_device__()


class OnlyCudaArrayInterface:
    def __init__(self, tensor: Any) -> None:
        self.__cuda_array_interface__ = tensor.__cuda_array_interface__
        self.tensor = tensor


def test_dlpack_only_and_interface_only_objects(cuda_scorer: Scorer, torch_cuda: Any) -> None:
    a, b = batches()
    expected = cuda_scorer.run_arrays(a, b)[0]
    ta, tb = torch_cuda.from_numpy(a).cuda(), torch_cuda.from_numpy(b).cuda()
    for wrap in (OnlyDLPack, OnlyCudaArrayInterface):
        np.testing.assert_allclose(cuda_scorer.score_batch(wrap(ta), wrap(tb)), expected, rtol=0, atol=1e-6)


def test_cupy_arrays(cuda_scorer: Scorer) -> None:
    cupy = pytest.importorskip("cupy")
    a, b = batches()
    expected = cuda_scorer.run_arrays(a, b)[0]
    np.testing.assert_allclose(cuda_scorer.score_batch(cupy.asarray(a), cupy.asarray(b)), expected, atol=1e-6)


def test_scores_can_stay_on_the_device(cuda_scorer: Scorer, torch_cuda: Any) -> None:
    a, b = batches()
    expected = cuda_scorer.run_arrays(a, b)[0]
    kept = cuda_scorer.score_batch(torch_cuda.from_numpy(a).cuda(), torch_cuda.from_numpy(b).cuda(),
                                   device_output=True)
    assert isinstance(kept, DeviceArray) and kept.device == "cuda"
    via_dlpack = torch_cuda.from_dlpack(kept)
    via_interface = torch_cuda.as_tensor(kept, device="cuda")
    assert via_dlpack.is_cuda and via_interface.is_cuda
    for got in (via_dlpack.cpu().numpy(), via_interface.cpu().numpy(), kept.numpy()):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_one_reference_against_many_and_chunks_on_the_device(cuda_scorer: Scorer, model: Path,
                                                             torch_cuda: Any) -> None:
    ref, cands = batches(n=7, seed=3)
    ref = ref[:1]
    expected = cuda_scorer.run_arrays(ref, cands)[0]
    got = cuda_scorer.score_many(torch_cuda.from_numpy(ref[0]).cuda(), torch_cuda.from_numpy(cands).cuda())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # batch_size 4: runs of 4 and 3


def test_work_queued_on_the_producers_stream_is_waited_for(cuda_scorer: Scorer, torch_cuda: Any) -> None:
    a, b = batches(seed=5)
    expected = cuda_scorer.run_arrays(a, b)[0]
    torch = torch_cuda
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        big = torch.randn(8192, 8192, device="cuda")
        for _ in range(20):  # keep the stream busy well past the scorer's call
            big = big @ big / 8192
        ta = torch.zeros(a.shape, device="cuda") + torch.from_numpy(a).cuda(non_blocking=True) + 0 * big[0, 0]
        tb = torch.from_numpy(b).cuda(non_blocking=True)
    np.testing.assert_allclose(cuda_scorer.score_batch(ta, tb), expected, rtol=0, atol=1e-6)
    torch.cuda.synchronize()


def test_tensors_that_cannot_be_bound_in_place_are_refused(cuda_scorer: Scorer, torch_cuda: Any, model: Path) -> None:
    a = torch_cuda.from_numpy(batches()[0]).cuda()
    with pytest.raises(DeviceTensorError, match="float32"):
        cuda_scorer.score_batch(a.half(), a.half())
    with pytest.raises(DeviceTensorError, match="not C-contiguous"):
        cuda_scorer.score_batch(a.transpose(2, 3), a.transpose(2, 3))
    with pytest.raises(DeviceTensorError, match="requires grad|share its memory"):
        w = a.clone().requires_grad_(True)
        cuda_scorer.score_batch(w, w)
    with pytest.raises(DeviceTensorError, match="runs on cpu"):
        Scorer(model, providers="cpu").score_batch(a, a)


# --- fast modes ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_pair(exported_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gpu-pair")
    for path in (exported_model("alex", "st"), exported_model("alex", "st", fp16=True)):
        shutil.copy(path, folder / path.name)
    return folder / "stlpips_alex_st.onnx"


@pytest.mark.parametrize(("cuda_fast", "label", "file"), [("fp16", "fp16", "stlpips_alex_st_fp16.onnx"),
                                                          ("tf32", "tf32", "stlpips_alex_st.onnx")])
def test_fast_modes_run_what_they_say_and_stay_close(cuda_scorer: Scorer, model_pair: Path, host_scores: np.ndarray,
                                                     cuda_fast: str, label: str, file: str) -> None:
    scorer = Scorer(model_pair, providers="cuda", precision="fast", provider_options=[CudaOptions(fast=cuda_fast)])
    assert (scorer.provider, scorer.precision, scorer.info.path.name) == ("cuda", label, file)
    options = scorer._session.get_provider_options()["CUDAExecutionProvider"]
    assert options["use_tf32"] == "1"
    np.testing.assert_allclose(scorer.score_batch(*batches(), float_range="-1,1"), host_scores, atol=1e-2)
