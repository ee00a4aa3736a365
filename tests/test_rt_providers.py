"""Execution provider selection and options. GPU and OpenVINO checks skip, with the reason, where the provider is
not available in this onnxruntime / on this machine."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from stlpips_rt import ProviderError, Scorer, TensorRTOptions, available_providers, unavailable_reasons
from stlpips_rt.engine import providers as providers_module
from stlpips_rt.engine.cuda_libraries import provider_library_problem
from stlpips_rt.engine.openvino_direct import OpenVinoSession
from stlpips_rt.engine.options import CudaOptions, SessionConfig
from stlpips_rt.engine.providers import (
    AUTO_ORDER,
    PROVIDERS,
    auto_provider,
    openvino_through_plugin,
    provider_options,
    resolve_providers,
)
from stlpips_rt.engine.routing import route
from stlpips_rt.errors import ProviderFallbackWarning
from stlpips_rt.precision import runs_as


def pairs(n: int = 3, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


@pytest.fixture(scope="module")
def cpu_scores(model: Path) -> np.ndarray:
    return Scorer(model, providers="cpu").score_batch(*pairs())


def require(provider: str) -> None:
    reasons = unavailable_reasons()
    if provider in reasons:
        pytest.skip(f"{provider} not available: {reasons[provider]}")
    if provider in ("cuda", "tensorrt") and provider_library_problem(provider):
        pytest.skip(f"{provider} is listed but cannot load: {provider_library_problem(provider)}")


def test_auto_picks_the_first_available_in_tensorrt_cuda_cpu_order(model: Path) -> None:
    available = available_providers()
    assert available[-1] == "cpu" and available == [p for p in PROVIDERS if p in available]
    expected = next(p for p in AUTO_ORDER if p in available)  # never OpenVINO, whatever it offers here
    assert resolve_providers("auto") == [expected]
    # GPU providers whose libraries do not load are passed over (engine/session.py), with a warning.
    running = next(p for p in available if p not in ("tensorrt", "cuda", "openvino")
                   or (p != "openvino" and not provider_library_problem(p)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ProviderFallbackWarning)
        assert Scorer(model).provider == (expected if expected not in ("tensorrt", "cuda") else running)


class FakeEpDevice:
    """What onnxruntime's OpenVINO plugin offers on an Intel CPU: one device."""

    ep_name = "OpenVINOExecutionProvider"
    ep_metadata = {"ov_device": "CPU"}


@pytest.fixture(params=["intel: the plugin offers a device", "amd: the plugin offers none"])
def plugin_answer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both answers of onnxruntime's OpenVINO plugin, whatever this machine's CPU is; True when it offers one."""
    offered = request.param.startswith("intel")
    answer = ([FakeEpDevice()], "") if offered else ([], "the plugin only enumerates Intel hardware")
    monkeypatch.setattr(providers_module, "_openvino_devices", lambda: answer)
    monkeypatch.setattr(providers_module, "openvino_runtime_reason", lambda: "")  # OpenVINO's own runtime is there
    return offered


def _without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu_only = [p for p in ort_providers() if p not in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
    monkeypatch.setattr(providers_module.ort, "get_available_providers", lambda: cpu_only)


def ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def test_auto_exact_is_the_cpu_provider_whatever_the_openvino_plugin_offers(
        plugin_answer: bool, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _without_gpu(monkeypatch)
    assert "openvino" in available_providers()  # usable when named, in both cases ...
    assert openvino_through_plugin() is plugin_answer
    assert auto_provider() == "cpu" and resolve_providers("auto") == ["cpu"]  # ... but never taken by "auto"
    assert route(model, "auto", "exact") == (model, ["cpu"])
    assert Scorer(model).provider == "cpu"
    # "fast" is the fast path's choice (bf16 on OpenVINO, through the plugin or OpenVINO's own runtime).
    assert route(model, "auto", "fast")[1] == ["openvino"]


def test_auto_keeps_the_gpu_chain_where_a_gpu_provider_is_available(
        plugin_answer: bool, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(providers_module.ort, "get_available_providers", lambda: gpu)
    assert auto_provider() == "tensorrt"
    monkeypatch.setattr(providers_module.ort, "get_available_providers", lambda: gpu[1:])
    assert resolve_providers("auto") == ["cuda"] and route(model, "auto", "exact") == (model, ["cuda"])


def test_short_and_onnxruntime_names_and_lists_are_accepted() -> None:
    assert resolve_providers("cpu") == ["cpu"]
    assert resolve_providers("CPUExecutionProvider") == ["cpu"]
    assert resolve_providers(["CPU", "cpu"]) == ["cpu"]
    with pytest.raises(ProviderError, match="unknown provider 'rocm'"):
        resolve_providers("rocm")


def test_explicit_unavailable_provider_is_an_error_listing_available_ones() -> None:
    missing = unavailable_reasons()
    if not missing:
        pytest.skip("every provider is available here")
    name, reason = next(iter(missing.items()))
    with pytest.raises(ProviderError, match=rf"'{name}' is not available: .*Available here: .*cpu") as err:
        resolve_providers(name)
    assert reason in str(err.value)


def test_tensorrt_options_cache_engines_follow_precision_and_take_profiles(tmp_path: Path) -> None:
    trt = TensorRTOptions(cache_dir=tmp_path / "trt", workspace_bytes=1 << 30, min_shape=(1, 32, 32),
                          opt_shape=(8, 64, 64), max_shape=(32, 256, 256))
    config = SessionConfig(precision="exact", tensorrt=trt, cuda=CudaOptions(device_id=1))
    name, opts = provider_options("tensorrt", config)
    assert name == "TensorrtExecutionProvider"
    assert opts["trt_engine_cache_enable"] == opts["trt_timing_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == opts["trt_timing_cache_path"] == str(tmp_path / "trt")
    assert (tmp_path / "trt").is_dir()
    assert opts["trt_fp16_enable"] == "False" and opts["device_id"] == "1"
    assert opts["trt_max_workspace_size"] == str(1 << 30)
    assert opts["trt_profile_opt_shapes"] == "in0:8x3x64x64,in1:8x3x64x64"
    _, fast = provider_options("tensorrt", SessionConfig(precision="fast", tensorrt=trt))
    assert fast["trt_fp16_enable"] == "True"
    with pytest.raises(ProviderError, match="min_shape, opt_shape and max_shape together"):
        provider_options("tensorrt", SessionConfig(tensorrt=TensorRTOptions(cache_dir=tmp_path, min_shape=(1, 8, 8))))


def test_cuda_options_keep_fp32_in_exact_mode() -> None:
    config = SessionConfig(cuda=CudaOptions(device_id=2, cudnn_conv_algo_search="HEURISTIC"))
    _, exact = provider_options("cuda", config)
    assert exact == {"device_id": "2", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}
    _, fast = provider_options("cuda", SessionConfig(precision="fast"))
    assert fast["use_tf32"] == "1"


def test_precision_labels_say_what_runs() -> None:
    assert [runs_as(p, "exact", "fp32") for p in PROVIDERS] == ["fp32"] * 4
    assert [runs_as(p, "fast", "fp32") for p in PROVIDERS] == ["fp16", "tf32", "bf16", "fp32"]
    assert runs_as("cpu", "exact", "fp16") == "fp16"


def test_cpu_threads_and_fast_mode_keep_cpu_numbers(model: Path, cpu_scores: np.ndarray) -> None:
    s = Scorer(model, providers="cpu", threads=1, precision="fast")
    assert s.precision == "fp32"  # the CPU provider has no reduced-precision mode
    np.testing.assert_allclose(s.score_batch(*pairs()), cpu_scores, atol=1e-6)


def test_unknown_precision_is_refused(model: Path) -> None:
    with pytest.raises(ProviderError, match="precision must be one of"):
        Scorer(model, providers="cpu", precision="half")


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_gpu_provider_exact_matches_cpu(provider: str, model: Path, cpu_scores: np.ndarray, tmp_path: Path) -> None:
    require(provider)
    s = Scorer(model, providers=provider, provider_options=[TensorRTOptions(cache_dir=tmp_path)])
    assert s.provider == provider and s.precision == "fp32"
    np.testing.assert_allclose(s.score_batch(*pairs()), cpu_scores, atol=1e-4)


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_openvino_exact_matches_cpu_and_fast_reports_bf16(model: Path, cpu_scores: np.ndarray) -> None:
    require("openvino")
    exact = Scorer(model, providers="openvino")
    assert (exact.provider, exact.precision) == ("openvino", "fp32")
    np.testing.assert_allclose(exact.score_batch(*pairs()), cpu_scores, atol=1e-5)
    fast = Scorer(model, providers="openvino", precision="fast")
    # OpenVINO computes bf16 only where the CPU has bf16 instructions; elsewhere fast runs f32 and says so.
    assert fast.precision == ("bf16" if _cpu_has_bf16() else "fp32")
    np.testing.assert_allclose(fast.score_batch(*pairs()), cpu_scores, atol=5e-3)


def test_openvino_only_as_first_provider(model: Path) -> None:
    require("openvino")
    with pytest.raises(ProviderError, match="first provider"):
        Scorer(model, providers="cpu,openvino")


def test_openvino_runs_through_its_own_runtime_where_the_plugin_offers_no_device(model: Path) -> None:
    require("openvino")
    if openvino_through_plugin():
        pytest.skip("the onnxruntime OpenVINO plugin offers a device here, so it is used instead")
    scorer = Scorer(model, providers="openvino", threads=2)
    assert isinstance(scorer._session, OpenVinoSession)
    assert scorer.info.min_size == 21 and scorer.info.outputs == ("dist",)


def test_openvino_scorer_is_thread_safe(model: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    require("openvino")
    scorer = Scorer(model, providers="openvino")
    rng = np.random.default_rng(4)
    batches = [rng.integers(0, 256, (2, 40 + 8 * (i % 3), 48, 3), dtype=np.uint8) for i in range(12)]
    serial = [scorer.score_batch(b, b[::-1]) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda b: scorer.score_batch(b, b[::-1]), batches))
    for one, many in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(one, many)
