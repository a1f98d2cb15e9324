"""Build and drive the simt harness (tests/simt/harness.cpp): the real CUDA kernels of
csrc/cuda/cross_entropy_kernels.cuh compiled with g++ against ../shared/simt and run on the CPU.

Also a script: ``python tests/simt/simt_lib.py [--quick]`` runs the comparison grid against the CPU
op ``torch.ops.smoothing_ext.*`` once (under whatever SIMT_SCHED is set) and exits non-zero on a
mismatch. ``--asan`` builds the library with AddressSanitizer/UBSan (the process then needs
``LD_PRELOAD=$(g++ -print-file-name=libasan.so)``; tests/test_cuda_simt.py does that).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def simt_include() -> str:
    return os.environ.get("SIMT_INCLUDE", os.path.join(REPO, "..", "shared", "simt", "include"))


def simt_available() -> tuple[bool, str]:
    inc = simt_include()
    if not os.path.isfile(os.path.join(inc, "simt_cpu.h")):
        return False, f"simt runtime not found at {os.path.abspath(inc)} (set SIMT_INCLUDE)"
    for tool in ("g++",):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return False, f"{tool} not found"
    return True, ""


def asan_runtime() -> str | None:
    out = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


def build_dir() -> str:
    d = os.environ.get("SMOOTHING_EXT_SIMT_BUILD") or os.path.join(
        tempfile.gettempdir(), f"smoothing_ext_simt_{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(d, exist_ok=True)
    return d


def build(asan: bool = False) -> str:
    """Compile the harness (cached by a hash of the sources and flags); returns the .so path."""
    inc = simt_include()
    srcs = [
        os.path.join(HERE, "harness.cpp"),
        os.path.join(REPO, "csrc", "cuda", "cross_entropy_kernels.cuh"),
        os.path.join(REPO, "csrc", "include", "smoothing_ext", "xent_math.h"),
        os.path.join(inc, "simt_cpu.h"),
    ]
    flags = ["-std=c++17", "-g", "-fno-strict-aliasing", "-DSIMT_CPU", "-fPIC", "-shared", "-pthread",
             "-Wall", "-Wno-unknown-pragmas"]
    if asan:
        flags += ["-O1", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    else:
        flags += ["-O2"]
    h = hashlib.sha256()
    for s in srcs:
        with open(s, "rb") as f:
            h.update(f.read())
    h.update(" ".join(flags).encode())
    out = os.path.join(build_dir(), f"libxent_simt_{'asan_' if asan else ''}{h.hexdigest()[:12]}.so")
    if os.path.exists(out):
        return out
    cmd = ["g++", *flags, f"-I{inc}", f"-I{os.path.join(REPO, 'csrc')}", f"-I{os.path.join(REPO, 'csrc', 'include')}",
           srcs[0], "-o", out + ".tmp"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("simt harness build failed:\n" + " ".join(cmd) + "\n" + r.stderr[-6000:])
    os.replace(out + ".tmp", out)
    return out


class SeArgs(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_int32), ("dtype", ctypes.c_int32), ("num_sms", ctypes.c_int32), ("pad_", ctypes.c_int32),
        ("x", ctypes.c_void_p), ("target", ctypes.c_void_p), ("y", ctypes.c_void_p), ("weight", ctypes.c_void_p),
        ("weight_sum", ctypes.c_void_p),
        ("N", ctypes.c_int64), ("C", ctypes.c_int64), ("S", ctypes.c_int64), ("ignore_index", ctypes.c_int64),
        ("eps", ctypes.c_double),
        ("loss", ctypes.c_void_p), ("lse", ctypes.c_void_p), ("grad_loss", ctypes.c_void_p),
        ("grad_lse", ctypes.c_void_p), ("lse_in", ctypes.c_void_p), ("grad_input", ctypes.c_void_p),
    ]


class SimtKernels:
    """The four ops, computed by the CUDA kernels under simt, with the CPU op's argument conventions."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.se_run.argtypes = [ctypes.POINTER(SeArgs)]
        self.lib.se_run.restype = ctypes.c_int
        self.lib.se_plan.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]

    def plan(self, rows, C, S, elem_bytes, num_sms):
        out = (ctypes.c_int64 * 4)()
        self.lib.se_plan(rows, C, S, elem_bytes, num_sms, out)
        return dict(kind=["strided", "group8", "warp", "block"][out[0]], threads=out[1], splits=out[2], blocks=out[3])

    @staticmethod
    def _shape(x):
        if x.dim() == 1:
            return 1, x.shape[0], 1, ()
        S = 1
        for d in x.shape[2:]:
            S *= d
        return x.shape[0], x.shape[1], S, (x.shape[0], *x.shape[2:])

    def _call(self, op, x, target_idx=None, y=None, weight=None, ignore_index=-100, eps=0.0, loss=None, lse=None,
              grad_loss=None, grad_lse=None, lse_in=None, grad_input=None, num_sms=132):
        import torch

        assert x.is_contiguous() or x.dim() >= 1
        N, C, S, _ = self._shape(x)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        keep = []  # keeps the converted tensors alive during the call

        def ptr(t):
            if t is None:
                return None
            keep.append(t)
            return t.data_ptr()

        a = SeArgs()
        a.op = op
        a.dtype = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}[x.dtype]
        a.num_sms = num_sms
        a.x = ptr(x)  # may be a misaligned view: the kernels must cope (contiguous, any element offset)
        a.target = ptr(target_idx.to(torch.int64).contiguous()) if target_idx is not None else None
        a.y = ptr(y.to(x.dtype).contiguous()) if y is not None else None
        if weight is not None:
            w = weight.to(acc).contiguous()
            a.weight = ptr(w)
            a.weight_sum = ptr(w.sum(dtype=torch.float64).reshape(1))
        a.N, a.C, a.S, a.ignore_index, a.eps = N, C, S, ignore_index, eps
        a.loss, a.lse, a.grad_input = ptr(loss), ptr(lse), ptr(grad_input)
        a.grad_loss = ptr(grad_loss.to(acc).contiguous()) if grad_loss is not None else None
        a.grad_lse = ptr(grad_lse.to(acc).contiguous()) if grad_lse is not None else None
        a.lse_in = ptr(lse_in.to(acc).contiguous()) if lse_in is not None else None
        rc = self.lib.se_run(ctypes.byref(a))
        if rc != 0:
            raise RuntimeError(f"se_run failed with code {rc}")

    def _outputs(self, x):
        import torch

        _, _, _, lshape = self._shape(x)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        # NaN-filled: an element a kernel forgets to write shows up as a mismatch
        return (torch.full(lshape, float("nan"), dtype=acc), torch.full(lshape, float("nan"), dtype=acc))

    def forward(self, x, target, weight, ignore_index, eps, num_sms=132):
        loss, lse = self._outputs(x)
        self._call(0, x, target_idx=target, weight=weight, ignore_index=ignore_index, eps=eps, loss=loss, lse=lse,
                   num_sms=num_sms)
        return loss, lse

    def backward(self, grad_loss, grad_lse, x, target, weight, lse, ignore_index, eps, num_sms=132):
        import torch

        g = torch.full(x.shape, float("nan"), dtype=x.dtype)
        self._call(1, x, target_idx=target, weight=weight, ignore_index=ignore_index, eps=eps, grad_loss=grad_loss,
                   grad_lse=grad_lse, lse_in=lse, grad_input=g, num_sms=num_sms)
        return g

    def prob_forward(self, x, y, weight, eps, num_sms=132):
        loss, lse = self._outputs(x)
        self._call(2, x, y=y, weight=weight, eps=eps, loss=loss, lse=lse, num_sms=num_sms)
        return loss, lse

    def prob_backward(self, grad_loss, grad_lse, x, y, weight, lse, eps, num_sms=132):
        import torch

        g = torch.full(x.shape, float("nan"), dtype=x.dtype)
        self._call(3, x, y=y, weight=weight, eps=eps, grad_loss=grad_loss, grad_lse=grad_lse, lse_in=lse,
                   grad_input=g, num_sms=num_sms)
        return g


# ---------------------------------------------------------------------------------------------
# the comparison grid
# ---------------------------------------------------------------------------------------------

C_VALUES = [1, 2, 3, 31, 32, 33, 1000, 1023, 4097, 32003, 128256]
DTYPES = ["float32", "float64", "float16", "bfloat16"]


def grid_cases(quick: bool = False):
    """(name, dict) cases. quick: a subset for the (slower) ASan build."""
    cases = []
    i = 0
    for dt in DTYPES:
        for C in C_VALUES:
            if quick and C in (32003,) and dt != "bfloat16":
                continue
            N = max(2, min(37, 40000 // C))
            if quick:
                N = max(2, min(9, 20000 // C))
            i += 1
            cases.append((f"index-{dt}-C{C}", dict(kind="index", dtype=dt, N=N, C=C, seed=i,
                                                  weight=i % 2 == 0, eps=[0.0, 0.1, 1.0][i % 3],
                                                  grad_lse=i % 2 == 1, misalign=i % 4 in (1, 2))))
            cases.append((f"prob-{dt}-C{C}", dict(kind="prob", dtype=dt, N=N, C=C, seed=1000 + i,
                                                 weight=i % 2 == 1, eps=[0.1, 0.0, 1.0][i % 3],
                                                 grad_lse=i % 2 == 0, misalign=i % 4 in (0, 3))))
    for dt in DTYPES:
        # K-dim (N, C, d1, d2): threads across the spatial positions, no transpose
        for C, spatial in ((5, (4, 7)), (33, (3, 11)), (300, (2, 5))):
            if quick and C == 300 and dt not in ("float32",):
                continue
            i += 1
            for kind in ("index", "prob"):
                cases.append((f"{kind}-kdim-{dt}-C{C}-S{spatial}", dict(kind=kind, dtype=dt, N=3, C=C, spatial=spatial,
                                                                        seed=i, weight=True, eps=0.1, grad_lse=True,
                                                                        misalign=False)))
        # few rows, huge C: split rows + combine kernel (and with 1 SM: no split, block per row)
        i += 1
        cases.append((f"index-split-{dt}", dict(kind="index", dtype=dt, N=3, C=128256 if not quick else 40000,
                                                seed=i, weight=True, eps=0.1, grad_lse=True, misalign=True)))
        cases.append((f"prob-split-{dt}", dict(kind="prob", dtype=dt, N=2, C=70001 if not quick else 30001,
                                               seed=i + 50, weight=True, eps=0.1, grad_lse=True, misalign=True)))
        cases.append((f"index-nosplit-1sm-{dt}", dict(kind="index", dtype=dt, N=5, C=20000, seed=i + 60, weight=False,
                                                      eps=0.1, grad_lse=False, misalign=False, num_sms=1)))
        # many rows, tiny C, a grid smaller than the work (grid-stride loops)
        cases.append((f"index-loop-1sm-{dt}", dict(kind="index", dtype=dt, N=2500, C=3, seed=i + 70, weight=True,
                                                   eps=0.2, grad_lse=True, misalign=True, num_sms=1)))
        cases.append((f"index-loop-warp-1sm-{dt}", dict(kind="index", dtype=dt, N=700, C=100, seed=i + 80,
                                                        weight=False, eps=0.2, grad_lse=False, misalign=False,
                                                        num_sms=1)))
        # 1-D input (C,)
        cases.append((f"index-1d-{dt}", dict(kind="index", dtype=dt, N=None, C=77, seed=i + 90, weight=True, eps=0.3,
                                             grad_lse=True, misalign=True)))
        # integer logits: many ties at the maximum; confident rows
        cases.append((f"index-ties-{dt}", dict(kind="index", dtype=dt, N=20, C=515, seed=i + 100, weight=False,
                                               eps=0.0, grad_lse=False, misalign=False, ties=True)))
        cases.append((f"index-confident-{dt}", dict(kind="index", dtype=dt, N=16, C=5000, seed=i + 110, weight=False,
                                                    eps=0.0, grad_lse=False, misalign=False, confident=True)))
    # -inf logits (eps = 0: no 0 * inf), out-of-range targets (documented NaN)
    cases.append(("index-neginf-float32", dict(kind="index", dtype="float32", N=12, C=300, seed=7, weight=False,
                                               eps=0.0, grad_lse=False, misalign=False, neginf=True)))
    cases.append(("index-bad-target-float32", dict(kind="index", dtype="float32", N=12, C=300, seed=8, weight=True,
                                                   eps=0.1, grad_lse=True, misalign=False, bad_target=True)))
    cases.append(("index-bad-target-kdim-bfloat16", dict(kind="index", dtype="bfloat16", N=3, C=30, spatial=(5,),
                                                         seed=9, weight=False, eps=0.1, grad_lse=False,
                                                         misalign=False, bad_target=True)))
    return cases


def _tol(dtype):
    import torch

    return {
        torch.float32: dict(rtol=2e-5, atol=2e-5),
        torch.float64: dict(rtol=1e-11, atol=1e-11),
        torch.float16: dict(rtol=2e-3, atol=2e-5),
        torch.bfloat16: dict(rtol=1.6e-2, atol=1e-4),
    }[dtype]


def _acc_tol(dtype):
    import torch

    if dtype == torch.float64:
        return dict(rtol=1e-11, atol=1e-10)
    return dict(rtol=2e-5, atol=1e-4)


def make_inputs(cfg):
    import torch

    dtype = getattr(torch, cfg["dtype"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    C = cfg["C"]
    N = cfg["N"]
    spatial = tuple(cfg.get("spatial", ()))
    shape = (C,) if N is None else (N, C, *spatial)
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
    if cfg.get("ties"):
        x64 = torch.randint(-3, 3, shape, generator=gen).double()
    tshape = () if N is None else (N, *spatial)
    t = torch.randint(0, C, tshape, generator=gen)
    if cfg.get("confident"):
        x64 = torch.randn(shape, generator=gen, dtype=torch.float64)
        x64.view(N, C)[torch.arange(N), t] = 25.0 + torch.arange(N, dtype=torch.float64)
    if cfg.get("neginf"):
        x64.view(-1)[:: 7] = float("-inf")
        flat = x64.view(N, C)
        flat[torch.arange(N), t] = 1.0  # targets stay finite
        flat[3] = float("-inf")  # a whole row of -inf, ignored
    if N is not None and cfg["kind"] == "index" and t.numel() > 1:
        ign = torch.rand(tshape, generator=gen) < 0.2
        t = torch.where(ign, torch.full_like(t, -100), t)
        if cfg.get("neginf"):
            t[3] = -100
    x = x64.to(dtype)
    if cfg.get("misalign"):
        # same values, data pointer one element past a 16-byte boundary: every row misaligned
        buf = torch.empty(x.numel() + 1, dtype=dtype)
        buf[1:] = x.reshape(-1)
        x = buf[1:].view(x.shape)
    w = (torch.rand(C, generator=gen, dtype=torch.float64) + 0.5).to(dtype) if cfg["weight"] else None
    y = None
    if cfg["kind"] == "prob":
        y = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), dim=0 if N is None else 1).to(dtype)
        if cfg.get("misalign"):
            buf = torch.empty(y.numel() + 2, dtype=dtype)
            buf[2:] = y.reshape(-1)  # a different misalignment from x: scalar target loads
            y = buf[2:].view(y.shape)
    lshape = tshape
    g = torch.rand(lshape, generator=gen, dtype=torch.float64) + 0.25
    gl = (torch.randn(lshape, generator=gen, dtype=torch.float64) * 0.5) if cfg["grad_lse"] else None
    return x, t, y, w, g, gl


def run_case(kern: SimtKernels, name: str, cfg) -> list[str]:
    """Returns a list of mismatch descriptions (empty: pass)."""
    import torch

    ops = torch.ops.smoothing_ext
    x, t, y, w, g, gl = make_inputs(cfg)
    eps = cfg["eps"]
    sms = cfg.get("num_sms", 132)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    errs = []

    def check(what, got, want, tol):
        try:
            torch.testing.assert_close(got, want, equal_nan=True, **tol)
        except AssertionError as e:
            errs.append(f"{name}: {what}: {str(e).splitlines()[0:4]}")

    if cfg["kind"] == "index":
        bad_rows = None
        t_ref = t
        if cfg.get("bad_target"):
            flat = t.view(-1)
            bad_rows = torch.tensor([1, flat.numel() - 1])
            flat[bad_rows[0]] = cfg["C"] + 3
            flat[bad_rows[1]] = -5
            t_ref = t.clone()
            t_ref.view(-1)[bad_rows] = -100  # the CPU raises; compare the other rows with those ignored
        loss, lse = kern.forward(x, t, w, -100, eps, num_sms=sms)
        rloss, rlse = ops.cross_entropy_forward(x.contiguous(), t_ref, w, -100, eps)
        if bad_rows is not None:
            if not torch.isnan(loss.view(-1)[bad_rows]).all():
                errs.append(f"{name}: out-of-range target rows must have NaN loss, got {loss.view(-1)[bad_rows]}")
            keep = torch.ones(loss.numel(), dtype=torch.bool)
            keep[bad_rows] = False
            check("loss", loss.view(-1)[keep], rloss.view(-1)[keep], _acc_tol(x.dtype))
        else:
            check("loss", loss, rloss, _acc_tol(x.dtype))
        check("lse", lse, rlse, _acc_tol(x.dtype))
        gl_ = gl.to(acc) if gl is not None else None
        grad = kern.backward(g.to(acc), gl_, x, t, w, rlse, -100, eps, num_sms=sms)
        rgrad = ops._cross_entropy_backward(g.to(acc), gl_, x.contiguous(), t_ref, w, rlse, -100, eps)
        if bad_rows is not None:
            N_, C_ = (x.shape[0], x.shape[1])
            gv = grad.movedim(1, -1).reshape(-1, C_)
            rv = rgrad.movedim(1, -1).reshape(-1, C_)
            if not torch.isnan(gv[bad_rows]).all():
                errs.append(f"{name}: out-of-range target rows must have a NaN gradient")
            keep = torch.ones(gv.shape[0], dtype=torch.bool)
            keep[bad_rows] = False
            check("grad", gv[keep], rv[keep], _tol(x.dtype))
        else:
            check("grad", grad, rgrad, _tol(x.dtype))
    else:
        loss, lse = kern.prob_forward(x, y, w, eps, num_sms=sms)
        rloss, rlse = ops.cross_entropy_prob_forward(x.contiguous(), y.contiguous(), w, eps)
        check("loss", loss, rloss, _acc_tol(x.dtype))
        check("lse", lse, rlse, _acc_tol(x.dtype))
        gl_ = gl.to(acc) if gl is not None else None
        grad = kern.prob_backward(g.to(acc), gl_, x, y, w, rlse, eps, num_sms=sms)
        rgrad = ops._cross_entropy_prob_backward(g.to(acc), gl_, x.contiguous(), y.contiguous(), w, rlse, eps)
        check("grad", grad, rgrad, _tol(x.dtype))
    return errs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the smaller grid (for the ASan build)")
    ap.add_argument("--asan", action="store_true", help="load the AddressSanitizer build")
    ap.add_argument("--lib", help="path of an already built harness library")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    args = ap.parse_args(argv)
    ok, why = simt_available()
    if not ok:
        print("SKIP:", why)
        return 0
    import torch  # noqa: F401
    import smoothing_ext  # noqa: F401  (registers torch.ops.smoothing_ext, the CPU reference)

    lib = args.lib or build(asan=args.asan)
    kern = SimtKernels(lib)
    t0 = time.time()
    errs, n = [], 0
    for name, cfg in grid_cases(args.quick):
        if args.k and args.k not in name:
            continue
        n += 1
        errs += run_case(kern, name, cfg)
    sched = os.environ.get("SIMT_SCHED", "fwd")
    print(f"simt grid: {n} cases, {len(errs)} mismatches, SIMT_SCHED={sched}, asan={args.asan}, "
          f"{time.time() - t0:.1f}s")
    for e in errs:
        print("MISMATCH", e)
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
