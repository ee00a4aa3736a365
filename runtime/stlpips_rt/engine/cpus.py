"""How many CPUs this process may use: its scheduler affinity, capped by a cgroup CPU quota.

``os.cpu_count()`` is the host's count. In a container given 2 CPUs (``docker run --cpus 2``, a Kubernetes CPU
limit, ``--cpuset-cpus``) on a 64-core host it says 64, and onnxruntime's default intra-op pool takes the host's
physical cores too (https://github.com/microsoft/onnxruntime/issues/29510). A Scorer sizes its side-by-side runs,
its features workers and its matrix head by its thread count, so on such a host it would start 64 threads on 2 CPUs'
worth of time, each waiting for the others at every operator. :func:`available_cpus` is what a Scorer without
``threads=`` uses instead, and :func:`engine_threads` what its sessions get when the process is limited.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may run on (``os.sched_getaffinity``, where the OS has it), capped by its cgroup's CPU
    quota rounded up; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root, proc_cgroup)
    return max(1, min(cpus, quota) if quota is not None else cpus)


def engine_threads(threads: int | None) -> int | None:
    """The intra-op thread count for a session: ``threads`` when given; else :func:`available_cpus` when the
    process may use fewer CPUs than the host has (the engines' own defaults count the host's); else None, the
    engine's default."""
    if threads:
        return int(threads)
    cpus = available_cpus()
    return cpus if cpus < (os.cpu_count() or 1) else None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int | None:
    """The CPUs this process's cgroup quota allows (quota / period, rounded up; the smallest over the cgroup and
    its parents), or None where there is no quota or no cgroup file to read. cgroup v2: ``cpu.max`` ("max PERIOD"
    or "QUOTA PERIOD"); v1: ``cpu.cfs_quota_us`` (-1: none) over ``cpu.cfs_period_us``."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        relative = path.strip().lstrip("/")
        if controllers == "":  # v2: one unified hierarchy
            limits += [_v2_limit(d / "cpu.max") for d in _up_to(root, root / relative)]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            base = root / controllers
            limits += [_v1_limit(d) for d in _up_to(base, base / relative)]
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _up_to(top: Path, start: Path) -> list[Path]:
    """``start`` and its parents up to ``top``: a parent's quota limits its children too."""
    chain = [start]
    while chain[-1] != top and top in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def _v2_limit(path: Path) -> int | None:
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else _cpus(quota, period)


def _v1_limit(directory: Path) -> int | None:
    try:
        quota = (directory / "cpu.cfs_quota_us").read_text().strip()
        period = (directory / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return None
    return None if quota.startswith("-") else _cpus(quota, period)


def _cpus(quota: str, period: str) -> int | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return max(1, math.ceil(q / p)) if q > 0 and p > 0 else None
