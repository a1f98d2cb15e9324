"""Accuracy on long rows: every instruction-set copy of the CPU kernels against float64, with
PyTorch's own error on the same inputs as the bar (ours may not be worse than F.cross_entropy's,
up to two fp32 roundings of margin: both results end rounded to the loss dtype)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import smoothing_ext

_CODE = r"""
import torch, torch.nn.functional as F, smoothing_ext
cap = torch.ops.smoothing_ext._cpu_capability()
gen = torch.Generator().manual_seed(0)
fails = []
def rel(a, ref):
    return ((a.double() - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()
for C in (32000, 128256, 262144):
    N = 4
    # an offset keeps lse and sum_j x_j large against the loss (the cancellation A lse - B)
    x32 = torch.randn(N, C, generator=gen) * 2 + 3
    t = torch.randint(0, C, (N,), generator=gen)
    y32 = torch.softmax(torch.randn(N, C, generator=gen), 1)
    w = torch.rand(C, generator=gen) + 0.5
    for dt in (torch.float32, torch.bfloat16):
        x = x32.to(dt)
        y = y32.to(dt)
        # S > 1 (K-dim rows, the strided kernels) on one case per length
        xs = x.view(N, C // 4, 4) if dt == torch.float32 else None
        for eps in (0.1, 1.0):
            for name, tgt, wt in (("index", t, None), ("index-w", t, w), ("prob", y, None), ("prob-w", y, w)):
                kw = dict(label_smoothing=eps, reduction="none")
                ref = F.cross_entropy(x.double(), tgt.double() if tgt.is_floating_point() else tgt,
                                      weight=None if wt is None else wt.double(), **kw)
                ours = smoothing_ext.cross_entropy(x, tgt, weight=None if wt is None else wt.to(dt), **kw)
                theirs = F.cross_entropy(x, tgt, weight=None if wt is None else wt.to(dt), **kw)
                eo, et = rel(ours, ref), rel(theirs, ref)
                ulp = 2.0 ** -23 if dt == torch.float32 else 2.0 ** -7
                if eo > et + 2 * ulp:
                    fails.append(f"{dt} C={C} eps={eps} {name}: ours {eo:.2e} torch {et:.2e}")
            if xs is not None:
                ts = torch.randint(0, C // 4, (N, 4), generator=gen)
                ys = torch.softmax(torch.randn(N, C // 4, 4, generator=gen), 1)
                for name, tgt in (("strided-index", ts), ("strided-prob", ys)):
                    kw = dict(label_smoothing=eps, reduction="none")
                    ref = F.cross_entropy(xs.double(), tgt.double() if tgt.is_floating_point() else tgt, **kw)
                    eo = rel(smoothing_ext.cross_entropy(xs, tgt, **kw), ref)
                    et = rel(F.cross_entropy(xs, tgt, **kw), ref)
                    if eo > et + 2 * 2.0 ** -23:
                        fails.append(f"C={C // 4} eps={eps} {name}: ours {eo:.2e} torch {et:.2e}")
print(cap)
print("\n".join(fails))
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_long_rows_no_less_accurate_than_torch(capability):
    """C in {32000, 128256, 262144}, eps in {0.1, 1.0}, index and probability targets, weights,
    float32 and bfloat16, contiguous and strided rows (in a subprocess: the instruction set is
    chosen once per process)."""
    env = dict(os.environ, SMOOTHING_EXT_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", _CODE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    got, fails = lines[0], lines[1:]
    order = ["default", "avx2", "avx512"]
    assert order.index(got) <= order.index(capability)  # a processor without it falls back
    assert not fails, "\n".join(fails)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_probability_targets_keep_their_dtype_under_autocast(dtype):
    """timm's SoftTargetCrossEntropy under bf16 autocast: float32 soft targets with low-precision
    logits are read as float32 (PyTorch computes this loss in float32 under autocast), not rounded
    to the logits' dtype first."""
    gen = torch.Generator().manual_seed(0)
    N, C = 16, 1000
    x = torch.randn(N, C, generator=gen).to(dtype)
    y = torch.softmax(torch.randn(N, C, generator=gen) * 3, 1)
    ref = F.cross_entropy(x.double(), y.double(), label_smoothing=0.1)
    with torch.autocast("cpu", dtype=dtype):
        theirs = F.cross_entropy(x, y, label_smoothing=0.1)
        ours = smoothing_ext.cross_entropy(x, y, label_smoothing=0.1)
    assert ours.dtype == theirs.dtype == torch.float32
    err_ours = abs(ours.double() - ref).item() / ref.item()
    err_theirs = abs(theirs.double() - ref).item() / ref.item()
    assert err_ours <= err_theirs + 2 * 2.0**-23, (err_ours, err_theirs)
    # and the gradient w.r.t. the logits, in the logits' dtype, from the float32 targets
    xr = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        smoothing_ext.cross_entropy(xr, y, label_smoothing=0.1).backward()
    x64 = x.double().requires_grad_()
    F.cross_entropy(x64, y.double(), label_smoothing=0.1).backward()
    torch.testing.assert_close(xr.grad.double(), x64.grad, rtol=1e-2, atol=1e-5)


def test_probability_targets_other_dtype_read_without_rounding():
    """A float64 target with float32 logits: read in float32 (the accumulation dtype), and the
    float32 logits with a float32 target of bfloat16 values give the same loss."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 300, generator=gen)
    y = torch.softmax(torch.randn(8, 300, generator=gen), 1)
    ref = F.cross_entropy(x.double(), y.double(), reduction="none")
    got = smoothing_ext.cross_entropy(x, y.double(), reduction="none")
    torch.testing.assert_close(got.double(), ref, rtol=2e-6, atol=1e-6)
