"""The features graph written beside a pair graph: one image in, each layer's unit-normalised features out, and the
head's learned channel weights in its metadata (contract: ``stlpips.kind = features``; docs/matrix.md).

Distance matrices need each image's features once; the head (squared difference, 1x1 weights, spatial mean, sum
over layers) is a weighted squared Euclidean distance the runtime computes for many pairs at once
(stlpips_rt.matrix.head). The gate: that head on this graph's features equals the pair graph's ``dist`` (ONNX
Runtime) and the PyTorch reference within the float32 parity tolerance, on the parity cases, before anything is
written.

Like the pair graph, this one sums each position's squared channels for the unit normalisation with a 1x1
convolution of ones (:meth:`~.model.PerceptualDistance.sum_channels_per_image`) rather than a ``ReduceSum``:
onnxruntime's CPU ReduceSum over the channels adds a batch of one image in another order than a batch of several,
so an image's features moved in their last bit (up to 1.2e-7 on alex-st 64x64) between a batch of one and a larger
one. A ``Conv`` sums each image the same way in any batch: measured 0 of 660 (image, layer) outputs moved over six
sizes from 21x21 to 256x256, batches of 1-5, every position, 1 and 2 threads. The export checks it on the parity
cases and then stamps ``stlpips.features_batch = invariant``, which lets the runtime stack images into batches.
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from stlpips_rt import contract
from stlpips_rt.contract import Key, ModelSpec
from stlpips_rt.engine import winograd
from stlpips_rt.matrix.head import pair_distances
from stlpips_rt.matrix.model import encode_weights
from stlpips_rt.precision import error_stats

from .errors import ParityError
from .exporters import _quiet, check_opset
from .model import PerceptualDistance
from .verify import parity_cases

#: Pair-graph metadata copied into the features graph (what it computes, and from which weights and tools).
COPIED_KEYS = (Key.FORMAT, Key.NET, Key.VARIANT, Key.INPUT_RANGE, Key.INPUT_LAYOUT, Key.MIN_SIZE, Key.NUM_LAYERS,
               Key.STATIC_HW, Key.FUSED, Key.WEIGHTS_SHA256, Key.WEIGHTS_ORIGIN, Key.TOOLKIT_VERSION,
               Key.TORCH_VERSION, Key.ONNX_VERSION, Key.OPSET, Key.EXPORTER, Key.LAYER_STRIDE, Key.LAYER_FIELD,
               Key.LAYER_PAD_BEFORE, Key.LAYER_PAD_AFTER)

#: A features graph already beside the pair graph is kept when these agree (same weights, tools and graph options).
UP_TO_DATE_KEYS = (Key.WEIGHTS_SHA256, Key.TOOLKIT_VERSION, Key.TORCH_VERSION, Key.EXPORTER, Key.OPSET, Key.FUSED,
                   Key.STATIC_HW, Key.NET, Key.VARIANT)


class FeatureExtractor(nn.Module):
    """Scaling, backbone and unit normalisation of a :class:`PerceptualDistance`: ``image [N, 3, H, W]`` ->
    ``feat_l [N, C_l, H_l, W_l]``, exactly the tensors the pair model subtracts."""

    def __init__(self, model: PerceptualDistance) -> None:
        super().__init__()
        self.model = model
        self.num_layers = len(model.lins)
        self.eval()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.normalized_features(image))


def head_weights(model: PerceptualDistance) -> list[np.ndarray]:
    """The learned 1x1 weights per layer, float32 ``[C_l]``."""
    return [lin.model[0].weight.detach().float().reshape(-1).numpy().copy() for lin in model.lins]


@dataclass
class FeaturesResult:
    path: Path
    max_abs: float
    max_rel: float
    cases: list[tuple[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    reused: bool = False  # an up-to-date features graph was already there (UP_TO_DATE_KEYS)
    batch_invariant: bool = False  # every image's features the same bits alone and in a batch (parity cases)


def export_graph(extractor: FeatureExtractor, exporter: str, opset: int, min_size: int,
                 static_hw: tuple[int, int] | None) -> onnx.ModelProto:
    """``extractor`` as ONNX: input ``image`` (dynamic N, and H and W unless static), outputs ``feat0..``."""
    check_opset(exporter, opset)
    names = list(contract.feature_outputs(extractor.num_layers))
    h, w = static_hw or (max(min_size, 64),) * 2
    example = (torch.zeros(2, 3, h, w),)
    if exporter == "dynamo":
        import onnxscript.optimizer
        from onnxscript import ir
        from torch.export import Dim

        shape = {0: Dim("N", min=1)}
        if not static_hw:
            shape.update({2: Dim("H", min=min_size), 3: Dim("W", min=min_size)})
        with _quiet():
            program = torch.onnx.export(extractor, example, dynamo=True, dynamic_shapes=({**shape},),
                                        input_names=[contract.FEATURES_INPUT], output_names=names,
                                        opset_version=opset, optimize=False, verbose=False)
            graph = program.model
            onnxscript.optimizer.fold_constants(graph)  # not the full optimizer: it drops the 1e-10 (exporters.py)
            ir.passes.common.CommonSubexpressionEliminationPass()(graph)
            ir.passes.common.RemoveUnusedNodesPass()(graph)
        return ir.serde.serialize_model(graph)
    axes = {contract.FEATURES_INPUT: {0: "N"} if static_hw else {0: "N", 2: "H", 3: "W"}}
    axes.update({name: {0: "N", 2: f"H{i}", 3: f"W{i}"} for i, name in enumerate(names)})
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "features.onnx"
        torch.onnx.export(extractor, example, str(raw), dynamo=False, opset_version=opset,
                          input_names=[contract.FEATURES_INPUT], output_names=names, dynamic_axes=axes,
                          do_constant_folding=True)
        return onnx.load(str(raw))


def _session(data: bytes):  # noqa: ANN202 - onnxruntime is imported lazily
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def verify_head(features_graph: onnx.ModelProto, pair_graph: onnx.ModelProto | None, model: PerceptualDistance,
                weights: list[np.ndarray], min_size: int, tolerance: float,
                static_hw: tuple[int, int] | None) -> FeaturesResult:
    """The gate: the runtime's head on this graph's features against the pair graph's ``dist`` (ONNX Runtime) and
    the PyTorch reference, on the export's parity cases (random, odd sizes, the minimum size, both broadcast
    directions, a one-pixel shift, identical images (exactly 0), checkerboards, flat images)."""
    features = _session(features_graph.SerializeToString())
    pair = _session(pair_graph.SerializeToString()) if pair_graph is not None else None
    result = FeaturesResult(Path(), 0.0, 0.0)
    for case in parity_cases(min_size, static_hw):
        n = max(len(case.in0), len(case.in1))
        fa = features.run(None, {contract.FEATURES_INPUT: case.in0})
        fb = features.run(None, {contract.FEATURES_INPUT: case.in1})
        got = pair_distances(fa, fb, weights)
        with torch.no_grad():
            expected = [model(torch.from_numpy(case.in0), torch.from_numpy(case.in1))[0].numpy()]
        if pair is not None:
            expected.append(pair.run(["dist"], {"in0": case.in0, "in1": case.in1})[0])
        worst_abs = worst_rel = 0.0
        for reference in expected:
            abs_err, rel_err = error_stats(reference.reshape(n), got.reshape(n))
            worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
        if case.name == "identical images" and np.any(got != 0):
            raise ParityError(f"features graph: identical images give {got}, not exactly 0")
        result.cases.append((case.name, worst_abs))
        result.max_abs, result.max_rel = max(result.max_abs, worst_abs), max(result.max_rel, worst_rel)
    if result.max_abs > tolerance:
        table = "\n".join(f"  {name:<34} {err:9.2e}" for name, err in result.cases)
        raise ParityError(f"features graph: head(features(a), features(b)) differs from the pair graph by "
                          f"{result.max_abs:.3g} (tolerance {tolerance:g}); nothing was written.\n{table}")
    return result


def batch_invariant(features: object, static_hw: tuple[int, int] | None, min_size: int) -> bool:
    """Whether every image of the parity cases gets the same feature bits alone as in a batch of its case's
    images, forwards and reversed (onnxruntime CPU provider, ``features`` a session)."""
    for case in parity_cases(min_size, static_hw):
        images = np.concatenate([case.in0, case.in1])
        alone = [features.run(None, {contract.FEATURES_INPUT: images[i:i + 1]}) for i in range(len(images))]
        for order in (np.arange(len(images)), np.arange(len(images))[::-1]):
            batched = features.run(None, {contract.FEATURES_INPUT: np.ascontiguousarray(images[order])})
            for position, index in enumerate(order):
                if not all(np.array_equal(b[position], a[0]) for b, a in zip(batched, alone[index], strict=True)):
                    return False
    return True


def export_features(model: PerceptualDistance, exported: PerceptualDistance, spec: ModelSpec, pair_metadata: dict,
                    out_dir: Path, exporter: str, opset: int, min_size: int, tolerance: float,
                    pair_graph: onnx.ModelProto | None,
                    simplify: Callable[[onnx.ModelProto], onnx.ModelProto] | None,
                    write: Callable[[onnx.ModelProto, dict[str, str], Path], Path]) -> FeaturesResult:
    """Write ``spec.features_spec().file_name`` into ``out_dir``: ``exported`` (the fused copy the pair graph was
    traced from) cut before the head, gated against ``pair_graph`` and the reference ``model``. ``simplify`` and
    ``write`` (stamp the metadata, write atomically) are the pair export's own steps (onnx_export.py)."""
    start = time.perf_counter()
    target = Path(out_dir) / spec.features_spec().file_name
    if target.is_file():  # e.g. written by the plain export before a --spatial or --layers one: same graph
        try:
            existing = {p.key: p.value for p in onnx.load(str(target), load_external_data=False).metadata_props}
        except Exception:  # noqa: BLE001 - unreadable: export it again
            existing = {}
        same_forms = winograd.declared_in(existing) == winograd.declared_in(pair_metadata)
        if existing.get(Key.KIND) == contract.KIND_FEATURES and existing.get(Key.FEATURES_BATCH) and all(
                existing.get(k) == pair_metadata.get(k) for k in UP_TO_DATE_KEYS) and same_forms:  # (older: export)
            return FeaturesResult(target, float(existing.get(Key.PARITY_MAX_ABS, "nan")),
                                  float(existing.get(Key.PARITY_MAX_REL, "nan")), reused=True,
                                  batch_invariant=existing.get(Key.FEATURES_BATCH) == contract.BATCH_INVARIANT)
    extractor = FeatureExtractor(copy.deepcopy(exported))
    graph = export_graph(extractor, exporter, opset, min_size, spec.static_hw)
    if simplify is not None:
        graph = simplify(graph)
    weights = head_weights(model)
    onnx.checker.check_model(graph, full_check=True)
    result = verify_head(graph, pair_graph, model, weights, min_size, tolerance, spec.static_hw)
    result.batch_invariant = batch_invariant(_session(graph.SerializeToString()), spec.static_hw, min_size)
    align = winograd.alignment_of(pair_metadata)
    cpu_form = winograd.rewritten_copy(graph, align) if winograd.declared_in(pair_metadata) else None
    if cpu_form is not None:  # the form the CPU provider runs (stlpips_rt.engine.winograd), against the pair's
        pair_form = winograd.rewritten_copy(pair_graph, align) if pair_graph is not None else None
        cpu_result = verify_head(cpu_form, pair_form or pair_graph, model, weights, min_size, tolerance,
                                 spec.static_hw)
        result.batch_invariant = result.batch_invariant and batch_invariant(
            _session(cpu_form.SerializeToString()), spec.static_hw, min_size)
    metadata = {key: pair_metadata[key] for key in COPIED_KEYS if key in pair_metadata}
    metadata.update({
        Key.KIND: contract.KIND_FEATURES,
        Key.OUTPUTS: ",".join(contract.feature_outputs(len(weights))),
        Key.PRECISION: "fp32",
        Key.FEATURE_CHANNELS: ",".join(str(len(w)) for w in weights),
        Key.HEAD_WEIGHTS: encode_weights(weights),
        Key.PAIR_MODEL: spec.short_name,
        Key.PARITY_TOLERANCE: f"{tolerance:g}",
        Key.PARITY_MAX_ABS: f"{result.max_abs:.3g}",
        Key.PARITY_MAX_REL: f"{result.max_rel:.3g}",
    })
    if cpu_form is not None:
        metadata.update(winograd.declaration(cpu_result.max_abs))
    metadata[Key.FEATURES_BATCH] = contract.BATCH_INVARIANT if result.batch_invariant else contract.BATCH_PER_IMAGE
    result.path = write(graph, metadata, target)
    result.seconds = time.perf_counter() - start
    return result

