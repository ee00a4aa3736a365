"""Winograd F(2x2, 3x3) for the CPU provider (stlpips_rt.engine.winograd): the rewritten graph computes the file's
convolutions within float32 error, keeps every image's bits alone and in any batch, on any thread count, touches
only the layers its rule names, and runs only where the file's export gated it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_tiling import TOLERANCE, budget_for, image_pair, relative

from stlpips_rt import CpuOptions, Scorer
from stlpips_rt.contract import Key
from stlpips_rt.engine import winograd
from stlpips_rt.precision import tolerance
from stlpips_rt.tiling.run import assemble_layers


def conv_stack(pools: int = 0, channels: tuple[int, ...] = (256, 512, 512), opset: int = 17,
               stride: int = 1) -> onnx.ModelProto:
    """``pools`` stride-2 max pools, then 3x3 convolutions (padding 1, ReLU between) through ``channels``."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(pools):
        nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
        x = f"pool{i}"
    for i, (c, k) in enumerate(zip(channels, channels[1:], strict=False)):
        w = (rng.standard_normal((k, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(rng.normal(0, 0.1, k).astype(np.float32),
                                                                                f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"conv{i}"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1], strides=[stride, stride]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        x = f"relu{i}"
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                             ["N", channels[0], "H", "W"])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def session(model: onnx.ModelProto | bytes, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def images(n: int, h: int, w: int, seed: int = 1) -> np.ndarray:
    return np.maximum(np.random.default_rng(seed).standard_normal((n, 256, h, w)), 0).astype(np.float32)


def test_transformed_weights_are_g_w_gt_rounded_once() -> None:
    w = np.random.default_rng(3).standard_normal((8, 5, 3, 3)).astype(np.float32)
    expected = np.einsum("ia,kcab,jb->ijkc", winograd._G, w.astype(np.float64), winograd._G)
    assert np.array_equal(winograd.transformed_weights(w), expected.reshape(16, 8, 5).astype(np.float32))


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 5), (9, 9), (8, 10), (17, 13)])
def test_the_rewrite_computes_the_convolutions(hw: tuple[int, int]) -> None:
    plain = conv_stack()
    rewritten = winograd.rewritten_copy(plain)
    assert rewritten is not None
    assert sum(n.op_type == "Conv" and n.name.endswith("v00") for n in rewritten.graph.node) == 2
    x = images(2, *hw)
    expected = session(plain).run(None, {"x": x})[0]
    got = session(rewritten).run(None, {"x": x})[0]
    assert got.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert np.abs(got - expected).max() <= 2e-6 * scale, (np.abs(got - expected).max(), scale)


@pytest.mark.parametrize("hw", [(9, 9), (4, 6), (1, 2)])
def test_an_image_keeps_its_bits_alone_in_any_batch_and_on_any_thread_count(hw: tuple[int, int]) -> None:
    rewritten = winograd.rewritten_copy(conv_stack())
    x = images(5, *hw)
    batch = session(rewritten, threads=2).run(None, {"x": x})[0]
    for threads in (1, 2):
        run = session(rewritten, threads)
        alone = np.concatenate([run.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
        assert np.array_equal(alone, batch)
        reversed_batch = run.run(None, {"x": np.ascontiguousarray(x[::-1])})[0]
        assert np.array_equal(reversed_batch[::-1], batch)


@pytest.mark.parametrize("model, align, why", [
    (conv_stack(channels=(64, 64, 64)), None, "64 channels: the transforms cost more than the products save"),
    (conv_stack(pools=4), 16, "tiles start on odd map positions where the map's step is the alignment (VGG's conv5)"),
    (conv_stack(pools=3), 8, "... or where the step is the alignment of AlexNet's tiles (its conv3 to conv5)"),
    (conv_stack(stride=2), None, "strided convolutions are not 2x2-block Winograd"),
    (conv_stack(opset=13), None, "opsets before 15 have no Shape with a start"),
])
def test_what_is_left_alone(model: onnx.ModelProto, align: int | None, why: str) -> None:
    before = model.SerializeToString()
    assert winograd.rewritten_copy(model, align) is None, why
    assert not winograd.rewrite(model, align) and model.SerializeToString() == before


@pytest.mark.parametrize("pools, align", [(3, 16), (1, 16), (0, 16), (2, 8), (0, None)])
def test_maps_whose_blocks_line_up_with_the_tiles_are_rewritten(pools: int, align: int | None) -> None:
    assert winograd.rewritten_copy(conv_stack(pools=pools), align) is not None


def test_the_alignment_is_the_files_deepest_layer_stride() -> None:
    model = conv_stack(pools=3)
    helper.set_model_props(model, {Key.LAYER_STRIDE: "1,2,4,8,8"})
    assert winograd.tile_alignment(model) == 8 and winograd.rewritten_copy(model) is None
    helper.set_model_props(model, {Key.LAYER_STRIDE: "1,2,4,8,16"})
    assert winograd.tile_alignment(model) == 16 and winograd.rewritten_copy(model) is not None


def test_the_cpu_provider_rewrites_only_files_whose_export_gated_it_once(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(winograd.GRAPH_CACHE_ENV, str(tmp_path / "cache"))
    model = conv_stack()
    plain = tmp_path / "plain.onnx"
    onnx.save(model, plain)
    assert winograd.cpu_model(plain) == str(plain)
    helper.set_model_props(model, winograd.declaration(3.1e-7))
    declared = tmp_path / "declared.onnx"
    onnx.save(model, declared)
    entry = Path(winograd.cpu_model(declared))
    assert entry.parent == tmp_path / "cache"
    assert any("winograd" in n.name for n in onnx.load(str(entry)).graph.node)
    assert winograd.cpu_model(declared) == str(entry)  # kept: read, not rewritten again
    entry.write_bytes(b"a later process finds it")
    assert Path(winograd.cpu_model(declared)).read_bytes() == b"a later process finds it"
    helper.set_model_props(model, {**winograd.declaration(3.1e-7), Key.CPU_WINOGRAD_FORM: "0"})
    older = tmp_path / "gated_another_form.onnx"
    onnx.save(model, older)
    assert not winograd.declared(older) and winograd.cpu_model(older) == str(older)  # its own graph runs


def test_a_changed_file_gets_a_new_entry_and_old_entries_are_evicted(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(winograd.GRAPH_CACHE_ENV, str(tmp_path / "cache"))
    model = conv_stack()
    helper.set_model_props(model, winograd.declaration(3.1e-7))
    path = tmp_path / "declared.onnx"
    entries = set()
    for version in range(winograd.CACHE_ENTRIES + 2):
        helper.set_model_props(model, {**winograd.declaration(3.1e-7), "version": str(version)})
        onnx.save(model, path)
        os.utime(path, ns=(version * 10**9, version * 10**9))
        entries.add(winograd.cpu_model(path))
    assert len(entries) == winograd.CACHE_ENTRIES + 2
    assert len(list((tmp_path / "cache").glob("*.onnx"))) == winograd.CACHE_ENTRIES


def test_an_unwritable_cache_gives_the_rewritten_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a file, not a folder"
    blocker.write_text("")
    monkeypatch.setenv(winograd.GRAPH_CACHE_ENV, str(blocker / "cache"))
    model = conv_stack()
    helper.set_model_props(model, winograd.declaration(3.1e-7))
    path = tmp_path / "declared.onnx"
    onnx.save(model, path)
    data = winograd.cpu_model(path)
    assert isinstance(data, bytes)
    x = images(2, 9, 9)
    assert np.abs(session(data).run(None, {"x": x})[0] - session(model).run(None, {"x": x})[0]).max() < 1e-4


def test_vgg_st_runs_winograd_within_the_exact_tolerance_and_keeps_its_bits(exported_model) -> None:
    path = exported_model("vgg", "st")
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    assert float(meta[Key.CPU_WINOGRAD]) <= float(meta[Key.PARITY_TOLERANCE])
    rng = np.random.default_rng(5)
    a = rng.uniform(-1, 1, (6, 3, 64, 72)).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.2, a.shape), -1, 1).astype(np.float32)
    fast = Scorer(path, providers="cpu", threads=2)
    plain = Scorer(path, providers="cpu", threads=2, provider_options=[CpuOptions(winograd=False)])
    got = fast.score_batch(a, b, float_range="-1,1")
    expected = plain.score_batch(a, b, float_range="-1,1")
    assert np.abs(got - expected).max() <= tolerance("exact").max_abs
    alone = np.concatenate([fast.score_batch(a[i:i + 1], b[i:i + 1], float_range="-1,1") for i in range(len(a))])
    assert np.array_equal(alone, got)
    assert fast.provenance()["graph"] == "winograd" and plain.provenance()["graph"] == "file"


def test_vgg_st_tiles_keep_the_full_frames_features_under_winograd(exported_model) -> None:
    """Tiles start on multiples of VGG's deepest stride (16 px), so the rewritten layers' 2x2 blocks in a tile are
    the full frame's: every feature of every layer, position by position, within the tiling tolerance (the same
    bits on the machines measured), as with the plain graph."""
    path = exported_model("vgg", "st")
    h, w = 420, 460  # VGG's halo spans 210 px: tiles of 290x300 px, a grid with interior tiles
    a, b = image_pair(h, w, 4)
    probe = Scorer(path, providers="cpu")
    scorer = Scorer(path, providers="cpu", max_memory=budget_for(probe, 290 * 300))
    plan = scorer.plan(h, w)
    assert plan.tiled and len(plan.tiles) > 2, str(plan)
    session, geometry = scorer._tiles()
    x0, x1 = scorer.load(a), scorer.load(b)
    names = list(geometry.layer_maps)
    full = [m[0, 0] for m in scorer.run_arrays(x0[None], x1[None], names)]
    _, maps = assemble_layers(lambda i0, i1, out: scorer._infer(i0, i1, out, session), plan, geometry.windows,
                              names, [x0], [x1], keep_maps=True)
    assert max(relative(got, want) for got, want in zip(maps[0], full, strict=True)) <= TOLERANCE
    plain = Scorer(path, providers="cpu", max_memory="64G", provider_options=[CpuOptions(winograd=False)])
    plain_full = [m[0, 0] for m in plain.run_arrays(x0[None], x1[None], names)]
    assert not all(np.array_equal(m, p) for m, p in zip(full, plain_full, strict=True))  # the rewrite ran
    assert abs(scorer.score(a, b) - plain.score(a, b)) <= tolerance("exact").max_abs


def test_alex_st_declares_no_winograd_form(exported_model) -> None:
    """AlexNet's tiles start on multiples of 8 px, the stride of its conv3 to conv5: no layer's blocks line up, so
    its export declares nothing and the runtime never loads the onnx package for it (tests/test_rt_torch_free.py)."""
    path = exported_model("alex", "st")
    model = onnx.load(str(path), load_external_data=False)
    assert Key.CPU_WINOGRAD not in {p.key for p in model.metadata_props}
    assert Scorer(path, providers="cpu").provenance()["graph"] == "file"
