"""The real CUDA kernels of binary cross entropy with logits (csrc/cuda/bce_kernels.cuh), compiled with
g++ against ../shared/simt and executed on the CPU, compared with the CPU op
torch.ops.smoothing_ext.* on a grid: every input dtype; targets in the input's dtype and in float32;
sizes around the vector width and not multiples of it; weights (C,), (N, 1), scalar, full, (1, C, 1)
and in the input's or the accumulation dtype; pos_weight; the 0-stride upstream gradient of "mean";
inputs whose data start off a 16-byte boundary, with targets that line up with them (vector loads)
or not (element loads); grids smaller than the work (grid-stride loops). The sum kernel (block
partials + the one-block finishing kernel) runs on every case too, against the CPU sum op.

This proves indexing, the broadcast patterns, alignment handling and the numerics of the kernels;
it says nothing about speed or anything only a GPU shows. Also a script:
``python tests/test_bce_simt.py [--lib PATH]`` runs the grid once (the ASan test runs it that way).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "simt"))
import simt_lib  # noqa: E402

pytestmark = pytest.mark.simt

_OK, _WHY = simt_lib.simt_available()
requires_simt = pytest.mark.skipif(not _OK, reason=f"simt runtime unavailable: {_WHY}")


def build(asan: bool = False) -> str:
    """Compile tests/simt/bce_harness.cpp (cached); the .so path."""
    return simt_lib.build(asan=asan, harness="bce_harness.cpp", kernels="bce_kernels.cuh", math_header="bce_math.h",
                          name="bce")


class Operand(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("inner", ctypes.c_int64), ("period", ctypes.c_int64),
                ("is_acc", ctypes.c_int32), ("vec", ctypes.c_int32)]


class BceSimtArgs(ctypes.Structure):
    _fields_ = [
        ("backward", ctypes.c_int32), ("dtype", ctypes.c_int32), ("num_sms", ctypes.c_int32), ("pad_", ctypes.c_int32),
        ("x", ctypes.c_void_p), ("numel", ctypes.c_int64),
        ("target", Operand), ("weight", Operand), ("pos_weight", Operand), ("grad", Operand),
        ("eps", ctypes.c_double), ("out", ctypes.c_void_p),
        ("head", ctypes.c_int64), ("out_vec", ctypes.c_int32), ("target_vec", ctypes.c_int32),
    ]


class BceSimt:
    """The kernels under simt (forward, backward, sum). Operands are (tensor, inner, period) with the tensor's data in
    the layout bce::Operand describes, or None."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.bce_simt_run.argtypes = [ctypes.POINTER(BceSimtArgs)]
        self.lib.bce_simt_run.restype = ctypes.c_int

    def run(self, backward, x, target, weight=None, pos_weight=None, grad=None, eps=0.0, num_sms=132):
        """backward: 0 forward, 1 backward, 2 sum (a 1-element result)."""
        import torch

        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        a = BceSimtArgs()
        a.backward = int(backward)
        a.dtype = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}[x.dtype]
        a.num_sms = num_sms
        a.x = x.data_ptr()  # may start off a 16-byte boundary: the kernel must cope
        a.numel = x.numel()
        for name, op in (("target", target), ("weight", weight), ("pos_weight", pos_weight), ("grad", grad)):
            if op is not None:
                t, inner, period = op
                assert t.dtype in (acc, x.dtype)
                setattr(a, name, Operand(t.data_ptr(), inner, period, int(t.dtype == acc), 0))
        a.eps = eps
        # NaN-filled: an element a kernel forgets to write shows up as a mismatch
        out = torch.full(x.shape if backward != 2 else (1,), float("nan"), dtype=x.dtype if backward == 1 else acc)
        a.out = out.data_ptr()
        rc = self.lib.bce_simt_run(ctypes.byref(a))
        if rc != 0:
            raise RuntimeError(f"bce_simt_run failed with code {rc}")
        return out, dict(head=a.head, out_vec=a.out_vec, target_vec=a.target_vec)


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------

DTYPES = ["float32", "float64", "float16", "bfloat16"]
SHAPES = [(1,), (7,), (8,), (9,), (3, 31), (4, 32), (5, 33), (6, 1000), (2, 4099), (3, 5, 7)]
WEIGHTS = ["none", "C", "N1", "scalar", "full", "1C1"]


def grid_cases(quick: bool = False):
    cases, i = [], 0
    for dt in DTYPES:
        for shape in SHAPES:
            for wk in WEIGHTS:
                if wk == "1C1" and len(shape) != 3:
                    continue
                if quick and shape[-1] > 100 and wk not in ("C", "full"):
                    continue
                i += 1
                cases.append(dict(
                    name=f"{dt}-{'x'.join(map(str, shape))}-w{wk}-{i}", dtype=dt, shape=shape, wkind=wk, seed=i,
                    pos_weight=i % 2 == 0,
                    eps=[0.0, 0.1, 1.0][i % 3],
                    misalign=i % 3,            # 0 aligned; 1 x and target off by one element; 2 only target
                    target_acc=i % 4 == 1,     # a float32 target with a reduced-precision input
                    weight_acc=i % 5 != 0,     # weights in the accumulation dtype (else the input's)
                    grad_mean=i % 2 == 1,      # 0-stride upstream gradient, as "mean" hands over
                    num_sms=1 if i % 4 == 3 else 132,
                ))
    return cases


def _offset_copy(t, offset):
    """Same values, data starting `offset` elements into a fresh buffer (off a 16-byte boundary)."""
    import torch

    buf = torch.empty(t.numel() + offset, dtype=t.dtype)
    buf[offset:] = t.reshape(-1)
    return buf[offset:].view(t.shape)


def make_case(cfg):
    import torch

    dtype = getattr(torch, cfg["dtype"])
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(cfg["seed"])
    shape = cfg["shape"]
    numel = 1
    for s in shape:
        numel *= s
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)
    x.view(-1)[:: 11] = 40.0  # large logits too (tiny loss / gradient terms)
    x.view(-1)[5:: 13] = -40.0
    tdt = acc if (cfg["target_acc"] or dtype == torch.float64) else dtype
    t = torch.rand(shape, generator=gen, dtype=torch.float64).to(tdt)
    t.view(-1)[:: 3] = torch.randint(0, 2, t.view(-1)[:: 3].shape, generator=gen).to(tdt)
    if cfg["misalign"] in (1, 2):
        t = _offset_copy(t, 1 if cfg["misalign"] == 1 else 2)
    if cfg["misalign"] == 1:
        x = _offset_copy(x, 1)
    wdt = acc if cfg["weight_acc"] else dtype
    N = shape[0] if len(shape) > 1 else 1
    C = shape[1] if len(shape) > 1 else shape[0]
    wk = cfg["wkind"]
    # (tensor passed to the CPU op, (data, inner, period) passed to the kernel)
    if wk == "none":
        w, w_op = None, None
    elif wk == "C":  # (last dim,): inner 1, period = last dim
        w = torch.rand(shape[-1], generator=gen, dtype=torch.float64).to(wdt) + 0.5
        w_op = (w, 1, shape[-1])
    elif wk == "N1":  # one value per leading index
        w = torch.rand((N,) + (1,) * (len(shape) - 1), generator=gen, dtype=torch.float64).to(wdt) + 0.5
        w_op = (w, numel // N, N)
    elif wk == "scalar":
        w = torch.rand((), generator=gen, dtype=torch.float64).to(wdt) + 0.5
        w_op = (w, numel, 1)
    elif wk == "full":
        w = torch.rand(shape, generator=gen, dtype=torch.float64).to(wdt)
        w_op = (w, 1, numel)
    else:  # "1C1": (C, 1) over (N, C, H)
        w = torch.rand((C, 1), generator=gen, dtype=torch.float64).to(wdt) + 0.5
        w_op = (w, shape[2], C)
    pw, pw_op = None, None
    if cfg["pos_weight"]:
        pw = (torch.rand(shape[-1], generator=gen, dtype=torch.float64) * 3).to(wdt)
        pw_op = (pw, 1, shape[-1])
    if cfg["grad_mean"]:
        g1 = torch.tensor([1.0 / numel], dtype=acc)
        g = g1.expand(shape) if shape else g1.view(())
        g_op = (g1, numel, 1)
    else:
        g = torch.rand(shape, generator=gen, dtype=torch.float64).to(acc) + 0.25
        g_op = (g, 1, numel)
    return dtype, acc, x, t, (w, w_op), (pw, pw_op), (g, g_op)


def _tol(dtype, backward):
    import torch

    if dtype == torch.float64:
        return dict(rtol=1e-12, atol=1e-13)
    if not backward or dtype == torch.float32:  # accumulation-dtype results: libm vs vectorized exp/log1p
        return dict(rtol=4e-6, atol=1e-6)
    # gradients rounded to bfloat16 / float16: one rounding step apart at most
    return dict(rtol=1.6e-2, atol=1e-4) if dtype == torch.bfloat16 else dict(rtol=2e-3, atol=1e-5)


def _sum_tol(dtype):
    import torch

    # the same losses added in another order (and libm vs vectorized exp/log1p in float32)
    return dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)


def run_case(kern: BceSimt, cfg) -> tuple[list[str], list[dict]]:
    """Mismatch descriptions (empty: pass) and the plans the launcher chose."""
    import torch

    ops = torch.ops.smoothing_ext
    dtype, acc, x, t, (w, w_op), (pw, pw_op), (g, g_op) = make_case(cfg)
    eps, sms = cfg["eps"], cfg["num_sms"]
    errs, plans = [], []
    numel = x.numel()
    t_op = (t, 1, numel)

    def check(what, got, want, tol):
        try:
            torch.testing.assert_close(got, want, equal_nan=False, **tol)
        except AssertionError as e:
            errs.append(f"{cfg['name']}: {what}: {str(e).splitlines()[0:5]}")

    loss, plan = kern.run(False, x, t_op, w_op, pw_op, None, eps, num_sms=sms)
    plans.append(plan)
    ref = ops.binary_cross_entropy_with_logits_forward(x, t, w, pw, eps)
    check("loss", loss, ref, _tol(dtype, False))
    total, _ = kern.run(2, x, t_op, w_op, pw_op, None, eps, num_sms=sms)
    sref = ops.binary_cross_entropy_with_logits_sum(x, t, w, pw, eps)
    check("sum", total.view(()), sref, _sum_tol(dtype))
    grad, plan = kern.run(True, x, t_op, w_op, pw_op, g_op, eps, num_sms=sms)
    plans.append(plan)
    gref = ops._binary_cross_entropy_with_logits_backward(g, x, t, w, pw, eps)
    check("grad", grad, gref, _tol(dtype, True))
    return errs, plans


def run_grid(lib: str, quick: bool = False) -> tuple[int, list[str], list[dict]]:
    import torch  # noqa: F401
    import smoothing_ext  # noqa: F401  (registers torch.ops.smoothing_ext, the CPU reference)

    kern = BceSimt(lib)
    errs, plans, n = [], [], 0
    for cfg in grid_cases(quick):
        e, p = run_case(kern, cfg)
        errs += e
        plans += p
        n += 1
    return n, errs, plans


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lib():
    if not _OK:
        pytest.skip(f"simt runtime unavailable: {_WHY}")
    return build(asan=False)


@requires_simt
def test_simt_grid(lib):
    n, errs, plans = run_grid(lib)
    assert not errs, "\n".join(errs[:20])
    assert n > 200
    # both sides of every alignment decision were exercised
    assert any(p["head"] > 0 for p in plans) and any(p["head"] == 0 for p in plans)
    assert any(p["target_vec"] for p in plans) and any(not p["target_vec"] for p in plans)
    assert any(p["out_vec"] for p in plans) and any(not p["out_vec"] for p in plans)


@requires_simt
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("num_sms", [1, 3, 132])
@pytest.mark.parametrize("misalign", [0, 1])
def test_simt_sum_large(lib, dtype, num_sms, misalign):
    """Many blocks (and, with 1 SM, few blocks looping over many groups): the partials and the
    finishing kernel, against the CPU sum op; bit-identical across runs."""
    import torch
    import smoothing_ext  # noqa: F401

    kern = BceSimt(lib)
    dt = getattr(torch, dtype)
    acc = torch.float64 if dt == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(31 + num_sms)
    shape = (3, 20011)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dt)
    t = torch.rand(shape, generator=gen, dtype=torch.float64).to(dt)
    w = torch.rand(shape[-1], generator=gen, dtype=torch.float64).to(acc)
    if misalign:
        x, t = _offset_copy(x, 1), _offset_copy(t, 3)
    n = x.numel()
    args = (x, (t, 1, n), (w, 1, shape[-1]), None, None, 0.1)
    got, plan = kern.run(2, *args, num_sms=num_sms)
    assert (plan["head"] > 0) == bool(misalign)  # the scalar head path ran (or not)
    ref = torch.ops.smoothing_ext.binary_cross_entropy_with_logits_sum(x, t, w, None, 0.1)
    torch.testing.assert_close(got.view(()), ref, **_sum_tol(dt))
    again, _ = kern.run(2, *args, num_sms=num_sms)
    assert torch.equal(again, got)


@requires_simt
@pytest.mark.slow
@pytest.mark.parametrize("sched", ["rev", "rand"])
def test_simt_grid_other_schedules(lib, sched):
    """Another thread order (simt reads SIMT_SCHED once per process: a subprocess). The kernel has no
    shared memory or barriers, so any order must give the same answers."""
    _run_script({"SIMT_SCHED": sched}, ["--lib", lib, "--quick"])


@requires_simt
@pytest.mark.slow
def test_simt_grid_asan():
    rt = simt_lib.asan_runtime()
    if rt is None:
        pytest.skip("libasan not found (g++ -print-file-name=libasan.so)")
    path = build(asan=True)
    # The sanitizer runtime must come first in a process that is not itself instrumented (python).
    _run_script({"LD_PRELOAD": rt, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
                 "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}, ["--lib", path, "--quick"])


def _run_script(env_extra, args):
    env = dict(os.environ)
    env.update(env_extra)
    env.setdefault("SIMT_QUIET", "1")
    r = subprocess.run([sys.executable, os.path.abspath(__file__), *args], env=env, capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    summary = [ln for ln in out.splitlines() if ln.startswith("bce simt grid:")]
    print("\n".join(summary) or out[-3000:])
    assert r.returncode == 0, out[-8000:]
    assert summary and " 0 mismatches" in summary[0], out[-8000:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lib", help="path of an already built harness library")
    ap.add_argument("--quick", action="store_true", help="a smaller grid")
    args = ap.parse_args(argv)
    if not _OK:
        print("SKIP:", _WHY)
        return 0
    n, errs, _ = run_grid(args.lib or build(), quick=args.quick)
    print(f"bce simt grid: {n} cases, {len(errs)} mismatches, SIMT_SCHED={os.environ.get('SIMT_SCHED', 'fwd')}")
    for e in errs:
        print("MISMATCH", e)
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
