"""CPUs a Scorer uses without ``threads=``: the process's affinity capped by a cgroup CPU quota (engine/cpus.py),
not the host's count, which a container limited to a few CPUs on a large host would otherwise start threads for."""

from __future__ import annotations

from pathlib import Path

import pytest

from stlpips_rt.engine import cpus


def _tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    proc_file = tmp_path / "proc_self_cgroup"
    proc_file.write_text(proc)
    return root, proc_file


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "max 100000\n"}, None),  # no quota
    ({"cpu.max": "200000 100000\n"}, 2),  # docker --cpus 2 (a container's own namespace: its cgroup is "/")
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
    ({"cpu.max": "50000 100000\n"}, 1),
])
def test_cgroup_v2_quota_in_a_container(tmp_path: Path, files: dict[str, str], expected: int | None) -> None:
    root, proc = _tree(tmp_path, "0::/\n", files)
    assert cpus.cgroup_cpu_quota(root, proc) == expected


def test_cgroup_v2_quota_of_a_parent_limits_its_children(tmp_path: Path) -> None:
    """A pod's limit sits on its parent slice; the process's own cgroup has none."""
    root, proc = _tree(tmp_path, "0::/kubepods/pod1/app\n", {
        "kubepods/pod1/cpu.max": "300000 100000\n", "kubepods/pod1/app/cpu.max": "max 100000\n",
        "kubepods/cpu.max": "max 100000\n"})
    assert cpus.cgroup_cpu_quota(root, proc) == 3


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    proc_text = "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n"
    root, proc = _tree(tmp_path, proc_text, {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
                                            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cpus.cgroup_cpu_quota(root, proc) == 3
    (root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.cgroup_cpu_quota(root, proc) is None


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cpus.cgroup_cpu_quota(tmp_path / "none", tmp_path / "missing") is None


def test_available_cpus_is_the_affinity_capped_by_the_quota(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cpus.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    root, proc = _tree(tmp_path, "0::/\n", {"cpu.max": "200000 100000\n"})
    assert cpus.available_cpus(root, proc) == 2
    (root / "cpu.max").write_text("max 100000\n")
    assert cpus.available_cpus(root, proc) == 6


def test_a_limited_process_sizes_the_scorer_and_its_sessions_by_what_it_may_use(monkeypatch, exported_model) -> None:
    """On a 64-CPU host whose container may use 3: 3 side-by-side runs and 3 intra-op threads, not 64; an explicit
    ``threads`` wins; an unlimited process leaves the engines their own default."""
    from stlpips_rt import Scorer
    from stlpips_rt.engine.options import SessionConfig
    from stlpips_rt.engine.providers import session_options

    monkeypatch.setattr(cpus.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(cpus, "available_cpus", lambda *a: 3)
    monkeypatch.setattr("stlpips_rt.scorer.available_cpus", lambda *a: 3)
    assert cpus.engine_threads(None) == 3 and cpus.engine_threads(5) == 5
    assert session_options(SessionConfig()).intra_op_num_threads == 3
    assert Scorer(exported_model("alex", "st"), "cpu")._cpu_threads() == 3
    assert Scorer(exported_model("alex", "st"), "cpu", threads=2)._cpu_threads() == 2
    monkeypatch.setattr(cpus, "available_cpus", lambda *a: 64)
    assert cpus.engine_threads(None) is None
    assert session_options(SessionConfig()).intra_op_num_threads == 0  # onnxruntime's own default
