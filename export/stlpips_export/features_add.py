"""The features graph beside an existing float32 export (one written with ``--no-features``, or before features
graphs existed): :func:`add_features` reads the pair file's metadata, rebuilds the same model and writes the
features graph through :mod:`.features_export` with the pair export's own steps (docs/matrix.md)."""

from __future__ import annotations

from pathlib import Path

import onnx

from stlpips_rt.contract import Key, ModelSpec
from stlpips_rt.precision import tolerance as tolerance_of

from .errors import InvalidOptionError
from .features_export import FeaturesResult, export_features
from .fusion import export_copy
from .model import build_model
from .onnx_export import _write_features, simplify


def add_features(pair_path: Path, weights: str | None = None, tolerance: float | None = None) -> FeaturesResult:
    """Write the features graph beside an existing float32 pair graph (one exported with ``--no-features``, or
    before features graphs existed): the same variant, weights, fusion, static size, exporter and opset, read
    from its metadata; gated against that file. ``weights``: the checkpoint it was exported from, when not the
    registered one (its sha256 must match ``stlpips.weights_sha256``)."""
    pair_path = Path(pair_path)
    pair_graph = onnx.load(str(pair_path))
    meta = {p.key: p.value for p in pair_graph.metadata_props}
    spec = ModelSpec.from_file_name(pair_path.name)
    if spec is None or spec.precision != "fp32":
        raise InvalidOptionError(f"{pair_path.name}: features graphs come from float32 files named by the contract")
    model = build_model(spec.net, spec.variant, weights=weights)
    if model.weights_sha256 != meta.get(Key.WEIGHTS_SHA256):
        raise InvalidOptionError(f"{pair_path.name} was exported from other weights (sha256 "
                                 f"{meta.get(Key.WEIGHTS_SHA256, '?')[:12]}...); pass them with --weights")
    exported = export_copy(model, fuse=spec.fused)
    return export_features(model, exported, spec, meta, pair_path.parent, meta[Key.EXPORTER], int(meta[Key.OPSET]),
                           int(meta[Key.MIN_SIZE]), tolerance or tolerance_of("fp32").max_abs, pair_graph, simplify,
                           _write_features)
