"""The features graph as the runtime sees it: what its metadata says (channels, the head's weights) and where it
lives beside a pair graph. Torch-free and session-free: callers build the onnxruntime session.

The head of LPIPS / ST-LPIPS is, per pair of feature sets ``fa``, ``fb`` (unit-normalised, ``[C_l, H_l, W_l]``)::

    d(a, b) = sum_l 1 / (H_l W_l) * sum_{c,h,w} w_{l,c} * (fa_l - fb_l)[c, h, w] ** 2

a weighted squared Euclidean distance between one long vector per image (stlpips_rt.matrix.head).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..contract import BATCH_INVARIANT, FEATURES_INPUT, KIND_FEATURES, Key, ModelSpec, feature_outputs
from ..errors import ModelNotFoundError, NotAnStlpipsModelError
from ..io.manifest import file_sha256


def encode_weights(weights: list[np.ndarray] | tuple[np.ndarray, ...]) -> str:
    """Per-layer channel weights -> the :attr:`Key.HEAD_WEIGHTS` text (base64 of float32 little-endian)."""
    flat = np.concatenate([np.asarray(w, dtype="<f4").reshape(-1) for w in weights])
    return base64.b64encode(flat.tobytes()).decode("ascii")


def decode_weights(text: str, channels: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    flat = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<f4").astype(np.float32)
    if flat.size != sum(channels):
        raise ValueError(f"{flat.size} weights for {sum(channels)} channels")
    splits = np.cumsum(channels)[:-1]
    return tuple(np.ascontiguousarray(w) for w in np.split(flat, splits))


@dataclass(frozen=True)
class FeatureModel:
    """A features graph's description: ``path``, its ``sha256`` (what saved features are keyed by), the pair
    model's short name ``name`` (``alex-st``), ``min_size``, ``static_hw``, per-layer ``channels``, the head's
    ``weights`` (float32 ``[C_l]`` each) and ``batch_invariant`` (the export checked that an image's features are
    the same bits in any batch: ``stlpips.features_batch``)."""

    path: Path
    sha256: str
    name: str
    min_size: int
    static_hw: tuple[int, int] | None
    channels: tuple[int, ...]
    weights: tuple[np.ndarray, ...] = field(repr=False)
    batch_invariant: bool = False

    @property
    def outputs(self) -> tuple[str, ...]:
        return feature_outputs(len(self.channels))

    @property
    def input_name(self) -> str:
        return FEATURES_INPUT

    @classmethod
    def from_metadata(cls, path: Path, meta: dict[str, str], sha256: str | None = None) -> FeatureModel:
        def refuse(why: str) -> NotAnStlpipsModelError:
            return NotAnStlpipsModelError(f"{path}: not a usable stlpips features graph ({why}); export it with "
                                          "`stlpips-export --net NET --variant VARIANT` (written beside the model)")

        if meta.get(Key.KIND) != KIND_FEATURES:
            raise refuse(f"{Key.KIND} is {meta.get(Key.KIND)!r}, expected {KIND_FEATURES!r}")
        try:
            channels = tuple(int(c) for c in meta[Key.FEATURE_CHANNELS].split(","))
            weights = decode_weights(meta[Key.HEAD_WEIGHTS], channels)
            min_size = int(meta[Key.MIN_SIZE])
        except (KeyError, ValueError) as exc:
            raise refuse(f"metadata: {exc}") from None
        static = meta.get(Key.STATIC_HW, "")
        static_hw = tuple(int(v) for v in static.lower().split("x")) if static else None
        name = meta.get(Key.PAIR_MODEL) or f"{meta.get(Key.NET)}-{meta.get(Key.VARIANT)}"
        return cls(path, sha256 or file_sha256(path), name, min_size, static_hw, channels,  # type: ignore[arg-type]
                   weights, meta.get(Key.FEATURES_BATCH) == BATCH_INVARIANT)

    def check_graph(self, inputs: list[str], outputs: list[str]) -> None:
        missing = [o for o in self.outputs if o not in outputs]
        if FEATURES_INPUT not in inputs or missing:
            raise NotAnStlpipsModelError(f"{self.path}: graph lacks input {FEATURES_INPUT!r} or outputs {missing}; "
                                         "re-export it")


def features_path(pair_model: Path, spec: ModelSpec | None, search: list[Path] | tuple[Path, ...] = ()) -> Path:
    """The features graph of the pair graph at ``pair_model``: ``{its name}_features.onnx`` beside it (or in
    ``search``). ``spec`` is the pair graph's :class:`ModelSpec` (None for a file not named by the contract: then
    the file's own stem with ``_features``)."""
    name = spec.features_spec().file_name if spec is not None else f"{pair_model.stem}_features.onnx"
    for folder in (pair_model.parent, *search):
        candidate = Path(folder) / name
        if candidate.is_file():
            return candidate
    short = spec.features_spec().short_name if spec is not None else name
    raise ModelNotFoundError(
        f"no features graph {name} beside {pair_model}: distance matrices compute each image's features once with "
        f"it. Re-export the model (`stlpips-export` writes {short} beside it unless --no-features)")
