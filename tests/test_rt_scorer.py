"""Scorer behaviour on a real exported ST-LPIPS alex model: numbers, call forms, batching, threads, errors."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from example_pairs import authors_published_distance, float64_distances
from PIL import Image

from stlpips_rt import ImageOptions, ImageSizeError, ModelError, ModelInfo, Scorer
from stlpips_rt.precision import tolerance


def smooth_image(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """A natural-ish uint8 RGB image: smooth random field plus mild noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3)).astype(np.float32)
    big = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    return np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def scorer(exported_model) -> Scorer:
    return Scorer(exported_model("alex", "st"), providers="cpu")


@pytest.fixture(scope="module")
def rich_scorer(exported_model) -> Scorer:
    """A model with the optional outputs: dist_layers and dist_map."""
    return Scorer(exported_model("alex", "st", spatial=True, layers=True), providers="cpu", batch_size=3)


def test_reproduces_the_reference_numbers_of_the_authors_pairs(scorer: Scorer, shared_data: Path) -> None:
    """Against float64 references and the authors' published number (tests/example_pairs.py): other engines, so
    within the tolerance of the arithmetic that ran."""
    ref = shared_data / "ex_ref.png"
    allowed = tolerance(scorer.precision).max_abs
    expected = np.array(float64_distances(shared_data, "alex", "st"))
    got = np.array([scorer.score(ref, shared_data / "ex_p0.png"), scorer.score(ref, shared_data / "ex_p1.png")])
    assert np.abs(got - expected).max() <= allowed
    assert abs(scorer.score(shared_data / "ex_p0.png", ref) - authors_published_distance()) <= allowed
    many = scorer.score_many(ref, [shared_data / "ex_p0.png", shared_data / "ex_p1.png"])
    assert np.array_equal(many, got.astype(np.float32))  # the broadcast graph: the same bits


def test_reports_provider_precision_and_model_info(scorer: Scorer) -> None:
    assert scorer.provider == "cpu" and scorer.precision == "fp32"
    assert isinstance(scorer.info, ModelInfo)
    assert (scorer.info.net, scorer.info.variant, scorer.info.outputs) == ("alex", "st", ("dist",))
    assert "cpu" in repr(scorer)


def test_identical_images_score_zero_and_distance_is_symmetric(scorer: Scorer) -> None:
    a, b = smooth_image(seed=1), smooth_image(seed=2)
    assert scorer.score(a, a) == pytest.approx(0.0, abs=1e-7)
    assert scorer.score(a, b) > 0.05
    assert scorer.score(a, b) == pytest.approx(scorer.score(b, a), abs=1e-6)


def test_every_input_kind_gives_the_same_distance(scorer: Scorer, tmp_path: Path) -> None:
    a, b = smooth_image(seed=3), smooth_image(seed=4)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    base = scorer.score(a, b)
    unit_a, unit_b = a / 255.0, b / 255.0
    forms = [
        (tmp_path / "a.png", tmp_path / "b.png", None),
        (str(tmp_path / "a.png"), str(tmp_path / "b.png"), None),
        (Image.fromarray(a), Image.fromarray(b), None),
        (unit_a, unit_b, "0,1"),
        (unit_a * 2 - 1, unit_b * 2 - 1, "-1,1"),
        ((unit_a * 2 - 1).transpose(2, 0, 1), (unit_b * 2 - 1).transpose(2, 0, 1), "-1,1"),
        (a.astype(np.uint16) * 257, b.astype(np.uint16) * 257, None),
    ]
    for x, y, rng in forms:
        assert scorer.score(x, y, float_range=rng) == pytest.approx(base, abs=1e-5), (type(x), rng)


def test_score_batch_accepts_lists_and_4d_batches_and_matches_single_scores(scorer: Scorer) -> None:
    a = np.stack([smooth_image(seed=i) for i in range(4)])
    b = np.stack([smooth_image(seed=10 + i) for i in range(4)])
    singles = np.array([scorer.score(x, y) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(scorer.score_batch(a, b), singles, atol=1e-6)
    np.testing.assert_allclose(scorer.score_batch(list(a), list(b)), singles, atol=1e-6)
    nchw = (a.transpose(0, 3, 1, 2) / 127.5 - 1).astype(np.float32)
    np.testing.assert_allclose(scorer.score_batch(nchw, b, float_range="-1,1"), singles, atol=1e-5)


def test_mixed_sizes_and_chunking_keep_input_order(rich_scorer: Scorer) -> None:
    sizes = [(64, 64), (48, 80), (64, 64), (48, 80), (64, 64), (64, 64), (64, 64)]
    a = [smooth_image(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    b = [smooth_image(h, w, seed=50 + i) for i, (h, w) in enumerate(sizes)]
    singles = [rich_scorer.score(x, y) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(rich_scorer.score_batch(a, b), singles, atol=1e-6)  # batch_size=3: 4 runs


def test_score_many_uses_broadcast_and_equals_pairwise_scores(scorer: Scorer) -> None:
    ref = smooth_image(seed=20)
    cands = [smooth_image(seed=30 + i) for i in range(5)]
    pairwise = scorer.score_batch([ref] * 5, cands)
    np.testing.assert_allclose(scorer.score_many(ref, cands), pairwise, atol=1e-6)
    np.testing.assert_allclose(scorer.score_many(ref, np.stack(cands)), pairwise, atol=1e-6)


def test_spatial_map_has_image_size_and_tracks_the_distance(rich_scorer: Scorer) -> None:
    a, b = smooth_image(seed=5), smooth_image(seed=6).copy()
    b[:, :32] = a[:, :32]  # left half identical: the map must be lower there
    m = rich_scorer.spatial(a, b)
    assert m.shape == (64, 64)
    assert m[:, :24].mean() < m[:, 40:].mean()
    assert m.mean() == pytest.approx(rich_scorer.score(a, b), rel=0.05)
    assert rich_scorer.spatial_batch([a, a], [b, a]).shape == (2, 64, 64)


def test_layers_sum_to_the_distance(rich_scorer: Scorer) -> None:
    a, b = smooth_image(seed=7), smooth_image(seed=8)
    layers = rich_scorer.layers(a, b)
    assert layers.shape == (rich_scorer.info.num_layers,)
    assert layers.sum() == pytest.approx(rich_scorer.score(a, b), abs=1e-5)


def test_outputs_the_model_lacks_are_clear_errors(scorer: Scorer) -> None:
    a = smooth_image()
    with pytest.raises(ModelError, match="no output 'dist_map'.*--spatial"):
        scorer.spatial(a, a)
    with pytest.raises(ModelError, match="no output 'dist_layers'.*--layers"):
        scorer.layers(a, a)


def test_size_errors_name_the_items(scorer: Scorer) -> None:
    with pytest.raises(ImageSizeError, match="a vs b: sizes differ"):
        scorer.score(smooth_image(64, 64), smooth_image(64, 48))
    with pytest.raises(ImageSizeError, match=r"candidates\[1\]"):
        scorer.score_many(smooth_image(), [smooth_image(), smooth_image(48, 64)])
    small = scorer.info.min_size - 1
    with pytest.raises(ImageSizeError, match=f"below this model's minimum of {scorer.info.min_size}"):
        scorer.score(smooth_image(64, 64)[:small, :small], smooth_image(64, 64)[:small, :small])
    with pytest.raises(ImageSizeError, match="3 images vs 2 images"):
        scorer.score_batch([smooth_image()] * 3, [smooth_image()] * 2)


def test_resize_option_scores_images_of_different_sizes(exported_model) -> None:
    """resize=64 scores what the images look like after a bicubic resize to 64x64: the same number as resizing
    them first and scoring at that size, and not the number of a plain crop."""
    from stlpips_rt.io import images

    s = Scorer(exported_model("alex", "st"), providers="cpu", image=ImageOptions(resize=64))
    plain = Scorer(exported_model("alex", "st"), providers="cpu")
    a, b = smooth_image(80, 96), smooth_image(50, 70, seed=1)
    resized = [images.load(x, "x", images.ImageOptions(resize=(64, 64))) for x in (a, b)]
    expected = float(plain.evaluate([resized[0]], [resized[1]])["dist"][0])
    assert s.score(a, b) == expected
    assert s.score(a, b) != pytest.approx(plain.score(a[:48, :64], b[:48, :64]), abs=1e-3)


def test_concurrent_calls_from_many_threads_match_single_thread(scorer: Scorer) -> None:
    pairs = [(smooth_image(seed=i), smooth_image(seed=100 + i)) for i in range(8)]
    expected = [scorer.score(a, b) for a, b in pairs]
    barrier = threading.Barrier(4)

    def work(k: int) -> list[float]:
        barrier.wait()  # start together so the calls overlap
        order = pairs[k:] + pairs[:k]
        got = [scorer.score(a, b) for a, b in order]
        return got[len(pairs) - k:] + got[: len(pairs) - k]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)
