"""`stlpips-bench-gpu` without a GPU: the measuring loop driven by fake sides, the report and its goals rendered
from a fake result. The real run happens on a GPU machine (scripts/gpu/device.sh bench); no timed assertions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from stlpips_export.bench import gpu
from stlpips_export.bench.gpu_report import goals, markdown


def test_configs_parse() -> None:
    assert gpu.parse_configs("64:64,256:32,64:1") == [(64, 64), (256, 32), (64, 1)]


def test_measure_rotates_sides_compares_outputs_and_reports_failures() -> None:
    order: list[str] = []

    def side(name: str, offset: float) -> gpu.Prepare:
        def prepare(net: str, size: int, batch: int) -> Any:
            def call() -> np.ndarray:
                order.append(name)
                return np.full(batch, 0.5 + offset, dtype=np.float32)
            return call
        return prepare

    def broken(net: str, size: int, batch: int) -> Any:
        raise RuntimeError("CUDA graph capture failed")

    sides = {"upstream:fp32": side("upstream:fp32", 0.0), "runtime:exact:zero-copy": side("zc", 1e-6),
             "runtime:fast-fp16:zero-copy": side("fp16", 2e-3), "runtime:exact:cuda-graph": broken}
    syncs: list[int] = []
    results = gpu.measure(sides, ["alex"], [(64, 4)], rounds=3, seconds=0.0, warmup=2, sync=lambda: syncs.append(1),
                          to_host=np.asarray, min_calls=2)
    by_side = {r.side: r for r in results}
    assert by_side["runtime:exact:cuda-graph"].error == "RuntimeError: CUDA graph capture failed"
    assert by_side["runtime:exact:cuda-graph"].latencies == []
    for name, err in (("upstream:fp32", 0.0), ("runtime:exact:zero-copy", 1e-6), ("runtime:fast-fp16:zero-copy", 2e-3)):
        r = by_side[name]
        assert r.error is None and len(r.latencies) == 6 and len(r.round_pairs_per_s) == 3
        assert r.max_abs_vs_baseline == pytest.approx(err, abs=1e-7)
        assert r.summary()["calls"] == 6 and r.summary()["pairs_per_s"] > 0
    timed = order[3 * 2:]  # after 2 warm-up calls per working side
    assert timed[:6] == ["upstream:fp32"] * 2 + ["zc"] * 2 + ["fp16"] * 2
    assert timed[6:12] == ["zc"] * 2 + ["fp16"] * 2 + ["upstream:fp32"] * 2  # round 2 starts one side later
    assert len(syncs) >= len(order)  # every timed call is synchronised


def fake_report(zero_copy: float, host: float, fp16: float) -> dict[str, Any]:
    def row(side: str, pairs_per_s: float, size: int = 256, batch: int = 32, error: str | None = None) -> dict:
        return {"net": "vgg", "size": size, "batch": batch, "side": side, "calls": 0 if error else 20,
                "pairs_per_s": pairs_per_s, "median_ms": 1.0, "p90_ms": 1.5, "round_pairs_per_s": [pairs_per_s],
                "max_abs_vs_baseline": 1e-6, "error": error}

    return {
        "command": "stlpips-bench-gpu", "wall_seconds": 60.0,
        "environment": {"gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_gib": 79.2, "multiprocessors": 132,
                        "onnxruntime": "1.31.1", "onnxruntime_device": "GPU", "onnxruntime_cuda": "13.0",
                        "torch": "2.11.0+cu130", "torch_cuda": "13.0", "cudnn": 91000,
                        "torch_flags": {"cudnn.allow_tf32": True}, "cuda_fast_default": "fp16"},
        "settings": {"rounds": 1, "seconds": 0.5, "warmup": 5, "sides": list(gpu.SIDES), "configs": [[256, 32]]},
        "results": [row("upstream:fp32", 100.0), row("upstream:fp16-autocast", 180.0),
                    row("runtime:exact:host", host), row("runtime:exact:zero-copy", zero_copy),
                    row("runtime:fast-tf32:zero-copy", 300.0), row("runtime:fast-fp16:zero-copy", fp16),
                    row("runtime:fast-fp16-nhwc:zero-copy", fp16 * 1.1),
                    row("runtime:exact:cuda-graph", 2 * zero_copy),
                    row("runtime:fast-fp16:cuda-graph", 0.0, error="RuntimeError: capture failed"),
                    row("upstream:fp32", 2.0, batch=1), row("runtime:exact:zero-copy", 3.0, batch=1)],
    }


@pytest.mark.parametrize(("zero_copy", "host", "fp16", "met"), [(200.0, 120.0, 450.0, "yes"),
                                                                (120.0, 110.0, 300.0, "no")])
def test_report_states_ratios_goals_and_the_fastest_fast_mode(zero_copy, host, fp16, met) -> None:
    report = fake_report(zero_copy, host, fp16)
    md = markdown(report)
    exact_ok = "yes" if zero_copy / 100 >= 1.5 else "no"
    assert f"| vgg-st 256x256 b32 | exact (zero-copy) >= 1.5x upstream eager fp32 | {zero_copy / 100:.2f}x | " \
           f"{exact_ok} |" in md
    zc_ok = "yes" if zero_copy / host >= 1.3 else "no"
    assert f"| zero-copy >= 1.3x host-copy path (exact) | {zero_copy / host:.2f}x | {zc_ok} |" in md
    assert f"| fast (default, fast-fp16) >= 4x upstream eager fp32 | {fp16 / 100:.2f}x | {met} |" in md
    assert f"| fast (best: fast-fp16-nhwc) >= 4x upstream eager fp32 | {1.1 * fp16 / 100:.2f}x |" in md
    assert "| vgg-st 256x256 b32 | fast-fp16-nhwc |" in md  # fastest fast side
    assert "| 2.00 | - |" in md  # CUDA graph twice zero-copy for exact; the fp16 graph failed
    assert "error: RuntimeError: capture failed" in md
    assert not any(g["where"].endswith("b1") for g in goals(report))  # batch 1 is latency, not a goal


def test_from_json_rerenders_and_unknown_sides_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "run.json"
    source.write_text(json.dumps(fake_report(200.0, 120.0, 450.0)))
    result = CliRunner().invoke(gpu.main, ["--from-json", str(source), "--out", str(tmp_path / "md")])
    assert result.exit_code == 0, result.output
    assert "## Goals" in (tmp_path / "md" / "bench_gpu.md").read_text()
    result = CliRunner().invoke(gpu.main, ["--sides", "upstream:fp64", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown side" in result.output
