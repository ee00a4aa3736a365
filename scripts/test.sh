#!/usr/bin/env bash
# Set up (if needed), lint, then run the test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
bash "$root/scripts/setup_web.sh"  # Chromium and examples/web/node_modules for tests/test_web.py
venv="${STLPIPS_VENV:-$root/.venv}"
cd "$root"
"$venv/bin/ruff" check .
"$venv/bin/python" -m pytest "$@"
