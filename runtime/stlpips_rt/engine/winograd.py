"""Winograd F(2x2, 3x3) for VGG's wide 3x3 convolutions, as onnxruntime's CPU provider runs a float32 model.

A 3x3 convolution computes each 2x2 block of outputs from a 4x4 window of its input with 36 multiplications per
channel pair; Winograd's minimal filtering algorithm does it with 16, at the price of linear transforms of the
window (``B^T d B``) and of the 16 products (``A^T m A``), additions only. Where a layer has many channels the
products dominate and the transforms are cheap. In the graph, convolutions and additions, which onnxruntime runs
in its blocked (NCHWc) layout, then the interleave of the 2x2 positions:

    input -> 16 depthwise 4x4 stride-2 convolutions, one per transformed position (weights 0 and +-1)
          -> 16 1x1 convolutions with the transformed weights ``G w G^T`` (the bias in one of them)
          -> the output transform, additions (a -1 as a depthwise convolution) -> 4 maps, one per 2x2 position
          -> Concat, the 2x2 positions interleaved through channels-last, crop to the input's size

**Exactness.** Every operator is a direct kernel whose sum for an output depends on nothing but that output's
inputs: an image gets the same bits alone and in any batch, and a map position the same bits wherever its 2x2
block lies in the map. (Matrix products would not do: onnxruntime's MLAS blocks a product's sums by its number of
columns.) Tiles of a large image start on multiples of the file's deepest layer stride (``align``, 16 for VGG), so
a layer whose input map is ``s`` times coarser than the image sees tiles start on multiples of ``align / s`` map
positions; where that is even, the tile's 2x2 blocks are the full frame's and a tile's features keep the full
frame's bits. Only those layers are rewritten (:func:`qualifies`): VGG's conv2_2 to conv4_3 (``s`` 2 to 8), not
conv5 (``s`` = 16) and none of AlexNet's (its conv3 to conv5 have ``s`` = ``align`` = 8). The transforms'
coefficients are 0, +-1 and +-1/2, and ``G w G^T`` is computed in float64 and rounded once, so the error stays
that of a float32 convolution (measured per layer: 4e-7 to 7e-7 absolute on outputs of about 1.5, where the
direct kernel and the float64 result differ by about as much).

**Speed** (one thread against onnxruntime's own blocked convolution, 2-core AMD EPYC Zen 4): 512 -> 512 at 9x9
(8 images of 64x64) 1.46x, 256 -> 256 at 17x17 1.45x, 128 -> 128 at 33x33 1.31x, 512 -> 512 at 33x33 (2 images of
256x256) 1.67x (docs/performance.md has the other layers); with 64 inputs it loses (0.86x at 64x64, 1.00x 64 ->
128), hence :data:`MIN_IN_CHANNELS`.

Only the runtime applies it, only where the file's export gated this version of it (``stlpips.cpu_winograd``
and ``stlpips.cpu_winograd_form``), only for
``precision="exact"`` on the CPU provider, and ``CpuOptions(winograd=False)`` turns it off. The first load rewrites
the file and keeps the result in a cache folder; later sessions and processes load that. The file keeps its plain
convolutions for every other host (OpenVINO, GPU providers, the browser and C++ hosts pick their own algorithms).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..contract import Key
from .model_files import read_metadata
from .options import SessionConfig

#: Narrowest layer rewritten: with 64 inputs the transforms cost more than the products save.
MIN_IN_CHANNELS = 128
MIN_OUT_CHANNELS = 128

# F(2, 3) with the interpolation points 0, 1, -1 and infinity.
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
#: The sign each transformed row (and column) of the products is kept with: row 3 enters the output transform only
#: with coefficient -1, so its products are computed negated (negated weights, exact) and added.
_STORED_SIGN = np.array([1, 1, 1, -1], dtype=np.float32)


def transformed_weights(weight: np.ndarray) -> np.ndarray:
    """float32 ``(16, K, C)``: ``G w G^T`` of a ``(K, C, 3, 3)`` weight, in float64, rounded once."""
    k, c = weight.shape[:2]
    # U[(i, j), k, c] = sum over (a, b) of G[i, a] G[j, b] w[k, c, a, b]: one product with a (9, 16) matrix. Its
    # entries are 0, +-1/4, +-1/2 and 1, so each term is exact and the float64 sum of nine is rounded once.
    mix = np.einsum("ia,jb->abij", _G, _G).reshape(9, 16)
    u = weight.reshape(k * c, 9).astype(np.float64) @ mix                       # (K*C, 16)
    return np.ascontiguousarray(u.T, dtype=np.float32).reshape(16, k, c)


def input_transform_kernel(i: int, j: int, channels: int) -> np.ndarray:
    """float32 ``(C, 1, 4, 4)``: the depthwise kernel giving transformed position ``(i, j)`` of ``B^T d B``."""
    return np.broadcast_to(np.outer(_BT[i], _BT[j]), (channels, 1, 4, 4)).astype(np.float32)


def rewrite(model, align: int | None = None) -> bool:  # noqa: ANN001 - onnx.ModelProto (onnx imported lazily)
    """Rewrite ``model`` in place so that its qualifying convolutions (:func:`qualifies`) run as Winograd
    F(2x2, 3x3); False (and ``model`` untouched) when none qualifies or the opset is older than 15 (``Shape`` with
    a start). ``align``: the step tile origins are multiples of (default: :func:`tile_alignment`)."""
    import onnx
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    strides = input_strides(graph)
    align = align or tile_alignment(model)
    chosen = [n for n in graph.node if qualifies(n, inits, strides, align)]
    if opset < 15 or not chosen:
        return False
    added: dict[str, onnx.TensorProto] = {}

    def const(name: str, value: np.ndarray | Callable[[], np.ndarray]) -> str:
        """The initializer ``name``, made once (``value`` may be a function, called only then)."""
        if name not in added:
            array = value() if callable(value) else value
            added[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    transformed: dict[str, np.ndarray] = {}  # a weight shared by both inputs' passes is transformed once

    def products_weight(name: str, position: int) -> np.ndarray:
        if name not in transformed:
            transformed[name] = transformed_weights(numpy_helper.to_array(inits[name]))
        return transformed[name][position][:, :, None, None]

    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.extend(_winograd_nodes(node, inits, const, helper, products_weight) if node in chosen else [node])
    replaced = {n.input[i] for n in chosen for i in (1, 2) if i < len(n.input)}
    still_used = {i for n in nodes for i in n.input}
    for name in replaced - still_used:
        graph.initializer.remove(inits[name])
    graph.initializer.extend(added.values())
    del graph.node[:]
    graph.node.extend(nodes)
    return True


def rewritten_copy(model, align: int | None = None):  # noqa: ANN001, ANN201 - onnx.ModelProto in and out
    """A rewritten copy of ``model`` (:func:`rewrite`), or None where nothing qualifies: the form the export gates."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy if rewrite(copy, align) else None


def tile_alignment(model) -> int | None:  # noqa: ANN001 - onnx.ModelProto
    """The step tile origins are multiples of, from the file's metadata (:func:`alignment_of`)."""
    return alignment_of({p.key: p.value for p in model.metadata_props})


def alignment_of(metadata: Mapping[str, str]) -> int | None:
    """The deepest layer stride of a file's geometry (``stlpips.layer_stride``), which tile origins are multiples
    of (as the tiler reads it); None for a graph without one (never tiled)."""
    strides = [int(s) for s in metadata.get(Key.LAYER_STRIDE, "").split(",") if s.strip()]
    return max(strides) if strides else None


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


def qualifies(node, inits: dict, strides: dict[str, int], align: int | None) -> bool:  # noqa: ANN001 - onnx objects
    """A float32 3x3 convolution, stride 1, padding 1, one group, constant weights, wide enough to gain, on a map
    whose step ``s`` leaves tile origins on even map positions (``align / s`` even: the 2x2 blocks of a tile are
    the full frame's; ``align`` None: a graph that is never tiled)."""
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
            and _blocks_line_up(strides.get(node.input[0], 1), align)
            and ints.get("pads") == [1, 1, 1, 1] and ints.get("strides", [1, 1]) == [1, 1]
            and ints.get("dilations", [1, 1]) == [1, 1] and (attrs["group"].i if "group" in attrs else 1) == 1)


def _blocks_line_up(step: int, align: int | None) -> bool:
    return align is None or (align % step == 0 and (align // step) % 2 == 0)


def _winograd_nodes(node, inits: dict, const, helper, products_weight) -> list:  # noqa: ANN001 - onnx objects
    weight_name = node.input[1]
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    c = inits[weight_name].dims[1]
    x, y = node.input[0], node.output[0]
    p = f"{y}/winograd"
    made = []

    def op(kind: str, inputs: list[str], name: str, **attrs: object) -> str:
        made.append(helper.make_node(kind, inputs, [f"{p}/{name}"], name=f"{p}/{name}", **attrs))
        return f"{p}/{name}"

    # Block t covers input rows 2t-1 .. 2t+2 (zero beyond the map) and gives output rows 2t, 2t+1: pads 1 before,
    # 2 after, so that ceil(H/2) blocks come out for odd and even H alike.
    m = {}
    for i in range(4):
        for j in range(4):
            v = op("Conv", [x, const(f"winograd/bt{i}{j}_c{c}", input_transform_kernel(i, j, c))], f"v{i}{j}",
                   group=c, kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 2, 2])
            weights = const(f"winograd/u{i}{j}/{weight_name}",
                            lambda position=4 * i + j, sign=_STORED_SIGN[i] * _STORED_SIGN[j]:
                            sign * products_weight(weight_name, position))
            # (1, 1) enters every output of the block with coefficient 1: it carries the bias
            bias = [bias_name] if bias_name and (i, j) == (1, 1) else []
            m[i, j] = op("Conv", [v, weights, *bias], f"m{i}{j}", kernel_shape=[1, 1])
    k = inits[weight_name].dims[0]
    minus_one = const(f"winograd/minus_one_k{k}", np.full((k, 1, 1, 1), -1.0, np.float32))

    def combine(terms: list[tuple[float, str]], name: str) -> str:
        """``sum(factor * tensor)`` over the terms with a non-zero factor (+-1), left to right, as additions only:
        a -1 is a depthwise convolution by -1 first (exact; ``a + (-b)`` is ``a - b`` to the bit), since
        onnxruntime runs ``Add`` in its blocked layout and ``Sub`` in the plain one."""
        out = None
        for n, (factor, tensor) in enumerate((f, t) for f, t in terms if f):
            if factor < 0:
                tensor = op("Conv", [tensor, minus_one], f"{name}_neg{n}", group=k, kernel_shape=[1, 1])
            out = tensor if out is None else op("Add", [out, tensor], f"{name}_{n}")
        assert out is not None
        return out

    # A^T m A, rows first, then columns. The products of row 3 and of column 3 are kept negated (their weights
    # are, _STORED_SIGN): each enters only with coefficient -1, so only row 2 and column 2 need a negation.
    rows = {(a, j): combine([(_AT[a, i] / _STORED_SIGN[i], m[i, j]) for i in range(4)], f"r{a}{j}")
            for a in range(2) for j in range(4)}
    blocks = [combine([(_AT[b, j] / _STORED_SIGN[j], rows[a, j]) for j in range(4)], f"y{a}{b}")
              for a in range(2) for b in range(2)]
    # The interleave of the 2x2 positions through channels-last, where it moves blocks of K floats: onnxruntime turns
    # the first Transpose into a reorder out of its blocked layout, and a DepthToSpace in the plain layout moved
    # single floats (4.5% of vgg-st's run, 3-7% slower a layer).
    phases = op("Concat", blocks, "phases", axis=1)                                  # (N, (a, b, K), Th, Tw)
    nhwc = op("Transpose", [phases], "nhwc", perm=[0, 2, 3, 1])                      # (N, Th, Tw, (a, b, K))
    six = op("Reshape", [nhwc, const(f"winograd/shape_hw22k_k{k}", np.array([0, 0, 0, 2, 2, k], np.int64))], "six")
    inter = op("Transpose", [six], "inter", perm=[0, 1, 3, 2, 4, 5])                 # (N, Th, a, Tw, b, K)
    blocks_hw = op("Shape", [phases], "blocks_hw", start=2, end=4)
    full_hw = op("Mul", [blocks_hw, const("winograd/two2", np.array([2, 2], np.int64))], "full_hw")
    shape = op("Concat", [const("winograd/zero1", np.array([0], np.int64)), full_hw,
                          const(f"winograd/k{k}", np.array([k], np.int64))], "shape", axis=0)
    full = op("Reshape", [inter, shape], "full")                                     # (N, 2Th, 2Tw, K)
    size = op("Shape", [x], "size", start=2)
    cropped = op("Slice", [full, const("winograd/zeros2", np.array([0, 0], np.int64)), size,
                           const("winograd/axes12", np.array([1, 2], np.int64))], "cropped")
    made.append(helper.make_node("Transpose", [cropped], [y], name=f"{p}/nchw", perm=[0, 3, 1, 2]))
    return made


#: Where the rewritten graphs are kept (default: the user's cache folder for stlpips-deploy, ``graphs``).
GRAPH_CACHE_ENV = "STLPIPS_GRAPH_CACHE_DIR"
#: Rewritten graphs kept at most (the least recently used go first): 78 MB each for vgg-st.
CACHE_ENTRIES = 4
#: The rewrite's version: change it whenever its output changes. Exports record the version they gated
#: (``stlpips.cpu_winograd_form``); files gated with another run their own graph. Part of every cache key too.
FORM = "3"

def declaration(max_abs: float) -> dict[str, str]:
    """The metadata an export writes once this version of the form passed its gate with error ``max_abs``."""
    return {Key.CPU_WINOGRAD: f"{max_abs:.3g}", Key.CPU_WINOGRAD_FORM: FORM}


def declared_in(metadata: Mapping[str, str]) -> bool:
    """Whether ``metadata`` says its export gated this version of the form."""
    return bool(metadata.get(Key.CPU_WINOGRAD)) and metadata.get(Key.CPU_WINOGRAD_FORM) == FORM


def declared(path: Path) -> bool:
    """:func:`declared_in` for a file's metadata, read from its protobuf (files without it never import the onnx
    package; a file that cannot be read is not declared, and the session that follows reports why)."""
    try:
        return declared_in(read_metadata(Path(path)))
    except (OSError, ValueError):
        return False


def applies(path: Path, providers: Sequence[str], cfg: SessionConfig) -> bool:
    """Whether a session of ``path`` on ``providers`` (first choice first) with ``cfg`` runs the Winograd form: the
    CPU provider, exact mode, ``CpuOptions(winograd=True)``, a file whose export gated it."""
    return (bool(providers) and providers[0] == "cpu" and cfg.precision == "exact" and cfg.cpu.winograd
            and declared(path))


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
    ident = f"{FORM}\0{path.resolve()}\0{stat.st_mtime_ns}\0{stat.st_size}"
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
