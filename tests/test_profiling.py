"""Where a Scorer's time goes: per-operator kernel time from onnxruntime's profiler and OpenVINO's performance
counters (Scorer.operator_profile, stlpips-bench --profile). No timing assertions: shares and structure only."""

from __future__ import annotations

import glob
import json
import os
import tempfile

import numpy as np
import pytest
from click.testing import CliRunner

from stlpips_rt import Scorer
from stlpips_rt.engine.providers import unavailable_reasons


def _pair(batch: int = 2, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(batch * size)
    return (rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32),
            rng.uniform(-1, 1, (batch, 3, size, size)).astype(np.float32))


def _providers() -> list[tuple[str, str]]:
    cases = [("cpu", "exact")]
    if "openvino" not in unavailable_reasons(["openvino"]):
        cases += [("openvino", "exact"), ("openvino", "fast")]
    return cases


@pytest.mark.parametrize("provider, precision", _providers())
def test_profile_names_each_operator_type_and_shares_sum_to_one(exported_model, provider: str,
                                                                 precision: str) -> None:
    scorer = Scorer(exported_model("alex", "st"), provider, precision, threads=1)
    traces_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "stlpips_profile_*")))
    profile = scorer.operator_profile(*_pair(), runs=3)
    assert profile.engine == ("onnxruntime" if provider == "cpu" else "openvino") and profile.runs == 3
    assert sum(op.share for op in profile.operators) == pytest.approx(1.0)
    shares = [op.share for op in profile.operators]
    assert shares == sorted(shares, reverse=True)
    types = {op.op_type for op in profile.operators}
    # alex-st: five backbone convolutions (and the fused conv1's border), the head's 1x1 weights and the block
    # sums per input; max pooling before each BlurPool
    conv = next(op for op in profile.operators if op.op_type in ("Conv", "Convolution"))
    assert conv.nodes >= 10 and conv.seconds > 0 and "MaxPool" in types
    assert 0 < profile.convolution_share <= 1
    for op in profile.operators:
        assert op.kernels and sum(op.kernels.values()) == pytest.approx(op.seconds)
    # the scoring session is not profiled, and onnxruntime's trace file does not stay behind
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "stlpips_profile_*"))) == traces_before
    assert sum(scorer.runs.values()) == 0  # the profiling session's runs are not this Scorer's
    assert scorer.score_batch(*_pair(), float_range="-1,1").shape == (2,)
    assert sum(scorer.runs.values()) == 1


def test_profile_counts_only_the_timed_runs(exported_model) -> None:
    """More timed runs give the same time per run (not a sum over runs, nor the warm-up's allocations): within a
    factor of 3, whatever the machine's load."""
    scorer = Scorer(exported_model("alex", "st"), "cpu", threads=1)
    pair = _pair()
    one, five = scorer.operator_profile(*pair, runs=1), scorer.operator_profile(*pair, runs=5)
    assert five.runs == 5 and one.runs == 1
    assert 1 / 3 < five.total_seconds / one.total_seconds < 3


def test_profile_of_a_batch_that_runs_side_by_side_is_one_of_its_one_thread_runs(exported_model) -> None:
    """On two threads the CPU provider runs 4 pairs as two one-thread runs of 2 (engine/side_by_side.py): the
    profile is of such a run, and says so; on one thread the batch runs whole."""
    pair = _pair(batch=4)
    two = Scorer(exported_model("alex", "st"), "cpu", threads=2).operator_profile(*pair, runs=1)
    one = Scorer(exported_model("alex", "st"), "cpu", threads=1).operator_profile(*pair, runs=1)
    assert (two.pieces, two.pairs) == (2, 2) and (one.pieces, one.pairs) == (1, 4)
    assert two.as_dict()["pieces"] == 2
    # a broadcast run of 4 candidates stays whole (each piece would compute the reference's features again)
    broadcast = Scorer(exported_model("alex", "st"), "cpu", threads=2).operator_profile(pair[0][:1], pair[1], runs=1)
    assert (broadcast.pieces, broadcast.pairs) == (1, 4)


def test_bench_profile_writes_a_table_per_side_and_configuration(tmp_path, exported_model) -> None:
    from stlpips_export.bench.cli import main

    sides = ["runtime:cpu:exact"] + (["runtime:openvino:fast"] if len(_providers()) > 1 else [])
    out = tmp_path / "profile"
    result = CliRunner().invoke(main, ["--profile", "--quick", "--nets", "alex", "--shapes", "32:1,2", "--sides",
                                       ",".join(sides), "--threads", "1", "--models",
                                       str(exported_model("alex", "st").parent), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "profile.json").read_text())
    assert [(e["side"], e["batch"]) for e in report["profiles"]] == [(s, b) for s in sides for b in (1, 2)]
    md = (out / "profile.md").read_text()
    for side in sides:
        assert f"## {side}, alex-st 32x32, batch 2" in md
    assert "| Conv |" in md and "convolutions **" in md


def test_bench_profile_refuses_pytorch_sides(tmp_path) -> None:
    from stlpips_export.bench.cli import main

    result = CliRunner().invoke(main, ["--profile", "--sides", "upstream", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "runtime sides" in result.output
