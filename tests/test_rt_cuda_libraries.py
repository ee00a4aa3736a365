"""Where the GPU providers' libraries come from: the provider-library probe and pip's NVIDIA library folders."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from stlpips_rt.engine import cuda_libraries as cl


def test_nvidia_library_dirs_are_the_pip_package_lib_folders_holding_libraries(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    for package, lib in (("cu13", "libcublas.so.13"), ("cudnn", "libcudnn.so.9"), ("headers_only", None)):
        folder = site / "nvidia" / package / "lib"
        folder.mkdir(parents=True)
        if lib:
            (folder / lib).write_bytes(b"")
    assert cl.nvidia_library_dirs([str(site), str(tmp_path / "elsewhere")]) == [
        site / "nvidia" / "cu13" / "lib", site / "nvidia" / "cudnn" / "lib"]


def test_a_library_that_does_not_load_is_named() -> None:
    assert "libstlpips_nonexistent.so.7" in cl._load_problem("libstlpips_nonexistent.so.7")
    assert cl._load_problem("libc.so.6") == ""


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a GPU build of onnxruntime")
def test_cpu_builds_say_they_have_no_gpu_provider_library() -> None:
    for short in ("cuda", "tensorrt"):
        assert f"has no {cl.PROVIDER_LIBRARIES[short]}" in cl.provider_library_problem(short)
    assert cl.preload_nvidia_libraries() == ""  # nothing to preload for a build without CUDA
    assert "LD_LIBRARY_PATH" in cl.setup_hint()
