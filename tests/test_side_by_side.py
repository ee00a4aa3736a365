"""A batch on the CPU provider runs as pieces side by side, one onnxruntime thread each: when it splits, and that
every output is the same bits as the batch run whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stlpips_rt import Scorer
from stlpips_rt.engine.side_by_side import MAX_PIXELS, MIN_BROADCAST_PER_RUN, pieces


def test_which_batches_split() -> None:
    assert pieces(16, 16, threads=2, pixels=64 * 64) == 2
    assert pieces(16, 16, threads=4, pixels=64 * 64) == 4
    assert pieces(3, 3, threads=8, pixels=64 * 64) == 3  # at most one piece per pair
    assert pieces(1, 1, threads=2, pixels=64 * 64) == 1  # a single pair runs on every thread
    assert pieces(16, 16, threads=1, pixels=64 * 64) == 1
    assert pieces(16, 16, threads=2, pixels=MAX_PIXELS + 1) == 1  # large images have work for every thread
    # one reference against many: each piece repeats the reference's pass, so only with enough candidates each
    assert pieces(1, 2 * MIN_BROADCAST_PER_RUN - 1, threads=2, pixels=64 * 64) == 1
    assert pieces(1, 2 * MIN_BROADCAST_PER_RUN, threads=2, pixels=64 * 64) == 2


@pytest.fixture(scope="module")
def model(exported_model) -> Path:
    return exported_model("alex", "st")


def _images(n: int, seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("threads", [2, 3])
def test_every_output_of_a_split_batch_is_the_bits_of_the_whole_run(model: Path, threads: int) -> None:
    split = Scorer(model, providers="cpu", threads=threads, batch_size=64)
    whole = Scorer(model, providers="cpu", threads=1, batch_size=64)  # one thread: never split
    assert whole._side_by_side is None and split._side_by_side is not None
    x0, x1 = _images(7, 0), _images(7, 1)
    names = ["dist", *split.info.layer_maps]
    got, want = split.run_arrays(x0, x1, names), whole.run_arrays(x0, x1, names)
    for name, a, b in zip(names, got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=name)
    assert split.runs == {"pairs": 1, "broadcast": 0}  # one run, however it ran
    assert split._side_by_side._session is not None  # it did run side by side


def test_one_reference_against_many_split_gives_each_pair_its_bits(model: Path) -> None:
    split = Scorer(model, providers="cpu", threads=2, batch_size=64)
    ref, candidates = _images(1, 2)[0], list(_images(2 * MIN_BROADCAST_PER_RUN + 1, 3))
    got = split.evaluate(ref, candidates)["dist"].reshape(-1)
    alone = Scorer(model, providers="cpu", threads=1, batch_size=1)
    want = np.array([alone.evaluate([ref], [c])["dist"].reshape(-1)[0] for c in candidates], np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert split.runs == {"pairs": 0, "broadcast": 1}
    assert split._side_by_side._session is not None
