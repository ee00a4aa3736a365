"""Shared fixtures: exported models (once per session), and the authors' example images where CI has them.

Tests build their images themselves or take scikit-image's photos; ../shared/data is an optional extra source
beside CI's checkout only (tests that need it skip elsewhere)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def _caches_in_a_temp_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """stlpips-score --matrix caches features, and the CPU provider its rewritten graphs, in the user's cache folder
    by default: the suite uses its own."""
    import os

    os.environ["STLPIPS_CACHE_DIR"] = str(tmp_path_factory.mktemp("feature-cache"))
    os.environ["STLPIPS_GRAPH_CACHE_DIR"] = str(tmp_path_factory.mktemp("graph-cache"))  # engine/winograd.py


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (ex_ref.png, ex_p0.png, ex_p1.png); skips where a clone has no ../shared beside it."""
    if not (SHARED_DATA / "ex_ref.png").is_file():
        pytest.skip(f"{SHARED_DATA} is absent: the example images live only beside CI's checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``exported_model(net="alex", variant="st", **ExportOptions fields) -> Path`` of a verified ONNX
    file, exported once per session per distinct set of options; ``features=True`` also writes (or adds) its
    features graph beside it."""
    from stlpips_export.exporters import DEFAULT_EXPORTER
    from stlpips_export.onnx_export import ExportOptions, export_model

    out_dir = tmp_path_factory.mktemp("models")

    def export(net: str = "alex", variant: str = "st", **options: object) -> Path:
        # Every option that changes the graph changes the file name, so one folder holds them all; but for the
        # exporter, whose files have the same name (same contract, same numbers): a non-default one gets a subfolder.
        # The features graph (docs/matrix.md) only where a test asks for it (features=True): it is the same file for
        # every graph option of a variant, and writing it beside each export would add its trace to every one.
        features = bool(options.pop("features", False))
        wanted = ExportOptions(net=net, variant=variant, out_dir=out_dir, features=features, **options)
        if wanted.exporter != DEFAULT_EXPORTER:
            wanted.out_dir = out_dir / wanted.exporter
        path = wanted.out_dir / wanted.file_name
        if not path.is_file():
            path = export_model(wanted).path
        elif features and not path.with_name(wanted.spec.features_spec().file_name).is_file():
            from stlpips_export.features_add import add_features

            add_features(path)
        return path

    return export


@pytest.fixture(scope="session")
def int8_sibling_folder(exported_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with alex-st and an int8 file beside it, which ``precision="fast"`` picks on the CPU provider. The
    int8 graph is written here without its gate (graphs of this small calibration miss it, docs/int8.md): for the
    runtime's routing and what it records, not for accuracy."""
    import shutil

    import onnx

    from stlpips_export.int8 import builtin_calibration, quantize_backbone
    from stlpips_export.onnx_export import read_metadata, set_metadata
    from stlpips_rt.contract import Key

    fp32 = exported_model("alex", "st", exporter="torchscript")  # the quantizer finds the backbone by its names
    folder = tmp_path_factory.mktemp("int8")
    shutil.copy(fp32, folder / fp32.name)
    graph = quantize_backbone(onnx.load(str(fp32)), builtin_calibration(count=16))
    set_metadata(graph, {**read_metadata(fp32), Key.PRECISION: "int8"})
    onnx.save(graph, str(folder / "stlpips_alex_st_int8.onnx"))
    return folder


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for every Ray test: 2 logical CPUs, a small object store, no dashboard, every port on
    127.0.0.1 (stlpips_rt.scale.ray_env.start_local). Workers get this process's import path, so they run the
    code under test. Skips (with the reason) without ray."""
    import os

    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'stlpips-deploy[ray]'")
    import stlpips_rt
    from stlpips_rt.scale.ray_env import start_local

    source = str(Path(stlpips_rt.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
    start_local(num_cpus=2, object_store_memory=96 * 2**20, log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": path}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
