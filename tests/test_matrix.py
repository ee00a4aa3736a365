"""Distance matrices (docs/matrix.md): the features graph beside the model, Scorer.features / matrix / nearest
against Scorer.score on every pair, saved features, spilling past max_memory, stlpips-score --matrix, and Ray
(single process cluster: bit for bit; a simulated three-node cluster losing a worker node, in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stlpips_rt import ImageOptions, ImageSizeError, NotAnStlpipsModelError, Scorer
from stlpips_rt.cli.score import main as score_cli
from stlpips_rt.io.manifest import file_sha256, read_provenance
from stlpips_rt.matrix import FeatureSet, FeaturesMismatchError, extract, head
from stlpips_rt.matrix.features import HEADER
from stlpips_rt.matrix.model import FeatureModel
from stlpips_rt.precision import tolerance

SIZE = 32


def _image(seed: int) -> np.ndarray:
    """A smooth random image (natural-ish statistics, so distances spread)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 40, (SIZE // 4, SIZE // 4, 3)).repeat(4, 0).repeat(4, 1)
    return np.clip(128 + base + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st", features=True)


@pytest.fixture(scope="module")
def scorer(model: Path) -> Scorer:
    return Scorer(model, providers="cpu", threads=1)


@pytest.fixture(scope="module")
def corpus() -> list[np.ndarray]:
    """9 images, then an exact copy of image 2 and a one-bit change of image 4 (distance ~1e-9)."""
    items = [_image(i) for i in range(9)]
    items.append(items[2].copy())
    near = items[4].copy()
    near[5, 7, 1] ^= 1
    items.append(near)
    return items


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, corpus: list[np.ndarray]) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("matrix-images")
    for i, x in enumerate(corpus):
        Image.fromarray(x).save(root / f"im{i:02d}.png")
    data = (root / "im00.png").read_bytes()
    (root / "zz_truncated.png").write_bytes(data[: len(data) // 3])
    return root


def _assert_close_to_score(matrix: np.ndarray, reference: np.ndarray) -> None:
    small = reference < 1e-3
    assert np.all(np.abs(matrix - reference)[small] <= 1e-9)
    rel = np.abs(matrix - reference)[~small] / reference[~small]
    assert rel.max() <= 1e-6, rel.max()


def test_features_graph_is_written_beside_and_described(model: Path, scorer: Scorer) -> None:
    path = model.with_name("stlpips_alex_st_features.onnx")
    assert path.is_file()
    _, features_model = scorer._features()
    assert isinstance(features_model, FeatureModel) and features_model.path == path
    assert features_model.channels == (64, 192, 384, 256, 256) and features_model.name == "alex-st"
    assert all(w.dtype == np.float32 and (w >= 0).all() for w in features_model.weights)
    assert features_model.batch_invariant  # the export checked it (stlpips.features_batch = invariant)
    with pytest.raises(NotAnStlpipsModelError, match="features graph"):
        Scorer(path, providers="cpu")


def test_features_are_batched_and_the_same_bits_as_one_image_alone(model: Path, corpus: list[np.ndarray]) -> None:
    scorer = Scorer(model, providers="cpu", threads=2)
    runner, _ = scorer._features()
    assert runner.batching and runner.workers == 2
    batches: list[int] = []
    write = runner.write

    def spy(images: np.ndarray, dest: np.ndarray, rows: list[int]) -> None:
        batches.append(len(images))
        write(images, dest, rows)

    runner.write = spy  # type: ignore[method-assign]
    together = scorer.features(corpus)
    assert max(batches) == len(corpus)  # 32x32: one run for all of them
    one = Scorer(model, providers="cpu", threads=1)
    alone = np.stack([one.features([x]).data[0] for x in corpus])
    assert np.array_equal(together.data, alone)
    # the bound outputs (write) hold what a plain run returns
    plain = runner.run(np.stack([one.load(x) for x in corpus[:3]]))
    assert np.array_equal(np.concatenate([o.reshape(3, -1) for o in plain], axis=1), together.data[:3])


def test_a_graph_without_the_batch_key_runs_one_image_per_run(model: Path) -> None:
    import onnxruntime as ort

    meta = dict(ort.InferenceSession(str(model.with_name("stlpips_alex_st_features.onnx")),
                                     providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map)
    older = FeatureModel.from_metadata(model, {k: v for k, v in meta.items() if k != "stlpips.features_batch"}, "0")
    assert not older.batch_invariant

    class Session:
        def get_providers(self) -> list[str]:
            return ["CPUExecutionProvider"]

    assert not extract.session_runner(Session(), older, 2).batching
    assert extract.session_runner(Session(), FeatureModel.from_metadata(model, meta, "0"), 2).batching
    assert [extract.images_per_run(*hw) for hw in ((32, 32), (64, 64), (256, 256))] == [32, 16, 1]


def test_the_export_tells_a_batch_invariant_graph_from_one_that_is_not() -> None:
    """A channel ReduceSum (how unit normalisation was exported) moves a batch of one image's last bit; the same
    sum as a 1x1 convolution of ones does not, and the export's check says so."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from stlpips_export.features_export import batch_invariant

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(0, 0.3, (64, 3, 3, 3)).astype(np.float32), "w")
    ones = numpy_helper.from_array(np.ones((1, 64, 1, 1), np.float32), "ones")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")

    def graph(channel_sum: object) -> object:
        nodes = [helper.make_node("Conv", ["image", "w"], ["f"], pads=[1, 1, 1, 1]),
                 helper.make_node("Mul", ["f", "f"], ["sq"]), channel_sum]
        image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
        g = helper.make_graph(nodes, "g", [image], [helper.make_tensor_value_info("feat0", TensorProto.FLOAT, None)],
                              [weight, ones, axes])
        data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()
        return ort.InferenceSession(data, providers=["CPUExecutionProvider"])

    reduce_sum = graph(helper.make_node("ReduceSum", ["sq", "axes"], ["feat0"], keepdims=1))
    conv = graph(helper.make_node("Conv", ["sq", "ones"], ["feat0"]))
    assert not batch_invariant(reduce_sum, None, 21)
    assert batch_invariant(conv, None, 21)


def test_matrix_equals_score_on_every_pair(scorer: Scorer, corpus: list[np.ndarray]) -> None:
    matrix = scorer.matrix(corpus, block=4)  # several blocks, diagonal and off-diagonal
    n = len(corpus)
    reference = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            reference[i, j] = reference[j, i] = scorer.score(corpus[i], corpus[j])
    assert matrix.dtype == np.float32 and matrix.shape == (n, n)
    assert np.array_equal(matrix, matrix.T)
    assert np.all(np.diag(matrix) == 0)
    assert matrix[2, 9] == 0.0  # identical images: exactly 0
    assert 0 < matrix[4, 10] < 1e-6  # the one-bit change survives (no cancellation)
    _assert_close_to_score(matrix, reference)
    # the block cut does not change the numbers beyond float32 rounding; the default cut is one block here
    assert np.allclose(scorer.matrix(corpus), matrix, rtol=1e-6, atol=1e-12)


def test_cross_matrix_nearest_and_saved_features(scorer: Scorer, corpus: list[np.ndarray], tmp_path: Path) -> None:
    a, b = corpus[:4], corpus[4:]
    cross = scorer.matrix(a, b)
    reference = np.array([[scorer.score(x, y) for y in b] for x in a])
    _assert_close_to_score(cross, reference)

    saved = scorer.features(b).save(tmp_path / "feats")
    loaded = FeatureSet.load(saved)
    assert isinstance(loaded.data, np.memmap) and loaded.names == [f"images[{i}]" for i in range(len(b))]
    assert np.array_equal(scorer.matrix(a, saved), cross)  # a folder path works too
    assert np.array_equal(scorer.matrix(scorer.features(a), loaded), cross)

    index, dist = scorer.nearest(a, b, k=2)
    order = np.argsort(cross, axis=1, kind="stable")[:, :2]
    assert np.array_equal(index, order) and np.array_equal(dist, np.take_along_axis(cross, order, axis=1))
    index, dist = scorer.nearest(corpus, k=1)
    assert index[2, 0] == 9 and dist[2, 0] == 0  # its copy, not itself

    header = json.loads((saved / HEADER).read_text())
    header["model_sha256"] = "0" * 64
    (saved / HEADER).write_text(json.dumps(header))
    with pytest.raises(FeaturesMismatchError, match="saved with model alex-st .*recompute them"):
        scorer.matrix(a, saved)


def test_images_of_different_sizes_are_named_or_resized(model: Path, corpus: list[np.ndarray]) -> None:
    scorer = Scorer(model, providers="cpu", threads=1)
    rng = np.random.default_rng(5)
    odd = [corpus[0], corpus[1], rng.integers(0, 256, (40, 36, 3), np.uint8), rng.integers(0, 256, (24, 24, 3),
                                                                                          np.uint8)]
    with pytest.raises(ImageSizeError, match=r"images\[2\].*images\[3\].*one image size.*32x32.*resize"):
        scorer.features(odd)
    resizing = Scorer(model, "cpu", threads=1, image=ImageOptions(resize=(32, 32)))
    resized = resizing.matrix(odd)
    reference = np.array([[resizing.score(a, b) if i != j else 0.0 for j, b in enumerate(odd)]
                          for i, a in enumerate(odd)])
    _assert_close_to_score(resized, reference)  # every pair, resized as the pair graph resizes it
    assert resized[2, 3] > 0.01 and resized[0, 2] != resized[0, 3]  # the two odd sizes are really scored


def test_features_past_the_budget_spill_to_disk(model: Path, scorer: Scorer, corpus: list[np.ndarray],
                                                tmp_path: Path) -> None:
    per_image = scorer.features(corpus[:1]).layout.bytes_per_image
    small = Scorer(model, providers="cpu", threads=1, max_memory=per_image * 6)  # 3 images' worth for features
    features = small.features(corpus, spill_dir=tmp_path)
    assert isinstance(features.data, np.memmap) and features.spill_path is not None
    assert features.spill_path.parent == tmp_path
    plan = small.matrix_plan(len(corpus), SIZE, SIZE, block=4)
    assert plan.spilled and plan.panel_rows < len(corpus) and "spilled to disk" in str(plan)
    assert np.array_equal(small.matrix(features, block=4), scorer.matrix(corpus, block=4))


def test_rows_written_while_their_pages_are_mapped_keep_their_values() -> None:
    """Fresh rows come back before their pages are mapped (a background MADV_POPULATE_WRITE); what is written
    meanwhile must survive it, and the rest reads as zeros."""
    import threading

    from stlpips_rt.matrix.features import RowsPool

    pool = RowsPool()
    rows = pool.take(64, 1 << 16)  # 16 MiB
    rng = np.random.default_rng(0)
    written = rng.standard_normal((8, 1 << 16)).astype(np.float32)
    rows[::8] = written  # while the populating thread may still run
    for thread in threading.enumerate():
        if thread.name == "stlpips-rows":
            thread.join(timeout=30)
    assert np.array_equal(rows[::8], written)
    untouched = np.ones(64, bool)
    untouched[::8] = False
    assert not rows[untouched].any()
    assert pool.take(0, 5).shape == (0, 5)


def test_rows_of_a_dropped_feature_set_serve_the_next_call_and_never_show(model: Path,
                                                                         corpus: list[np.ndarray]) -> None:
    """The rows' memory comes back when the FeatureSet and every view of it are gone (RowsPool): the next call
    reuses it without the kernel zeroing it, and what it held before never shows in the new features."""
    import gc

    fresh = Scorer(model, providers="cpu", threads=1).features(corpus[:4]).data.copy()
    scorer = Scorer(model, providers="cpu", threads=1)
    pool = scorer._features()[0].rows
    first = scorer.features(corpus[4:])  # 7 images: a larger block than the next call needs
    address, kept = first.data.ctypes.data, first.data[1]
    kept_values = kept.copy()
    del first
    gc.collect()
    held = scorer.features(corpus[:4])  # a view of the first call's rows is still alive: fresh memory
    assert held.data.ctypes.data != address and pool.reused == 0
    assert np.array_equal(kept, kept_values) and np.array_equal(held.data, fresh)
    del kept, held
    gc.collect()
    again = scorer.features(corpus[:4])
    # the larger of the two blocks given back is kept: the first call's, whose first 4 rows held other images
    assert pool.reused == 1 and again.data.ctypes.data == address
    assert np.array_equal(again.data, fresh)


def test_head_blocks_match_the_direct_form() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(0, 0.1, (7, 300)).astype(np.float32)
    data[5] = data[1]
    data[6] = data[2] + np.float32(1e-7)
    weights = rng.uniform(0, 1e-2, 300)
    out = head.pairwise(data, weights, block_size=3, threads=2)
    direct = np.array([[head.direct(x, y, weights) for y in data] for x in data], dtype=np.float32)
    assert np.array_equal(out, out.T) and out[1, 5] == 0
    assert np.allclose(out, direct, rtol=1e-6, atol=1e-12)
    i, j, d = head.under(out, 1e-9, symmetric=True)
    assert [(int(x), int(y)) for x, y in zip(i, j, strict=True)] == [(1, 5), (2, 6)]


def test_the_head_gives_the_same_bits_whatever_its_threads_groups_or_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry's arithmetic depends on the block cut and the chunking alone: the local run (groups of blocks,
    chunks spread over threads) gives every block the same float64 Gram products and norms, bit for bit, as the
    block computed alone (what a Ray task runs), so the same float32 matrix."""
    rng = np.random.default_rng(1)
    dim = 5 * head.K_CHUNK + 123  # six chunks, the last one partial
    data = rng.normal(0, 0.1, (23, dim)).astype(np.float32)
    data[7] = data[3]
    weights = rng.uniform(0, 1e-2, dim)
    seen: dict[tuple[bytes, bytes], list[np.ndarray]] = {}
    finish = head._finish

    def spy(gram: np.ndarray, na: np.ndarray, nb: np.ndarray, a: np.ndarray, b: np.ndarray | None,
            weights_: np.ndarray) -> np.ndarray:  # the float64 numbers of each block, before float32 rounding
        seen[(a.tobytes(), b.tobytes() if b is not None else b"")] = [gram.copy(), na.copy(), nb.copy()]
        return finish(gram, na, nb, a, b, weights_)

    monkeypatch.setattr(head, "_finish", spy)
    alone = np.zeros((23, 23), dtype=np.float32)
    for t in head.tasks(23, None, 5):
        alone[t.rows, t.cols] = head.block(data[t.rows], None if t.same else data[t.cols], weights)
    alone = np.triu(alone, 1) + np.triu(alone, 1).T
    assert alone[3, 7] == 0 and alone[0, 1] > 0
    expected = dict(seen)
    for threads, group in ((1, 5), (2, 5), (1, 10), (2, 15), (3, 1024)):
        seen.clear()
        got = head.pairwise(data, weights, block_size=5, threads=threads, group=group)
        assert seen.keys() == expected.keys()
        assert all(np.array_equal(x, y) for k in expected for x, y in zip(seen[k], expected[k], strict=True)), \
            (threads, group)
        assert np.array_equal(got, alone), (threads, group)
    seen.clear()
    cross = np.zeros((9, 14), dtype=np.float32)
    for t in head.tasks(9, 14, 5):
        cross[t.rows, t.cols] = head.block(data[:9][t.rows], data[9:][t.cols], weights)
    expected = dict(seen)
    for threads, group in ((1, 5), (2, 10), (2, 1024)):
        seen.clear()
        assert np.array_equal(head.cross(data[:9], data[9:], weights, block_size=5, threads=threads, group=group),
                              cross), (threads, group)
        assert all(np.array_equal(x, y) for k in expected for x, y in zip(seen[k], expected[k], strict=True))


def test_the_diversity_summary_reads_the_matrix_a_slice_at_a_time() -> None:
    from stlpips_rt.cli.matrix import diversity

    rng = np.random.default_rng(3)
    upper = np.triu(rng.uniform(0, 1, (1500, 1500)), 1)
    square = (upper + upper.T).astype(np.float32)
    row_means = square.astype(np.float64).sum(axis=1) / 1499
    mean, low, high = diversity(square, symmetric=True)
    assert mean == pytest.approx(row_means.mean(), rel=1e-12)
    assert high - mean == pytest.approx(1.96 * 2 * row_means.std(ddof=1) / np.sqrt(1500), rel=1e-9)
    cross = rng.uniform(0, 1, (1100, 700)).astype(np.float32)
    m64 = cross.astype(np.float64)
    mean, low, high = diversity(cross, symmetric=False)
    se = np.sqrt(m64.mean(axis=1).var(ddof=1) / 1100 + m64.mean(axis=0).var(ddof=1) / 700)
    assert mean == pytest.approx(m64.mean(), rel=1e-12) and high - mean == pytest.approx(1.96 * se, rel=1e-9)


def test_cli_matrix_folder_cache_outputs_and_a_corrupt_file(model: Path, folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cache = tmp_path / "cache"
    base = ["--model", str(model), "--providers", "cpu", "--threads", "1", "--matrix", str(folder),
            "--cache-dir", str(cache)]
    before = sorted(p.name for p in folder.iterdir())
    first = runner.invoke(score_cli, [*base, "-o", str(tmp_path / "m.npy")])
    assert first.exit_code == 1, first.output  # the truncated file is left out and named
    assert "left out" in first.output and "zz_truncated.png" in first.output
    # im09 is a byte-for-byte copy of im02: the cache knows images by content, so it is read from the first's entry
    assert "10 image(s) computed, 1 from the cache" in first.output and "95% interval" in first.output
    assert f"cache {cache}: " in first.output and " of 2.0 GiB" in first.output
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written beside the images
    matrix = np.load(tmp_path / "m.npy")
    names = (tmp_path / "m.rows.txt").read_text().split()
    assert matrix.shape == (11, 11) and len(names) == 11 and names[0].endswith("im00.png")
    second = runner.invoke(score_cli, [*base, "-o", str(tmp_path / "m.csv")])
    assert "0 image(s) computed, 11 from the cache" in second.output
    import csv

    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert len(rows) == 55 and {"a", "b", "distance"} <= set(rows[0])
    by_pair = {(r["a"], r["b"]): float(r["distance"]) for r in rows}
    assert by_pair[(names[2], names[9])] == 0.0
    assert np.float32(by_pair[(names[0], names[1])]) == matrix[0, 1]  # the CSV gives the float32 back
    for written in ("m.npy", "m.csv"):  # each output names the model and engine that computed it
        record = read_provenance(tmp_path / written)
        assert record["model"]["sha256"] == file_sha256(model) and record["provider"] == "cpu"
    near = runner.invoke(score_cli, [*base, "--threshold", "1e-6", "-o", str(tmp_path / "dups.parquet")])
    import pyarrow.parquet as pq

    dups = pq.read_table(tmp_path / "dups.parquet").to_pylist()
    assert read_provenance(tmp_path / "dups.parquet")["model"]["sha256"] == file_sha256(model)
    assert near.exit_code == 1 and {(Path(d["a"]).name, Path(d["b"]).name) for d in dups} == \
        {("im02.png", "im09.png"), ("im04.png", "im10.png")}
    top = runner.invoke(score_cli, [*base, "--top-k", "1", "-q"])
    nearest = [line for line in top.output.splitlines() if ",1," in line]
    assert len(nearest) == 11 and any(line.endswith("im09.png,0") for line in nearest)


@pytest.mark.ray
def test_cli_ray_matrix_writes_the_local_rows_and_names_its_model(ray_cluster, model: Path, folder: Path,
                                                                   tmp_path: Path) -> None:
    """``--matrix --engine ray`` writes the same CSV as the local run (bit for bit on CPU) and its manifest names
    the model the workers ran."""
    base = ["--model", str(model), "--providers", "cpu", "--threads", "1", "--matrix", str(folder), "-q"]
    local = CliRunner().invoke(score_cli, [*base, "-o", str(tmp_path / "local.csv")])
    ray = CliRunner().invoke(score_cli, [*base, "--engine", "ray", "--workers", "1", "-o", str(tmp_path / "ray.csv")])
    assert local.exit_code == ray.exit_code == 1, local.output + ray.output  # the truncated file is left out
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text()
    record = read_provenance(tmp_path / "ray.csv")
    assert record["model"]["sha256"] == file_sha256(model) and record["provider"] == "cpu"


@pytest.mark.ray
def test_ray_matrix_equals_local_bit_for_bit(ray_cluster, model: Path, folder: Path) -> None:
    from stlpips_rt.scale import score_matrix

    files = sorted(str(p) for p in folder.glob("*.png"))
    result = score_matrix(files, model, workers=1, threads=1, providers="cpu", block=4)
    good = [f for f in files if not f.endswith("zz_truncated.png")]
    assert result.rows == good and [n for n, _ in result.failed] == [files[-1]]
    local = Scorer(model, providers="cpu", threads=1).matrix(good, block=4)
    assert np.array_equal(result.matrix, local)
    assert result.blocks_done == result.blocks == len(head.tasks(len(good), None, 4))
    cross = score_matrix(good[:4], model, against=good[4:], workers=1, threads=1, providers="cpu", block=4)
    assert np.array_equal(cross.matrix, Scorer(model, providers="cpu", threads=1).matrix(good[:4], good[4:],
                                                                                         block=4))


@pytest.mark.ray
def test_ray_matrix_survives_losing_a_worker_node(model: Path, tmp_path: Path, repo_root: Path) -> None:
    """A head without CPUs and two worker nodes (own raylets, 1 CPU each, 80 MB object stores). One worker node is
    removed while it is known to hold a block (tests/matrix_ray_cluster.py: the block wrote its marker there and
    waits). That block is lost with the node, submitted again by the driver and computed on the other node: every
    block comes out exactly once, all from the survivor, equal to the local matrix bit for bit."""
    pytest.importorskip("ray")
    from PIL import Image

    for i in range(40):
        Image.fromarray(_image(100 + i % 33)).save(tmp_path / f"im{i:02d}.png")
    env = {"PYTHONPATH": str(repo_root / "runtime"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, str(repo_root / "tests" / "matrix_ray_cluster.py"), str(model),
                           str(tmp_path), "--block", "8"], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    held = report["held_on_removed_node"]
    assert held is not None and held["rows"] == 8, report  # a block was running on the node when it was removed
    assert report["block_retries"] >= 1, report  # ... was lost with it and submitted again
    assert report["blocks_by_node"] == {"survivor": 15, "doomed": 0}, report  # ... and came from the survivor
    assert report["block_attempts_started"] >= 15 + 1, report
    assert report["blocks"] == report["expected_blocks"] == report["blocks_done"] == 15
    assert report["equal"] and report["rows"], report


#: The features graph of each variant; the vgg ones are opt-in (``-m slow``: their exports take minutes each on 2
#: cores), the others run in the default suite.
FEATURE_VARIANTS = ["alex-st", "alex-lpips", pytest.param("vgg-st", marks=pytest.mark.slow),
                    pytest.param("vgg-lpips", marks=pytest.mark.slow)]


@pytest.mark.parametrize("key", FEATURE_VARIANTS)
def test_every_variant_gets_a_features_graph_equal_to_pytorch(exported_model, key: str) -> None:
    """The export gate and its batch-invariance check passed (metadata); head(features) of three images against the
    PyTorch reference (float32, another engine: the tolerance of fp32) and against Scorer.score (the pair graph,
    1e-6 relative), measured here."""
    import torch

    from stlpips_export.model import build_model

    net, variant = key.split("-")
    model = exported_model(net, variant, features=True)
    scorer = Scorer(model, "cpu", threads=1)
    _, features_model = scorer._features()
    import onnx

    from stlpips_rt.contract import Key

    meta = {p.key: p.value for p in onnx.load(str(features_model.path), load_external_data=False).metadata_props}
    assert float(meta[Key.PARITY_MAX_ABS]) <= 1e-5 and meta[Key.PAIR_MODEL] == key
    assert meta[Key.FEATURES_BATCH] == "invariant" and features_model.batch_invariant
    images = [_image(200 + i) for i in range(3)]
    matrix = scorer.matrix(images)
    reference = np.array([[scorer.score(a, b) if i != j else 0.0 for j, b in enumerate(images)]
                          for i, a in enumerate(images)])
    _assert_close_to_score(matrix, reference)
    torch_model = build_model(net, variant)
    inputs = [torch.from_numpy(scorer.load(x)[None]) for x in images]
    with torch.no_grad():
        expected = np.array([[float(torch_model(a, b)[0][0]) if i != j else 0.0 for j, b in enumerate(inputs)]
                             for i, a in enumerate(inputs)])
    assert np.abs(matrix - expected).max() <= tolerance("fp32").max_abs


def test_cli_matrix_says_what_it_skipped_and_never_prints_nan(model: Path, corpus: list[np.ndarray],
                                                              tmp_path: Path) -> None:
    from PIL import Image

    runner = CliRunner()
    base = ["--model", str(model), "--providers", "cpu", "--threads", "1", "--no-cache"]
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, count in ((one, 1), (two, 2)):
        folder.mkdir()
        for i in range(count):
            Image.fromarray(corpus[i]).save(folder / f"im{i}.png")
    (two / "notes.txt").write_text("not an image")
    (two / "nested").mkdir()
    Image.fromarray(corpus[5]).save(two / "nested" / "deeper.png")
    single = runner.invoke(score_cli, [*base, "--matrix", str(one), "-o", str(tmp_path / "one.npy")])
    assert single.exit_code == 0 and "no pairs (one image)" in single.output and "nan" not in single.output
    pair = runner.invoke(score_cli, [*base, "--matrix", str(two), "-o", str(tmp_path / "two.parquet")])
    assert pair.exit_code == 0, pair.output
    assert "2 x 2 matrix, 1 pair in" in pair.output and "(one pair: no interval)" in pair.output
    assert "nan" not in pair.output
    assert f"not read in {two}: " in pair.output and "notes.txt (extension not one of .bmp" in pair.output
    assert "nested/ (a folder: subfolders are not searched)" in pair.output
    import pyarrow.parquet as pq

    assert str(pq.read_schema(tmp_path / "two.parquet").field("distance").type) == "float"  # float32, as pair rows
    assert sorted(p.name for p in two.iterdir()) == ["im0.png", "im1.png", "nested", "notes.txt"]  # --no-cache


def test_cli_matrix_of_several_sizes_is_a_usage_error_naming_resize(model: Path, corpus: list[np.ndarray],
                                                                    tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(corpus[0]).save(tmp_path / "a.png")
    Image.fromarray(corpus[1][:, :-4]).save(tmp_path / "b.png")
    done = CliRunner().invoke(score_cli, ["--model", str(model), "--providers", "cpu", "--matrix", str(tmp_path),
                                          "--no-cache"])
    assert done.exit_code == 2, done.output
    assert "b.png" in done.output and "--resize SIZE" in done.output and "resize=" not in done.output


def test_cli_clear_cache_alone_empties_the_cache(model: Path, folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cache = tmp_path / "cache"
    runner.invoke(score_cli, ["--model", str(model), "--providers", "cpu", "--matrix", str(folder), "-q",
                              "--cache-dir", str(cache), "--cache-size", "100M"])
    assert len(list(cache.glob("*.npz"))) == 10  # the truncated file is left out; a copy shares its entry
    cleared = runner.invoke(score_cli, ["--clear-cache", "--cache-dir", str(cache)])
    assert cleared.exit_code == 0 and "10 entries removed" in cleared.output and not list(cache.glob("*.npz"))
    refused = runner.invoke(score_cli, ["--clear-cache", "--top-k", "3"])
    assert refused.exit_code == 2 and "--top-k: only with --matrix DIR" in refused.output
