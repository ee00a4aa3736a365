"""The export gate's measurements and verdict, without a model (stlpips_export.verify and the comparisons of
stlpips_rt.precision): errors and rank agreement computed by hand on small arrays, the pooled agreement of real
photos, the float64 reference of a spatial mean, the verdict at its bounds and what a refusal says. The spatial-mean
measurement on a graph: tests/test_spatial_mean.py."""

from __future__ import annotations

import numpy as np
import pytest

from stlpips_export.errors import ParityError
from stlpips_export.verify import MEAN_CHECK_SIZE, Case, CaseResult, ParityReport, compare, spatial_mean_error
from stlpips_rt.precision import (
    SPATIAL_MEAN_MAX_REL,
    TOLERANCES,
    Tolerance,
    error_stats,
    float64_distance,
    rank_agreement,
    tolerance,
)


def test_error_stats_abs_everywhere_rel_where_the_value_is_not_near_zero() -> None:
    expected = np.array([0.5, 1e-5, 0.0, -0.25], np.float32)
    actual = np.array([0.5 + 1e-6, 2e-5, 1e-7, -0.25 - 5e-7], np.float64)
    max_abs, max_rel = error_stats(expected, actual)
    assert max_abs == pytest.approx(1e-5, rel=1e-3)  # at 1e-5, which is too small for a relative error
    assert max_rel == pytest.approx(2e-6, rel=1e-3)  # 5e-7 / 0.25 and 1e-6 / 0.5
    assert error_stats(np.array([1e-4, 0.0]), np.array([2e-4, 1.0])) == (1.0, 0.0)  # |1e-4| is not above 1e-4
    assert error_stats(np.zeros(0), np.zeros(0)) == (0.0, 0.0)


def test_rank_agreement_counts_the_pairs_ordered_alike() -> None:
    ref = np.array([1.0, 2.0, 3.0])
    assert rank_agreement(ref, ref * 10) == 1.0
    assert rank_agreement(ref, ref[::-1].copy()) == 0.0
    assert rank_agreement(ref, np.array([1.0, 3.0, 2.0])) == pytest.approx(2 / 3)
    assert rank_agreement(np.array([1.0, 1.0, 2.0]), ref) == pytest.approx(2 / 3)  # a tie is its own order


def test_the_float64_reference_of_a_mean_keeps_what_float32_loses() -> None:
    big = np.array([1e8, 1.0, 1.0, 1.0], np.float32).reshape(1, 1, 2, 2)
    ones = np.ones((1, 1, 3, 1), np.float32)
    assert float64_distance([big, ones]) == (1e8 + 3) / 4 + 1.0
    assert float64_distance([]) == 0


def test_tolerances_of_each_arithmetic() -> None:
    assert tolerance("fp32") == Tolerance(1e-5, 1.0)
    assert tolerance("bf16") == Tolerance(2e-2, 0.98) and tolerance("int8") == TOLERANCES["int8"]
    assert tolerance("something new") == TOLERANCES["fp16"] == Tolerance(1e-2, 0.98, 0.995)
    assert SPATIAL_MEAN_MAX_REL == 2e-7


def _report(max_abs: float, mean: float | None = None) -> ParityReport:
    report = ParityReport(1e-5, [CaseResult("random", "[1, 3, 64, 64] [1, 3, 64, 64]", max_abs / 2, 1e-7),
                                 CaseResult("smooth", "[1, 3, 72, 72] [1, 3, 72, 72]", max_abs, 3e-7)])
    report.mean_rel_error = mean
    return report


def test_the_verdict_at_its_bounds() -> None:
    assert _report(1e-5).passed and _report(1e-5).max_abs == 1e-5 and _report(1e-5).max_rel == 3e-7
    assert not _report(1.01e-5).passed
    assert _report(1e-6, SPATIAL_MEAN_MAX_REL).passed
    assert not _report(1e-6, SPATIAL_MEAN_MAX_REL * 1.01).passed
    assert not _report(2e-5, 0.0).passed


def test_a_passing_report_says_so_and_raises_nothing() -> None:
    report = _report(1e-6, 5e-8)
    report.rank_agreement = 0.75
    report.raise_if_failed("stlpips_alex_st.onnx")
    lines = report.summary().splitlines()
    assert lines[1].split() == ["random", "[1,", "3,", "64,", "64]", "[1,", "3,", "64,", "64]", "5.00e-07", "1.00e-07"]
    h, w = MEAN_CHECK_SIZE
    assert lines[3].split()[:4] == ["spatial", "mean,", f"{h}x{w}", "pair"] and "5.00e-08" in lines[3]
    assert lines[-1] == ("  parity PASS: max abs 1.00e-06 (tolerance 1e-05), max rel 3.00e-07, 2AFC rank agreement "
                         "75.0%")
    assert "spatial mean" not in _report(1e-6).summary()


def test_a_failing_report_says_which_bound_and_that_nothing_was_written() -> None:
    with pytest.raises(ParityError) as refused:
        _report(3e-5).raise_if_failed("m.onnx")
    first = str(refused.value).splitlines()[0]
    assert first == ("m.onnx: ONNX Runtime differs from the PyTorch reference by 3e-05 (tolerance 1e-05); nothing was "
                     "written.")
    assert "parity FAIL" in str(refused.value)
    for max_abs in (1e-6, 1e-5):  # at the parity bound itself, parity passes: the mean is what failed
        with pytest.raises(ParityError) as refused:
            _report(max_abs, 4e-7).raise_if_failed("m.onnx")
        assert str(refused.value).splitlines()[0] == (
            "m.onnx: the graph's spatial mean is 4e-07 relative from a float64 mean of its layer maps (bound "
            "2e-07); nothing was written.")


def test_compare_measures_every_output_and_pools_the_real_triplets() -> None:
    def case(name: str, n: int) -> Case:
        return Case(name, np.zeros((1, 3, 4, 4), np.float32), np.zeros((n, 3, 4, 4), np.float32))

    cases = [case("pair", 1), case("batch", 2)]
    triplets = [case("synthetic", 3), case("real photos a", 4), case("real photos b", 3)]
    layers = np.zeros((4, 2))  # a second output, whose order says nothing: rankings are read from dist alone
    expected = {"pair": [np.array([0.5]), np.array([[0.2, 0.3]])],
                "batch": [np.array([0.4, 0.1]), np.array([[0.1, 0.3], [0.05, 0.05]])],
                "synthetic": [np.array([0.1, 0.2, 0.3]), layers[:3]],
                "real photos a": [np.array([0.1, 0.2, 0.3, 0.4]), layers],
                "real photos b": [np.array([0.1, 0.2, 0.3]), layers[:3]]}
    got = {"pair": [np.array([0.5 + 2e-6]), np.array([[0.2, 0.3 - 4e-6]])],
           "batch": [np.array([0.4, 0.1]), np.array([[0.1, 0.3], [0.05, 0.05 + 1e-6]])],
           "synthetic": [np.array([0.3, 0.2, 0.1]), layers[:3]],  # every pair flipped
           "real photos a": [np.array([0.1, 0.2, 0.3, 0.4]), layers],  # 6 of 6 judgments kept
           "real photos b": [np.array([0.2, 0.1, 0.15]), layers[:3]]}  # 1 of 3 kept
    calls = []

    def run(in0: np.ndarray, in1: np.ndarray, outputs: list[str]) -> list[np.ndarray]:
        name = next(c.name for c in cases + triplets if c.in1 is in1)
        calls.append((name, outputs))
        return got[name]

    report = compare(run, ["dist", "dist_layers"], cases, triplets, expected, 1e-5)
    assert [c for c, _ in calls] == ["pair", "batch", "synthetic", "real photos a", "real photos b"]
    assert all(outputs == ["dist", "dist_layers"] for _, outputs in calls)
    assert [(c.name, c.shapes) for c in report.cases][:2] == [("pair", "[1, 3, 4, 4] [1, 3, 4, 4]"),
                                                              ("batch", "[1, 3, 4, 4] [2, 3, 4, 4]")]
    assert report.cases[0].max_abs == pytest.approx(4e-6) and report.cases[0].max_rel == pytest.approx(4e-6 / 0.3)
    assert report.cases[1].max_abs == pytest.approx(1e-6) and report.cases[1].max_rel == pytest.approx(1e-6 / 0.05)
    assert report.rank_agreement == 0.0  # the worst set
    assert report.real_rank_agreement == pytest.approx((6 + 1) / (6 + 3))  # pooled over judgments, real sets only
    assert [c.name for c in report.cases[2:]] == ["synthetic", "real photos a", "real photos b"]
    assert report.cases[2].max_abs == pytest.approx(0.2) and report.cases[3].max_abs == 0.0
    assert report.tolerance == 1e-5 and not report.passed  # the triplets' distances count as cases too
    assert compare(run, ["dist"], cases[:1], triplets[:1], expected, 1e-5).real_rank_agreement is None
    without_triplets = compare(run, ["dist"], cases, [], expected, 1e-5)
    assert without_triplets.rank_agreement == 1.0 and without_triplets.real_rank_agreement is None


def test_the_mean_check_measures_a_smooth_photo_like_pair() -> None:
    """The pair spatial_mean_error feeds the graph: in range, varied and smooth like a photo (where a plain
    float32 mean drifts), and its partner a little noise away, so the distance is neither 0 nor saturated."""
    from test_spatial_mean import RecordingSession, toy_distance_graph

    session = RecordingSession(toy_distance_graph())
    spatial_mean_error(session, ["layer_map0", "layer_map1"], *MEAN_CHECK_SIZE)
    (feeds, _), = session.runs
    in0, in1 = feeds["in0"], feeds["in1"]
    assert in0.shape == in1.shape == (1, 3, *MEAN_CHECK_SIZE) and in0.dtype == in1.dtype == np.float32
    for x in (in0, in1):
        assert -1 <= x.min() < -0.5 and 0.5 < x.max() <= 1  # in the contract's range, and using it
    assert np.abs(np.diff(in0, axis=3)).mean() < 0.05 and np.abs(np.diff(in0, axis=2)).mean() < 0.05  # smooth
    assert len(np.unique(in0)) > 10_000  # continuous tones, no steps
    noise = (in1 - in0)[np.abs(in0) < 0.8]  # where clipping does not cut it
    assert abs(float(noise.mean())) < 2e-3 and 0.045 < float(noise.std()) < 0.055  # normal(0, 0.05)


def test_every_precision_s_bounds_are_a_tolerance_and_shares_of_judgments() -> None:
    """Each bound is usable as what it says: a positive max abs no looser than int8's 0.1, rank agreements that are
    shares in (0.9, 1], and the pooled real-photo bound, where there is one, at least the worst set's."""
    from stlpips_rt.precision import TOLERANCES

    assert TOLERANCES["fp32"].max_abs == 1e-5 and TOLERANCES["fp32"].min_rank_agreement == 1.0
    for name, bound in TOLERANCES.items():
        assert 0 < bound.max_abs <= 0.1, name
        assert 0.9 < bound.min_rank_agreement <= 1.0, name
        real = bound.min_real_rank_agreement
        assert real is None or bound.min_rank_agreement <= real <= 1.0, name
