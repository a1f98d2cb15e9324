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


def build(asan: bool = False, harness: str = "harness.cpp", kernels: str = "cross_entropy_kernels.cuh",
          math_header: str = "xent_math.h", name: str = "xent") -> str:
    """Compile a harness of tests/simt (cached by a hash of its sources and flags); returns the .so
    path. The defaults build the cross-entropy harness; tests/test_bce_simt.py builds the BCE one."""
    inc = simt_include()
    srcs = [
        os.path.join(HERE, harness),
        os.path.join(REPO, "csrc", "cuda", kernels),
        os.path.join(REPO, "csrc", "cuda", "elem_convert.cuh"),
        os.path.join(REPO, "csrc", "include", "smoothing_ext", math_header),
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
    out = os.path.join(build_dir(), f"lib{name}_simt_{'asan_' if asan else ''}{h.hexdigest()[:12]}.so")
    if os.path.exists(out):
        return out
    cmd = ["g++", *flags, f"-I{inc}", f"-I{os.path.join(REPO, 'csrc')}", f"-I{os.path.join(REPO, 'csrc', 'include')}",
           srcs[0], "-o", out + ".tmp"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"simt harness build failed ({harness}):\n" + " ".join(cmd) + "\n" + r.stderr[-6000:])
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
        ("off_target", ctypes.c_int32), ("pad2_", ctypes.c_int32), ("softcap", ctypes.c_double),
        ("z_loss", ctypes.c_double), ("grad_scale", ctypes.c_void_p), ("scale", ctypes.c_void_p),
        ("scale_numel", ctypes.c_int64),
    ]


class SimtKernels:
    """The ops, computed by the CUDA kernels under simt, with the CPU op's argument conventions."""

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
              grad_loss=None, grad_lse=None, lse_in=None, grad_input=None, num_sms=132, off_target=False,
              softcap=None, z_loss=0.0, grad_scale=None, scale=None):
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
        a.off_target = int(bool(off_target))
        a.softcap = float(softcap) if softcap is not None else 0.0
        a.z_loss = float(z_loss)
        # grad_scale / scale: converted to the accumulation dtype, as the host functions do
        a.grad_scale = (ptr(torch.tensor(float(grad_scale), dtype=torch.float64).to(acc).reshape(1))
                        if grad_scale is not None else None)
        if scale is not None:
            sc = scale.to(acc).contiguous()
            a.scale, a.scale_numel = ptr(sc), sc.numel()
        rc = self.lib.se_run(ctypes.byref(a))
        if rc != 0:
            raise RuntimeError(f"se_run failed with code {rc}")

    def _outputs(self, x):
        import torch

        _, _, _, lshape = self._shape(x)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        # NaN-filled: an element a kernel forgets to write shows up as a mismatch
        return (torch.full(lshape, float("nan"), dtype=acc), torch.full(lshape, float("nan"), dtype=acc))

    def forward(self, x, target, weight, ignore_index, eps, off_target=False, softcap=None, num_sms=132):
        loss, lse = self._outputs(x)
        self._call(0, x, target_idx=target, weight=weight, ignore_index=ignore_index, eps=eps, loss=loss, lse=lse,
                   num_sms=num_sms, off_target=off_target, softcap=softcap)
        return loss, lse

    def backward(self, grad_loss, grad_lse, x, target, weight, lse, ignore_index, eps, off_target=False,
                 softcap=None, num_sms=132):
        import torch

        g = torch.full(x.shape, float("nan"), dtype=x.dtype)
        self._call(1, x, target_idx=target, weight=weight, ignore_index=ignore_index, eps=eps, grad_loss=grad_loss,
                   grad_lse=grad_lse, lse_in=lse, grad_input=g, num_sms=num_sms, off_target=off_target,
                   softcap=softcap)
        return g

    def prob_forward(self, x, y, weight, eps, off_target=False, softcap=None, num_sms=132):
        loss, lse = self._outputs(x)
        self._call(2, x, y=y, weight=weight, eps=eps, loss=loss, lse=lse, num_sms=num_sms, off_target=off_target,
                   softcap=softcap)
        return loss, lse

    def prob_backward(self, grad_loss, grad_lse, x, y, weight, lse, eps, off_target=False, softcap=None,
                      num_sms=132):
        import torch

        g = torch.full(x.shape, float("nan"), dtype=x.dtype)
        self._call(3, x, y=y, weight=weight, eps=eps, grad_loss=grad_loss, grad_lse=grad_lse, lse_in=lse,
                   grad_input=g, num_sms=num_sms, off_target=off_target, softcap=softcap)
        return g

    def fused(self, x, target, weight, ignore_index, eps, off_target, softcap, z_loss, grad_scale, num_sms=132):
        """cross_entropy_fused: (loss, lse, grad); grad_scale a Python float or None."""
        import torch

        loss, lse = self._outputs(x)
        g = torch.full(x.shape, float("nan"), dtype=x.dtype)
        self._call(4, x, target_idx=target, weight=weight, ignore_index=ignore_index, eps=eps, loss=loss, lse=lse,
                   grad_input=g, num_sms=num_sms, off_target=off_target, softcap=softcap, z_loss=z_loss,
                   grad_scale=grad_scale)
        return loss, lse, g

    def fused_(self, x, target, weight, ignore_index, eps, off_target, softcap, z_loss, grad_scale, num_sms=132):
        """cross_entropy_fused_: the gradient overwrites x (contiguous, any element offset)."""
        loss, lse = self._outputs(x)
        self._call(5, x, target_idx=target, weight=weight, ignore_index=ignore_index, eps=eps, loss=loss, lse=lse,
                   grad_input=x, num_sms=num_sms, off_target=off_target, softcap=softcap, z_loss=z_loss,
                   grad_scale=grad_scale)
        return loss, lse

    def scale_grad_rows_(self, grad, scale, num_sms=132):
        """_scale_grad_rows_: in place on grad (contiguous, any element offset)."""
        self._call(6, grad, grad_input=grad, scale=scale, num_sms=num_sms)


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
        # the forward's vector groups below the running maximum skip count-of-max: a few entries tied at
        # the maximum far apart (groups in between take the fast path), and rows whose maximum rises in
        # every group (ascending logits). The 4-vector loop runs when a thread gets at least 4 vectors:
        # C = 1500 (one warp per row) and C = 20000 (512 threads per row) reach it, C = 5000 does not.
        for C in (1500, 20000):
            cases.append((f"index-confident-{dt}-C{C}", dict(kind="index", dtype=dt, N=6, C=C, seed=i + 140 + C,
                                                             weight=False, eps=0.0, grad_lse=False, misalign=False,
                                                             confident=True)))
            cases.append((f"index-sparse-ties-{dt}-C{C}", dict(kind="index", dtype=dt, N=6, C=C, seed=i + 120 + C,
                                                               weight=False, eps=0.1, grad_lse=True, misalign=False,
                                                               sparse_ties=True)))
            cases.append((f"index-ascending-{dt}-C{C}", dict(kind="index", dtype=dt, N=6, C=C, seed=i + 130 + C,
                                                             weight=False, eps=0.1, grad_lse=False, misalign=False,
                                                             ascending=True)))
    # -inf logits (eps = 0: no 0 * inf), out-of-range targets (documented NaN)
    cases.append(("index-neginf-float32", dict(kind="index", dtype="float32", N=12, C=300, seed=7, weight=False,
                                               eps=0.0, grad_lse=False, misalign=False, neginf=True)))
    cases.append(("index-bad-target-float32", dict(kind="index", dtype="float32", N=12, C=300, seed=8, weight=True,
                                                   eps=0.1, grad_lse=True, misalign=False, bad_target=True)))
    cases.append(("index-bad-target-kdim-bfloat16", dict(kind="index", dtype="bfloat16", N=3, C=30, spatial=(5,),
                                                         seed=9, weight=False, eps=0.1, grad_lse=False,
                                                         misalign=False, bad_target=True)))
    return cases + feature_cases(quick)


SOFTCAP = 5.0
XSCALE = 4.0  # softcap cases: logits ~ N(0, 12^2), most of them well into tanh's flat part at c = 5


def feature_cases(quick: bool = False):
    """off_target, softcap, the fused op (out of place and in place) and _scale_grad_rows_.

    Checked against the float64 formula (oracle_*) always, and against the CPU ops when the installed
    extension has the new arguments. Every row decomposition is hit: group8 (C <= 64), warp
    (C <= 2048), block, split rows (few rows, huge C), strided (K-dim), 1-D, 1-SM grid-stride loops.
    """
    cases = []
    i = 5000
    big = 40000 if quick else 128256
    for dt in DTYPES:
        heavy = dt in ("float32", "bfloat16") or not quick
        # off_target, index and probability targets
        for C in (1, 33, 1000, 5000):
            i += 1
            cases.append((f"index-offt-{dt}-C{C}", dict(kind="index", dtype=dt, N=max(2, min(29, 40000 // C)), C=C,
                                                        seed=i, weight=C % 2 == 0, eps=[0.1, 1.0][i % 2],
                                                        grad_lse=True, misalign=i % 3 == 0, off_target=True)))
        for C in (33, 4097):
            i += 1
            cases.append((f"prob-offt-{dt}-C{C}", dict(kind="prob", dtype=dt, N=max(2, min(19, 40000 // C)), C=C,
                                                       seed=i, weight=True, eps=0.2, grad_lse=i % 2 == 0,
                                                       misalign=True, off_target=True)))
        # softcap: index / prob, every decomposition
        for C in (33, 1000, 5000):
            i += 1
            cases.append((f"index-cap-{dt}-C{C}", dict(kind="index", dtype=dt, N=max(2, min(23, 40000 // C)), C=C,
                                                       seed=i, weight=i % 2 == 0, eps=0.1, grad_lse=i % 2 == 1,
                                                       misalign=i % 3 == 1, softcap=SOFTCAP, xscale=XSCALE,
                                                       off_target=C == 1000)))
        i += 1
        cases.append((f"prob-cap-{dt}-C1000", dict(kind="prob", dtype=dt, N=13, C=1000, seed=i, weight=True, eps=0.1,
                                                   grad_lse=True, misalign=True, softcap=SOFTCAP, xscale=XSCALE)))
        for kind in ("index", "prob"):
            i += 1
            cases.append((f"{kind}-cap-kdim-{dt}", dict(kind=kind, dtype=dt, N=3, C=33, spatial=(3, 11), seed=i,
                                                        weight=True, eps=0.1, grad_lse=True, misalign=False,
                                                        softcap=SOFTCAP, xscale=XSCALE, off_target=kind == "prob")))
        if heavy:
            i += 1
            cases.append((f"index-cap-split-{dt}", dict(kind="index", dtype=dt, N=3, C=big, seed=i, weight=True,
                                                        eps=0.1, grad_lse=True, misalign=True, softcap=SOFTCAP,
                                                        xscale=XSCALE)))
            cases.append((f"prob-cap-split-{dt}", dict(kind="prob", dtype=dt, N=2, C=30001, seed=i + 1, weight=False,
                                                       eps=0.1, grad_lse=False, misalign=False, softcap=SOFTCAP,
                                                       xscale=XSCALE)))
        # fused (+ in place): z-loss, grad_scale, ignored rows, weights; options rotate over the cases
        fused_shapes = [("C33", dict(N=40, C=33)), ("C1000", dict(N=19, C=1000)), ("C5000", dict(N=7, C=5000)),
                        ("kdim", dict(N=3, C=33, spatial=(3, 11))), ("1d", dict(N=None, C=77)),
                        ("loop-1sm", dict(N=700, C=100, num_sms=1))]
        if heavy:
            fused_shapes.append(("split", dict(N=3, C=big)))
        for k, (tag, shp) in enumerate(fused_shapes):
            i += 1
            cap = SOFTCAP if k % 2 == 0 else None
            cases.append((f"fused-{tag}-{dt}", dict(kind="fused", dtype=dt, seed=i, weight=k % 3 != 1,
                                                    eps=[0.1, 0.0, 1.0][k % 3], misalign=k % 2 == 1,
                                                    off_target=k % 4 == 3 or tag == "split", softcap=cap,
                                                    xscale=XSCALE if cap else 1.0, z_loss=1e-3,
                                                    grad_scale=None if k == 1 else 0.37, **shp)))
        # _scale_grad_rows_: rows with factor 1 (holding NaN garbage) must come back bit-identical
        scale_shapes = [("C1000", dict(N=37, C=1000)), ("C33", dict(N=50, C=33)), ("kdim", dict(N=4, C=33, spatial=(3, 5))),
                        ("1d", dict(N=None, C=77)), ("loop-1sm", dict(N=2500, C=3, num_sms=1)),
                        ("split", dict(N=3, C=70001)), ("scalar1", dict(N=9, C=700, scalar=1.0)),
                        ("scalar", dict(N=9, C=700, scalar=0.37))]
        for k, (tag, shp) in enumerate(scale_shapes):
            i += 1
            cases.append((f"scale-{tag}-{dt}", dict(kind="scale", dtype=dt, seed=i, misalign=k % 2 == 0, **shp)))
    # a fused row with out-of-range targets: NaN loss and NaN gradient row, in place too
    for dt, shp in (("float32", dict(N=12, C=300)), ("bfloat16", dict(N=3, C=30, spatial=(5,))),
                    ("float32", dict(N=3, C=big))):
        i += 1
        cases.append((f"fused-bad-target-{dt}-C{shp['C']}", dict(kind="fused", dtype=dt, seed=i, weight=True, eps=0.1,
                                                                 misalign=False, softcap=None, z_loss=1e-3,
                                                                 grad_scale=0.37, bad_target=True, **shp)))
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


def misaligned_copy(x, off: int = 1):
    """A contiguous copy of x whose data pointer is `off` elements past a 16-byte boundary."""
    import torch

    buf = torch.empty(x.numel() + off, dtype=x.dtype)
    buf[off:] = x.reshape(-1)
    return buf[off:].view(x.shape)


def same_alignment_copy(x):
    """A contiguous copy of x with x's data pointer alignment mod 16 (the same vector/scalar split)."""
    off = (x.data_ptr() % 16) // x.element_size()
    return misaligned_copy(x, off) if off else x.clone()


def make_inputs(cfg):
    import torch

    dtype = getattr(torch, cfg["dtype"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    C = cfg["C"]
    N = cfg["N"]
    spatial = tuple(cfg.get("spatial", ()))
    shape = (C,) if N is None else (N, C, *spatial)
    x64 = torch.randn(shape, generator=gen, dtype=torch.float64) * (3 * cfg.get("xscale", 1.0))
    if cfg.get("ties"):
        x64 = torch.randint(-3, 3, shape, generator=gen).double()
    tshape = () if N is None else (N, *spatial)
    t = torch.randint(0, C, tshape, generator=gen)
    if cfg.get("confident"):
        x64 = torch.randn(shape, generator=gen, dtype=torch.float64)
        x64.view(N, C)[torch.arange(N), t] = 25.0 + torch.arange(N, dtype=torch.float64)
    if cfg.get("sparse_ties"):
        # three copies of the row maximum at random places (exactly representable in every dtype)
        rows = x64.view(N, C)
        for r in range(N):
            rows[r, torch.randperm(C, generator=gen)[:3]] = 16.0
    if cfg.get("ascending"):
        # the running maximum rises in every vector group; some rows end on a tie
        rows = x64.view(N, C)
        rows.copy_(torch.linspace(-8.0, 8.0, C, dtype=torch.float64).expand(N, C).clone())
        rows[::2, -2] = 8.0
    if cfg.get("neginf"):
        x64.view(-1)[:: 7] = float("-inf")
        flat = x64.view(N, C)
        flat[torch.arange(N), t] = 1.0  # targets stay finite
        flat[3] = float("-inf")  # a whole row of -inf, ignored
    if N is not None and cfg["kind"] in ("index", "fused") and t.numel() > 1:
        ign = torch.rand(tshape, generator=gen) < 0.2
        t = torch.where(ign, torch.full_like(t, -100), t)
        if cfg.get("neginf"):
            t[3] = -100
    x = x64.to(dtype)
    if cfg.get("misalign"):
        # same values, data pointer one element past a 16-byte boundary: every row misaligned
        x = misaligned_copy(x)
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


# ---------------------------------------------------------------------------------------------
# float64 oracle: the schema's formulas in plain torch (autograd for the gradients)
# ---------------------------------------------------------------------------------------------

def smooth_coefs(eps, C, off_target):
    if off_target:
        off = eps / (C - 1) if C > 1 else 0.0
        return (1.0 - eps - off if C > 1 else 1.0), off
    return 1.0 - eps, eps / C


def _rows(x):
    """float64 (rows, C) copy with the class dim last."""
    import torch

    x = x.to(torch.float64)
    return x.reshape(1, -1) if x.dim() == 1 else x.movedim(1, -1).reshape(-1, x.shape[1])


def _unrows(r, shape):
    if len(shape) == 1:
        return r.reshape(shape)
    return r.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def _capped(xr, softcap):
    import torch

    return softcap * torch.tanh(xr / softcap) if softcap else xr


def oracle_index(x, t, w, ignore_index, eps, off_target, softcap, g=None, gl=None, fused=None):
    """(loss, lse, grad) in float64, flat over rows. Rows with out-of-range targets count as ignored.
    Backward: grad of sum(g * loss + gl * lse); fused=(s, z): grad of s * sum(loss + z lse^2 [valid])."""
    import torch

    xr = _rows(x).requires_grad_(True)
    C = xr.shape[1]
    tr = t.reshape(-1).to(torch.int64)
    y = _capped(xr, softcap)
    lse = torch.logsumexp(y, 1)
    valid = (tr != ignore_index) & (tr >= 0) & (tr < C)
    tt = torch.where(valid, tr, torch.zeros_like(tr))
    wv = w.to(torch.float64) if w is not None else torch.ones(C, dtype=torch.float64)
    on, off = smooth_coefs(eps, C, off_target)
    loss = torch.zeros_like(lse)
    if on != 0:  # zero coefficients are skipped (as in the kernels): no 0 * inf
        loss = loss + on * wv[tt] * (lse - y.gather(1, tt[:, None])[:, 0])
    if off != 0:
        loss = loss + off * (wv.sum() * lse - (y * wv).sum(1))
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if fused is not None:
        s_, z = fused
        obj = (s_ * (loss + z * lse * lse * valid)).sum()
    else:
        obj = (g.reshape(-1).to(torch.float64) * loss).sum()
        if gl is not None:
            obj = obj + (gl.reshape(-1).to(torch.float64) * lse).sum()
    (grad,) = torch.autograd.grad(obj, xr)
    return loss.detach(), lse.detach(), _unrows(grad, tuple(x.shape))


def oracle_prob(x, yt, w, eps, off_target, softcap, g, gl=None):
    import torch

    xr = _rows(x).requires_grad_(True)
    C = xr.shape[1]
    y = _capped(xr, softcap)
    lse = torch.logsumexp(y, 1)
    wv = w.to(torch.float64) if w is not None else torch.ones(C, dtype=torch.float64)
    on, off = smooth_coefs(eps, C, off_target)
    q = on * _rows(yt) + off
    loss = (wv * q * (lse[:, None] - y)).sum(1)
    obj = (g.reshape(-1).to(torch.float64) * loss).sum()
    if gl is not None:
        obj = obj + (gl.reshape(-1).to(torch.float64) * lse).sum()
    (grad,) = torch.autograd.grad(obj, xr)
    return loss.detach(), lse.detach(), _unrows(grad, tuple(x.shape))


_CPU_NEW = None


def cpu_has_new_ops() -> bool:
    """Whether the installed CPU ops take off_target / softcap and have the fused ops."""
    global _CPU_NEW
    if _CPU_NEW is None:
        import torch

        ops = torch.ops.smoothing_ext
        try:
            _CPU_NEW = ("softcap" in str(ops.cross_entropy_forward.default._schema)
                        and hasattr(ops, "cross_entropy_fused") and hasattr(ops, "_scale_grad_rows_"))
        except Exception:  # noqa: BLE001
            _CPU_NEW = False
    return _CPU_NEW


def run_case(kern: SimtKernels, name: str, cfg) -> list[str]:
    """Returns a list of mismatch descriptions (empty: pass)."""
    if cfg["kind"] == "fused":
        return run_fused_case(kern, name, cfg)
    if cfg["kind"] == "scale":
        return run_scale_case(kern, name, cfg)
    import torch

    ops = torch.ops.smoothing_ext
    x, t, y, w, g, gl = make_inputs(cfg)
    eps = cfg["eps"]
    sms = cfg.get("num_sms", 132)
    offt, cap = bool(cfg.get("off_target", False)), cfg.get("softcap")
    new = offt or cap is not None  # new arguments: the float64 oracle, and the CPU op only if it has them
    use_cpu = not new or cpu_has_new_ops()
    extra = (offt, cap) if new else ()
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    errs = []

    def check(what, got, want, tol):
        try:
            torch.testing.assert_close(got, want, equal_nan=True, **tol)
        except AssertionError as e:
            errs.append(f"{name}: {what}: {str(e).splitlines()[0:4]}")

    def check_oracle(loss, lse, grad, ref):
        oloss, olse, ograd = ref
        check("loss vs float64", loss.reshape(-1).double(), oloss, _acc_tol(x.dtype))
        check("lse vs float64", lse.reshape(-1).double(), olse, _acc_tol(x.dtype))
        check("grad vs float64", grad.double(), ograd.to(x.dtype).double(), _tol(x.dtype))

    gl_ = gl.to(acc) if gl is not None else None
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
        loss, lse = kern.forward(x, t, w, -100, eps, offt, cap, num_sms=sms)
        if use_cpu:
            rloss, rlse = ops.cross_entropy_forward(x.contiguous(), t_ref, w, -100, eps, *extra)
        else:
            rloss, rlse = (v.to(acc).reshape(lse.shape) for v in oracle_index(x, t_ref, w, -100, eps, offt, cap,
                                                                              g, gl)[:2])
        if bad_rows is not None:
            if not torch.isnan(loss.view(-1)[bad_rows]).all():
                errs.append(f"{name}: out-of-range target rows must have NaN loss, got {loss.view(-1)[bad_rows]}")
            keep = torch.ones(loss.numel(), dtype=torch.bool)
            keep[bad_rows] = False
            check("loss", loss.view(-1)[keep], rloss.view(-1)[keep], _acc_tol(x.dtype))
        else:
            check("loss", loss, rloss, _acc_tol(x.dtype))
        check("lse", lse, rlse, _acc_tol(x.dtype))
        if cfg.get("confident"):
            # loss ~ 1 - p_t ~ 1e-7 here: relative, so that a maximum summed into `rest` instead of
            # counted (its 1 swallowing the other terms) fails, where the absolute tolerance would not
            check("loss of confident rows, relative", loss, rloss, dict(rtol=1e-3, atol=0))
        grad = kern.backward(g.to(acc), gl_, x, t, w, rlse, -100, eps, offt, cap, num_sms=sms)
        if use_cpu:
            rgrad = ops._cross_entropy_backward(g.to(acc), gl_, x.contiguous(), t_ref, w, rlse, -100, eps, *extra)
        else:
            rgrad = None
        if bad_rows is not None:
            N_, C_ = (x.shape[0], x.shape[1])
            gv = grad.movedim(1, -1).reshape(-1, C_)
            rv = rgrad.movedim(1, -1).reshape(-1, C_)
            if not torch.isnan(gv[bad_rows]).all():
                errs.append(f"{name}: out-of-range target rows must have a NaN gradient")
            keep = torch.ones(gv.shape[0], dtype=torch.bool)
            keep[bad_rows] = False
            check("grad", gv[keep], rv[keep], _tol(x.dtype))
        elif rgrad is not None:
            check("grad", grad, rgrad, _tol(x.dtype))
        if new:
            # the backward is fed the kernel's own lse, so the oracle's lse is the reference for both
            check_oracle(loss, lse, grad, oracle_index(x, t_ref, w, -100, eps, offt, cap, g, gl))
    else:
        loss, lse = kern.prob_forward(x, y, w, eps, offt, cap, num_sms=sms)
        grad = None
        if use_cpu:
            rloss, rlse = ops.cross_entropy_prob_forward(x.contiguous(), y.contiguous(), w, eps, *extra)
            check("loss", loss, rloss, _acc_tol(x.dtype))
            check("lse", lse, rlse, _acc_tol(x.dtype))
            grad = kern.prob_backward(g.to(acc), gl_, x, y, w, rlse, eps, offt, cap, num_sms=sms)
            rgrad = ops._cross_entropy_prob_backward(g.to(acc), gl_, x.contiguous(), y.contiguous(), w, rlse, eps,
                                                     *extra)
            check("grad", grad, rgrad, _tol(x.dtype))
        if new:
            if grad is None:
                grad = kern.prob_backward(g.to(acc), gl_, x, y, w, lse, eps, offt, cap, num_sms=sms)
            check_oracle(loss, lse, grad, oracle_prob(x, y, w, eps, offt, cap, g, gl))
    return errs


def run_fused_case(kern: SimtKernels, name: str, cfg) -> list[str]:
    """cross_entropy_fused and cross_entropy_fused_ (on a copy of x with x's alignment): the in-place
    result must equal the out-of-place one bit for bit; both are checked against the float64 oracle
    and, when available, the CPU op."""
    import torch

    ops = torch.ops.smoothing_ext
    x, t, _, w, _, _ = make_inputs(dict(cfg, grad_lse=False))
    eps, offt, cap = cfg["eps"], bool(cfg.get("off_target", False)), cfg.get("softcap")
    z, gs = cfg["z_loss"], cfg["grad_scale"]
    sms = cfg.get("num_sms", 132)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    errs = []

    def check(what, got, want, tol):
        try:
            torch.testing.assert_close(got, want, equal_nan=True, **tol)
        except AssertionError as e:
            errs.append(f"{name}: {what}: {str(e).splitlines()[0:4]}")

    t_ref, bad_rows = t, None
    if cfg.get("bad_target"):
        flat = t.view(-1)
        bad_rows = torch.tensor([1, flat.numel() - 1])
        flat[bad_rows[0]] = cfg["C"] + 3
        flat[bad_rows[1]] = -5
        t_ref = t.clone()
        t_ref.view(-1)[bad_rows] = -100
    x_orig = x.clone()
    loss, lse, grad = kern.fused(x, t, w, -100, eps, offt, cap, z, gs, num_sms=sms)
    if not torch.equal(x.view(-1).view(torch.uint8 if x.element_size() == 1 else {2: torch.int16, 4: torch.int32,
                                                                                  8: torch.int64}[x.element_size()]),
                       x_orig.view(-1).view({2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()])):
        errs.append(f"{name}: the out-of-place fused op modified its input")
    xi = same_alignment_copy(x)
    iloss, ilse = kern.fused_(xi, t, w, -100, eps, offt, cap, z, gs, num_sms=sms)
    exact = dict(rtol=0, atol=0)
    check("in-place loss == out-of-place", iloss, loss, exact)
    check("in-place lse == out-of-place", ilse, lse, exact)
    check("in-place grad == out-of-place", xi, grad, exact)

    C = cfg["C"]
    gv = _rows(grad)
    keep = torch.ones(gv.shape[0], dtype=torch.bool)
    if bad_rows is not None:
        if not torch.isnan(loss.reshape(-1)[bad_rows]).all():
            errs.append(f"{name}: out-of-range target rows must have NaN loss")
        if not torch.isnan(gv[bad_rows]).all():
            errs.append(f"{name}: out-of-range target rows must have a NaN gradient")
        keep[bad_rows] = False
    s_ = 1.0 if gs is None else gs
    oloss, olse, ograd = oracle_index(x, t_ref, w, -100, eps, offt, cap, fused=(s_, z))
    check("loss vs float64", loss.reshape(-1)[keep].double(), oloss[keep], _acc_tol(x.dtype))
    check("lse vs float64", lse.reshape(-1).double(), olse, _acc_tol(x.dtype))
    check("grad vs float64", gv[keep], _rows(ograd.to(x.dtype))[keep], _tol(x.dtype))
    if cpu_has_new_ops():
        gst = None if gs is None else torch.tensor(gs, dtype=acc)
        rloss, rlse, rgrad = ops.cross_entropy_fused(x.contiguous(), t_ref, w, -100, eps, offt, cap, z, gst)
        check("loss vs CPU op", loss.reshape(-1)[keep], rloss.reshape(-1)[keep], _acc_tol(x.dtype))
        check("lse vs CPU op", lse, rlse, _acc_tol(x.dtype))
        check("grad vs CPU op", gv[keep], _rows(rgrad)[keep], _tol(x.dtype))
    del C
    return errs


def _bits(t):
    import torch

    return t.reshape(-1).view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def run_scale_case(kern: SimtKernels, name: str, cfg) -> list[str]:
    """_scale_grad_rows_: rows with factor exactly 1 (filled with NaN garbage here) must be bit-identical
    afterwards; the others must equal round(float(g) * f) exactly (one multiply in the acc dtype)."""
    import torch

    dtype = getattr(torch, cfg["dtype"])
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(cfg["seed"])
    N, C, spatial = cfg["N"], cfg["C"], tuple(cfg.get("spatial", ()))
    shape = (C,) if N is None else (N, C, *spatial)
    lshape = () if N is None else (N, *spatial)
    g = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype)
    if "scalar" in cfg:
        scale = torch.tensor(cfg["scalar"], dtype=torch.float64)
    else:
        scale = torch.rand(lshape, generator=gen, dtype=torch.float64) * 2 + 0.25
        ones = torch.rand(lshape, generator=gen) < 0.4
        scale = torch.where(ones, torch.ones_like(scale), scale)
        if scale.numel() > 1:
            scale.view(-1)[0] = 1.0
            scale.view(-1)[-1] = 0.0  # a zero factor: the row becomes 0 (or NaN where g was NaN)
    f = scale.to(acc)  # the host converts scale to the acc dtype; rows compare in that dtype
    rowmask = (f == 1).expand(lshape) if f.dim() == 0 else (f == 1)
    # Garbage in rows that must not be touched: signaling NaNs (any arithmetic, even * 1, quiets them, so
    # a kernel that multiplies those rows by 1 is caught), quiet NaNs and inf.
    gr = g.reshape(1, -1) if N is None else g.movedim(1, -1).reshape(-1, C)
    rm = rowmask.reshape(-1)
    garbage = gr.clone()
    garbage[rm, 1::3] = float("nan")
    garbage[rm, 2::5] = float("inf")
    snan = {torch.float32: 0x7F800001, torch.float64: 0x7FF0000000000001, torch.float16: 0x7C01,
            torch.bfloat16: 0x7F81}[dtype]
    bits = _bits(garbage).view(garbage.shape)
    bits[rm, ::3] = snan
    g = _unrows(garbage, shape).contiguous() if N is not None else garbage.reshape(shape)
    if cfg.get("misalign"):
        g = misaligned_copy(g)
    before = g.clone()
    kern.scale_grad_rows_(g, scale, num_sms=cfg.get("num_sms", 132))
    fb = f.reshape(*lshape[:1], 1, *lshape[1:]) if (N is not None and f.dim() > 0) else f
    want = (before.to(acc) * fb).to(dtype)
    errs = []
    # rows with factor 1: bit-identical (even the NaNs); the others: exactly the rounded product
    wr = want.reshape(1, -1) if N is None else want.movedim(1, -1).reshape(-1, C)
    br = before.reshape(1, -1) if N is None else before.movedim(1, -1).reshape(-1, C)
    got = g.reshape(1, -1) if N is None else g.movedim(1, -1).reshape(-1, C)
    if not torch.equal(_bits(got[rm].contiguous()), _bits(br[rm].contiguous())):
        errs.append(f"{name}: rows with factor 1 changed")
    try:
        torch.testing.assert_close(got[~rm], wr[~rm], rtol=0, atol=0, equal_nan=True)
    except AssertionError as e:
        errs.append(f"{name}: scaled rows: {str(e).splitlines()[0:4]}")
    if cpu_has_new_ops():
        ref = before.clone()
        torch.ops.smoothing_ext._scale_grad_rows_(ref, scale)
        if not torch.equal(_bits(g.contiguous()), _bits(ref.contiguous())):
            try:
                torch.testing.assert_close(g, ref, rtol=0, atol=0, equal_nan=True)
            except AssertionError as e:
                errs.append(f"{name}: vs CPU op: {str(e).splitlines()[0:4]}")
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
