"""The environment is the locked one (scripts/setup.sh installs requirements/environment.lock): the engines that
compute distances and the numbers around them are at the versions the tests and the measurements were taken
with. After refreshing the lock (scripts/lock.sh), rerun scripts/setup.sh; docs/reproducibility.md."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "environment.lock"
ENGINES = ("onnxruntime", "onnxruntime-ep-openvino", "openvino", "numpy", "pillow")


def locked() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", LOCK.read_text(), flags=re.MULTILINE)
    return {name.lower().replace("_", "-"): v for name, v in pins}


def installed(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        pytest.skip(f"{name} is not installed here (a runtime-only or GPU install is not the locked set-up)")


@pytest.mark.parametrize("name", ENGINES)
def test_engines_are_at_their_locked_versions(name: str) -> None:
    pins = locked()
    assert name in pins, f"{name} is missing from {LOCK.name}"
    have = installed(name)
    assert have == pins[name], f"{name} {have} installed, {pins[name]} locked: run scripts/setup.sh"


def test_torch_is_the_pinned_cpu_build_and_out_of_the_hashed_lock() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    pin = re.search(r'torch_pin="torch==([^"]+)"', setup)
    assert pin, "scripts/setup.sh pins torch"
    assert "torch" not in locked(), "torch is installed by pip from the local CPU wheel, not from the hashed lock"
    assert installed("torch").split("+")[0] == pin.group(1)


def test_every_locked_package_carries_hashes() -> None:
    blocks = re.split(r"\n(?=[A-Za-z])", LOCK.read_text().strip())
    assert blocks and all("--hash=sha256:" in b for b in blocks if not b.startswith("#")), "scripts/lock.sh"
