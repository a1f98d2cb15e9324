"""Beyond F.cross_entropy: off-target smoothing, z-loss, soft-capping, forward-only and fused-gradient
modes. Each is compared with a plain-PyTorch formula written independently of the float64 reference
(and with the float64 reference), in every dtype, and checked with gradcheck in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import smoothing_ext
from smoothing_ext._reference import reference_cross_entropy
from helpers import assert_close, make_target

ops = torch.ops.smoothing_ext
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _data(device, shape, dtype, scale=3.0, seed=0, ignore_frac=0.2):
    gen = torch.Generator().manual_seed(seed)
    C = shape[0] if len(shape) == 1 else shape[1]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(device)
    tshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    t = make_target(tshape, C, ignore_index=-100, ignore_frac=ignore_frac if len(shape) > 1 else 0.0,
                    device=device, generator=gen)
    w = (torch.rand(C, generator=gen, dtype=torch.float64) + 0.3).to(device)
    return x, t, w, C


def _grad(fn, x, upstream=None):
    x = x.detach().requires_grad_()
    out = fn(x)
    g = torch.ones_like(out) if upstream is None else upstream.to(out.dtype)
    (gx,) = torch.autograd.grad(out, x, g)
    return out.detach(), gx


# ---------------------------------------------------------------------------------------------
# plain-PyTorch formulas (the oracles of this file)
# ---------------------------------------------------------------------------------------------
def fairseq_style(x, t, eps, ignore_index=-100, reduction="mean", weight=None):
    """Off-target smoothing as fairseq/Megatron write it: (1 - eps) nll + eps/(C-1) sum_{j != t} -log p_j,
    per-class weights applied to each class's term."""
    x = x.double()
    class_dim = 0 if x.dim() == 1 else 1
    C = x.shape[class_dim]
    logp = torch.log_softmax(x, class_dim)
    w = torch.ones(C, dtype=torch.float64, device=x.device) if weight is None else weight.double()
    shape = [1] * x.dim()
    shape[class_dim] = C
    wl = -logp * w.view(shape)
    valid = t != ignore_index
    safe = torch.where(valid, t, 0).long()
    nll = wl.gather(class_dim, safe.unsqueeze(class_dim)).squeeze(class_dim)
    others = wl.sum(class_dim) - nll
    loss = (1 - eps) * nll + (eps / (C - 1) if C > 1 else 0.0) * others
    loss = torch.where(valid, loss, 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / torch.where(valid, w[safe], 0.0).sum()


# ---------------------------------------------------------------------------------------------
# off-target smoothing
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(16, 1000), (4, 7, 3, 5), (13,), (9, 2)], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_off_target_matches_fairseq_formula(device, dtype, shape, reduction, weighted):
    x, t, w, C = _data(device, shape, dtype)
    w = w if weighted else None
    eps = 0.2
    upstream = torch.rand(t.shape if reduction == "none" else (), dtype=torch.float64, device=device)
    out, gx = _grad(lambda v: smoothing_ext.cross_entropy(
        v, t, weight=None if w is None else w.to(dtype), reduction=reduction, label_smoothing=eps,
        smoothing_mode="off_target"), x, upstream)
    ref, gref = _grad(lambda v: fairseq_style(v, t, eps, reduction=reduction,
                                              weight=None if w is None else w.to(dtype)), x.double(), upstream)
    scale = 4.0 if reduction == "sum" else 1.0
    assert_close(out, ref, dtype, scale=scale)
    assert_close(gx, gref, dtype)


def test_off_target_target_keeps_one_minus_eps(device):
    """The smoothed target distribution itself: 1 - eps on the target, eps / (C - 1) elsewhere. With
    all logits equal, loss = -log(1/C) whatever q is, so the gradient (p - q) exposes q."""
    C, eps = 10, 0.3
    x = torch.zeros(1, C, dtype=torch.float64, device=device, requires_grad=True)
    t = torch.tensor([4], device=device)
    loss = smoothing_ext.cross_entropy(x, t, label_smoothing=eps, smoothing_mode="off_target")
    (g,) = torch.autograd.grad(loss, x)
    q = 1.0 / C - g[0]
    expected = torch.full((C,), eps / (C - 1), dtype=torch.float64, device=device)
    expected[4] = 1 - eps
    torch.testing.assert_close(q, expected, rtol=1e-12, atol=1e-12)


def test_off_target_single_class_and_probability_targets(device):
    # C == 1: nothing to smooth; the loss is exactly 0 (lse == x_t)
    x = torch.randn(5, 1, dtype=torch.float64, device=device)
    t = torch.zeros(5, dtype=torch.long, device=device)
    out = smoothing_ext.cross_entropy(x, t, label_smoothing=0.5, smoothing_mode="off_target", reduction="none")
    torch.testing.assert_close(out, torch.zeros_like(out))
    # probability targets: q = (1 - eps) y + eps (1 - y) / (C - 1); for one-hot y that is the index case
    x, t, _, C = _data(device, (12, 9), torch.float64, ignore_frac=0.0)
    y = F.one_hot(t, C).double()
    a = smoothing_ext.cross_entropy(x, y, label_smoothing=0.3, smoothing_mode="off_target", reduction="none")
    b = smoothing_ext.cross_entropy(x, t, label_smoothing=0.3, smoothing_mode="off_target", reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # soft y: against -sum q log p written out
    y = torch.softmax(torch.randn(12, 9, dtype=torch.float64, device=device), 1)
    q = 0.7 * y + 0.3 * (1 - y) / 8
    ref = -(q * torch.log_softmax(x, 1)).sum(1)
    out = smoothing_ext.cross_entropy(x, y, label_smoothing=0.3, smoothing_mode="off_target", reduction="none")
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# z-loss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", [(16, 300), (3, 11, 4, 5)], ids=str)
def test_z_loss_matches_plain_formula(device, dtype, reduction, shape):
    x, t, w, C = _data(device, shape, dtype)
    z = 1e-3
    upstream = torch.rand(t.shape if reduction == "none" else (), dtype=torch.float64, device=device)

    def plain(v):
        v64 = v.double()
        rows = F.cross_entropy(v64, t, weight=w, reduction="none", label_smoothing=0.1)
        valid = t != -100
        rows = rows + torch.where(valid, z * torch.logsumexp(v64, 1) ** 2, 0.0)
        if reduction == "none":
            return rows
        if reduction == "sum":
            return rows.sum()
        return rows.sum() / torch.where(valid, w[torch.where(valid, t, 0)], 0.0).sum()

    out, gx = _grad(lambda v: smoothing_ext.cross_entropy(v, t, weight=w.to(dtype), reduction=reduction,
                                                          label_smoothing=0.1, z_loss=z), x, upstream)
    ref, gref = _grad(plain, x.double(), upstream)
    assert_close(out, ref, dtype, scale=4.0 if reduction == "sum" else 1.0)
    assert_close(gx, gref, dtype)


def test_return_z_loss_term(device):
    x, t, w, C = _data(device, (20, 50), torch.float64)
    z = 0.01
    loss, zt = smoothing_ext.cross_entropy(x, t, weight=w, label_smoothing=0.1, z_loss=z, return_z_loss=True)
    base = F.cross_entropy(x, t, weight=w, label_smoothing=0.1)
    valid = t != -100
    expected_z = torch.where(valid, z * torch.logsumexp(x, 1) ** 2, 0.0).sum() / w[t[valid]].sum()
    torch.testing.assert_close(zt, expected_z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, base + expected_z, rtol=1e-12, atol=1e-12)
    assert not zt.requires_grad
    # z_loss = 0: the term is 0 and the loss is PyTorch's
    loss0, zt0 = smoothing_ext.cross_entropy(x, t, label_smoothing=0.1, return_z_loss=True)
    assert zt0.item() == 0.0
    torch.testing.assert_close(loss0, F.cross_entropy(x, t, label_smoothing=0.1), rtol=1e-12, atol=1e-12)
    # probability targets: every row gets the term, mean over rows
    y = torch.softmax(torch.randn(20, 50, dtype=torch.float64, device=device), 1)
    lp, zp = smoothing_ext.cross_entropy(x, y, z_loss=z, return_z_loss=True)
    torch.testing.assert_close(zp, (z * torch.logsumexp(x, 1) ** 2).mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp, F.cross_entropy(x, y) + zp, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# soft-capping
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(16, 1000), (3, 21, 5, 7), (33,)], ids=str)
@pytest.mark.parametrize("prob", [False, True])
def test_softcap_matches_capped_cross_entropy(device, dtype, shape, prob):
    x, t, w, C = _data(device, shape, dtype, scale=20.0)  # |x| well above the cap
    cap = 7.5
    class_dim = 0 if len(shape) == 1 else 1
    tgt = torch.softmax(torch.randn(shape, dtype=torch.float64, device=device), class_dim).to(dtype) if prob else t
    upstream = torch.rand(t.shape, dtype=torch.float64, device=device)

    def plain(v):
        v64 = v.double()
        return F.cross_entropy(cap * torch.tanh(v64 / cap), tgt.double() if prob else tgt, weight=w,
                               reduction="none", label_smoothing=0.1)

    out, gx = _grad(lambda v: smoothing_ext.cross_entropy(v, tgt, weight=w.to(dtype), reduction="none",
                                                          label_smoothing=0.1, softcap=cap), x, upstream)
    ref, gref = _grad(plain, x.double(), upstream)
    assert_close(out, ref, dtype)
    assert_close(gx, gref, dtype)


def test_softcap_huge_logits_stay_finite(device):
    x = torch.tensor([[1e4, -1e4, 0.0, 3e38], [-3e38, 5.0, 1e4, 1e4]], device=device, requires_grad=True)
    t = torch.tensor([0, 2], device=device)
    loss = smoothing_ext.cross_entropy(x, t, softcap=30.0, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    ref = F.cross_entropy(30.0 * torch.tanh(x.detach().double() / 30.0), t, reduction="none")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(g).all()
    # a logit deep in the saturated region has (numerically) no gradient
    assert g[0, 3].abs().item() < 1e-6


# ---------------------------------------------------------------------------------------------
# gradcheck in float64 of every new path
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(smoothing_mode="off_target"), dict(softcap=2.5), dict(z_loss=0.05),
                                dict(smoothing_mode="off_target", softcap=1.5, z_loss=0.02)], ids=str)
@pytest.mark.parametrize("shape", [(6, 9), (3, 5, 2, 3), (7,)], ids=str)
def test_gradcheck_features(device, kw, shape):
    x, t, w, C = _data(device, shape, torch.float64, scale=2.0)
    x.requires_grad_()
    for red in ["none", "mean", "sum"]:
        assert torch.autograd.gradcheck(
            lambda v: smoothing_ext.cross_entropy(v, t, weight=w, reduction=red, label_smoothing=0.15, **kw), (x,))
    class_dim = 0 if len(shape) == 1 else 1
    y = torch.softmax(torch.randn(shape, dtype=torch.float64, device=device), class_dim).requires_grad_()
    # probability targets: gradients w.r.t. the logits and the target
    assert torch.autograd.gradcheck(
        lambda v, yy: smoothing_ext.cross_entropy(v, yy, weight=w, reduction="sum", label_smoothing=0.15, **kw),
        (x, y))


def test_gradcheck_ops_with_new_arguments(device):
    x, t, w, C = _data(device, (5, 8), torch.float64, scale=2.0)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: ops.cross_entropy_forward(v, t, w, -100, 0.2, True, 1.7), (x,))
    y = torch.softmax(torch.randn(5, 8, dtype=torch.float64, device=device), 1)
    assert torch.autograd.gradcheck(lambda v: ops.cross_entropy_prob_forward(v, y, w, 0.2, True, 1.7), (x,))


# ---------------------------------------------------------------------------------------------
# fused gradient mode
# ---------------------------------------------------------------------------------------------
FUSED_KW = [dict(), dict(smoothing_mode="off_target", z_loss=1e-3), dict(softcap=5.0, z_loss=1e-3)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(32, 1000), (4, 9, 3, 70), (17,)], ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("kw", FUSED_KW, ids=["plain", "off_target+z", "softcap+z"])
def test_fused_matches_reference(device, dtype, shape, reduction, inplace, kw):
    """Per-element upstream gradients (reduction='none' with random grads) and scalar ones (mean/sum
    with a factor that is not 1) must be applied exactly."""
    x, t, w, C = _data(device, shape, dtype)
    upstream = torch.rand(t.shape if reduction == "none" else (), dtype=torch.float64, device=device) + 0.5
    xl = x.detach().clone().requires_grad_()
    h = xl * 1 if inplace else xl  # in place needs a non-leaf (the output of a model's last layer)
    out = smoothing_ext.cross_entropy(h, t, weight=w.to(dtype), reduction=reduction, label_smoothing=0.1,
                                      grad_in_forward=True, inplace_backward=inplace, **kw)
    (gx,) = torch.autograd.grad(out, xl, upstream.to(out.dtype))
    ref, gref = _grad(lambda v: reference_cross_entropy(v, t, weight=w.to(dtype).double(), reduction=reduction,
                                                        label_smoothing=0.1, **kw), x.double(), upstream)
    assert_close(out, ref, dtype, scale=4.0 if reduction == "sum" else 1.0)
    assert_close(gx, gref, dtype)
    if not inplace:
        assert torch.equal(xl.detach(), x)  # the caller's logits are untouched


def test_fused_per_row_upstream_gradients(device):
    """Loss scaling, a loss multiplied by a mask, and a weighted sum of per-row losses: each row's
    gradient is scaled by its own upstream gradient, exactly as in the default mode."""
    x, t, w, C = _data(device, (64, 257), torch.float32)
    mask = (torch.rand(64, device=device) > 0.3).float()
    mask[0] = 1.0
    cases = [
        lambda f: f(reduction="mean") * 1024.0,
        lambda f: (f(reduction="none") * mask).sum() / mask.sum(),
        lambda f: (f(reduction="none") * torch.linspace(-2, 3, 64, device=device)).sum(),
        lambda f: f(reduction="sum") * 0.0,
    ]
    for inplace in (False, True):
        for make in cases:
            grads = []
            for fused in (False, True):
                xl = x.detach().clone().requires_grad_()
                h = xl * 1

                def f(reduction):
                    return smoothing_ext.cross_entropy(h, t, weight=w, reduction=reduction, label_smoothing=0.1,
                                                       z_loss=1e-4, grad_in_forward=fused,
                                                       inplace_backward=fused and inplace)
                make(f).backward()
                grads.append(xl.grad)
            assert_close(grads[1], grads[0].double(), torch.float32)


def test_fused_inplace_writes_gradient_into_logits(device):
    x, t, w, C = _data(device, (8, 100), torch.float32)
    xl = x.clone().requires_grad_()
    h = xl * 1
    ptr = h.data_ptr()
    seen = {}
    h.register_hook(lambda g: seen.update(ptr=g.data_ptr()))
    loss = smoothing_ext.cross_entropy(h, t, label_smoothing=0.1, grad_in_forward=True, inplace_backward=True)
    ref_loss, ref_grad = _grad(lambda v: F.cross_entropy(v, t, label_smoothing=0.1), x)
    # the logits now hold the gradient (for a unit upstream gradient), the loss is right
    assert_close(h.detach(), ref_grad.double(), torch.float32)
    assert_close(loss, ref_loss.double(), torch.float32)
    loss.backward()
    assert seen["ptr"] == ptr  # the gradient handed to autograd is the logits' own storage
    assert_close(xl.grad, ref_grad.double(), torch.float32)


def test_fused_inplace_allocates_no_logits_sized_buffer():
    """The in-place fused forward + backward allocates nothing close to N x C (CPU allocator events)."""
    N, C = 64, 4096
    x = torch.randn(N, C)
    t = torch.randint(0, C, (N,))
    nbytes = x.numel() * x.element_size()

    def largest_allocation(inplace):
        xl = x.clone().requires_grad_()
        h = xl * 1
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            loss = smoothing_ext.cross_entropy(h, t, label_smoothing=0.1, grad_in_forward=True,
                                               inplace_backward=inplace)
            torch.autograd.grad(loss, h)
        sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
        return max(sizes, default=0)

    assert largest_allocation(False) >= nbytes  # the measurement sees the separate buffer ...
    assert largest_allocation(True) < nbytes // 8  # ... and the in-place form has none


def test_fused_mode_errors_and_fallbacks(device):
    x, t, w, C = _data(device, (6, 10), torch.float32)
    leaf = x.clone().requires_grad_()
    with pytest.raises(ValueError, match="leaf tensor"):
        smoothing_ext.cross_entropy(leaf, t, grad_in_forward=True, inplace_backward=True)
    with pytest.raises(ValueError, match="leaf tensor"):
        smoothing_ext.cross_entropy(leaf.view(6, 10), t, grad_in_forward=True, inplace_backward=True)
    with pytest.raises(ValueError, match="needs grad_in_forward=True"):
        smoothing_ext.cross_entropy(x, t, inplace_backward=True)
    with pytest.raises(ValueError, match="class-index targets only"):
        smoothing_ext.cross_entropy(x, torch.softmax(x, 1), grad_in_forward=True)
    h = (leaf * 1).t().contiguous().t()  # a non-contiguous non-leaf of the right shape
    assert h.shape == leaf.shape and not h.is_contiguous()
    with pytest.raises(ValueError, match="contiguous"):
        smoothing_ext.cross_entropy(h, t, grad_in_forward=True, inplace_backward=True)
    # a second backward through the same fused loss is refused, not silently wrong
    loss = smoothing_ext.cross_entropy(leaf * 1, t, grad_in_forward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()
    # anything else that saved the logits notices that they were overwritten
    h = leaf * 1
    other = h.sin()
    loss = smoothing_ext.cross_entropy(h, t, grad_in_forward=True, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other.sum()).backward()
    # out-of-range targets raise before the in-place form writes anything
    h = leaf * 1
    before = h.detach().clone()
    bad = t.clone()
    bad[3] = C
    if device == "cpu":
        with pytest.raises(IndexError, match="out of bounds"):
            smoothing_ext.cross_entropy(h, bad, grad_in_forward=True, inplace_backward=True)
        assert torch.equal(h.detach(), before)


class _ScaleLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the factor of every _scale_grad_rows_ call (the backward's pass over the gradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.factors: list[torch.Tensor] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is ops._scale_grad_rows_.default:
            self.factors.append(args[1].detach().clone())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("grad_scale", [0.25, 1 / 3, 8.0])
def test_fused_grad_scale_matches_reference(device, dtype, reduction, inplace, grad_scale):
    """(loss * s).backward() with grad_scale=s: the gradient of the float64 reference with upstream s;
    for the powers of two the backward's factor is exactly 1 (its pass skips every row)."""
    x, t, w, C = _data(device, (24, 300), dtype)
    xl = x.detach().clone().requires_grad_()
    h = xl * 1 if inplace else xl
    out = smoothing_ext.cross_entropy(h, t, weight=w.to(dtype), reduction=reduction, label_smoothing=0.1,
                                      z_loss=1e-3, grad_in_forward=True, inplace_backward=inplace,
                                      grad_scale=grad_scale)
    log = _ScaleLog()
    with log:
        (out * grad_scale).sum().backward()
    upstream = torch.full(t.shape if reduction == "none" else (), grad_scale, dtype=torch.float64, device=device)
    ref, gref = _grad(lambda v: reference_cross_entropy(v, t, weight=w.to(dtype).double(), reduction=reduction,
                                                        label_smoothing=0.1, z_loss=1e-3), x.double(), upstream)
    assert_close(out, ref, dtype, scale=4.0 if reduction == "sum" else 1.0)
    assert_close(xl.grad, gref, dtype)
    assert len(log.factors) == 1
    if grad_scale in (0.25, 8.0):
        assert torch.all(log.factors[0] == 1), log.factors[0]


def test_fused_grad_scale_other_upstream_is_still_exact(device):
    """A promise not kept (a plain backward, per-row upstream gradients) costs the pass, not exactness."""
    x, t, w, C = _data(device, (16, 200), torch.float32)
    for make in (lambda f: f("mean"), lambda f: (f("none") * torch.linspace(-1, 2, 16, device=device)).sum()):
        grads = []
        for fused in (False, True):
            xl = x.detach().clone().requires_grad_()
            kw = dict(grad_in_forward=True, grad_scale=0.125) if fused else {}
            make(lambda r: smoothing_ext.cross_entropy(xl, t, weight=w, reduction=r, label_smoothing=0.1, **kw)).backward()
            grads.append(xl.grad)
        assert_close(grads[1], grads[0].double(), torch.float32)


def test_grad_scale_errors():
    x, t, w, C = _data("cpu", (4, 10), torch.float32)
    x.requires_grad_()
    with pytest.raises(ValueError, match="needs grad_in_forward=True"):
        smoothing_ext.cross_entropy(x, t, grad_scale=0.5)
    with pytest.raises(TypeError, match="grad_scale must be None or a Python number.*Tensor"):
        smoothing_ext.cross_entropy(x, t, grad_in_forward=True, grad_scale=torch.tensor(0.5))
    for bad in (0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite, non-zero"):
            smoothing_ext.cross_entropy(x, t, grad_in_forward=True, grad_scale=bad)
    with pytest.raises(ValueError, match="CrossEntropyLoss: grad_scale .* needs grad_in_forward=True"):
        smoothing_ext.CrossEntropyLoss(grad_scale=0.5)
    m = smoothing_ext.CrossEntropyLoss(grad_in_forward=True, grad_scale=0.5)
    assert "grad_scale=0.5" in repr(m)
    (m(x * 1, t) * 0.5).backward()
    gx = x.grad.clone()
    x.grad = None
    (F.cross_entropy(x, t) * 0.5).backward()
    assert_close(gx, x.grad.double(), torch.float32)


def test_fused_without_gradient_is_forward_only(device):
    """No gradient needed (no_grad, eval, logits that do not require grad): grad_in_forward is a
    no-op and inplace_backward writes nothing."""
    x, t, w, C = _data(device, (8, 30), torch.float32)
    ref = F.cross_entropy(x, t, label_smoothing=0.1)
    before = x.clone()
    out = smoothing_ext.cross_entropy(x, t, label_smoothing=0.1, grad_in_forward=True, inplace_backward=True)
    assert_close(out, ref.double(), torch.float32)
    assert torch.equal(x, before)
    xr = x.clone().requires_grad_()
    with torch.no_grad():
        out = smoothing_ext.cross_entropy(xr * 1, t, label_smoothing=0.1, grad_in_forward=True,
                                          inplace_backward=True)
    assert out.grad_fn is None
    assert torch.equal(xr.detach(), before)


# ---------------------------------------------------------------------------------------------
# forward-only mode and what the default mode saves
# ---------------------------------------------------------------------------------------------
def test_forward_only_saves_nothing_logits_sized(device):
    N, C = 32, 500
    x, t, w, _ = _data(device, (N, C), torch.float32)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t_: t_):
        with torch.no_grad():
            out = smoothing_ext.cross_entropy(x.requires_grad_(), t, label_smoothing=0.1, z_loss=1e-3, softcap=9.0)
        assert out.grad_fn is None and not saved
        x.requires_grad_(False)
        out = smoothing_ext.cross_entropy(x, t, label_smoothing=0.1)
        assert out.grad_fn is None and not saved
        # with a gradient: the caller's logits (not a copy) and O(N) tensors only
        xg = x.clone().requires_grad_()
        smoothing_ext.cross_entropy(xg, t, weight=w, label_smoothing=0.1, z_loss=1e-3, softcap=9.0)
    big = [s for s in saved if s.numel() >= N * C]
    assert big and all(s.data_ptr() == xg.data_ptr() for s in big)


# ---------------------------------------------------------------------------------------------
# the row-scaling op used by the fused backward
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(9, 37), (3, 5, 4, 7), (11,)], ids=str)
def test_scale_grad_rows(device, dtype, shape):
    g = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
    lshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    class_dim = 0 if len(shape) == 1 else 1
    f = torch.rand(lshape, dtype=torch.float32, device=device) * 3
    if f.dim() > 0:
        f.view(-1)[::2] = 1.0
    expected = (g.double() * f.double().unsqueeze(class_dim)).to(dtype)
    ops._scale_grad_rows_(g, f)
    assert_close(g, expected.double(), dtype)
    # scalar factor
    g2 = torch.randn(shape, dtype=dtype, device=device)
    e2 = (g2.double() * 0.25).to(dtype)
    ops._scale_grad_rows_(g2, torch.tensor(0.25, device=device))
    assert torch.equal(g2, e2)


def test_scale_grad_rows_leaves_unit_rows_untouched(device):
    g = torch.full((4, 16), float("nan"), device=device)
    g[1] = 2.0
    f = torch.tensor([1.0, 3.0, 1.0, 1.0], device=device)
    raw = g.view(torch.int32).clone()
    ops._scale_grad_rows_(g, f)
    assert torch.equal(g.view(torch.int32)[[0, 2, 3]], raw[[0, 2, 3]])  # bit-identical NaN rows
    assert torch.equal(g[1], torch.full((16,), 6.0, device=device))
    with pytest.raises(ValueError, match=r"scale must have one element or shape \[4\]"):
        ops._scale_grad_rows_(g, torch.ones(3, device=device))


# ---------------------------------------------------------------------------------------------
# argument errors, opcheck, compile, modules
# ---------------------------------------------------------------------------------------------
def test_feature_argument_errors(device):
    x, t, w, C = _data(device, (4, 6), torch.float32)
    with pytest.raises(ValueError, match="smoothing_mode must be one of"):
        smoothing_ext.cross_entropy(x, t, smoothing_mode="fairseq")
    for z in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="z_loss must be a finite number >= 0"):
            smoothing_ext.cross_entropy(x, t, z_loss=z)
    for c in (0.0, -3.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="softcap must be None or a finite number > 0"):
            smoothing_ext.cross_entropy(x, t, softcap=c)
    # the ops check the same things for direct callers
    with pytest.raises(ValueError, match="softcap must be None or a finite number > 0"):
        ops.cross_entropy_forward(x, t, None, -100, 0.0, False, -1.0)
    with pytest.raises(ValueError, match="z_loss must be a finite number >= 0"):
        ops.cross_entropy_fused(x, t, None, -100, 0.0, False, None, -1.0, None)
    with pytest.raises(ValueError, match="grad_scale must be a one-element"):
        ops.cross_entropy_fused(x, t, None, -100, 0.0, False, None, 0.0, torch.ones(2, device=device))
    with pytest.raises(ValueError, match="must be contiguous"):
        ops.cross_entropy_fused_(torch.randn(6, 4, device=device).t(), t, None, -100, 0.0, False, None, 0.0, None)
    with pytest.raises(ValueError, match="smoothing_mode must be 'uniform' or 'off_target'"):
        smoothing_ext.CrossEntropyLoss(smoothing_mode="other")


def test_opcheck_new_ops(device):
    x, t, w, C = _data(device, (5, 11), torch.float32)
    x.requires_grad_()
    torch.library.opcheck(ops.cross_entropy_forward, (x, t, w, -100, 0.1, True, 3.0))
    y = torch.softmax(torch.randn(5, 11, device=device), 1)
    torch.library.opcheck(ops.cross_entropy_prob_forward, (x, y, w, 0.1, True, 3.0))
    xd = x.detach()
    loss, lse = ops.cross_entropy_forward(xd, t, w, -100, 0.1, True, 3.0)
    g = torch.rand_like(loss)
    torch.library.opcheck(ops._cross_entropy_backward, (g, torch.rand_like(lse), xd, t, w, lse, -100, 0.1, True, 3.0))
    scale = torch.tensor(0.3, device=device)
    torch.library.opcheck(ops.cross_entropy_fused, (xd, t, w, -100, 0.1, True, 3.0, 1e-3, scale))
    torch.library.opcheck(ops.cross_entropy_fused_, (xd.clone(), t, w, -100, 0.1, False, None, 0.0, None))
    torch.library.opcheck(ops._scale_grad_rows_, (torch.randn(5, 11, device=device), torch.rand(5, device=device)))


def test_compile_fullgraph_with_features(device):
    torch._dynamo.reset()

    def f(x, t, w):
        return smoothing_ext.cross_entropy(x, t, weight=w, label_smoothing=0.1, smoothing_mode="off_target",
                                           z_loss=1e-3, softcap=6.0)

    compiled = torch.compile(f, fullgraph=True)
    x, t, w, C = _data(device, (12, 40), torch.float32, scale=8.0)
    eager, ge = _grad(lambda v: f(v, t, w), x)
    comp, gc = _grad(lambda v: compiled(v, t, w), x)
    assert_close(comp, eager.double(), torch.float32)
    assert_close(gc, ge.double(), torch.float32)


def test_compile_fused_mode(device):
    """The fused mode under torch.compile (the autograd.Function may be traced or run eagerly)."""
    torch._dynamo.reset()
    lin = torch.nn.Linear(16, 40).to(device)

    def step(a, t):
        return smoothing_ext.cross_entropy(lin(a), t, label_smoothing=0.1, grad_in_forward=True)

    a = torch.randn(12, 16, device=device)
    t = torch.randint(0, 40, (12,), device=device)
    loss = torch.compile(step)(a, t)
    (gw,) = torch.autograd.grad(loss, lin.weight)
    ref = F.cross_entropy(lin(a), t, label_smoothing=0.1)
    (gw_ref,) = torch.autograd.grad(ref, lin.weight)
    assert_close(loss, ref.double(), torch.float32)
    assert_close(gw, gw_ref.double(), torch.float32)


def test_module_passes_new_keywords(device):
    x, t, w, C = _data(device, (10, 20), torch.float64)
    crit = smoothing_ext.CrossEntropyLoss(weight=w, label_smoothing=0.2, smoothing_mode="off_target",
                                          z_loss=1e-2, softcap=4.0, return_z_loss=True)
    loss, zt = crit(x, t)
    ref = reference_cross_entropy(x, t, weight=w, label_smoothing=0.2, smoothing_mode="off_target", z_loss=1e-2,
                                  softcap=4.0)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    assert "off_target" in repr(crit) and "softcap=4.0" in repr(crit)
    ls = smoothing_ext.LabelSmoothingCrossEntropy(grad_in_forward=True, inplace_backward=True)
    h = x.clone().requires_grad_()
    out = ls(h * 1, t)
    out.backward()
    _, gref = _grad(lambda v: F.cross_entropy(v, t, label_smoothing=0.1), x)
    torch.testing.assert_close(h.grad, gref, rtol=1e-10, atol=1e-10)
