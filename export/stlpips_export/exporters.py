"""The two ways from the PyTorch reference to an ONNX graph: ``torch.export`` + onnxscript ("dynamo", the default)
and the TorchScript tracer ("torchscript", deprecated in torch 2.13, kept while torch ships it).

Both produce the same interface: inputs ``in0 [N0,3,H,W]`` and ``in1 [N1,3,H,W]`` with separate batch axes (N0 == N1,
or either is 1), dynamic H and W unless a static size is asked for, outputs with batch axis ``N``. Everything after
this step (onnxsim, metadata, the parity gate) is shared and lives in onnx_export.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import torch

from stlpips_rt import contract

from .errors import ExporterUnavailableError, InvalidOptionError
from .model import PerceptualDistance

EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = "dynamo"
# The opset each exporter writes when none is asked for. onnxscript implements ATen ops from opset 18 on; asked for
# less, torch converts afterwards and, where that fails (reflection Pad has no 18 -> 17 adapter), silently keeps 18.
DEFAULT_OPSETS = {"dynamo": 18, "torchscript": 17}
MIN_OPSETS = {"dynamo": 18, "torchscript": 13}
# Example batch sizes for torch.export: every size it sees as 0 or 1 becomes a constant of the graph, and the two
# batches must be equal for the example to be a valid input. N0 and N1 stay separate symbols all the same, since
# the model broadcasts them explicitly under torch.export (model.paired_difference).
DYNAMO_EXAMPLE_BATCH = 2


def default_opset(exporter: str) -> int:
    check_exporter(exporter)
    return DEFAULT_OPSETS[exporter]


def check_exporter(exporter: str) -> None:
    if exporter not in EXPORTERS:
        raise InvalidOptionError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")


def check_opset(exporter: str, opset: int) -> None:
    check_exporter(exporter)
    if opset < MIN_OPSETS[exporter]:
        raise InvalidOptionError(f"the {exporter} exporter writes opset {MIN_OPSETS[exporter]} or newer, not "
                                 f"{opset}; use --opset {MIN_OPSETS[exporter]} or more, or --exporter torchscript "
                                 "for older opsets")


def export_graph(
    model: PerceptualDistance,
    exporter: str,
    opset: int,
    min_size: int,
    static_hw: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """``model`` as an ONNX graph (not yet simplified) with the contract's input and output names and axes."""
    check_opset(exporter, opset)
    names = model.output_names
    axes = contract_axes(model, static_hw)
    if exporter == "dynamo":
        graph = _export_dynamo(model, opset, min_size, static_hw, names)
        drop_paired_expands(graph)
    else:
        graph = _export_torchscript(model, opset, min_size, static_hw, names, axes)
    _name_output_axes(graph, axes)
    return graph


def contract_axes(model: PerceptualDistance, static_hw: tuple[int, int] | None) -> dict[str, dict[int, str]]:
    """The named dynamic axes of ``model``'s inputs and outputs (contract.AXES, and each layer map's)."""
    names = model.output_names
    axes = {
        name: {axis: label for axis, label in axes.items() if not (static_hw and label in contract.SPATIAL_AXES)}
        for name, axes in contract.AXES.items() if name in (*contract.INPUTS, *names)
    }
    if model.layer_maps:
        axes.update({name: contract.layer_map_axes(i)
                     for i, name in enumerate(contract.layer_map_outputs(len(model.lins)))})
    return axes


def _example_size(min_size: int, static_hw: tuple[int, int] | None) -> tuple[int, int]:
    return static_hw or (max(min_size, 64),) * 2


def _export_dynamo(
    model: PerceptualDistance, opset: int, min_size: int, static_hw: tuple[int, int] | None, names: Sequence[str]
) -> onnx.ModelProto:
    from torch.export import Dim

    if importlib.util.find_spec("onnxscript") is None:
        raise ExporterUnavailableError("the dynamo exporter needs onnxscript: pip install 'stlpips-deploy[export]' "
                                       "(or onnxscript alone), or use --exporter torchscript")
    import onnxscript.optimizer
    from onnxscript import ir
    h, w = _example_size(min_size, static_hw)
    example = (torch.zeros(DYNAMO_EXAMPLE_BATCH, 3, h, w), torch.zeros(DYNAMO_EXAMPLE_BATCH, 3, h, w))
    # One Dim per axis name of the contract (the file's axes are named after them): in0 and in1 share H and W and
    # each has its own batch.
    dims = {label: Dim(label, min=min_size if label in contract.SPATIAL_AXES else 1)
            for name in contract.INPUTS for label in contract.AXES[name].values()}
    dynamic_shapes = tuple(
        {axis: dims[label] for axis, label in contract.AXES[name].items()
         if not (static_hw and label in contract.SPATIAL_AXES)}
        for name in contract.INPUTS
    )
    with _quiet():
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=list(contract.INPUTS),
            output_names=list(names),
            opset_version=opset,
            # Not onnxscript's whole optimizer: its no-op rules take `x + c` for `x + 0` when |c| <= 1e-8, which drops
            # unit_normalize's 1e-10 and turns an all-zero feature vector into 0/0 = NaN (docs/export.md).
            optimize=False,
            verbose=False,
        )
        # Constant folding (shape arithmetic, constant biases) and merging repeated shape computations, so that
        # drop_paired_expands sees each pair's common shape; onnxsim does the rest.
        model = program.model
        onnxscript.optimizer.fold_constants(model)
        ir.passes.common.CommonSubexpressionEliminationPass()(model)
        ir.passes.common.RemoveUnusedNodesPass()(model)
    return ir.serde.serialize_model(model)


def _export_torchscript(
    model: PerceptualDistance,
    opset: int,
    min_size: int,
    static_hw: tuple[int, int] | None,
    names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> onnx.ModelProto:
    h, w = _example_size(min_size, static_hw)
    example = (torch.zeros(1, 3, h, w), torch.zeros(2, 3, h, w))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # Its deprecation notice and its note on Slice folding (onnxsim folds those afterwards) are noise here.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        raw = Path(tmp) / "traced.onnx"
        torch.onnx.export(
            model,
            example,
            str(raw),
            dynamo=False,
            opset_version=opset,
            input_names=list(contract.INPUTS),
            output_names=list(names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
        return onnx.load(str(raw))


def drop_paired_expands(graph: onnx.ModelProto) -> int:
    """``Sub(Expand(a, s), Expand(b, s))`` -> ``Sub(a, b)``; returns the number of Sub nodes rewritten.

    model.paired_difference expands both sides to ``s = [max(N0, N1), 1, 1, 1]`` only to tell torch.export how N0
    and N1 broadcast. ONNX ``Sub`` broadcasts a batch of 1 (and refuses 2 against 5) by itself, so the copies the
    Expand nodes would make (about 2% of alex-st's CPU time) give nothing; the parity gate checks the result.
    """
    nodes = graph.graph.node
    producer = {out: node for node in nodes for out in node.output}
    uses = Counter(name for node in nodes for name in node.input)
    uses.update(o.name for o in graph.graph.output)
    dropped = []
    for node in nodes:
        sources = [producer.get(name) for name in node.input]
        if (
            node.op_type == "Sub"
            and all(s is not None and s.op_type == "Expand" and uses[s.output[0]] == 1 for s in sources)
            and sources[0].input[1] == sources[1].input[1]
        ):
            node.input[0], node.input[1] = sources[0].input[0], sources[1].input[0]
            dropped.extend(sources)
    for node in dropped:
        nodes.remove(node)
    _remove_unused_nodes(graph)
    return len(dropped) // 2


def _remove_unused_nodes(graph: onnx.ModelProto) -> None:
    """Remove nodes none of whose outputs is used (the shape arithmetic left behind by drop_paired_expands)."""
    outputs = {o.name for o in graph.graph.output}
    while True:
        used = {name for node in graph.graph.node for name in node.input} | outputs
        dead = [node for node in graph.graph.node if not any(o in used for o in node.output if o)]
        if not dead:
            return
        for node in dead:
            graph.graph.node.remove(node)


def _name_output_axes(graph: onnx.ModelProto, axes: dict[str, dict[int, str]]) -> None:
    """Give the outputs' symbolic axes the contract's names (torch.export calls the batch axis ``Max(N1, N0)`` and
    a layer map's height an expression in H)."""
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        for axis, label in axes.get(output.name, {}).items():
            if axis < len(dims) and not dims[axis].dim_value:
                dims[axis].dim_param = label


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export and onnxscript print progress and log notes (e.g. 'torchvision is not installed') that say
    nothing about this model; errors still raise."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
