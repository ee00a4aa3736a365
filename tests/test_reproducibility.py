"""Is a distance a function of the pair? On one engine and file (the CPU provider here), a pair's float32 distance
is the same bit for bit run after run, whatever the thread count, the batch size, its position in the batch and the
pairs beside it; tiled and full-frame scoring agree within ``precision.TILED_MAX_REL``. Batch invariance holds
since format 1.1: the graph's spatial means are block sums down to one value, so no reduction depends on where a
pair's row lies in memory (docs/reproducibility.md). Property-based: hypothesis draws sizes, batches, orders and
thread counts (few examples: each runs the graph)."""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stlpips_rt import Scorer
from stlpips_rt.precision import TILED_MAX_REL

FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
               derandomize=True)


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


@cache
def scorer(path: Path, batch_size: int = 16, threads: int | None = None) -> Scorer:
    return Scorer(path, providers="cpu", batch_size=batch_size, threads=threads)


@lru_cache(maxsize=256)
def pair(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A pair in [-1, 1]: smooth random content and a distorted copy of seeded strength."""
    rng = np.random.default_rng([seed, h, w])
    a = rng.uniform(-1, 1, (3, h, w)).astype(np.float32)
    b = np.clip(a + rng.normal(0, rng.uniform(0.05, 0.6), a.shape), -1, 1).astype(np.float32)
    return a, b


@lru_cache(maxsize=256)
def alone(path: Path, seed: int, h: int, w: int) -> np.uint32:
    """The pair scored by itself (a batch of one): its float32 distance's bits."""
    a, b = pair(seed, h, w)
    return scorer(path, batch_size=1).evaluate([a], [b])["dist"].reshape(-1).view(np.uint32)[0]


sizes = st.sampled_from([(64, 64), (48, 80), (33, 57), (96, 72)])
pairs_st = st.lists(st.tuples(st.integers(0, 5), sizes), min_size=2, max_size=9, unique=True)


@FEW
@given(items=pairs_st, batch_size=st.integers(1, 6), data=st.data())
def test_a_distance_does_not_depend_on_batch_size_position_or_companions(model: Path, items, batch_size: int,
                                                                        data: st.DataObject) -> None:
    order = data.draw(st.permutations(range(len(items))))
    chosen = [items[i] for i in order]
    x0 = [pair(seed, *hw)[0] for seed, hw in chosen]
    x1 = [pair(seed, *hw)[1] for seed, hw in chosen]
    got = scorer(model, batch_size=batch_size).evaluate(x0, x1)["dist"].reshape(-1).view(np.uint32)
    expected = np.array([alone(model, seed, *hw) for seed, hw in chosen], dtype=np.uint32)
    np.testing.assert_array_equal(got, expected, err_msg=f"batch_size={batch_size}, pairs={chosen}")


def test_large_pairs_keep_their_bits_in_any_batch_position(model: Path) -> None:
    """Above about 512 pixels the first layer's map is wider than the block sums' small-size levels: where a final
    reduction over several values remained, a pair's bits moved with its position (measured at 700x1100)."""
    items = [(seed, (700, 1100)) for seed in range(3)]
    x0 = [pair(seed, *hw)[0] for seed, hw in items]
    x1 = [pair(seed, *hw)[1] for seed, hw in items]
    expected = np.array([alone(model, seed, *hw) for seed, hw in items], dtype=np.uint32)
    batched = scorer(model, batch_size=3)
    np.testing.assert_array_equal(batched.evaluate(x0, x1)["dist"].view(np.uint32), expected)
    reversed_ = batched.evaluate(x0[::-1], x1[::-1])["dist"].view(np.uint32)[::-1]
    np.testing.assert_array_equal(reversed_, expected)


@FEW
@given(items=pairs_st, batch_size=st.integers(1, 6), threads=st.sampled_from([1, 2, 3]))
def test_a_distance_does_not_depend_on_the_thread_count_or_the_run(model: Path, items, batch_size: int,
                                                                   threads: int) -> None:
    """The same pairs in the same batches: the same bits with any thread count, and again on a second call."""
    x0 = [pair(seed, *hw)[0] for seed, hw in items]
    x1 = [pair(seed, *hw)[1] for seed, hw in items]
    want = scorer(model, batch_size=batch_size).evaluate(x0, x1)["dist"].reshape(-1).view(np.uint32)
    other = scorer(model, batch_size=batch_size, threads=threads)
    for _ in range(2):
        got = other.evaluate(x0, x1)["dist"].reshape(-1).view(np.uint32)
        np.testing.assert_array_equal(got, want, err_msg=f"threads={threads}, batch_size={batch_size}")


@FEW
@given(seed=st.integers(0, 5), hw=sizes)
def test_a_pair_alone_is_the_same_whatever_was_scored_before(model: Path, seed: int, hw: tuple[int, int]) -> None:
    """A batch of one has no position and no companions: its bits do not depend on earlier runs of other sizes."""
    a, b = pair(seed, *hw)
    s = scorer(model, batch_size=1)
    s.evaluate([pair(seed + 1, 40, 40)[0]], [pair(seed + 1, 40, 40)[1]])  # another size in between
    assert s.evaluate([a], [b])["dist"].reshape(-1).view(np.uint32)[0] == alone(model, seed, *hw)


@FEW
@given(seed=st.integers(0, 3), n=st.integers(2, 5))
def test_one_reference_against_many_equals_each_pair_alone(model: Path, seed: int, n: int) -> None:
    """The broadcast graph (one reference, its features computed once) gives each candidate its own pair's bits
    (measured to hold here at 64x64, unlike stacked pairs; docs/reproducibility.md)."""
    ref = pair(seed, 64, 64)[0]
    candidates = [pair(seed + 10 + i, 64, 64)[1] for i in range(n)]
    got = scorer(model).evaluate(ref, candidates)["dist"].reshape(-1)
    alone_each = [scorer(model, batch_size=1).evaluate([ref], [c])["dist"].reshape(-1)[0] for c in candidates]
    np.testing.assert_array_equal(got.view(np.uint32), np.array(alone_each, dtype=np.float32).view(np.uint32))


@cache
def tiny(path: Path) -> Scorer:
    """A scorer whose memory budget fits one 120x120 pair: larger pairs are tiled."""
    return Scorer(path, providers="cpu", max_memory=scorer(path).geometry.bytes_per_pixel * 120 * 120)


@pytest.fixture(scope="module")
def tiles_model(exported_model) -> Path:
    return exported_model("alex", "st")


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          derandomize=True)
@given(h=st.integers(125, 220), w=st.integers(125, 220), seed=st.integers(0, 3))
def test_tiled_and_full_frame_agree_within_the_tiling_tolerance(tiles_model: Path, h: int, w: int,
                                                                seed: int) -> None:
    full = scorer(tiles_model)
    tiled = tiny(tiles_model)
    assert tiled.plan(h, w).tiled
    a, b = pair(seed, h, w)
    want = float(full.evaluate([a], [b])["dist"][0])
    got = float(tiled.evaluate([a], [b])["dist"][0])
    assert abs(got - want) <= TILED_MAX_REL * abs(want)
    assert np.float32(tiled.evaluate([a], [b])["dist"][0]) == np.float32(got)  # and the same bits again
