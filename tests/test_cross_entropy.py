"""Forward and backward of smoothing_ext.cross_entropy against F.cross_entropy and a float64 reference."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import smoothing_ext
from smoothing_ext._reference import reference_cross_entropy
from helpers import assert_close, make_target

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
REDUCTIONS = ["none", "mean", "sum"]


def rows_for(C: int) -> int:
    return 48 if C <= 1000 else 3


def run_both(x, t, g_seed=0, **kw):
    """Loss and input-gradient of ours and of the float64 reference, with a random (non-uniform)
    upstream gradient for reduction='none'."""
    xa = x.detach().clone().requires_grad_()
    xr = x.detach().double().clone().requires_grad_()
    kw_ref = dict(kw)
    if kw_ref.get("weight") is not None:
        kw_ref["weight"] = kw_ref["weight"].double()
    ours = smoothing_ext.cross_entropy(xa, t, **kw)
    ref = reference_cross_entropy(xr, t, **kw_ref)
    gen = torch.Generator().manual_seed(g_seed)
    up = torch.rand(ref.shape, generator=gen, dtype=torch.float64).to(x.device) + 0.5
    (ours.double() * up).sum().backward()
    (ref * up).sum().backward()
    return ours, ref, xa.grad, xr.grad


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("C", [1, 2, 3, 10, 1000, 32003])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_index_targets_grid(device, dtype, C, eps, weighted):
    gen = torch.Generator().manual_seed(C * 7 + int(eps * 10) + weighted)
    N = rows_for(C)
    x = (torch.randn(N, C, generator=gen) * 4).to(dtype).to(device)
    t = make_target((N,), C, ignore_index=-100, ignore_frac=0.2, generator=gen, device=device)
    w = (torch.rand(C, generator=gen) + 0.1).to(dtype).to(device) if weighted else None
    for red in REDUCTIONS:
        ours, ref, g_ours, g_ref = run_both(x, t, weight=w, reduction=red, label_smoothing=eps)
        assert ours.dtype == dtype and ours.shape == ref.shape
        scale = 4.0 if red == "sum" else 1.0
        assert_close(ours, ref, dtype, scale=scale * (4 if C > 1000 else 1), msg=f"loss {red}")
        assert_close(g_ours, g_ref, dtype, msg=f"grad {red}")
        assert g_ours.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_matches_torch_cross_entropy(device, dtype, reduction):
    """The contract: F.cross_entropy's numbers for every combination of options."""
    gen = torch.Generator().manual_seed(1)
    cases = []
    for C, shape in [(10, (32,)), (7, (4, 5, 6)), (13, ())]:
        in_shape = (C,) if shape == () else (shape[0], C, *shape[1:])
        cases.append((in_shape, shape, C))
    for (in_shape, tshape, C), eps, weighted, ii in itertools.product(
        cases, [0.0, 0.2, 1.0], [False, True], [-100, 0, 3, 1000, -1]
    ):
        x = torch.randn(in_shape, generator=gen, dtype=dtype).to(device)
        t = make_target(tshape, C, generator=gen, device=device)
        if t.numel() > 1:
            t.view(-1)[::3] = ii  # some ignored positions
        elif ii in range(C):
            t.fill_(ii)
        w = (torch.rand(C, generator=gen, dtype=dtype) + 0.5).to(device) if weighted else None
        ours = smoothing_ext.cross_entropy(x, t, weight=w, ignore_index=ii, reduction=reduction, label_smoothing=eps)
        ref = F.cross_entropy(x, t, weight=w, ignore_index=ii, reduction=reduction, label_smoothing=eps)
        assert_close(ours, ref, dtype, msg=f"{in_shape} eps={eps} weighted={weighted} ignore_index={ii}")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("shape", [(37,), (16, 10), (3, 1000), (2, 32003), (4, 5, 6, 7)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_probability_targets(device, dtype, shape, eps, weighted):
    gen = torch.Generator().manual_seed(len(shape) * 100 + shape[-1])
    C = shape[0] if len(shape) == 1 else shape[1]
    class_dim = 0 if len(shape) == 1 else 1
    x = (torch.randn(shape, generator=gen) * 3).to(dtype).to(device)
    y = torch.softmax(torch.randn(shape, generator=gen) * 2, dim=class_dim).to(dtype).to(device)
    w = (torch.rand(C, generator=gen) + 0.1).to(dtype).to(device) if weighted else None
    for red in REDUCTIONS:
        ours, ref, g_ours, g_ref = run_both(x, y, weight=w, reduction=red, label_smoothing=eps)
        assert_close(ours, ref, dtype, scale=4.0 if red == "sum" else 1.0, msg=f"loss {red}")
        assert_close(g_ours, g_ref, dtype, msg=f"grad {red}")
    if dtype in (torch.float32, torch.float64):
        for red in REDUCTIONS:
            ref = F.cross_entropy(x, y, weight=w, reduction=red, label_smoothing=eps)
            ours = smoothing_ext.cross_entropy(x, y, weight=w, reduction=red, label_smoothing=eps)
            assert_close(ours, ref, dtype, msg=f"vs F.cross_entropy {red}")


@pytest.mark.parametrize("spatial", [(5, 7), (16,), (4, 8), (33,), (1, 1)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kdim_inputs(device, dtype, spatial):
    """(N, C, d1, ..., dk): lanes across the spatial positions, with a ragged end when the
    positions are not a multiple of the vector width."""
    gen = torch.Generator().manual_seed(sum(spatial))
    N, C = 3, 21
    x = (torch.randn(N, C, *spatial, generator=gen) * 3).to(dtype).to(device)
    t = make_target((N, *spatial), C, ignore_index=-100, ignore_frac=0.2, generator=gen, device=device)
    w = (torch.rand(C, generator=gen) + 0.1).to(dtype).to(device)
    for red, eps, weight in itertools.product(REDUCTIONS, [0.0, 0.1], [None, w]):
        ours, ref, g_ours, g_ref = run_both(x, t, weight=weight, reduction=red, label_smoothing=eps)
        assert ours.shape == ref.shape
        assert_close(ours, ref, dtype, scale=4.0 if red == "sum" else 1.0, msg=f"loss {red} eps={eps}")
        assert_close(g_ours, g_ref, dtype, msg=f"grad {red} eps={eps}")


@pytest.mark.parametrize("tdtype", [torch.int64, torch.int32, torch.uint8], ids=str)
def test_target_dtypes(device, tdtype):
    x = torch.randn(20, 7, device=device)
    t = torch.randint(0, 7, (20,), device=device)
    ref = F.cross_entropy(x, t, label_smoothing=0.1)
    ours = smoothing_ext.cross_entropy(x, t.to(tdtype), label_smoothing=0.1)
    assert_close(ours, ref, torch.float32)


def test_empty_batch(device):
    for red in REDUCTIONS:
        x = torch.randn(0, 5, device=device, requires_grad=True)
        t = torch.zeros(0, dtype=torch.long, device=device)
        ours = smoothing_ext.cross_entropy(x, t, reduction=red, label_smoothing=0.1)
        ref = F.cross_entropy(x.detach(), t, reduction=red, label_smoothing=0.1)
        assert ours.shape == ref.shape
        assert_close(ours, ref, torch.float32, msg=red)
        ours.sum().backward()
        assert x.grad.shape == x.shape
    # empty spatial dim
    x = torch.randn(2, 5, 0, device=device)
    t = torch.zeros(2, 0, dtype=torch.long, device=device)
    assert smoothing_ext.cross_entropy(x, t, reduction="none").shape == (2, 0)


def test_all_ignored_mean_is_nan(device):
    x = torch.randn(6, 4, device=device, requires_grad=True)
    t = torch.full((6,), -100, dtype=torch.long, device=device)
    ours = smoothing_ext.cross_entropy(x, t, label_smoothing=0.1)
    ref = F.cross_entropy(x.detach(), t, label_smoothing=0.1)
    assert torch.isnan(ours) and torch.isnan(ref)
    s = smoothing_ext.cross_entropy(x, t, reduction="sum", label_smoothing=0.1)
    assert s.item() == 0.0
    s.backward()
    assert torch.count_nonzero(x.grad) == 0


def test_ignored_rows_get_zero_grad_and_never_read_weight(device):
    x = torch.randn(5, 4, device=device, requires_grad=True)
    t = torch.tensor([0, 7, 1, 2, 7], device=device)  # 7 is the ignore_index here, >= C
    w = torch.rand(4, device=device)
    loss = smoothing_ext.cross_entropy(x, t, weight=w, ignore_index=7, reduction="none", label_smoothing=0.2)
    xr = x.detach().clone().requires_grad_()
    ref = F.cross_entropy(xr, t, weight=w, ignore_index=7, reduction="none", label_smoothing=0.2)
    assert_close(loss, ref, torch.float32)
    assert loss[1] == 0 and loss[4] == 0
    (g,) = torch.autograd.grad(loss.sum(), x)
    (gr,) = torch.autograd.grad(ref.sum(), xr)
    assert_close(g, gr, torch.float32)
    assert torch.count_nonzero(g[1]) == 0 and torch.count_nonzero(g[4]) == 0


def test_ignore_index_out_of_range_values(device):
    x = torch.randn(6, 5, device=device, requires_grad=True)
    for ii in [-100, -1, 0, 4, 5, 123456789]:
        t = torch.tensor([0, 1, 2, 3, 4, 0], device=device)
        t[1] = ii if not (0 <= ii < 5) else t[1]
        t[3] = ii
        ours = smoothing_ext.cross_entropy(x, t, ignore_index=ii, reduction="none", label_smoothing=0.1)
        ref = F.cross_entropy(x.detach(), t, ignore_index=ii, reduction="none", label_smoothing=0.1)
        assert_close(ours, ref, torch.float32, msg=f"ignore_index={ii}")
        g = torch.autograd.grad(ours.sum(), x)[0]
        xr = x.detach().clone().requires_grad_()
        gr = torch.autograd.grad(F.cross_entropy(xr, t, ignore_index=ii, reduction="sum", label_smoothing=0.1), xr)[0]
        assert_close(g, gr, torch.float32, msg=f"grad ignore_index={ii}")


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_minus_inf_logits_in_other_classes(device, eps):
    x = torch.randn(8, 50, device=device)
    t = torch.randint(0, 50, (8,), device=device)
    mask = torch.rand(8, 50, device=device) < 0.3
    mask[torch.arange(8), t] = False
    x = x.masked_fill(mask, float("-inf")).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    ours = smoothing_ext.cross_entropy(x, t, reduction="none", label_smoothing=eps)
    ref = F.cross_entropy(xr, t, reduction="none", label_smoothing=eps)
    assert_close(ours, ref, torch.float32)  # finite for eps = 0, +inf for eps > 0, as in PyTorch
    (g,) = torch.autograd.grad(ours.clamp(max=1e30).sum(), x)
    (gr,) = torch.autograd.grad(ref.clamp(max=1e30).sum(), xr)
    assert torch.isfinite(g).all()
    assert_close(g, gr, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_large_logits(device, dtype):
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(16, 300, generator=gen).sign() * 1e4).to(dtype).to(device)
    x[:, ::7] = 0
    t = torch.randint(0, 300, (16,), generator=gen).to(device)
    for eps in [0.0, 0.1]:
        ours, ref, g, gr = run_both(x, t, reduction="none", label_smoothing=eps)
        # loss of order 1e4: relative tolerance of the dtype on the magnitude
        assert_close(ours, ref, dtype, scale=10.0)
        assert torch.isfinite(g).all()
        assert_close(g, gr, dtype)


def test_confident_prediction_keeps_true_class_gradient(device):
    """p_t -> 1: the true-class gradient -(1 - p_t) must not cancel to 0 (fp32 sums of
    1 + tiny terms would lose it)."""
    C = 32000
    x = torch.full((2, C), -20.0, device=device)
    x[:, 5] = 0.0
    t = torch.tensor([5, 5], device=device)
    x.requires_grad_()
    loss = smoothing_ext.cross_entropy(x, t, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    xr = x.detach().double().requires_grad_()
    (gr,) = torch.autograd.grad(F.cross_entropy(xr, t, reduction="sum"), xr)
    # 1 - p_t = 31999 * exp(-20) ~ 6.6e-5 (well above fp32's ulp of 1); per-element exp(-20) ~ 2e-9
    torch.testing.assert_close(g[:, 5].double(), gr[:, 5], rtol=1e-4, atol=0)
    assert_close(loss, F.cross_entropy(xr.detach(), t, reduction="sum"), torch.float32)


def test_non_contiguous_inputs(device):
    base = torch.randn(40, 30, device=device)
    x = base.t()[:, ::2]  # (30, 20) strided view, C = 20
    t = torch.randint(0, 20, (60,), device=device)[::2]
    xc = x.contiguous()
    for red in REDUCTIONS:
        assert_close(
            smoothing_ext.cross_entropy(x, t, reduction=red, label_smoothing=0.1),
            F.cross_entropy(xc, t.contiguous(), reduction=red, label_smoothing=0.1),
            torch.float32,
        )
    xg = x.detach().clone().requires_grad_()
    x2 = x.detach().t().contiguous().t()  # same values, transposed storage
    x2.requires_grad_()
    smoothing_ext.cross_entropy(x2, t, label_smoothing=0.1).backward()
    F.cross_entropy(xg, t, label_smoothing=0.1).backward()
    assert_close(x2.grad, xg.grad, torch.float32)
    # channels-last K-dim input
    x4 = torch.randn(2, 5, 3, 4, device=device).to(memory_format=torch.channels_last)
    t4 = torch.randint(0, 5, (2, 3, 4), device=device)
    assert_close(smoothing_ext.cross_entropy(x4, t4, reduction="none"), F.cross_entropy(x4, t4, reduction="none"), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_callers_tensors_not_modified(device, dtype):
    x = torch.randn(16, 100, device=device).to(dtype)
    t = torch.randint(0, 100, (16,), device=device)
    t[3] = -100
    w = torch.rand(100, device=device).to(dtype)
    y = torch.softmax(torch.randn(16, 100, device=device), 1).to(dtype)
    copies = [a.clone() for a in (x, t, w, y)]
    xx = x.clone().requires_grad_()
    smoothing_ext.cross_entropy(xx, t, weight=w, label_smoothing=0.1).backward()
    smoothing_ext.cross_entropy(xx, y, weight=w, label_smoothing=0.1).backward()
    for a, b in zip((xx.detach(), t, w, y), copies):
        assert torch.equal(a, b)


def test_autocast_reads_reduced_logits_and_returns_float32():
    x = torch.randn(32, 1000).to(torch.bfloat16).requires_grad_()
    t = torch.randint(0, 1000, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = smoothing_ext.cross_entropy(x, t, label_smoothing=0.1)
        ref = F.cross_entropy(x, t, label_smoothing=0.1)
    assert ours.dtype == torch.float32 and ref.dtype == torch.float32
    assert_close(ours, ref, torch.float32, scale=10.0)
    ours.backward()
    assert x.grad.dtype == torch.bfloat16
    xr = x.detach().double().requires_grad_()
    reference_cross_entropy(xr, t, label_smoothing=0.1).backward()
    assert_close(x.grad, xr.grad, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        none = smoothing_ext.cross_entropy(x, t, reduction="none")
    assert none.dtype == torch.float32


def test_modules(device):
    w = torch.rand(10, device=device)
    x = torch.randn(8, 10, device=device)
    t = torch.randint(0, 10, (8,), device=device)
    for kw in [dict(), dict(weight=w, label_smoothing=0.1, reduction="sum", ignore_index=3)]:
        ours = smoothing_ext.CrossEntropyLoss(**kw)(x, t)
        ref = torch.nn.CrossEntropyLoss(**kw)(x, t)
        assert_close(ours, ref, torch.float32)
    ls = smoothing_ext.LabelSmoothingCrossEntropy()
    assert ls.label_smoothing == 0.1
    assert_close(ls(x, t), F.cross_entropy(x, t, label_smoothing=0.1), torch.float32)
    m = smoothing_ext.CrossEntropyLoss(weight=w)
    assert "weight" in m.state_dict()
    assert repr(m) == repr(torch.nn.CrossEntropyLoss(weight=w))  # PyTorch's repr


def test_reported_cpu_capability():
    cap = torch.ops.smoothing_ext._cpu_capability()
    assert cap in ("default", "avx2", "avx512")


@pytest.mark.parametrize("kw", [{}, dict(z_loss=1e-2), dict(grad_in_forward=True)])
def test_uint8_target_never_aliases_ignore_index(kw):
    """-100 as uint8 is 156: a class-156 target of a uint8 tensor is a real class, not ignored
    (mean denominator, z-loss mask and the fused path compare in int64)."""
    x = torch.randn(2, 200, dtype=torch.float64, requires_grad=True)
    t8 = torch.tensor([156, 3], dtype=torch.uint8)
    ours = smoothing_ext.cross_entropy(x, t8, label_smoothing=0.1, **kw)
    ref = F.cross_entropy(x, t8.long(), label_smoothing=0.1)
    if "z_loss" in kw:
        ref = ref + kw["z_loss"] * torch.logsumexp(x, 1).pow(2).mean()
    torch.testing.assert_close(ours, ref)
    (g,) = torch.autograd.grad(ours, x)
    (gr,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(g, gr)
