"""Winograd F(2x2, 3x3) for VGG's wide 3x3 convolutions, as onnxruntime's CPU provider runs a float32 model.

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 window of its input with 36 multiplications per
channel pair; Winograd's minimal filtering algorithm does it with 16, at the price of linear transforms of the
window (``B^T d B``) and of the 16 products (``A^T m A``), additions only. Where a layer has many channels the
products dominate and the transforms are cheap. In the graph:

    input  -> 16 depthwise 4x4 stride-2 convolutions (one per transformed position, weights 0 and +-1), Concat
           -> (N, 16, C, tiles): per image and position, a product with the transformed weights ``G w G^T``
           -> (N, 4, K x tiles): the output transform, one (4, 16) product -> DepthToSpace -> crop -> + bias

No transposes: each image's tiles are the columns of its own products. That is also what keeps a pair's bits alone
and in any batch: onnxruntime's matrix product (MLAS) sums a product of 64 columns or fewer in other blocks than a
wider one, so columns from several images would give an image other bits in a batch than alone.

Which layers (:func:`qualifies`): 3x3, stride 1, padding 1, at least 256 inputs and 512 outputs, on a map at most 8
times coarser than the image: VGG's conv4 (AlexNet has no such layer). Measured on one thread against onnxruntime's
own blocked convolution (2-core AMD EPYC Zen 4): 512 -> 512 at 9x9 (64x64 images, 8 of them) 1.09x, at 33x33
(256x256 images, 2) 1.47x; VGG's conv5 at 5x5 would be 0.65x (1.19x at 17x17). Whole vgg-st graph, one thread: 8
pairs 64x64 1.027x, 2 pairs 256x256 1.093x (docs/performance.md).

Exactness: the transforms' coefficients are 0, +-1 and +-1/2, and ``G w G^T`` is computed in float64 and rounded
once; the error stays that of a float32 convolution (vgg-st's export gate, which runs this form too: max abs
3.1e-7 against 3.0e-7 for the file's graph, tolerance 1e-5).

Only the runtime applies it, only where the file's export gated it (``stlpips.cpu_winograd``), only for
``precision="exact"`` on the CPU provider, and ``CpuOptions(winograd=False)`` turns it off. The first load rewrites
the file (0.97 s cold start and 403 MB peak for vgg-st) and keeps the result in a cache folder; later sessions and
processes load that (0.42 s and 234 MB, the file's own graph 0.40-0.42 s and 257-262 MB). The file keeps its
plain convolutions for every other host: OpenVINO's bf16 keeps such products in float32 (0.58-0.74x), and GPU
providers pick their own algorithms.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

MIN_OUT_CHANNELS = 512
MIN_IN_CHANNELS = 256
#: Coarsest map rewritten, as a step relative to the image: VGG's conv4 (8) but not conv5 (16), whose 5x5 maps at
#: 64x64 lose (0.65x; 1.19x at 17x17, 256x256 images).
MAX_INPUT_STRIDE = 8

# F(2, 3) with the interpolation points 0, 1, -1 and infinity.
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)


def transformed_weights(weight: np.ndarray) -> np.ndarray:
    """float32 ``(16, K, C)``: ``G w G^T`` of a ``(K, C, 3, 3)`` weight, in float64, rounded once."""
    k, c = weight.shape[:2]
    # U[(i, j), k, c] = sum over (a, b) of G[i, a] G[j, b] w[k, c, a, b]: one product with a (9, 16) matrix. Its
    # entries are 0, +-1/4, +-1/2 and 1, so each term is exact and the float64 sum of nine is rounded once.
    mix = np.einsum("ia,jb->abij", _G, _G).reshape(9, 16)
    u = weight.reshape(k * c, 9).astype(np.float64) @ mix                       # (K*C, 16)
    return np.ascontiguousarray(u.T, dtype=np.float32).reshape(16, k, c)


def output_transform() -> np.ndarray:
    """float32 ``(4, 16)``: row ``2p + q`` gives output ``(p, q)`` of a 2x2 block from the 16 products."""
    return np.einsum("pi,qj->pqij", _AT, _AT).reshape(4, 16).astype(np.float32)


def input_transform_kernel(i: int, j: int, channels: int) -> np.ndarray:
    """float32 ``(C, 1, 4, 4)``: the depthwise kernel giving transformed position ``(i, j)`` of ``B^T d B``."""
    return np.broadcast_to(np.outer(_BT[i], _BT[j]), (channels, 1, 4, 4)).astype(np.float32)


def rewrite(model) -> bool:  # noqa: ANN001 - onnx.ModelProto (onnx is imported lazily)
    """Rewrite ``model`` in place so that its qualifying convolutions (:func:`qualifies`) run as Winograd
    F(2x2, 3x3); False (and ``model`` untouched) when none qualifies or the opset is older than 15 (``Shape`` with
    a start)."""
    import onnx
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    strides = input_strides(graph)
    chosen = [n for n in graph.node if qualifies(n, inits, strides)]
    if opset < 15 or not chosen:
        return False
    added: dict[str, onnx.TensorProto] = {}

    def const(name: str, value: np.ndarray | Callable[[], np.ndarray]) -> str:
        """The initializer ``name``, made once (``value`` may be a function, called only then)."""
        if name not in added:
            array = value() if callable(value) else value
            added[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.extend(_winograd_nodes(node, inits, const, helper) if node in chosen else [node])
    replaced = {n.input[i] for n in chosen for i in (1, 2) if i < len(n.input)}
    still_used = {i for n in nodes for i in n.input}
    for name in replaced - still_used:
        graph.initializer.remove(inits[name])
    graph.initializer.extend(added.values())
    del graph.node[:]
    graph.node.extend(nodes)
    return True


def rewritten_copy(model):  # noqa: ANN001, ANN201 - onnx.ModelProto in, onnx.ModelProto or None out
    """A rewritten copy of ``model`` (:func:`rewrite`), or None where nothing qualifies: the form the export gates."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy if rewrite(copy) else None


def input_strides(graph) -> dict[str, int]:  # noqa: ANN001 - onnx.GraphProto
    """Each tensor's sampling step relative to the graph's inputs (a stride-2 convolution or pool doubles it; other
    nodes keep the largest of their inputs'), for the nodes in the graph's (topological) order."""
    step = {i.name: 1 for i in graph.input}
    for node in graph.node:
        known = [step[i] for i in node.input if i in step]
        factor = 1
        if node.op_type in ("Conv", "MaxPool", "AveragePool"):
            factor = next((max(a.ints) for a in node.attribute if a.name == "strides" and a.ints), 1)
        for out in node.output:
            step[out] = max(known, default=1) * factor
    return step


def qualifies(node, inits: dict, strides: dict[str, int]) -> bool:  # noqa: ANN001 - onnx.NodeProto, onnx tensors
    """A float32 3x3 convolution, stride 1, padding 1, one group, constant weights, wide enough to gain, on a map
    at most :data:`MAX_INPUT_STRIDE` times coarser than the image."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return False
    weight = inits.get(node.input[1])
    bias_ok = len(node.input) < 3 or not node.input[2] or node.input[2] in inits
    if weight is None or weight.data_type != 1 or len(weight.dims) != 4 or not bias_ok:  # 1: FLOAT
        return False
    k, c, kh, kw = weight.dims
    attrs = {a.name: a for a in node.attribute}
    ints = {name: list(a.ints) for name, a in attrs.items() if a.ints}
    if attrs.get("auto_pad") is not None and attrs["auto_pad"].s not in (b"", b"NOTSET"):
        return False
    return ((kh, kw) == (3, 3) and k >= MIN_OUT_CHANNELS and c >= MIN_IN_CHANNELS
            and strides.get(node.input[0], 1) <= MAX_INPUT_STRIDE
            and ints.get("pads") == [1, 1, 1, 1] and ints.get("strides", [1, 1]) == [1, 1]
            and ints.get("dilations", [1, 1]) == [1, 1] and (attrs["group"].i if "group" in attrs else 1) == 1)


def _winograd_nodes(node, inits: dict, const, helper) -> list:  # noqa: ANN001 - onnx objects
    from onnx import numpy_helper

    weight_name = node.input[1]
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    k, c = inits[weight_name].dims[:2]
    x, y = node.input[0], node.output[0]
    p = f"{y}/winograd"
    made = []

    def op(kind: str, inputs: list[str], name: str, **attrs: object) -> str:
        made.append(helper.make_node(kind, inputs, [f"{p}/{name}"], name=f"{p}/{name}", **attrs))
        return f"{p}/{name}"

    # Tile t covers input rows 2t-1 .. 2t+2 (zero beyond the image) and gives output rows 2t, 2t+1: pads 1 before,
    # 2 after, so that ceil(H/2) tiles come out for odd and even H alike.
    parts = [op("Conv", [x, const(f"winograd/bt{i}{j}_c{c}", input_transform_kernel(i, j, c))], f"v{i}{j}",
                group=c, kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 2, 2])
             for i in range(4) for j in range(4)]
    v = op("Concat", parts, "v", axis=1)                                              # (N, 16C, Th, Tw)
    v = op("Reshape", [v, const(f"winograd/shape_n16c_c{c}", np.array([0, 16, c, -1], np.int64))], "v_n16cp")
    # One product per image and transformed position, with that image's tiles as columns: onnxruntime's matrix
    # product sums a product of 64 columns or fewer in other blocks than a wider one, so columns from several
    # images would give an image other bits in a batch than alone. (The weights: one per convolution, shared by
    # the two inputs' passes.)
    u = const(f"winograd/u/{weight_name}",
              lambda: transformed_weights(numpy_helper.to_array(inits[weight_name])).reshape(1, 16, k, c))
    m = op("MatMul", [u, v], "m")                                                     # (N, 16, K, Th*Tw)
    m = op("Reshape", [m, const("winograd/shape_n16", np.array([0, 16, -1], np.int64))], "m_n16")
    o = op("MatMul", [const("winograd/at", output_transform().reshape(1, 4, 16)), m], "o")  # (N, 4, K*Th*Tw)
    tiles = op("Shape", [parts[0]], "tiles", start=2)                                 # [Th, Tw]
    blocks = op("Concat", [const(f"winograd/shape_n4k_k{k}", np.array([0, 4 * k], np.int64)), tiles], "blocks",
                axis=0)
    o = op("Reshape", [o, blocks], "o_n4khw")                                         # (N, (p, q, K), Th, Tw)
    o = op("DepthToSpace", [o], "o_full", blocksize=2, mode="DCR")                   # (N, K, 2Th, 2Tw)
    size = op("Shape", [x], "size", start=2)
    zeros = const("winograd/zeros2", np.array([0, 0], np.int64))
    cropped = op("Slice", [o, zeros, size, const("winograd/axes23", np.array([2, 3], np.int64))], "cropped")
    if bias_name is None:
        made.append(helper.make_node("Identity", [cropped], [y], name=f"{p}/out"))
    else:
        bias = const(f"winograd/bias/{bias_name}", lambda: numpy_helper.to_array(inits[bias_name]).reshape(1, k, 1, 1))
        made.append(helper.make_node("Add", [cropped, bias], [y], name=f"{p}/out"))
    return made


#: Where the rewritten graphs are kept (default: the user's cache folder for stlpips-deploy, ``graphs``).
GRAPH_CACHE_ENV = "STLPIPS_GRAPH_CACHE_DIR"
#: Rewritten graphs kept at most (the least recently used go first): 78 MB each for vgg-st.
CACHE_ENTRIES = 4
#: Part of every cache key: change it whenever the rewrite's output changes.
REWRITE_VERSION = "1"

#: (path, modification time, size) -> whether the file's export gated the Winograd form (Key.CPU_WINOGRAD).
_DECLARED: dict[tuple[str, int, int], bool] = {}


def declared(path: Path) -> bool:
    """Whether ``path``'s metadata says its export proved the Winograd form (read once per file and process,
    through onnxruntime, so files without it never import the onnx package)."""
    import onnxruntime as ort

    from ..contract import Key

    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _DECLARED:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        meta = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).get_modelmeta()
        _DECLARED[key] = bool(meta.custom_metadata_map.get(Key.CPU_WINOGRAD))
    return _DECLARED[key]


def graph_cache_dir() -> Path:
    """``$STLPIPS_GRAPH_CACHE_DIR``, else the user's cache folder for stlpips-deploy plus ``graphs``."""
    if os.environ.get(GRAPH_CACHE_ENV):
        return Path(os.environ[GRAPH_CACHE_ENV]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("stlpips-deploy", appauthor=False)) / "graphs"


def cpu_model(path: Path) -> str | bytes:
    """What the CPU provider loads for ``path`` in exact mode: where the file declares the Winograd form, that form,
    rewritten once and then kept in :func:`graph_cache_dir` (a later session or process loads it like any file:
    the rewrite takes 0.4-0.5 s and a transient 300 MB for vgg-st), or its bytes where the folder is not writable;
    else the path itself."""
    path = Path(path)
    stat = os.stat(path)
    ident = f"{REWRITE_VERSION}\0{path.resolve()}\0{stat.st_mtime_ns}\0{stat.st_size}"
    folder = graph_cache_dir()
    entry = folder / f"{path.stem}.winograd-{hashlib.sha256(ident.encode()).hexdigest()[:24]}.onnx"
    if entry.is_file():  # only declared files get an entry
        with contextlib.suppress(OSError):
            os.utime(entry)  # its last use, for eviction
        return str(entry)
    if not declared(path):
        return str(path)
    import onnx

    model = onnx.load(str(path))
    if not rewrite(model):
        return str(path)
    data = model.SerializeToString()
    del model
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    except OSError:
        return data
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, entry)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return data
    _evict(folder, keep=entry)
    return str(entry)


def _evict(folder: Path, keep: Path) -> None:
    entries = sorted(folder.glob("*.winograd-*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [e for e in entries if e != keep][CACHE_ENTRIES - 1:]:
        with contextlib.suppress(OSError):
            old.unlink()
