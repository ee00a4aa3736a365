"""The rank-flip protocol (ST-LPIPS paper, section 4) on hand-made cases."""

import numpy as np
import pytest

from stlpips_export.evaluate.metrics import L2
from stlpips_export.evaluate.shift import (
    category_mean_rate,
    flip_rates,
    rank_flips,
    sample_candidates,
    shift_crop,
    two_afc_scores,
    wilson_interval,
)
from stlpips_export.evaluate.study import SetResult, score_set
from stlpips_export.evaluate.triplets import TripletSet


def column_index_image(h: int = 4, w: int = 10) -> np.ndarray:
    return np.broadcast_to(np.arange(w, dtype=np.uint8)[None, :, None], (h, w, 3)).copy()


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_shift_crop_takes_columns_k_to_w_plus_k_minus_3(k):
    img = column_index_image(w=10)
    crop = shift_crop(img, k)
    assert crop.shape == (4, 7, 3)  # width w - 3 whatever the shift
    assert list(crop[0, :, 0]) == list(range(k, k + 7))


def test_shift_crop_refuses_shifts_outside_the_protocol_and_too_narrow_images():
    with pytest.raises(ValueError, match="outside 0..3"):
        shift_crop(column_index_image(), 4)
    with pytest.raises(ValueError, match="width 3"):
        shift_crop(column_index_image(w=3), 0)


def test_sample_candidates_stacks_d0_then_d1_at_shifts_0_to_3():
    d0, d1 = column_index_image(), column_index_image() + 100
    cands = sample_candidates(d0, d1)
    assert cands.shape == (8, 4, 7, 3)
    assert [int(c[0, 0, 0]) for c in cands] == [0, 1, 2, 3, 100, 101, 102, 103]


def test_rank_flips_compares_the_unshifted_ranking_with_the_shifted_one():
    dist = np.array(
        [
            [[1.0, 1.0, 3.0, 1.0], [2.0, 2.0, 2.0, 2.0]],  # d0 closer; flips at k=2 only
            [[5.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]],  # d1 closer; flips at every k
            [[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]],  # never flips
            [[1.0, 2.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0]],  # tie at k=1 counts as "not d0 < d1": a flip
        ]
    )
    assert list(rank_flips(dist, 1)) == [False, True, False, True]
    assert list(rank_flips(dist, 2)) == [True, True, False, False]
    assert list(rank_flips(dist, 3)) == [False, True, False, False]
    rates = flip_rates(dist)
    assert [rates[k].value for k in (1, 2, 3)] == [0.5, 0.5, 0.25]
    assert all(rates[k].n == 4 for k in (1, 2, 3))


def test_rank_flips_rejects_a_wrongly_shaped_distance_array():
    with pytest.raises(ValueError, match=r"\[N, 2, 4\]"):
        rank_flips(np.zeros((3, 4, 2)), 1)


def test_wilson_interval_matches_closed_form_values():
    zero = wilson_interval(0, 10)
    assert zero.value == 0 and zero.low == 0
    assert zero.high == pytest.approx(3.8415 / 13.8415, abs=1e-4)  # z^2 / (n + z^2)
    half = wilson_interval(5, 10)
    assert (half.low, half.high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert half.percent() == "50.00 [23.66, 76.34]"
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_category_mean_rate_averages_categories_not_samples():
    rate = category_mean_rate([np.array([True, False]), np.array([False, False, False, False])])
    assert rate.value == pytest.approx(0.25)  # (1/2 + 0/4) / 2, where pooling would give 1/6
    assert rate.n == 6 and rate.low < 0.25 < rate.high


def test_two_afc_score_rewards_agreeing_with_the_human_fraction():
    scores = two_afc_scores(np.array([1.0, 3.0, 2.0]), np.array([2.0, 1.0, 2.0]), np.array([0.2, 0.2, 0.2]))
    assert list(scores) == pytest.approx([0.8, 0.2, 0.5])  # prefers p0; prefers p1; tie


def ramp_triplet(d1_offset: int) -> TripletSet:
    """A horizontal ramp (2 levels per column) with d0 = ref + 5 and d1 = ref + d1_offset.

    Shifting by k adds 2k to every difference, so L2 (on [0, 1] values) gives (2k + 5)^2 against
    (2k + d1_offset)^2, in 1/255^2 units: the flips are known in closed form.
    """
    ref = np.broadcast_to((40 + 2 * np.arange(64, dtype=np.uint8))[None, :, None], (64, 64, 3)).copy()
    d0, d1 = ref + 5, (ref.astype(int) + d1_offset).astype(np.uint8)
    return TripletSet(ref[None], d0[None], d1[None])


def test_l2_flips_on_a_ramp_where_the_shift_outweighs_the_distortion():
    triplets = ramp_triplet(-8)  # unshifted 25 < 64; shifted (2k+5)^2 > (2k-8)^2 for k = 1, 2, 3
    run = score_set(L2(), triplets)
    assert run.dist.shape == (1, 2, 4)
    assert run.dist[0, :, 0] * 255**2 == pytest.approx([25, 64])
    assert run.dist[0, :, 1] * 255**2 == pytest.approx([49, 36])
    rates = SetResult("ramp", triplets, [run]).rates(run)
    assert [rates[k].value for k in (1, 2, 3)] == [1.0, 1.0, 1.0]


def test_l2_keeps_its_ranking_on_a_ramp_when_both_distortions_move_the_same_way():
    run = score_set(L2(), ramp_triplet(+8))  # (2k+5)^2 < (2k+8)^2 for every k
    rates = SetResult("ramp", ramp_triplet(+8), [run]).rates(run)
    assert [rates[k].value for k in (1, 2, 3)] == [0.0, 0.0, 0.0]


def test_images_constant_along_the_shift_never_flip():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, size=(20, 32, 1, 3), dtype=np.uint8)
    ref = np.repeat(rows, 32, axis=2)  # every column identical: a horizontal shift changes nothing
    d0 = np.repeat(rng.integers(0, 256, size=(20, 32, 1, 3), dtype=np.uint8), 32, axis=2)
    d1 = np.repeat(rng.integers(0, 256, size=(20, 32, 1, 3), dtype=np.uint8), 32, axis=2)
    run = score_set(L2(), TripletSet(ref, d0, d1))
    assert not any(rank_flips(run.dist, k).any() for k in (1, 2, 3))


def test_shift_names_every_missing_model_at_once_and_what_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./models
    monkeypatch.delenv("STLPIPS_MODEL_DIR", raising=False)
    from click.testing import CliRunner

    from stlpips_export.evaluate.cli import main

    result = CliRunner().invoke(main, ["shift", "--quick", "--models", str(tmp_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line]
    assert len(lines) == 1, result.output
    for name in ("alex-lpips", "alex-st", "vgg-lpips", "vgg-st"):
        assert f"`stlpips-export --net {name.split('-')[0]} --variant {name.split('-')[1]}`" in lines[0]
    assert lines[0].endswith("or compare only the others: --metrics l2,ssim")
    assert not (tmp_path / "o").exists()
