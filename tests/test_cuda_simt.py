"""The real CUDA kernels (csrc/cuda/cross_entropy_kernels.cuh), compiled with g++ against
../shared/simt and executed on the CPU, compared with the CPU op torch.ops.smoothing_ext.* on a grid:
every dtype; C in {1, 2, 3, 31, 32, 33, 1000, 1023, 4097, 32003, 128256}; rows whose start is not
16-byte aligned; ignored rows; weights; grad_lse; probability targets; K-dim inputs; few rows with huge
C (split rows + combine kernel); grids smaller than the work; ties at the maximum; confident rows;
-inf logits; out-of-range targets (documented NaN). New arguments and ops, checked against a float64
formula (and the CPU ops once they have them): off_target and softcap (c = 5 on logits large enough to
saturate tanh) on every path; cross_entropy_fused with z-loss, a device grad_scale, ignored rows,
weights and split rows, and cross_entropy_fused_ on a copy of x, which must match the out-of-place
result bit for bit (an in-place read-after-overwrite shows up there, under SIMT_SCHED=rev/rand
especially); _scale_grad_rows_, whose rows with factor 1 hold signaling NaNs and must come back
bit-identical. Each schedule runs in its own process because the simt runtime reads SIMT_SCHED once.
The grid itself is tests/simt/simt_lib.py (also a script).

This proves indexing, reductions, barriers/shuffles, alignment handling and the numerics of the
kernels; it says nothing about speed, occupancy or anything only a GPU shows.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "simt"))
import simt_lib  # noqa: E402

pytestmark = pytest.mark.simt

_OK, _WHY = simt_lib.simt_available()
requires_simt = pytest.mark.skipif(not _OK, reason=f"simt runtime unavailable: {_WHY}")
SCRIPT = os.path.join(HERE, "simt", "simt_lib.py")


def _run_grid(env_extra, args):
    env = dict(os.environ)
    env.update(env_extra)
    env.setdefault("SIMT_QUIET", "1")
    # The script imports the installed smoothing_ext (the CPU reference), never the source tree.
    r = subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    summary = [ln for ln in out.splitlines() if ln.startswith("simt grid:")]
    print("\n".join(summary) or out[-3000:])
    assert r.returncode == 0, out[-8000:]
    assert summary and " 0 mismatches" in summary[0], out[-8000:]


@pytest.fixture(scope="module")
def lib():
    if not _OK:
        pytest.skip(f"simt runtime unavailable: {_WHY}")
    return simt_lib.build(asan=False)


@requires_simt
@pytest.mark.parametrize("sched", ["fwd", pytest.param("rev", marks=pytest.mark.slow),
                                   pytest.param("rand", marks=pytest.mark.slow)])
def test_simt_grid(lib, sched):
    _run_grid({"SIMT_SCHED": sched}, ["--lib", lib])


@requires_simt
@pytest.mark.slow
def test_simt_grid_asan():
    rt = simt_lib.asan_runtime()
    if rt is None:
        pytest.skip("libasan not found (g++ -print-file-name=libasan.so)")
    path = simt_lib.build(asan=True)
    # The sanitizer runtime must come first in a process that is not itself instrumented (python).
    _run_grid({"LD_PRELOAD": rt, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
               "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}, ["--asan", "--lib", path])


@requires_simt
def test_launch_plan(lib):
    """The decomposition the grid relies on: group/warp/block per row, split rows for few long rows."""
    k = simt_lib.SimtKernels(lib)
    assert k.plan(8192, 32, 1, 4, 132)["kind"] == "group8"
    assert k.plan(8192, 1000, 1, 2, 132)["kind"] == "warp"
    big = k.plan(8192, 128256, 1, 2, 132)
    assert big["kind"] == "block" and big["splits"] == 1
    few = k.plan(64, 128256, 1, 2, 132)  # 64 rows on 132 SMs: each row split across blocks
    assert few["kind"] == "block" and few["splits"] > 1 and few["blocks"] >= 132
    assert k.plan(3 * 4 * 7, 33, 28, 4, 132)["kind"] == "strided"
    # the grid's split cases really split, and the 1-SM cases really loop
    assert k.plan(3, 128256, 1, 2, 132)["splits"] > 1
    assert k.plan(2500, 3, 1, 4, 1)["blocks"] * 256 // 8 < 2500
