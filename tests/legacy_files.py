"""Files as stlpips-deploy 0.1 exported them (format 1.0), made from today's exports: the runtime must keep reading
them, and tell their users what to do where they fall short (tiling without a ``-tiles`` file beside them)."""

from __future__ import annotations

from pathlib import Path

import onnx

from stlpips_rt.contract import Key

#: Metadata format 1.1 added.
FORMAT_1_1_KEYS = (Key.FORMAT_MINOR, Key.SPATIAL_MEAN, Key.LAYER_MAPS)


def format_1_0_copy(source: Path, target: Path, *, keep_layer_maps: bool = False) -> Path:
    """Write ``source`` as a format-1.0 file at ``target``: without its ``layer_map`` outputs (unless
    ``keep_layer_maps``: a 0.1 ``--tiles`` file) and without the metadata format 1.1 added."""
    graph = onnx.load(str(source))
    if not keep_layer_maps:
        kept = [o for o in graph.graph.output if not o.name.startswith("layer_map")]
        del graph.graph.output[:]
        graph.graph.output.extend(kept)
    dropped = set(FORMAT_1_1_KEYS) - ({Key.LAYER_MAPS} if keep_layer_maps else set())
    props = [(p.key, p.value) for p in graph.metadata_props if p.key not in dropped]
    del graph.metadata_props[:]
    for key, value in props:
        graph.metadata_props.add(key=key, value=value)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(target))
    return target
