#!/usr/bin/env bash
# Build one release wheel of smoothing_ext for a compute platform and a torch version.
#
#   packaging/build_wheel.sh <platform> <torch-version>
#     platform       cpu | cu126 | cu128 | cu130
#     torch-version  e.g. 2.14.1 (exact) or 2.14 (newest 2.14.x pip finds)
#
# Result: dist/smoothing_ext-0.1.0+<platform>torch<X.Y>-<python tag>-linux_x86_64.whl, whose metadata
# carries that local version label and `Requires-Dist: torch>=X.Y,<X.Y+1`, checked by
# packaging/check_wheel.py (no build leftovers, no copy of torch's libraries; for CUDA wheels the
# SASS of every architecture when cuobjdump is available). The last line printed is the wheel's path.
#
# Environment (all optional):
#   USE_CURRENT_ENV=1     build with the current `python` (or $PYTHON) instead of creating a build
#                         venv: its torch must be the requested one; needs setuptools, wheel, ninja
#   BUILD_VENV=DIR        the build venv (default /tmp/smoothing_ext-build-<platform>-torch<version>);
#                         reused when it already has the requested torch
#   TORCH_INDEX_URL=URL   where pip gets torch, e.g. https://download.pytorch.org/whl/cu126
#                         (default: pip's configured index; PyPI's torch is the cu12x/cu130 default build)
#   TORCH_CUDA_ARCH_LIST  override the platform's release architecture list (below)
#   CUDA_HOME             CUDA toolkit of the platform's version (default /usr/local/cuda)
#   OUT_DIR=DIR           where the wheel goes (default <repo>/dist)
#   BUILD_TREE=DIR        build in DIR, a copy of this tree that was built before with the same
#                         configuration (the test suite's CUDA build): its sources are refreshed from
#                         the repository and its build/ is kept, so ninja recompiles only what changed
#                         (default: a fresh staging copy, removed afterwards)
#   MAX_JOBS=N            parallel compile jobs (default 2)
#   NVCC_THREADS=N        nvcc --threads: architectures compiled in parallel per .cu file (default MAX_JOBS)
#   PYTHON=python3.X      interpreter for the build venv (default python3; with USE_CURRENT_ENV=1 the
#                         interpreter to build with, default `python`)
#
# Architecture lists (TORCH_CUDA_ARCH_LIST) per platform; "+PTX" also embeds PTX of the last one so
# that newer GPUs JIT-compile it:
#   cu126  7.5;8.0;8.6;8.9;9.0+PTX               nvcc 12.6 stops at sm_90/90a (no sm_100/sm_120): Blackwell
#                                                runs the compute_90 PTX through the driver's JIT
#   cu128  7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX     nvcc 12.8 adds sm_100/101/120
#   cu130  7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX     nvcc 13.0 supports sm_75..sm_121 (drops sm_50..sm_72)
# sm_75 (T4, RTX 20xx) is the oldest architecture CUDA 13 still compiles for; sm_70 and older need a
# source build with CUDA 12 (TORCH_CUDA_ARCH_LIST=7.0). Each architecture adds only the kernel files'
# device compilation (csrc/cuda/*.cu hold no ATen code), a few seconds per file and arch.
set -euo pipefail

usage() { sed -n '2,12p' "$0" >&2; exit 2; }
[ $# -eq 2 ] || usage
PLATFORM=$1
TORCH_VERSION=$2
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

case "$PLATFORM" in
  cpu)   DEFAULT_ARCHS="";                                  CUDA_MM="" ;;
  cu126) DEFAULT_ARCHS="7.5;8.0;8.6;8.9;9.0+PTX";           CUDA_MM="12.6" ;;
  cu128) DEFAULT_ARCHS="7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"; CUDA_MM="12.8" ;;
  cu130) DEFAULT_ARCHS="7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"; CUDA_MM="13.0" ;;
  *) echo "build_wheel.sh: unknown platform '$PLATFORM' (cpu, cu126, cu128, cu130)" >&2; exit 2 ;;
esac
if ! [[ "$TORCH_VERSION" =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]]; then
  echo "build_wheel.sh: torch version must look like 2.14 or 2.14.1, got '$TORCH_VERSION'" >&2; exit 2
fi
TORCH_MINOR=$(echo "$TORCH_VERSION" | cut -d. -f1-2)
if [ "$TORCH_VERSION" = "$TORCH_MINOR" ]; then TORCH_SPEC="torch==${TORCH_MINOR}.*"; else TORCH_SPEC="torch==${TORCH_VERSION}"; fi
OUT_DIR=${OUT_DIR:-$ROOT/dist}
export MAX_JOBS=${MAX_JOBS:-2}
log() { echo "[build_wheel $PLATFORM torch $TORCH_VERSION] $*" >&2; }

# ---- 1. the build environment: python with the requested torch ----------------------------------
if [ "${USE_CURRENT_ENV:-0}" = "1" ]; then
  PY=$(command -v "${PYTHON:-python}")
  log "using the current environment: $PY"
else
  VENV=${BUILD_VENV:-/tmp/smoothing_ext-build-$PLATFORM-torch$TORCH_VERSION}
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating build venv $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  PY=$VENV/bin/python
  if ! "$PY" -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(not (v == '$TORCH_VERSION' or v.startswith('$TORCH_MINOR.') and '$TORCH_VERSION' == '$TORCH_MINOR'))" 2>/dev/null; then
    log "installing $TORCH_SPEC${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
    "$PY" -m pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC" >&2
  fi
  "$PY" -m pip install -q setuptools wheel ninja >&2
fi

# The torch we build against must be the one asked for, of the platform asked for.
"$PY" - "$PLATFORM" "$TORCH_VERSION" "$CUDA_MM" <<'EOF' >&2
import sys, torch
platform, want, cuda_mm = sys.argv[1:]
have = torch.__version__.split("+")[0]
if not (have == want or (want.count(".") == 1 and have.startswith(want + "."))):
    sys.exit("build_wheel.sh: the build environment has torch %s, %s was requested" % (torch.__version__, want))
if cuda_mm and torch.version.cuda != cuda_mm:
    sys.exit("build_wheel.sh: platform %s needs a CUDA %s build of torch, this torch (%s) has CUDA %s "
             "(set TORCH_INDEX_URL=https://download.pytorch.org/whl/%s)"
             % (platform, cuda_mm, torch.__version__, torch.version.cuda, platform))
if not cuda_mm and torch.version.cuda:
    print("build_wheel.sh: note: building the CPU wheel against %s (a CUDA %s build): fine, the CPU "
          "kernels use only libtorch's CPU ABI, which is the same in every %s.x variant"
          % (torch.__version__, torch.version.cuda, ".".join(want.split(".")[:2])))
EOF

# ---- 2. the configuration setup.py reads -------------------------------------------------------
export SMOOTHING_EXT_LOCAL_VERSION="${PLATFORM}torch${TORCH_MINOR}"
unset SMOOTHING_EXT_DEBUG
if [ "$PLATFORM" = cpu ]; then
  export FORCE_CPU=1; unset FORCE_CUDA TORCH_CUDA_ARCH_LIST
else
  export FORCE_CUDA=1; unset FORCE_CPU
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$DEFAULT_ARCHS}
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
  [ -x "$CUDA_HOME/bin/nvcc" ] || { echo "build_wheel.sh: no nvcc in CUDA_HOME=$CUDA_HOME" >&2; exit 1; }
  NVCC_MM=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
  if [ "${NVCC_MM%%.*}" != "${CUDA_MM%%.*}" ]; then
    echo "build_wheel.sh: $PLATFORM needs a CUDA ${CUDA_MM%%.*}.x toolkit, CUDA_HOME=$CUDA_HOME has nvcc $NVCC_MM" >&2; exit 1
  fi
  [ "$NVCC_MM" = "$CUDA_MM" ] || log "note: nvcc $NVCC_MM builds the $PLATFORM wheel (torch has CUDA $CUDA_MM)"
  # nvcc compiles the -gencode targets of one file one after the other unless told otherwise
  # (build time only: the code is the same). NVCC_APPEND_FLAGS is read by nvcc itself.
  export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }--threads ${NVCC_THREADS:-$MAX_JOBS}"
  log "archs: $TORCH_CUDA_ARCH_LIST, CUDA_HOME=$CUDA_HOME (nvcc $NVCC_MM, NVCC_APPEND_FLAGS=$NVCC_APPEND_FLAGS)"
fi

# ---- 3. a clean copy of the sources: no build/, *.egg-info, in-place _C*.so or _build_info.py -----
STAGE=$(mktemp -d /tmp/smoothing_ext-stage.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
SRC=$STAGE/src
if [ -n "${BUILD_TREE:-}" ]; then
  [ -f "$BUILD_TREE/setup.py" ] || { echo "build_wheel.sh: BUILD_TREE=$BUILD_TREE is not a copy of the tree" >&2; exit 1; }
  SRC=$(cd "$BUILD_TREE" && pwd)
  log "building in $SRC (its build/ reused)"
fi
"$PY" - "$ROOT" "$SRC" <<'EOF'
import fnmatch, os, shutil, subprocess, sys
root, dest = sys.argv[1:]
skip = [".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o", "*.whl", "_build_info.py",
        ".venv", "venv", ".pytest_cache", "build-*"]
def skipped(rel):
    return any(fnmatch.fnmatch(part, pat) for part in rel.split("/") for pat in skip)
try:  # what git would commit (tracked + untracked-not-ignored files): exactly the source
    out = subprocess.run(["git", "-C", root, "ls-files", "-co", "--exclude-standard", "-z"],
                         check=True, capture_output=True).stdout.decode()
    files = [f for f in out.split("\0") if f and os.path.isfile(os.path.join(root, f))]
except (OSError, subprocess.CalledProcessError):
    files = []
if files:
    for f in files:
        if not skipped(f):
            os.makedirs(os.path.join(dest, os.path.dirname(f)), exist_ok=True)
            shutil.copy2(os.path.join(root, f), os.path.join(dest, f))
else:  # not a git checkout (an unpacked sdist): copy everything but build products
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns(*skip), dirs_exist_ok=True)
EOF

# ---- 4. build ------------------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
WHEEL_DIR="$STAGE/wheel"
log "building (MAX_JOBS=$MAX_JOBS, version 0.1.0+$SMOOTHING_EXT_LOCAL_VERSION)"
( cd "$SRC" && "$PY" -m pip wheel --no-build-isolation --no-deps -w "$WHEEL_DIR" . ) >&2
WHEEL=$(ls "$WHEEL_DIR"/smoothing_ext-*.whl)

# ---- 5. check it, then publish it to OUT_DIR ----------------------------------------------------
CHECK_ARGS=(--platform "$PLATFORM" --torch "$TORCH_MINOR")
if [ "$PLATFORM" != cpu ]; then CHECK_ARGS+=(--archs "$TORCH_CUDA_ARCH_LIST"); fi
"$PY" "$ROOT/packaging/check_wheel.py" "$WHEEL" "${CHECK_ARGS[@]}" >&2
cp "$WHEEL" "$OUT_DIR/"
echo "$OUT_DIR/$(basename "$WHEEL")"
