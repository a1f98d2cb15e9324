"""Label-smoothed binary cross entropy with logits (smoothing_ext.binary_cross_entropy_with_logits,
BCEWithLogitsLoss and the two ops behind them) against PyTorch's F.binary_cross_entropy_with_logits
applied to the smoothed target y' = y (1 - eps) + eps / 2, evaluated in float64 on the same
(already rounded) inputs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import smoothing_ext
from conftest import TOL
from helpers import assert_close

ops = torch.ops.smoothing_ext
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _smooth(t: torch.Tensor, eps: float) -> torch.Tensor:
    return t.double() * (1.0 - eps) + eps / 2.0


def _oracle(x, t, weight=None, pos_weight=None, reduction="mean", eps=0.0):
    """PyTorch's op in float64 on the smoothed target (x may require grad)."""
    return F.binary_cross_entropy_with_logits(
        x.double() if not x.requires_grad else x,
        _smooth(t, eps),
        weight=None if weight is None else weight.double(),
        pos_weight=None if pos_weight is None else pos_weight.double(),
        reduction=reduction,
    )


def _weight(kind, N, C, dtype, gen, device):
    shape = {"none": None, "C": (C,), "N1": (N, 1), "scalar": (), "full": (N, C)}[kind]
    if shape is None:
        return None
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2).to(dtype).to(device)


def _compare(x, t, w, pw, reduction, eps, dtype, scale=1.0):
    """Loss and input gradient of ours vs the float64 oracle (random upstream gradient)."""
    xg = x.clone().requires_grad_()
    ours = smoothing_ext.binary_cross_entropy_with_logits(
        xg, t, weight=w, pos_weight=pw, reduction=reduction, label_smoothing=eps
    )
    xr = x.detach().double().requires_grad_()
    ref = _oracle(xr, t, w, pw, reduction, eps)
    assert ours.dtype == t.dtype
    assert ours.shape == ref.shape
    assert_close(ours, ref, dtype, scale=scale, msg="loss")
    up = torch.rand(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.5
    (g,) = torch.autograd.grad(ours, xg, up.to(ours.dtype).to(x.device))
    (gr,) = torch.autograd.grad(ref, xr, up.to(x.device))
    assert g.dtype == x.dtype and g.shape == x.shape
    assert_close(g, gr, dtype, scale=scale, msg="grad")


# ---------------------------------------------------------------------------------------------
# values and gradients against PyTorch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("wkind", ["none", "C", "N1", "scalar", "full"])
@pytest.mark.parametrize("with_pw", [False, True])
def test_matches_pytorch(device, dtype, reduction, eps, wkind, with_pw):
    gen = torch.Generator().manual_seed(hash((str(dtype), reduction, eps, wkind, with_pw)) % 2**31)
    N, C = 13, 37  # 481 elements: not a multiple of any vector width
    x = (torch.randn(N, C, generator=gen, dtype=torch.float64) * 4).to(dtype).to(device)
    t = torch.rand(N, C, generator=gen, dtype=torch.float64).to(dtype).to(device)
    t[0] = 0.0
    t[1] = 1.0
    w = _weight(wkind, N, C, dtype, gen, device)
    pw = (torch.rand(C, generator=gen, dtype=torch.float64) * 3).to(dtype).to(device) if with_pw else None
    # a sum of 481 terms rounded to the dtype once: same relative tolerance, larger absolute
    scale = 1.0 if reduction == "none" else 4.0
    _compare(x, t, w, pw, reduction, eps, dtype, scale=scale)
    if dtype in (torch.float32, torch.float64) and reduction == "none" and eps == 0.0:
        # exactly PyTorch's op in the same dtype (not only the oracle)
        ours = smoothing_ext.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw, reduction="none")
        theirs = F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=pw, reduction="none")
        assert_close(ours, theirs, dtype)


@pytest.mark.parametrize(
    "shape", [(7,), (1,), (), (5, 9), (3, 4, 6), (2, 3, 4, 5), (4, 1031)], ids=str
)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shapes(device, shape, dtype):
    gen = torch.Generator().manual_seed(len(shape))
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype).to(device)
    t = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    pw = None
    if len(shape) >= 1:
        pw = (torch.rand(shape[-1], generator=gen, dtype=torch.float64) + 0.5).to(dtype).to(device)
    _compare(x, t, None, pw, "none", 0.1, dtype)
    _compare(x, t, None, pw, "mean", 0.1, dtype, scale=4.0)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0), (2, 0, 4)], ids=str)
def test_empty(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    t = torch.rand(shape, device=device)
    w = torch.rand(shape[-1], device=device)
    for reduction in ("none", "mean", "sum"):
        ours = smoothing_ext.binary_cross_entropy_with_logits(
            x, t, weight=w, pos_weight=w, reduction=reduction, label_smoothing=0.1
        )
        ref = F.binary_cross_entropy_with_logits(x, t, weight=w, pos_weight=w, reduction=reduction)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        torch.testing.assert_close(ours, ref, equal_nan=True)  # mean: nan, sum: 0
        (g,) = torch.autograd.grad(ours.sum(), x)
        assert g.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_large_logits_stable(device, dtype, eps):
    """Logits of +-1e4, +-100, +-30: finite, and accurate to the dtype's RELATIVE precision, also where
    the loss or the gradient is tiny (softplus(-30) ~ 1e-13; PyTorch's sigmoid(x) - y is 0 there)."""
    vals = torch.tensor([-1e4, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e4], dtype=torch.float64)
    tv = torch.tensor([0.0, 1.0, 0.3], dtype=torch.float64)
    x = vals.repeat_interleave(3).repeat(2).to(dtype).to(device)
    t = tv.repeat(9).repeat(2).to(dtype).to(device)
    pw = torch.tensor(2.5, dtype=dtype, device=device)
    for p in (None, pw):
        xg = x.clone().requires_grad_()
        loss = smoothing_ext.binary_cross_entropy_with_logits(
            xg, t, pos_weight=p, reduction="none", label_smoothing=eps
        )
        (g,) = torch.autograd.grad(loss.sum(), xg)
        assert torch.isfinite(loss).all() and torch.isfinite(g).all()
        # float64 reference in the cancellation-free form of bce_math.h
        xd, ys = x.double(), _smooth(t, eps)
        pwd = 1.0 if p is None else 2.5
        A = 1 + (pwd - 1) * ys
        ref = torch.where(xd >= 0, (1 - ys) * xd, -pwd * ys * xd) + A * torch.log1p(torch.exp(-xd.abs()))
        s = torch.exp(-xd.abs()) / (1 + torch.exp(-xd.abs()))
        gref = torch.where(xd >= 0, (1 - ys) - A * s, A * s - pwd * ys)
        rel = 1e-12 if dtype == torch.float64 else 2e-6
        tiny = 4 * torch.finfo(dtype).tiny  # subnormal results carry fewer significant bits
        torch.testing.assert_close(loss.double().cpu(), ref.cpu(), rtol=rel, atol=tiny)
        torch.testing.assert_close(g.double().cpu(), gref.cpu(), rtol=rel, atol=tiny)
        # and the oracle (PyTorch, float64) agrees to absolute precision
        torch.testing.assert_close(
            loss.double().cpu(), _oracle(x, t, None, p, "none", eps).cpu(), rtol=rel, atol=1e-9
        )


def test_softplus_sigmoid_accuracy(device):
    """The CPU kernels' own exp / log1p (bce_kernel_impl.h) over the whole float range: with y' = 0 the
    loss is softplus(x) and the gradient sigmoid(x); with y' = 1, softplus(-x) and -sigmoid(-x).
    Relative error below 4e-7 (about 3 half-ulps) wherever the result is a normal float above 2e-38;
    smaller results may be flushed to 0 (documented: absolute error < 2e-38)."""
    x = -torch.logspace(-8, 1.94, 100001, dtype=torch.float64)
    x = torch.cat([x, -x, torch.linspace(-88, 88, 50001, dtype=torch.float64)]).float().to(device)
    xd = x.double()
    zero, one, gone = torch.zeros_like(x), torch.ones_like(x), torch.ones_like(x)
    sp = lambda v: torch.clamp_min(v, 0) + torch.log1p(torch.exp(-v.abs()))  # noqa: E731
    for y, loss_ref, grad_ref in ((zero, sp(xd), torch.sigmoid(xd)), (one, sp(-xd), -torch.sigmoid(-xd))):
        loss = ops.binary_cross_entropy_with_logits_forward(x, y, None, None, 0.0).double()
        grad = ops._binary_cross_entropy_with_logits_backward(gone, x, y, None, None, 0.0).double()
        for got, ref in ((loss, loss_ref), (grad, grad_ref)):
            normal = ref.abs() > 2e-38
            rel = ((got - ref).abs() / ref.abs())[normal]
            assert rel.max().item() < 4e-7, rel.max().item()
            assert ((got - ref).abs()[~normal] <= 2e-38).all()


def test_expanded_upstream_gradient(device):
    """A 0-stride upstream gradient (what sum() hands back) gives the same result as a materialised one."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(33, 17, generator=gen).to(device)
    t = torch.rand(33, 17, generator=gen).to(device)
    w = torch.rand(33, 1, generator=gen).to(device)
    g = torch.tensor(0.37, device=device)
    b = ops._binary_cross_entropy_with_logits_backward
    torch.testing.assert_close(
        b(g.expand(33, 17), x, t, w, None, 0.1), b(g.expand(33, 17).contiguous(), x, t, w, None, 0.1), rtol=0, atol=0
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_large_logits_reduced_precision(device, dtype):
    x = torch.tensor([-1e4, -100.0, -30.0, 30.0, 100.0, 1e4] * 5, dtype=dtype, device=device)
    x = x[: 29 if dtype == torch.bfloat16 else 30]  # f16 has no 1e4 problem; odd length for the tail
    t = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).to(dtype).to(device)
    _compare(x, t, None, None, "none", 0.1, dtype)


# ---------------------------------------------------------------------------------------------
# broadcast patterns, dtypes, layouts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, wshape, pwshape",
    [
        ((6, 5, 7), (5, 1), (7,)),        # (1, C, 1) pattern: inner H, period C
        ((6, 5, 7), (6, 1, 1), (1, 7)),   # (N, 1, 1)
        ((6, 5, 7), (6, 1, 7), (5, 1)),   # exotic: materialised; pos_weight (C, 1)
        ((6, 5, 7), (1, 1, 1), (6, 5, 7)),
        ((6, 5, 7), (7,), ()),
        ((9, 40), (1, 40), (40,)),
        ((9, 40), (9, 40), (1,)),
        ((2, 3, 4, 5), (3, 4, 1), (4, 5)),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_broadcast_patterns(device, shape, wshape, pwshape, dtype):
    gen = torch.Generator().manual_seed(sum(shape) + len(wshape))
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype).to(device)
    t = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    w = (torch.rand(wshape, generator=gen, dtype=torch.float64) + 0.5).to(dtype).to(device)
    pw = (torch.rand(pwshape, generator=gen, dtype=torch.float64) * 3).to(dtype).to(device)
    _compare(x, t, w, pw, "none", 0.2, dtype)
    _compare(x, t, w, pw, "sum", 0.2, dtype, scale=8.0)


@pytest.mark.parametrize(
    "xdt, tdt",
    [
        (torch.bfloat16, torch.float32),   # read as float32 directly
        (torch.float16, torch.float32),
        (torch.float32, torch.bfloat16),   # converted
        (torch.float16, torch.bfloat16),
        (torch.float64, torch.float32),
        (torch.float32, torch.float64),
    ],
    ids=str,
)
def test_mixed_dtypes(device, xdt, tdt):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(11, 21, generator=gen) * 3).to(xdt).to(device)
    t = torch.rand(11, 21, generator=gen).to(tdt).to(device)
    w = torch.rand(21, generator=gen, dtype=torch.float64).to(device)  # float64 weight: converted
    pw = (torch.rand(11, 1, generator=gen) * 2).to(xdt).to(device)
    ref_dtype = F.binary_cross_entropy_with_logits(x, t).dtype
    xg = x.clone().requires_grad_()
    ours = smoothing_ext.binary_cross_entropy_with_logits(xg, t, w, pos_weight=pw, reduction="none", label_smoothing=0.1)
    assert ours.dtype == ref_dtype == tdt  # PyTorch's loss has the target's dtype
    xr = x.double().requires_grad_()
    # a weight in neither the input's nor the accumulation dtype is used in the accumulation dtype
    ref = _oracle(xr, t, w.to(torch.float64 if xdt == torch.float64 else torch.float32), pw, "none", 0.1)
    rank = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
    loss_tol = min(xdt, tdt, key=rank.index)  # the output is rounded to the target's dtype
    assert_close(ours, ref, loss_tol if loss_tol != torch.float64 else torch.float32)
    (g,) = torch.autograd.grad(ours.sum(), xg)
    (gr,) = torch.autograd.grad(ref.sum(), xr)
    assert g.dtype == xdt
    assert_close(g, gr, min(xdt, torch.float32, key=rank.index))


def test_non_contiguous_and_expanded(device):
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(30, 20, generator=gen, device="cpu").to(device) * 3
    x = base.t()  # (20, 30), transposed
    t = torch.rand(30, 20, generator=gen).to(device).t()
    wbig = torch.rand(60, generator=gen).to(device)
    w = wbig[::2]  # strided (30,)
    pw = torch.rand(20, 1, generator=gen).to(device).expand(20, 30)  # expanded: period 20, inner 30
    _compare(x, t, w, pw, "none", 0.1, torch.float32)
    # an expanded target (stride 0) and a view whose data starts one element past an alignment
    t_exp = torch.rand(30, generator=gen).to(device).expand(20, 30)
    buf = torch.randn(20 * 30 + 1, generator=gen).to(device)
    x_off = buf[1:].view(20, 30)
    _compare(x_off, t_exp, w, None, "mean", 0.0, torch.float32, scale=4.0)
    # channels-last 4-D input
    x4 = torch.randn(2, 3, 4, 5, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    t4 = torch.rand(2, 3, 4, 5, generator=gen).to(device)
    _compare(x4, t4, torch.rand(3, 1, 1, generator=gen).to(device), None, "none", 0.3, torch.float32)


def test_caller_tensors_unchanged(device):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(8, 9, generator=gen).to(device).requires_grad_()
    t = torch.rand(8, 9, generator=gen).to(device).requires_grad_()
    w = torch.rand(9, generator=gen).to(device)
    pw = torch.rand(8, 1, generator=gen).to(device)
    before = [v.detach().clone() for v in (x, t, w, pw)]
    loss = smoothing_ext.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw, reduction="sum", label_smoothing=0.3)
    loss.backward()
    for a, b in zip((x, t, w, pw), before):
        assert torch.equal(a.detach(), b)


# ---------------------------------------------------------------------------------------------
# autograd, op registration, compile, autocast
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 2), (6,)], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_gradcheck(device, shape, reduction):
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(device).requires_grad_()
    t = torch.rand(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = (torch.rand(shape[-1], generator=gen, dtype=torch.float64) + 0.2).to(device)
    pw = (torch.rand(shape[-1], generator=gen, dtype=torch.float64) * 3).to(device)
    for weight, pos_weight, eps in ((w, pw, 0.2), (None, None, 0.0), (None, pw, 1.0)):
        assert torch.autograd.gradcheck(
            lambda x, t: smoothing_ext.binary_cross_entropy_with_logits(
                x, t, weight=weight, pos_weight=pos_weight, reduction=reduction, label_smoothing=eps
            ),
            (x, t),
        )


def test_target_gradient_formula(device):
    """d loss / d y = (1 - eps) w [-x + (pw - 1) softplus(-x)], against autograd of the oracle."""
    gen = torch.Generator().manual_seed(8)
    x = (torch.randn(5, 6, generator=gen, dtype=torch.float64) * 3).to(device)
    t = torch.rand(5, 6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = torch.rand(5, 1, generator=gen, dtype=torch.float64).to(device)
    pw = (torch.rand(6, generator=gen, dtype=torch.float64) * 3).to(device)
    (g,) = torch.autograd.grad(smoothing_ext.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw, reduction="sum", label_smoothing=0.3), t)
    tr = t.detach().clone().requires_grad_()
    ref = F.binary_cross_entropy_with_logits(x, tr * 0.7 + 0.15, weight=w, pos_weight=pw, reduction="sum")
    (gr,) = torch.autograd.grad(ref, tr)
    torch.testing.assert_close(g, gr, rtol=1e-12, atol=1e-12)


def test_opcheck(device):
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(5, 11, generator=gen).to(device).requires_grad_()
    t = torch.rand(5, 11, generator=gen).to(device)
    w = torch.rand(11, generator=gen).to(device)
    pw = torch.rand(5, 1, generator=gen).to(device)
    f = ops.binary_cross_entropy_with_logits_forward
    b = ops._binary_cross_entropy_with_logits_backward
    torch.library.opcheck(f, (x, t, w, pw, 0.1))
    torch.library.opcheck(f, (x, t, None, None, 0.0))
    torch.library.opcheck(f, (x, t.clone().requires_grad_(), None, pw, 0.5))
    g = torch.rand(5, 11, generator=gen).to(device)
    torch.library.opcheck(b, (g, x.detach(), t, w, pw, 0.1))
    torch.library.opcheck(b, (torch.ones(()).to(device).expand(5, 11), x.detach(), t, None, None, 0.0))
    xb = torch.randn(2, 3, 4, device=device, dtype=torch.bfloat16, requires_grad=True)
    tb = torch.rand(2, 3, 4, device=device, dtype=torch.bfloat16)
    torch.library.opcheck(f, (xb, tb, None, torch.rand(4, device=device), 0.1))
    torch.library.opcheck(b, (torch.rand(2, 3, 4, device=device), xb.detach(), tb, None, None, 0.1))


def test_torch_compile_fullgraph_matches_eager(device):
    torch._dynamo.reset()
    crit = smoothing_ext.BCEWithLogitsLoss(pos_weight=torch.rand(50, device=device) + 0.5, label_smoothing=0.1)

    def f(x, t, w):
        return smoothing_ext.binary_cross_entropy_with_logits(x, t, weight=w, label_smoothing=0.1) * 2.0 + crit(x, t)

    compiled = torch.compile(f, fullgraph=True)
    for n in (8, 12):
        x = torch.randn(n, 50, device=device, requires_grad=True)
        t = torch.rand(n, 50, device=device)
        w = torch.rand(50, device=device)
        eager = f(x, t, w)
        (ge,) = torch.autograd.grad(eager, x)
        comp = compiled(x, t, w)
        (gc,) = torch.autograd.grad(comp, x)
        assert_close(comp, eager, torch.float32)
        assert_close(gc, ge, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_autocast(device, dtype):
    """Under autocast PyTorch computes this loss in float32 (its autocast fp32 list): so do we, reading
    the reduced-precision logits directly; the loss is float32 and the gradients match."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 10).to(device)
    xin = torch.randn(8, 16, device=device)
    t = torch.rand(8, 10, device=device)
    pw = torch.rand(10, device=device) + 0.5
    with torch.autocast(device_type=device, dtype=dtype):
        logits = lin(xin)
        assert logits.dtype == dtype
        ours = smoothing_ext.binary_cross_entropy_with_logits(logits, t, pos_weight=pw, label_smoothing=0.1)
        ref = F.binary_cross_entropy_with_logits(logits, t * 0.9 + 0.05, pos_weight=pw)
        ours_none = smoothing_ext.binary_cross_entropy_with_logits(logits, t.to(dtype), reduction="none")
    assert ours.dtype == ref.dtype == torch.float32
    assert ours_none.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    g_ours = torch.autograd.grad(ours, lin.weight)[0]
    with torch.autocast(device_type=device, dtype=dtype):
        ref2 = F.binary_cross_entropy_with_logits(lin(xin), t * 0.9 + 0.05, pos_weight=pw)
    g_ref = torch.autograd.grad(ref2, lin.weight)[0]
    assert_close(g_ours, g_ref, dtype)


# ---------------------------------------------------------------------------------------------
# the sum op (reduction "mean"/"sum" without writing the element-wise loss)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape,wshape,pwshape",
    [((7,), None, None), ((3, 31), (31,), (31,)), ((5, 1031), (5, 1), None), ((2, 3, 70001), (), (70001,)),
     ((300, 1001), (300, 1001), (1001,))],
    ids=str,
)
def test_sum_op_matches_elementwise(device, dtype, shape, wshape, pwshape):
    gen = torch.Generator().manual_seed(21)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype).to(device)
    x.view(-1)[::97] = 60.0  # large logits too
    t = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    w = None if wshape is None else torch.rand(wshape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    pw = None if pwshape is None else (torch.rand(pwshape, generator=gen) * 3).to(dtype).to(device)
    s = ops.binary_cross_entropy_with_logits_sum(x, t, w, pw, 0.1)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert s.dtype == acc and s.shape == ()
    ref = ops.binary_cross_entropy_with_logits_forward(x, t, w, pw, 0.1).double().sum()
    # float64: only the summation order differs; float32: ~sqrt(n) roundings of partial sums
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.double(), ref, **tol)


def test_sum_op_empty(device):
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.empty(0, 5, dtype=dtype, device=device)
        s = ops.binary_cross_entropy_with_logits_sum(x, x, None, None, 0.1)
        assert s.shape == () and s.item() == 0.0
        assert s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)


def test_sum_op_deterministic(device):
    """Bit-identical across calls, and (CPU: fixed 64k-element blocks added in block order) across
    thread counts."""
    gen = torch.Generator().manual_seed(22)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = (torch.randn(5, 100003, generator=gen) * 3).to(dtype).to(device)
        t = torch.rand(5, 100003, generator=gen).to(dtype).to(device)
        w = torch.rand(100003, generator=gen).to(device)
        first = ops.binary_cross_entropy_with_logits_sum(x, t, w, None, 0.1)
        for _ in range(3):
            assert torch.equal(ops.binary_cross_entropy_with_logits_sum(x, t, w, None, 0.1), first)
        if device != "cpu":
            continue
        n = torch.get_num_threads()
        try:
            for k in (1, 2, 3):
                torch.set_num_threads(k)
                assert torch.equal(ops.binary_cross_entropy_with_logits_sum(x, t, w, None, 0.1), first), (dtype, k)
        finally:
            torch.set_num_threads(n)


def test_sum_op_opcheck(device):
    gen = torch.Generator().manual_seed(23)
    x = torch.randn(5, 11, generator=gen).to(device).requires_grad_()
    t = torch.rand(5, 11, generator=gen).to(device)
    w = torch.rand(11, generator=gen).to(device)
    pw = torch.rand(5, 1, generator=gen).to(device)
    f = ops.binary_cross_entropy_with_logits_sum
    torch.library.opcheck(f, (x, t, w, pw, 0.1))
    torch.library.opcheck(f, (x, t, None, None, 0.0))
    torch.library.opcheck(f, (x, t.clone().requires_grad_(), None, pw, 0.5))
    xb = torch.randn(2, 3, 4, device=device, dtype=torch.bfloat16, requires_grad=True)
    tb = torch.rand(2, 3, 4, device=device, dtype=torch.bfloat16)
    torch.library.opcheck(f, (xb, tb, None, torch.rand(4, device=device), 0.1))
    xd = torch.randn(3, 4, device=device, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(f, (xd, torch.rand_like(xd), None, None, 0.3))


@pytest.mark.parametrize("shape", [(4, 5), (3, 4, 2), (6,), ()], ids=str)
def test_sum_op_gradcheck(device, shape):
    gen = torch.Generator().manual_seed(24)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(device).requires_grad_()
    t = torch.rand(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    last = shape[-1] if shape else 1
    w = (torch.rand(last, generator=gen, dtype=torch.float64) + 0.2).to(device)
    pw = (torch.rand(last, generator=gen, dtype=torch.float64) * 3).to(device)
    for weight, pos_weight, eps in ((w, pw, 0.2), (None, None, 0.0), (None, pw, 1.0)):
        if not shape and weight is not None:
            weight = weight.view(())
        if not shape and pos_weight is not None:
            pos_weight = pos_weight.view(())
        assert torch.autograd.gradcheck(
            lambda x, t: ops.binary_cross_entropy_with_logits_sum(x, t, weight, pos_weight, eps), (x, t)
        )


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_instruction_set_variants_agree(capability):
    """The lower instruction-set copies of the kernels (forced through the environment, in a
    subprocess: the choice is made once per process); the in-process tests cover the best one."""
    code = r"""
import torch, torch.nn.functional as F, smoothing_ext
torch.manual_seed(0)
for dt, tol in [(torch.float32, 3e-5), (torch.float64, 1e-10), (torch.bfloat16, 2e-2), (torch.float16, 3e-3)]:
    for shape, wshape in [((9, 33), (33,)), ((5, 1031), (5, 1)), ((3, 7, 5), ())]:
        x = (torch.randn(shape) * 4).to(dt).requires_grad_()
        t = torch.rand(shape).to(dt)
        w = torch.rand(wshape).to(dt)
        pw = (torch.rand(shape[-1]) * 3).to(dt)
        l = smoothing_ext.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw, reduction="none", label_smoothing=0.1)
        (g,) = torch.autograd.grad(l.float().sum(), x)
        xr = x.detach().double().requires_grad_()
        lr = F.binary_cross_entropy_with_logits(xr, t.double() * 0.9 + 0.05, weight=w.double(), pos_weight=pw.double(), reduction="none")
        (gr,) = torch.autograd.grad(lr.sum(), xr)
        e = max(((l.double() - lr).abs() / (1 + lr.abs())).max().item(), (g.double() - gr).abs().max().item())
        assert e < tol, (dt, shape, e)
        s = torch.ops.smoothing_ext.binary_cross_entropy_with_logits_sum(x.detach(), t, w, pw, 0.1)
        le = torch.ops.smoothing_ext.binary_cross_entropy_with_logits_forward(x.detach(), t, w, pw, 0.1)
        assert abs(s.item() - le.double().sum().item()) <= 1e-5 * (1 + abs(s.item())), (dt, shape, s)
print(torch.ops.smoothing_ext._cpu_capability())
"""
    env = dict(os.environ, SMOOTHING_EXT_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    order = ["default", "avx2", "avx512"]
    assert order.index(out.stdout.strip().splitlines()[-1]) <= order.index(capability)


# ---------------------------------------------------------------------------------------------
# module
# ---------------------------------------------------------------------------------------------


def test_module_equivalence(device):
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(7, 6, generator=gen).to(device)
    t = torch.rand(7, 6, generator=gen).to(device)
    w = torch.rand(6, generator=gen).to(device)
    pw = torch.rand(6, generator=gen).to(device) * 2
    for reduction in ("none", "mean", "sum"):
        ours = smoothing_ext.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw)
        theirs = torch.nn.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw)
        assert_close(ours(x, t), theirs(x, t), torch.float32)
        sm = smoothing_ext.BCEWithLogitsLoss(weight=w, reduction=reduction, pos_weight=pw, label_smoothing=0.2)
        fn = smoothing_ext.binary_cross_entropy_with_logits(x, t, w, pos_weight=pw, reduction=reduction, label_smoothing=0.2)
        torch.testing.assert_close(sm(x, t), fn)
    m = smoothing_ext.BCEWithLogitsLoss(weight=w, pos_weight=pw, label_smoothing=0.1)
    assert set(m.state_dict()) == set(torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw).state_dict())
    m = m.to(torch.float64)
    assert m.weight.dtype == torch.float64 and m.pos_weight.dtype == torch.float64
    assert "label_smoothing=0.1" in repr(m)
    with pytest.raises(ValueError, match="label_smoothing"):
        smoothing_ext.BCEWithLogitsLoss(label_smoothing=2.0)
    with pytest.raises(ValueError, match="reduction"):  # checked in the forward, as in PyTorch
        smoothing_ext.BCEWithLogitsLoss(reduction="avg")(x, t)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

_X = torch.randn(4, 5)
_T = torch.rand(4, 5)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(target=torch.rand(4, 6)), ValueError, r"target size \(4, 6\) must be the same as input size \(4, 5\)"),
        (dict(target=torch.rand(5)), ValueError, r"target size \(5,\)"),
        (dict(target=torch.ones(4, 5, dtype=torch.long)), TypeError, r"target must be a floating-point .*int64"),
        (dict(input=torch.ones(4, 5, dtype=torch.long)), TypeError, r"input must be a floating-point .*int64 with shape \(4, 5\)"),
        (dict(weight=torch.ones(4)), ValueError, r"weight of shape \[4\] is not broadcastable to the input's shape \[4, 5\]"),
        (dict(weight=torch.ones(2, 4, 5)), ValueError, r"weight of shape \[2, 4, 5\] is not broadcastable"),
        (dict(pos_weight=torch.ones(4)), ValueError, r"pos_weight of shape \[4\] is not broadcastable .*\[4, 5\]"),
        (dict(pos_weight=torch.ones(5, dtype=torch.int32)), TypeError, r"pos_weight must be a floating-point .*int32"),
        (dict(weight=[1.0] * 5), TypeError, r"weight must be a Tensor or None, got list"),
        (dict(label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
        (dict(label_smoothing=-0.1), ValueError, r"label_smoothing"),
        (dict(reduction="avg"), ValueError, r"reduction must be one of .*'avg'"),
        (dict(target=torch.rand(4, 5, device="meta")), RuntimeError, r"target is on meta but input is on cpu"),
        (dict(weight=torch.rand(5, device="meta")), RuntimeError, r"weight is on meta but input is on cpu"),
        (dict(weight=torch.rand(5, requires_grad=True)), RuntimeError, r"not differentiable with respect to weight"),
    ],
)
def test_errors(kwargs, exc, match):
    args = dict(input=_X, target=_T)
    args.update(kwargs)
    before = args["input"].clone()
    with pytest.raises(exc, match=match):
        smoothing_ext.binary_cross_entropy_with_logits(**args)
    assert torch.equal(before, args["input"])


def test_errors_through_ops_directly():
    f = ops.binary_cross_entropy_with_logits_forward
    b = ops._binary_cross_entropy_with_logits_backward
    with pytest.raises(ValueError, match=r"target must have the input's shape \[4, 5\], got target of shape \[5, 4\]"):
        f(_X, torch.rand(5, 4), None, None, 0.0)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 2"):
        f(_X, _T, None, None, 2.0)
    with pytest.raises(ValueError, match=r"pos_weight of shape \[3\] is not broadcastable"):
        f(_X, _T, None, torch.ones(3), 0.0)
    with pytest.raises(TypeError, match=r"target must be a floating-point tensor .*Long"):
        f(_X, torch.ones(4, 5, dtype=torch.long), None, None, 0.0)
    with pytest.raises(TypeError, match=r"input must be float32, float64, bfloat16 or float16 logits, got Int"):
        f(torch.ones(4, 5, dtype=torch.int32), _T, None, None, 0.0)
    with pytest.raises(ValueError, match=r"grad_loss must have the input's shape \[4, 5\], got \[4\]"):
        b(torch.ones(4), _X, _T, None, None, 0.0)
    with pytest.raises(TypeError, match=r"grad_loss must be a floating-point"):
        b(torch.ones(4, 5, dtype=torch.long), _X, _T, None, None, 0.0)
