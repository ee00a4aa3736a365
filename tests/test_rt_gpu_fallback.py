"""GPU provider chains, fallbacks and CUDA's fast mode, on a CPU machine: onnxruntime's provider list, the provider
library probe and the session factory are replaced by tests/fake_gpu.py. tests/test_rt_gpu.py runs the real thing
on a GPU."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fake_gpu import FakeOnnxruntimeGpu

from stlpips_rt import ModelNotFoundError, ProviderError, Scorer
from stlpips_rt.engine import providers as prov
from stlpips_rt.engine import session as gs
from stlpips_rt.engine.options import CudaOptions, SessionConfig, TensorRTOptions
from stlpips_rt.engine.providers import provider_options
from stlpips_rt.errors import ProviderFallbackWarning


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


def build(model: Path, **kwargs: Any) -> tuple[Scorer, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scorer = Scorer(model, **kwargs)
    return scorer, [w for w in caught if issubclass(w.category, ProviderFallbackWarning)]


def test_auto_tries_tensorrt_cuda_cpu_in_one_session_with_exact_cuda_options(model: Path, monkeypatch) -> None:
    fake = FakeOnnxruntimeGpu(monkeypatch)
    scorer, warned = build(model, providers="auto", provider_options=[TensorRTOptions(cache_dir=model.parent / "trt")])
    assert [c["chain"] for c in fake.calls] == [["tensorrt", "cuda", "cpu"]]
    assert (scorer.provider, scorer.precision, warned) == ("tensorrt", "fp32", [])
    options = fake.calls[0]["options"]
    assert options["cuda"]["use_tf32"] == "0" and options["tensorrt"]["trt_fp16_enable"] == "False"


@pytest.mark.parametrize("spec", ["auto", "tensorrt", "tensorrt,cuda,cpu"])
def test_tensorrt_without_its_libraries_runs_on_cuda_with_one_warning(model: Path, monkeypatch, spec: str) -> None:
    missing = "libnvinfer.so.10: cannot open shared object file: No such file or directory"
    fake = FakeOnnxruntimeGpu(monkeypatch, missing={"tensorrt": missing})
    scorer, warned = build(model, providers=spec)
    assert [c["chain"] for c in fake.calls] == [["cuda", "cpu"]]  # never handed to onnxruntime
    assert (scorer.provider, scorer.precision) == ("cuda", "fp32")
    assert len(warned) == 1 and "libnvinfer.so.10" in str(warned[0].message)
    assert "Running on cuda" in str(warned[0].message)


def test_a_failing_tensorrt_session_is_rebuilt_on_cuda_with_our_options(model: Path, monkeypatch) -> None:
    fake = FakeOnnxruntimeGpu(monkeypatch, raises=("tensorrt",))
    scorer, warned = build(model, providers="tensorrt", precision="exact")
    assert [c["chain"] for c in fake.calls] == [["tensorrt", "cuda", "cpu"], ["cuda", "cpu"]]
    # onnxruntime's own fallback would have rebuilt CUDA with its defaults (TF32 on): ours keeps exact mode.
    assert fake.calls[1]["options"]["cuda"]["use_tf32"] == "0"
    assert scorer.provider == "cuda" and scorer.precision == "fp32"
    assert len(warned) == 1 and "could not build its engine" in str(warned[0].message)


@pytest.mark.parametrize("spec", ["cuda", "cuda,cpu", "tensorrt,cuda", ["CUDAExecutionProvider"]])
def test_a_gpu_provider_asked_by_name_never_becomes_the_cpu(model: Path, monkeypatch, spec: Any) -> None:
    FakeOnnxruntimeGpu(monkeypatch, silently_dropped=("tensorrt", "cuda"))
    with pytest.raises(ProviderError, match="no GPU provider could be used.*Refusing to run on the CPU"):
        Scorer(model, providers=spec)


def test_auto_takes_the_cpu_only_with_a_warning_saying_why(model: Path, monkeypatch) -> None:
    FakeOnnxruntimeGpu(monkeypatch, silently_dropped=("cuda",), missing={"tensorrt": "libnvinfer.so.10: missing"})
    scorer, warned = build(model, providers="auto")
    assert scorer.provider == "cpu"
    assert len(warned) == 1
    message = str(warned[0].message)
    assert "libnvinfer.so.10" in message and "cuda is not used: onnxruntime did not register it" in message
    assert message.endswith("Running on cpu.")


def test_missing_cuda_libraries_are_preloaded_from_pip_nvidia_packages(model: Path, monkeypatch) -> None:
    fake = FakeOnnxruntimeGpu(monkeypatch, missing={"cuda": "libcublasLt.so.13: cannot open shared object file"},
                              cured_by_preload=("cuda",))
    scorer, warned = build(model, providers="cuda")
    assert fake.preloads == 1 and scorer.provider == "cuda" and warned == []


def test_cuda_libraries_missing_for_good_are_named_in_the_error(model: Path, monkeypatch) -> None:
    fake = FakeOnnxruntimeGpu(monkeypatch, missing={"cuda": "libcublasLt.so.13: cannot open shared object file"})
    with pytest.raises(ProviderError, match=r"libcublasLt\.so\.13.*LD_LIBRARY_PATH") as err:
        Scorer(model, providers="cuda")
    assert fake.calls == [] and "cuda asked for" in str(err.value)


def test_model_errors_are_not_mistaken_for_provider_failures(tmp_path: Path, monkeypatch) -> None:
    FakeOnnxruntimeGpu(monkeypatch)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(Exception, match="cannot load it as an ONNX model|INVALID_PROTOBUF"):
        Scorer(broken, providers="cuda")


def test_onnxruntime_own_fallback_is_switched_off(model: Path, monkeypatch) -> None:
    seen: dict[str, Any] = {}
    real = ort.InferenceSession

    def recording(path: str, *args: Any, **kwargs: Any) -> ort.InferenceSession:
        seen.update(kwargs)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(prov.ort, "InferenceSession", recording)
    prov.create_session(model, ["cpu"], SessionConfig())
    assert seen["enable_fallback"] == 0


def test_cuda_options_are_merged_but_cannot_switch_tf32() -> None:
    _, opts = provider_options("cuda", SessionConfig(cuda=CudaOptions(extra={"prefer_nhwc": "1"})))
    assert opts["prefer_nhwc"] == "1" and opts["use_tf32"] == "0"
    with pytest.raises(ProviderError, match="use_tf32"):
        CudaOptions(extra={"use_tf32": "1"})
    hash(SessionConfig(cuda=CudaOptions(extra={"prefer_nhwc": "1"})))  # a frozen config stays hashable


# --- CUDA's fast mode ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_pair(exported_model, tmp_path_factory) -> Path:
    """A folder with alex-st and its --fp16 export side by side; returns the float32 file."""
    folder = tmp_path_factory.mktemp("pair")
    for path in (exported_model("alex", "st"), exported_model("alex", "st", fp16=True)):
        shutil.copy(path, folder / path.name)
    return folder / "stlpips_alex_st.onnx"


def test_fast_on_cuda_runs_the_fp16_export_beside_the_model(model_pair: Path, monkeypatch) -> None:
    fake = FakeOnnxruntimeGpu(monkeypatch, missing={"tensorrt": "libnvinfer.so.10: missing"})
    scorer, _ = build(model_pair, providers="auto", precision="fast")
    assert fake.calls[-1]["path"].name == "stlpips_alex_st_fp16.onnx"
    assert fake.calls[-1]["options"]["cuda"]["use_tf32"] == "1"
    assert (scorer.provider, scorer.precision, scorer.info.path.name) == ("cuda", "fp16", "stlpips_alex_st_fp16.onnx")
    exact, _ = build(model_pair, providers="cuda", precision="exact")
    assert (exact.info.path.name, exact.precision) == ("stlpips_alex_st.onnx", "fp32")


def test_fast_on_cuda_can_be_told_to_run_tf32(model_pair: Path, monkeypatch) -> None:
    FakeOnnxruntimeGpu(monkeypatch)
    scorer, _ = build(model_pair, providers="cuda", precision="fast", cuda_fast="tf32")
    assert (scorer.info.path.name, scorer.precision) == ("stlpips_alex_st.onnx", "tf32")


def test_fast_on_tensorrt_keeps_the_float32_graph(model_pair: Path, monkeypatch) -> None:
    fake = FakeOnnxruntimeGpu(monkeypatch)
    scorer, _ = build(model_pair, providers="tensorrt", precision="fast",
                      provider_options=[TensorRTOptions(cache_dir=model_pair.parent / "trt")])
    assert fake.calls[-1]["path"].name == "stlpips_alex_st.onnx"
    assert (scorer.provider, scorer.precision) == ("tensorrt", "fp16")  # TensorRT's own fp16


def test_fast_without_an_fp16_export_runs_tf32_unless_fp16_is_insisted_on(model: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    FakeOnnxruntimeGpu(monkeypatch)
    model = Path(shutil.copy(model, tmp_path / model.name))  # alone in its folder
    scorer, _ = build(model, providers="cuda", precision="fast")
    assert (scorer.info.path, scorer.precision) == (model, "tf32")
    with pytest.raises(ModelNotFoundError, match=r"CudaOptions\(fast='fp16'\).*stlpips-export .*--fp16"):
        Scorer(model, providers="cuda", precision="fast", provider_options=[CudaOptions(fast="fp16")])
    with pytest.raises(ProviderError, match="CudaOptions.fast must be one of"):
        CudaOptions(fast="bf16")


def test_an_fp16_file_from_other_weights_is_not_taken(model_pair: Path, tmp_path: Path, monkeypatch) -> None:
    import onnx

    FakeOnnxruntimeGpu(monkeypatch)
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(model_pair, folder / model_pair.name)
    stale = onnx.load(str(model_pair.with_name("stlpips_alex_st_fp16.onnx")))
    for prop in stale.metadata_props:
        if prop.key == "stlpips.weights_sha256":
            prop.value = "0" * 64
    onnx.save(stale, str(folder / "stlpips_alex_st_fp16.onnx"))
    scorer, _ = build(folder / model_pair.name, providers="cuda", precision="fast")
    assert (scorer.info.path.name, scorer.precision) == ("stlpips_alex_st.onnx", "tf32")
    with pytest.raises(ModelNotFoundError, match="exported from other weights"):
        Scorer(folder / model_pair.name, "cuda", "fast", provider_options=[CudaOptions(fast="fp16")])


def test_fp16_sibling_names_follow_the_export_file_names(tmp_path: Path) -> None:
    for name, sibling in (("stlpips_alex_st.onnx", "stlpips_alex_st_fp16.onnx"),
                          ("stlpips_vgg_lpips_spatial_layers.onnx", "stlpips_vgg_lpips_fp16_spatial_layers.onnx")):
        (tmp_path / sibling).write_bytes(b"")
        assert gs.fp16_sibling(tmp_path / name) == tmp_path / sibling
    assert gs.fp16_sibling(tmp_path / "stlpips_alex_st_fp16.onnx") is None
    assert gs.fp16_sibling(tmp_path / "my_model.onnx") is None


def test_scores_through_a_fake_gpu_session_are_the_cpu_scores(model: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8) for _ in range(2))
    expected = Scorer(model, providers="cpu").score_batch(a, b)
    FakeOnnxruntimeGpu(monkeypatch)
    scorer, _ = build(model, providers="cuda")
    np.testing.assert_array_equal(scorer.score_batch(a, b), expected)
