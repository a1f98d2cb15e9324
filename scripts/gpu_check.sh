#!/usr/bin/env bash
# One-command check for a machine with an NVIDIA GPU:
#   1. build and install the extension for the local GPU (FORCE_CUDA=1),
#   2. run the full pytest suite (every numerical test is parametrized over cpu and cuda),
#   3. compute-sanitizer memcheck and racecheck on a small workload (scripts/gpu_sanitizer_case.py),
#   4. the benchmark (python -m smoothing_ext.bench, with --device cuda when it has that flag).
# Logs go to $GPU_CHECK_OUT (default ./gpu_check_out). Every step runs; the exit status is non-zero
# when any failed. Environment: PYTHON (default python), CUDA_HOME, TORCH_CUDA_ARCH_LIST (default:
# the visible GPU's architecture), SKIP_BUILD=1 to test what is already installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-gpu_check_out}
mkdir -p "$OUT"
status=0
step() { echo; echo "=== $* ==="; }
fail() { echo "FAILED: $*"; status=1; }

step "device"
nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt" || fail "nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))" \
  | tee "$OUT/torch.txt" || fail "torch cannot see a GPU"

if [ "${SKIP_BUILD:-0}" != "1" ]; then
  step "build (FORCE_CUDA=1, arch list: ${TORCH_CUDA_ARCH_LIST:-the visible GPU})"
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  FORCE_CUDA=1 $PY -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1 \
    && tail -n 3 "$OUT/build.log" || { tail -n 40 "$OUT/build.log"; fail "build"; }
fi

step "pytest (cpu + cuda)"
$PY -P -m pytest -q -rs tests 2>&1 | tee "$OUT/pytest.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "pytest"

SAN=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
if [ -x "$SAN" ]; then
  for tool in memcheck racecheck; do
    step "compute-sanitizer --tool $tool"
    "$SAN" --tool "$tool" --error-exitcode 1 $PY scripts/gpu_sanitizer_case.py > "$OUT/sanitizer_$tool.txt" 2>&1
    rc=$?
    tail -n 5 "$OUT/sanitizer_$tool.txt"
    [ "$rc" -eq 0 ] || fail "compute-sanitizer $tool"
  done
else
  step "smoke test (compute-sanitizer not found: install the CUDA toolkit's sanitizer)"
  $PY scripts/gpu_sanitizer_case.py 2>&1 | tee "$OUT/smoke.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || fail "smoke test"
  fail "compute-sanitizer missing"
fi

step "benchmark"
if $PY -m smoothing_ext.bench --help 2>&1 | grep -q -- "--device"; then
  $PY -m smoothing_ext.bench --device cuda 2>&1 | tee "$OUT/bench.txt"
else
  $PY -m smoothing_ext.bench 2>&1 | tee "$OUT/bench.txt"
fi
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "benchmark"

echo
if [ "$status" -eq 0 ]; then echo "gpu_check: all steps passed (logs in $OUT)"; else echo "gpu_check: some steps FAILED (logs in $OUT)"; fi
exit "$status"
