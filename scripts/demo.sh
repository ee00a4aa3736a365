#!/usr/bin/env bash
# The main job from a fresh clone: set up, export the default model (ST-LPIPS alex), score the example pair.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
venv="${STLPIPS_VENV:-$root/.venv}"
cd "$root"
"$venv/bin/stlpips-export" --net alex --variant st
# The sample images the README's examples name (ref.png, dist.png, candidates/, images/, ...), and a link to
# models/: `cd out/example` and each example runs as written.
"$venv/bin/python" "$root/scripts/make_example.py" "$root/out/example" --models "$root/models"
data="$root/../shared/data"
if [ -d "$data" ]; then
  "$venv/bin/stlpips-score" --model alex-st "$data/ex_ref.png" "$data/ex_p0.png"
  "$venv/bin/stlpips-score" --model alex-st "$data/ex_ref.png" "$data/ex_p1.png"
else
  # A user's clone has no ../shared: score a synthetic image against its one-pixel shift instead.
  "$venv/bin/stlpips-score" --model alex-st "$root/out/example/ref.png" "$root/out/example/shifted.png"
fi
echo "demo: sample images in out/example (cd out/example to run the README's examples there)" >&2
