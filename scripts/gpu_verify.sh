#!/usr/bin/env bash
# One-shot GPU verification: turns a machine with one NVIDIA GPU, a driver, python3 and PyPI (and
# nothing else) into verified numbers in <= 8 minutes of wall time (GPU_VERIFY_BUDGET_S, default 480).
#
#   scripts/gpu_verify.sh [OUTDIR]            (make gpu-check; OUTDIR default build/gpu_verify)
#   scripts/gpu_verify.sh --dry-run [OUTDIR]  every step that can run without a GPU (CI: tests/test_gpu_verify.py)
#
# Steps, each under its own `timeout` (capped by what is left of the budget), each recorded in
# OUTDIR/results.md and OUTDIR/results.json as soon as it ends (a failed step is recorded and the
# next one runs; logs in OUTDIR/logs/):
#   device     nvidia-smi, the GPU's architecture
#   venv       python3 -m venv + torch 2.14.1, ninja, pytest(-xdist), hypothesis, compute-sanitizer (PyPI), and
#              nvcc from PyPI (nvidia-cuda-nvcc etc., CUDA_HOME assembled from the wheels) when the
#              machine has no toolkit. Skipped when the venv already has torch (dry run: never installs)
#   build      editable install for the local architecture only, MAX_JOBS = cores
#              (dry run: setup.py build_ext --inplace in a copy, one arch, or GPU_VERIFY_PREBUILT=<tree>)
#   then in parallel (correctness only; nothing is timed):
#     pytest     the suite's CUDA cases (dry run: their collection, with CUDA faked at collection)
#     checks     scripts/gpu_verify_checks.py: every op and dtype vs the CPU op, misaligned views, one
#                >2^31-element case, in-place == out-of-place, bit-identical reruns, no host sync,
#                CUDA-graph capture, out-of-range targets in a subprocess
#     memcheck / racecheck / synccheck   compute-sanitizer on scripts/gpu_sanitizer_case.py (memcheck
#                with PYTORCH_NO_CUDA_MEMORY_CACHING=1) (dry run: the case itself on the CPU)
#     extras     pip install liger-kernel quack-kernels (optional: a failure is recorded, not fatal)
#   bench      scripts/gpu_verify_bench.py alone on the GPU: CUDA-event timings vs a device-to-device
#              copy of the same run, eager and compiled F.cross_entropy, Liger/QuACK when installed;
#              the bars as pass/fail
# Exit status: 0 when every required step passed (bars included), 1 otherwise.
# Environment: GPU_VERIFY_VENV (default <repo>/.venv), GPU_VERIFY_BUDGET_S, GPU_VERIFY_ARCH (override
# the detected arch, e.g. 9.0), CUDA_HOME (default /usr/local/cuda when it has nvcc, else the PyPI
# wheels), TORCH_VERSION (2.14.1), PIP_ARGS (extra pip arguments, e.g. an index), GPU_VERIFY_PREBUILT
# (dry run: a tree with a CUDA build of smoothing_ext/_C*.so to use instead of building).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRY=0
OUT=""
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) OUT=$a ;;
  esac
done
OUT=${OUT:-$ROOT/build/gpu_verify}
mkdir -p "$OUT/logs" && OUT=$(cd "$OUT" && pwd)
BUDGET=${GPU_VERIFY_BUDGET_S:-480}
T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))
RESERVE=5  # seconds kept for the final report
VENV=${GPU_VERIFY_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
TORCH_VERSION=${TORCH_VERSION:-2.14.1}
NPROC=$(nproc 2>/dev/null || echo 4)
SYSPY=$(command -v python3 || command -v python)
REPORT="$SYSPY $ROOT/scripts/gpu_verify_report.py"
MODE=$([ "$DRY" = 1 ] && echo dry-run || echo gpu)
: > "$OUT/steps.jsonl"
$REPORT init "$OUT" --mode "$MODE" --budget "$BUDGET" --root "$ROOT"

now() { date +%s.%N; }

# record NAME STATUS SECONDS NOTE [REQUIRED]
record() {
  $REPORT step "$OUT" --name "$1" --status "$2" --seconds "$3" --note "$4" --required "${5:-1}" \
    --log "logs/$1.log"
}

# run_step NAME MAX_S REQUIRED CMD...: runs CMD under timeout (MAX_S, or what is left of the budget)
run_step() {
  local name=$1 max=$2 req=$3
  shift 3
  local left=$((DEADLINE - $(date +%s) - RESERVE))
  local t=$max
  [ "$left" -lt "$t" ] && t=$left
  if [ "$t" -lt 3 ]; then
    record "$name" skipped 0 "no time left in the ${BUDGET} s budget" "$req"
    return 1
  fi
  local s rc st note
  s=$(now)
  echo "[gpu_verify] $(date +%T) $name (timeout ${t} s)"
  # a fresh bash runs the step function (exported below), so that `timeout` can stop all of it
  timeout -k 5 "$t" bash -c '"$@"' step "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  local dur
  dur=$(awk -v a="$s" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')
  if [ "$rc" -eq 0 ]; then st=pass; note=""; elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    st=timeout; note="killed after ${t} s"; else st=fail; note="exit $rc"; fi
  # a step may leave a one-line note (what it did, counts) in logs/NAME.note
  [ -s "$OUT/logs/$name.note" ] && note="$(head -c 400 "$OUT/logs/$name.note")${note:+; $note}"
  record "$name" "$st" "$dur" "$note" "$req"
  echo "[gpu_verify] $name: $st (${dur} s) $note"
  [ "$st" = pass ]
}

# ---- 1. device --------------------------------------------------------------------------------
step_device() {
  if [ "$DRY" = 1 ]; then
    echo "dry run: no GPU used"; nvidia-smi -L 2>/dev/null || true
    echo "dry run (no GPU); arch ${GPU_VERIFY_ARCH:-9.0}" > "$OUT/logs/device.note"
    echo "${GPU_VERIFY_ARCH:-9.0}" > "$OUT/arch"
    return 0
  fi
  nvidia-smi || return 1
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.csv"
  local cap
  cap=${GPU_VERIFY_ARCH:-$(head -1 "$OUT/gpu.csv" | awk -F', ' '{print $2}')}
  [ -n "$cap" ] || return 1
  echo "$cap" > "$OUT/arch"
  echo "$(head -1 "$OUT/gpu.csv"), $NPROC cores" > "$OUT/logs/device.note"
}

# ---- 2. venv + torch (+ compute-sanitizer, + nvcc when the machine has none) --------------------
system_nvcc() {
  for h in "${CUDA_HOME:-}" /usr/local/cuda; do
    [ -n "$h" ] && [ -x "$h/bin/nvcc" ] && { echo "$h"; return 0; }
  done
  return 1
}

# A C++ compiler, Python.h and the venv module: the build needs them and PyPI has none of them. On a
# bare Debian/Ubuntu image (root, apt reachable) they are installed; otherwise the step fails saying so.
system_deps() {
  local missing=()
  command -v g++ > /dev/null || missing+=(g++)
  "$SYSPY" -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
    || missing+=(python3-dev)
  "$SYSPY" -c "import ensurepip" 2> /dev/null || missing+=(python3-venv)
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "missing: ${missing[*]}"
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
      && return 0
  fi
  echo "cannot install ${missing[*]} (needs root and apt-get): install them, then rerun"
  return 1
}

step_venv() {
  if [ -x "$PY" ] && "$PY" -c "import torch" 2>/dev/null; then
    if [ "$DRY" = 1 ]; then
      echo "venv $VENV exists with torch $("$PY" -c 'import torch;print(torch.__version__)'): skipped (dry run)" \
        | tee "$OUT/logs/venv.note"
      return 0
    fi
  elif [ "$DRY" = 1 ]; then
    echo "dry run: no venv at $VENV; creating it (torch $TORCH_VERSION)"
  fi
  system_deps || return 1
  [ -x "$PY" ] || "$SYSPY" -m venv "$VENV" || "$SYSPY" -m virtualenv "$VENV" || return 1
  local pkgs=("torch==$TORCH_VERSION" setuptools wheel numpy ninja pytest pytest-xdist hypothesis expecttest)
  local cuda_mm=13.0  # torch 2.14.1's CUDA (checked below)
  if [ "$DRY" = 0 ]; then
    pkgs+=("nvidia-cuda-sanitizer-api==$cuda_mm.*")
    system_nvcc > /dev/null || pkgs+=("nvidia-cuda-nvcc==$cuda_mm.*" "nvidia-nvvm==$cuda_mm.*"
                                      "nvidia-cuda-crt==$cuda_mm.*" "nvidia-cuda-cccl==$cuda_mm.*")
  fi
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --disable-pip-version-check ${PIP_ARGS:-} "${pkgs[@]}" || return 1
  local tc
  tc=$("$PY" -c "import torch; print(torch.version.cuda or '')")
  echo "torch $("$PY" -c 'import torch;print(torch.__version__)') (CUDA $tc) in $VENV" > "$OUT/logs/venv.note"
  if [ "$DRY" = 0 ] && [ -n "$tc" ] && [ "${tc%%.*}" != "${cuda_mm%%.*}" ]; then
    # another CUDA major: the toolkit wheels of that major (cu12 names carry a suffix)
    local M=${tc%%.*} sfx=""
    [ "$M" -lt 13 ] && sfx="-cu$M"
    local more=("nvidia-cuda-sanitizer-api$sfx==$tc.*")
    system_nvcc > /dev/null || more+=("nvidia-cuda-nvcc$sfx==$tc.*" "nvidia-cuda-cccl$sfx==$tc.*")
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --disable-pip-version-check ${PIP_ARGS:-} "${more[@]}" || return 1
  fi
}

# CUDA_HOME: the machine's toolkit, else one assembled from the pip wheels (nvidia/cu13 holds bin/nvcc,
# nvvm, include with crt and cccl, lib with libcudart.so.13; the link needs an unversioned libcudart.so).
find_cuda_home() {
  system_nvcc && return 0
  local d
  for d in $("$PY" -c "import nvidia, os; [print(os.path.join(p, s)) for p in nvidia.__path__ for s in sorted(os.listdir(p))]" 2>/dev/null); do
    if [ -x "$d/bin/nvcc" ]; then
      if [ ! -e "$d/lib/libcudart.so" ] && [ ! -e "$d/lib64/libcudart.so" ]; then
        local so
        so=$(ls "$d"/lib/libcudart.so.* 2>/dev/null | head -1)
        [ -n "$so" ] && ln -sf "$(basename "$so")" "$d/lib/libcudart.so"
      fi
      echo "$d"
      return 0
    fi
  done
  return 1
}

find_sanitizer() {
  local c
  for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
           $("$PY" -c "import nvidia, os, glob; [print(f) for p in nvidia.__path__ for f in glob.glob(os.path.join(p, '*', 'bin', 'compute-sanitizer'))]" 2>/dev/null); do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

# ---- 3. build ---------------------------------------------------------------------------------
TREE=$ROOT
step_build() {
  local arch
  arch=$(cat "$OUT/arch" 2>/dev/null || echo "${GPU_VERIFY_ARCH:-9.0}")
  export CUDA_HOME
  CUDA_HOME=$(find_cuda_home) || { echo "no nvcc: neither a toolkit nor the nvidia-cuda-nvcc wheel"; return 1; }
  echo "CUDA_HOME=$CUDA_HOME arch=$arch MAX_JOBS=$NPROC"
  if [ "$DRY" = 1 ]; then
    if [ -n "${GPU_VERIFY_PREBUILT:-}" ]; then
      ls "$GPU_VERIFY_PREBUILT"/smoothing_ext/_C*.so || return 1
      echo "dry run: reused the CUDA build in $GPU_VERIFY_PREBUILT" > "$OUT/logs/build.note"
      return 0
    fi
    rm -rf "$OUT/tree" && mkdir -p "$OUT/tree"
    (cd "$ROOT" && tar --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.so' --exclude=__pycache__ \
       --exclude='*.egg-info' --exclude=./build-cmake -cf - .) | tar -xf - -C "$OUT/tree" || return 1
    (cd "$OUT/tree" && FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=$NPROC "$PY" setup.py build_ext --inplace) || return 1
    echo "dry run: setup.py build_ext --inplace (FORCE_CUDA=1, arch $arch) in $OUT/tree" > "$OUT/logs/build.note"
    return 0
  fi
  (cd "$ROOT" && FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=$NPROC \
     "$PY" -m pip install --no-build-isolation --no-deps -v -e .) || return 1
  "$PY" -c "import torch, smoothing_ext; ok = torch._C._dispatch_has_kernel_for_dispatch_key('smoothing_ext::cross_entropy_forward', 'CUDA'); print('CUDA kernels registered:', ok); assert ok"
  echo "editable install, arch $arch, MAX_JOBS=$NPROC, CUDA_HOME=$CUDA_HOME" > "$OUT/logs/build.note"
}

# ---- 4. correctness (parallel) --------------------------------------------------------------------
# The suite's CUDA cases: every numerical test is parametrized over the devices (tests/conftest.py);
# the build, packaging, CMake, simt and example tests are left out.
step_pytest() {
  local PYTEST_SEL=(-m "not cuda_build and not simt" -k "cuda"
    --ignore=tests/test_cuda_build.py --ignore=tests/test_packaging.py --ignore=tests/test_cmake.py
    --ignore=tests/test_examples.py --ignore=tests/test_bench.py --ignore=tests/test_gpu_verify.py
    --ignore=tests/test_cuda_simt.py --ignore=tests/test_bce_simt.py)
  cd "$TREE" || return 1
  if [ "$DRY" = 1 ]; then
    PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q --collect-only -p gpu_verify_fake_cuda \
      --continue-on-collection-errors "${PYTEST_SEL[@]}" tests > "$OUT/pytest_collect.txt" 2>&1
    local rc=$? n errs nodev mods
    tail -n 3 "$OUT/pytest_collect.txt"
    n=$(grep -c "\[.*cuda" "$OUT/pytest_collect.txt")
    # Modules that touch the device while they are collected (torch's device-type test classes) cannot
    # be collected without a GPU: accepted when that is their only error, and named in the note.
    errs=$(grep -c "^ERROR tests/" "$OUT/pytest_collect.txt")
    nodev=$(grep -c "^E  *RuntimeError: Found no NVIDIA driver" "$OUT/pytest_collect.txt")
    mods=$(grep "^ERROR tests/" "$OUT/pytest_collect.txt" | awk '{print $2}' | tr '\n' ' ')
    echo "dry run: collected $n CUDA cases (CUDA faked at collection; not run)${mods:+; need a GPU to collect: $mods}" \
      > "$OUT/logs/pytest.note"
    [ "$n" -gt 0 ] && { [ "$rc" -eq 0 ] || [ "$errs" -eq "$nodev" ]; }
    return
  fi
  local par=()  # several pytest processes share the GPU when pytest-xdist is there
  "$PY" -c "import xdist" 2>/dev/null && par=(-n "$(( NPROC < 6 ? NPROC : 6 ))")
  # (the install is editable: the source package is the installed one, no -P needed)
  "$PY" -m pytest -q -rfEs -p no:cacheprovider "${par[@]}" --junitxml="$OUT/pytest.xml" "${PYTEST_SEL[@]}" tests
  local rc=$?
  "$SYSPY" "$ROOT/scripts/gpu_verify_report.py" junit "$OUT/pytest.xml" > "$OUT/logs/pytest.note" 2>/dev/null
  return $rc
}

DEV_ARGS="--device cuda"  # dry run: --device cpu --tiny
step_checks() {
  # shellcheck disable=SC2086
  cd "$TREE" && "$PY" "$ROOT/scripts/gpu_verify_checks.py" $DEV_ARGS --json "$OUT/checks.json" \
    --note "$OUT/logs/checks.note"
}

step_sanitizer() {  # step_sanitizer TOOL
  local tool=$1
  cd "$TREE" || return 1
  if [ "$DRY" = 1 ]; then
    # the case once on the CPU (memcheck's slot); the other tools would run the same case
    if [ "$tool" = memcheck ]; then
      "$PY" "$ROOT/scripts/gpu_sanitizer_case.py" --device cpu || return 1
      echo "dry run: the case on the CPU, without compute-sanitizer" > "$OUT/logs/$tool.note"
    else
      echo "dry run: compute-sanitizer --tool $tool ... scripts/gpu_sanitizer_case.py --device cuda (not run)" \
        | tee "$OUT/logs/$tool.note"
    fi
    return 0
  fi
  local san
  san=$(find_sanitizer) || { echo "compute-sanitizer not found"; return 1; }
  local extra=()
  [ "$tool" = memcheck ] && extra=(--leak-check no)
  # racecheck / synccheck: this project's kernels only (torch's own kernels are not under test here)
  [ "$tool" = racecheck ] && extra=(--racecheck-report all --kernel-name kns=smoothing_ext)
  [ "$tool" = synccheck ] && extra=(--kernel-name kns=smoothing_ext)
  if [ "$tool" = memcheck ]; then export PYTORCH_NO_CUDA_MEMORY_CACHING=1; fi
  "$san" --tool "$tool" "${extra[@]}" --error-exitcode 1 "$PY" "$ROOT/scripts/gpu_sanitizer_case.py" --device cuda
  local rc=$?
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|gpu_sanitizer_case:" "$OUT/logs/$tool.log" | tr '\n' ' ' | head -c 300 \
    > "$OUT/logs/$tool.note"
  return $rc
}

step_extras() {
  [ "$DRY" = 1 ] && { echo "dry run: not installed" > "$OUT/logs/extras.note"; return 0; }
  echo "torch==$("$PY" -c 'import torch;print(torch.__version__.split("+")[0])')" > "$OUT/constraints.txt"
  local ok=()
  for p in liger-kernel quack-kernels; do
    # shellcheck disable=SC2086
    if "$PY" -m pip install -q --disable-pip-version-check ${PIP_ARGS:-} -c "$OUT/constraints.txt" "$p"; then ok+=("$p");
    else echo "pip install $p failed"; fi
  done
  echo "installed: ${ok[*]:-none}" > "$OUT/logs/extras.note"
  [ "${#ok[@]}" -gt 0 ]
}

step_bench() {
  # shellcheck disable=SC2086
  cd "$TREE" && "$PY" "$ROOT/scripts/gpu_verify_bench.py" $DEV_ARGS --json "$OUT/bench.json" \
    --md "$OUT/bench.md" --note "$OUT/logs/bench.note" --budget "$1"
}

# ---- run ------------------------------------------------------------------------------------------
export ROOT OUT DRY VENV PY TORCH_VERSION NPROC SYSPY REPORT TREE DEV_ARGS GPU_VERIFY_ARCH GPU_VERIFY_PREBUILT PIP_ARGS
export -f now system_deps system_nvcc find_cuda_home find_sanitizer step_device step_venv step_build step_pytest step_checks \
  step_sanitizer step_extras step_bench
run_step device 20 1 step_device
run_step venv 240 1 step_venv
if run_step build 240 1 step_build; then
  CUDA_HOME=$(find_cuda_home 2>/dev/null || echo "${CUDA_HOME:-}")
  export CUDA_HOME
  if [ "$DRY" = 1 ]; then
    TREE=${GPU_VERIFY_PREBUILT:-$OUT/tree}
    export PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}"
    DEV_ARGS="--device cpu --tiny"
  fi
  export TREE DEV_ARGS
  # correctness in parallel (nothing here is timed); the benchmark afterwards, alone on the GPU
  pids=()
  run_step pytest 150 1 step_pytest & pids+=($!)
  run_step checks 180 1 step_checks & pids+=($!)
  for tool in memcheck racecheck synccheck; do
    run_step "$tool" 200 1 step_sanitizer "$tool" & pids+=($!)
  done
  run_step extras 150 0 step_extras & pids+=($!)
  for p in "${pids[@]}"; do wait "$p"; done
  left=$((DEADLINE - $(date +%s) - RESERVE - 5))
  run_step bench 180 1 step_bench "$left"
else
  for s in pytest checks memcheck racecheck synccheck extras bench; do
    record "$s" skipped 0 "the build failed" 1
  done
fi
$REPORT finish "$OUT" --seconds "$(( $(date +%s) - T0 ))"
