"""The C++ host (examples/cpp): fetched, configured and built from a clean build folder, then held to the Python
runtime's numbers and to the contract's input checks.

Two builds: ONNX Runtime loaded at run time from the onnxruntime Python wheel's library plus the OpenVINO engine
(the configuration CI exercises most), and ONNX Runtime linked from third_party/onnxruntime, laid out like an
official release (what a user with their own ONNX Runtime does). Skips only where no C++ compiler, CMake or
build tool exists.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from stlpips_rt import Scorer, read_model_info
from stlpips_rt.io import images

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIR = REPO_ROOT / "examples" / "cpp"
DEPS_DIR = REPO_ROOT / "third_party"  # git-ignored; the fetch script keeps it between runs
ORT_TOLERANCE = 1e-6
OPENVINO_TOLERANCE = 1e-5


def _toolchain() -> tuple[str, str | None]:
    """cmake and the generator to use; skips the module (with the reason) where the tools are missing."""
    cmake = shutil.which("cmake")
    compilers = [c for c in (os.environ.get("CXX"), "c++", "g++", "clang++") if c and shutil.which(c)]
    if cmake is None or not compilers:
        missing = " and ".join(n for n, ok in (("cmake", cmake), ("a C++ compiler", compilers)) if not ok)
        pytest.skip(f"{missing} not found: the C++ example cannot be built here", allow_module_level=True)
    if shutil.which("ninja"):
        return cmake, "Ninja"
    if shutil.which("make"):
        return cmake, None  # CMake's default, Unix Makefiles
    pytest.skip("neither ninja nor make found: the C++ example cannot be built here", allow_module_level=True)


CMAKE, GENERATOR = _toolchain()


def _run(cmd: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kwargs)


def _wheel_ort_library() -> Path:
    """libonnxruntime.so.X.Y.Z inside the onnxruntime Python wheel: the library the Python runtime uses."""
    found = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so*"))
    assert found, f"no libonnxruntime.so* in {Path(onnxruntime.__file__).parent / 'capi'}"
    return found[-1]


@pytest.fixture(scope="module")
def cpp_deps() -> Path:
    """ONNX Runtime headers/library and stb_image, fetched once (cached in third_party/)."""
    result = _run(["bash", REPO_ROOT / "scripts" / "fetch_cpp_deps.sh", DEPS_DIR])
    assert result.returncode == 0, f"fetch_cpp_deps.sh failed:\n{result.stderr}"
    return DEPS_DIR


def _build(build_dir: Path, deps: Path, *options: str) -> Path:
    """Configure and build examples/cpp into the (new, empty) build_dir; returns the program's path."""
    generator = ["-G", GENERATOR] if GENERATOR else []
    configure = _run([CMAKE, "-S", SOURCE_DIR, "-B", build_dir, *generator, "-DCMAKE_BUILD_TYPE=Release",
                      f"-DORT_ROOT={deps / 'onnxruntime'}", f"-DSTB_INCLUDE_DIR={deps / 'stb' / 'include'}",
                      *options])
    assert configure.returncode == 0, f"cmake configure failed:\n{configure.stdout}\n{configure.stderr}"
    build = _run([CMAKE, "--build", build_dir, "--parallel", str(os.cpu_count() or 2)])
    assert build.returncode == 0, f"cmake build failed:\n{build.stdout}\n{build.stderr}"
    return build_dir / "stlpips_score"


@pytest.fixture(scope="module")
def cpp_loaded(cpp_deps: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stlpips_score that loads the Python wheel's ONNX Runtime at run time, with the OpenVINO engine."""
    import openvino.utils  # the 'cpp' extra; scripts/setup.sh installs it

    return _build(tmp_path_factory.mktemp("cpp-loaded"), cpp_deps, "-DSTLPIPS_ORT_LOAD_AT_RUNTIME=ON",
                  f"-DSTLPIPS_ORT_DEFAULT_LIBRARY={_wheel_ort_library()}", "-DSTLPIPS_WITH_OPENVINO=ON",
                  f"-DOpenVINO_DIR={openvino.utils.get_cmake_path()}")


@pytest.fixture(scope="module")
def cpp_linked(cpp_deps: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stlpips_score linked to third_party/onnxruntime, as a build against an official release would be."""
    return _build(tmp_path_factory.mktemp("cpp-linked"), cpp_deps)


@pytest.fixture(scope="module")
def model(exported_model: Callable[..., Path]) -> Path:
    return exported_model("alex", "st")


@pytest.fixture(scope="module")
def python_scorer(model: Path) -> Scorer:
    return Scorer(model, providers="cpu")


def score_cpp(exe: Path, a: Path, b: Path, model: Path, *options: str) -> np.ndarray:
    result = _run([exe, a, b, "--model", model, *options])
    assert result.returncode == 0, f"stlpips_score failed ({result.returncode}):\n{result.stderr}"
    return np.array([float(line) for line in result.stdout.split()], dtype=np.float32)


def random_pairs(min_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random [-1, 1] pairs: the smallest accepted size, odd sizes, equal batches and both broadcasts."""
    rng = np.random.default_rng(5)
    shapes = [((1, min_size, min_size), (1, min_size, min_size)), ((1, 64, 48), (1, 64, 48)),
              ((3, 37, 50), (3, 37, 50)), ((1, 40, 33), (4, 40, 33)), ((2, 96, 80), (1, 96, 80))]
    return [(rng.uniform(-1, 1, (n0, 3, h, w)).astype(np.float32), rng.uniform(-1, 1, (n1, 3, h, w)).astype(np.float32))
            for (n0, h, w), (n1, _, _) in shapes]


# --- numbers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("build", "engine", "tolerance"), [
    ("cpp_loaded", "onnxruntime", ORT_TOLERANCE),
    ("cpp_linked", "onnxruntime", ORT_TOLERANCE),
    ("cpp_loaded", "openvino", OPENVINO_TOLERANCE),
])
def test_cpp_scores_random_tensors_like_the_python_runtime(
    build: str, engine: str, tolerance: float, request: pytest.FixtureRequest, model: Path,
    python_scorer: Scorer, tmp_path: Path,
) -> None:
    exe = request.getfixturevalue(build)
    for i, (x0, x1) in enumerate(random_pairs(read_model_info(model).min_size)):
        np.save(tmp_path / f"in0_{i}.npy", x0)
        np.save(tmp_path / f"in1_{i}.npy", x1)
        got = score_cpp(exe, tmp_path / f"in0_{i}.npy", tmp_path / f"in1_{i}.npy", model, "--engine", engine)
        want = python_scorer.run_arrays(x0, x1)[0]
        assert got.shape == want.shape, f"shapes {x0.shape} vs {x1.shape}"
        assert np.abs(got - want).max() <= tolerance, f"shapes {x0.shape} vs {x1.shape}: {got} vs {want}"


@pytest.mark.parametrize(("build", "engine", "tolerance"), [
    ("cpp_loaded", "onnxruntime", ORT_TOLERANCE),
    ("cpp_linked", "onnxruntime", ORT_TOLERANCE),
    ("cpp_loaded", "openvino", OPENVINO_TOLERANCE),
])
def test_cpp_scores_the_example_images_like_the_python_runtime(
    build: str, engine: str, tolerance: float, request: pytest.FixtureRequest, model: Path,
    python_scorer: Scorer, shared_data: Path,
) -> None:
    exe = request.getfixturevalue(build)
    ref = shared_data / "ex_ref.png"
    for other in ("ex_p0.png", "ex_p1.png"):
        got = score_cpp(exe, ref, shared_data / other, model, "--engine", engine)
        want = python_scorer.score(ref, shared_data / other)
        assert got.shape == (1,)
        assert abs(float(got[0]) - want) <= tolerance, f"ex_ref vs {other}: {got[0]} vs {want}"


def _write_image(path: Path, mode: str, rng: np.random.Generator, h: int = 29, w: int = 26) -> Path:
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(path)
    elif mode == "P":
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).quantize(17).save(path)
    else:
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode).save(path)
    return path


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16"])
def test_cpp_converts_png_images_bit_for_bit_like_the_python_runtime(
    mode: str, cpp_loaded: Path, model: Path, tmp_path: Path,
) -> None:
    rng = np.random.default_rng(len(mode))
    a = _write_image(tmp_path / "a.png", mode, rng)
    b = _write_image(tmp_path / "b.png", mode, rng)
    score_cpp(cpp_loaded, a, b, model, "--save-inputs", str(tmp_path))
    for saved, source in (("in0.npy", a), ("in1.npy", b)):
        want = images.load(source, source.name, images.ImageOptions())[None]
        np.testing.assert_array_equal(np.load(tmp_path / saved), want)


def test_cpp_reads_the_model_metadata_it_reports(cpp_loaded: Path, model: Path) -> None:
    result = _run([cpp_loaded, "--model", model, "--info"])
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    metadata = {p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props}
    assert lines["engine"] == f"onnxruntime {onnxruntime.__version__}"  # the wheel's library was loaded
    for key in ("stlpips.net", "stlpips.variant", "stlpips.min_size", "stlpips.outputs"):
        assert lines[key] == metadata[key]


# --- refusals: a clear message and a non-zero exit -------------------------------------------------------
def _refusal(exe: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    result = _run([exe, *args])
    assert result.returncode != 0 and result.stdout == "", result
    return result


def test_cpp_refuses_images_of_different_sizes(cpp_loaded: Path, model: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = _write_image(tmp_path / "a.png", "RGB", rng, 40, 40)
    b = _write_image(tmp_path / "b.png", "RGB", rng, 40, 41)
    result = _refusal(cpp_loaded, a, b, "--model", model)
    assert result.returncode == 1 and "sizes differ (40x40 vs 40x41" in result.stderr


def test_cpp_refuses_images_below_the_model_minimum(cpp_loaded: Path, model: Path, tmp_path: Path) -> None:
    small = read_model_info(model).min_size - 1
    rng = np.random.default_rng(0)
    a = _write_image(tmp_path / "a.png", "RGB", rng, small, small)
    b = _write_image(tmp_path / "b.png", "RGB", rng, small, small)
    result = _refusal(cpp_loaded, a, b, "--model", model)
    assert result.returncode == 1 and "below this model's minimum" in result.stderr


def test_cpp_refuses_batches_that_do_not_broadcast(cpp_loaded: Path, model: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 32, 32), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((3, 3, 32, 32), np.float32))
    result = _refusal(cpp_loaded, tmp_path / "a.npy", tmp_path / "b.npy", "--model", model)
    assert result.returncode == 1 and "batch sizes 2 and 3" in result.stderr


def test_cpp_refuses_tensors_that_are_not_float32(cpp_loaded: Path, model: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((1, 3, 32, 32), np.float64))
    np.save(tmp_path / "b.npy", np.zeros((1, 3, 32, 32), np.float32))
    result = _refusal(cpp_loaded, tmp_path / "a.npy", tmp_path / "b.npy", "--model", model)
    assert result.returncode == 1 and "not float32" in result.stderr


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_cpp_refuses_an_onnx_file_without_stlpips_metadata(
    engine: str, cpp_loaded: Path, model: Path, tmp_path: Path,
) -> None:
    plain = onnx.load(str(model))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    rng = np.random.default_rng(0)
    a = _write_image(tmp_path / "a.png", "RGB", rng, 40, 40)
    b = _write_image(tmp_path / "b.png", "RGB", rng, 40, 40)
    result = _refusal(cpp_loaded, a, b, "--model", tmp_path / "plain.onnx", "--engine", engine)
    assert result.returncode == 1 and "not a usable stlpips model (no stlpips.format" in result.stderr


def test_cpp_refuses_a_file_that_is_not_onnx(cpp_loaded: Path, tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    result = _refusal(cpp_loaded, "--model", tmp_path / "junk.onnx", "--info")
    assert result.returncode == 1 and "ONNX Runtime cannot load it" in result.stderr


def test_cpp_rejects_a_bad_command_line_with_usage(cpp_loaded: Path, model: Path) -> None:
    result = _refusal(cpp_loaded, "only-one.png", "--model", model)
    assert result.returncode == 2 and "expected two inputs" in result.stderr and "usage:" in result.stderr


def test_cmake_names_the_missing_onnxruntime_headers(tmp_path: Path) -> None:
    generator = ["-G", GENERATOR] if GENERATOR else []
    result = _run([CMAKE, "-S", SOURCE_DIR, "-B", tmp_path / "build", *generator,
                   f"-DORT_ROOT={tmp_path / 'no-onnxruntime-here'}"])
    assert result.returncode != 0 and "onnxruntime_cxx_api.h not found" in result.stderr
