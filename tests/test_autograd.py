"""Every autograd path beyond the plain backward: double backward (HVPs, gradient penalties),
forward-mode AD (jvp, dual tensors, jacfwd), torch.func (grad, vmap(grad), jacrev, hessian, vmap),
gradients of class weights, the backward ops' own derivatives, and the fused mode refusing what it
cannot differentiate. Oracles: float64 gradcheck / gradgradcheck (numerical derivatives), and
F.cross_entropy / F.binary_cross_entropy_with_logits or the float64 pure-PyTorch reference under the
same transform."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

import smoothing_ext
from smoothing_ext._reference import reference_cross_entropy

ops = torch.ops.smoothing_ext
f64 = torch.float64
REDUCTIONS = ["none", "mean", "sum"]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def index_data(device, shape, ignore=True, seed=0):
    gen = _gen(seed)
    C = shape[0] if len(shape) == 1 else shape[1]
    x = (torch.randn(shape, generator=gen, dtype=f64) * 2).to(device)
    tshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    t = torch.randint(0, C, tshape, generator=gen)
    if ignore and t.dim() > 0:
        t.view(-1)[1] = -100
    w = (torch.rand(C, generator=gen, dtype=f64) + 0.3).to(device)
    return x, t.to(device), w


def prob_data(device, shape, seed=0):
    gen = _gen(seed)
    cd = 0 if len(shape) == 1 else 1
    x = (torch.randn(shape, generator=gen, dtype=f64) * 2).to(device)
    y = torch.softmax(torch.randn(shape, generator=gen, dtype=f64), cd).to(device)
    w = (torch.rand(shape[cd], generator=gen, dtype=f64) + 0.3).to(device)
    return x, y, w


# option sets of the default mode; "ref" says whether F.cross_entropy can be the oracle
INDEX_CASES = {
    "plain": dict(),
    "smooth": dict(label_smoothing=0.2),
    "weighted": dict(label_smoothing=0.1, weighted=True),
    "off_target": dict(label_smoothing=0.3, smoothing_mode="off_target", weighted=True),
    "z_loss": dict(label_smoothing=0.1, z_loss=0.05),
    "softcap": dict(label_smoothing=0.1, softcap=1.5, weighted=True),
    "everything": dict(label_smoothing=0.2, smoothing_mode="off_target", z_loss=0.03, softcap=2.0, weighted=True),
}
# every option set on (N, C) and K-dim inputs; the 1-D and C == 1 shapes with the extremes
CASE_SHAPES = [(c, s) for c in INDEX_CASES for s in [(5, 4), (3, 4, 2)]] + [
    (c, s) for c in ("plain", "everything") for s in [(4,), (3, 1)]
]


def _split(case: dict):
    kw = dict(case)
    weighted = kw.pop("weighted", False)
    return weighted, kw


def ours_fn(t, w, reduction, kw, **extra):
    return lambda x, *rest: smoothing_ext.cross_entropy(x, t, weight=w, reduction=reduction, **kw, **extra)


def ref_fn(t, w, reduction, kw):
    return lambda x: reference_cross_entropy(x, t, weight=w, reduction=reduction, **kw)


# ---------------------------------------------------------------------------------------------
# double backward
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,shape", CASE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_index_double_backward(device, case, shape, reduction):
    weighted, kw = _split(INDEX_CASES[case])
    x, t, w = index_data(device, shape)
    w = w if weighted else None
    f = ours_fn(t, w, reduction, kw)
    x.requires_grad_()
    assert gradgradcheck(f, (x,), check_fwd_over_rev=True)
    # first-order values with create_graph=True (torch-op formula) and without (kernel) agree with
    # the reference, and the Hessian-vector products too
    xr = x.detach().clone().requires_grad_()
    ref = ref_fn(t, w, reduction, kw)(xr)
    up = torch.rand_like(ref)
    (g_ref,) = torch.autograd.grad(ref, xr, up, create_graph=True)
    out = f(x)
    (g_fast,) = torch.autograd.grad(out, x, up, retain_graph=True)
    (g,) = torch.autograd.grad(out, x, up, create_graph=True)
    close(g_fast, g_ref.detach())
    close(g.detach(), g_ref.detach())
    v = torch.randn_like(x)
    (hv,) = torch.autograd.grad((g * v).sum(), x)
    (hv_ref,) = torch.autograd.grad((g_ref * v).sum(), xr)
    close(hv, hv_ref)


@pytest.mark.parametrize("kw", [dict(), dict(label_smoothing=0.2), dict(label_smoothing=0.3, smoothing_mode="off_target"),
                                dict(label_smoothing=0.1, z_loss=0.05, softcap=1.5)], ids=str)
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 2), (5,), (3, 1)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_prob_double_backward_input_and_target(device, kw, shape, reduction):
    x, y, w = prob_data(device, shape)
    x.requires_grad_()
    y.requires_grad_()
    f = lambda x, y: smoothing_ext.cross_entropy(x, y, weight=w, reduction=reduction, **kw)
    assert gradgradcheck(f, (x, y), check_fwd_over_rev=True)
    xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    ref = reference_cross_entropy(xr, yr, weight=w, reduction=reduction, **kw)
    up = torch.rand_like(ref)
    g_ref = torch.autograd.grad(ref, (xr, yr), up, create_graph=True)
    g = torch.autograd.grad(f(x, y), (x, y), up, create_graph=True)
    for a, b in zip(g, g_ref):
        close(a.detach(), b.detach())
    vx, vy = torch.randn_like(x), torch.randn_like(y)
    hv = torch.autograd.grad((g[0] * vx).sum() + (g[1] * vy).sum(), (x, y))
    hv_ref = torch.autograd.grad((g_ref[0] * vx).sum() + (g_ref[1] * vy).sum(), (xr, yr))
    for a, b in zip(hv, hv_ref):
        close(a, b)


def test_gradient_penalty_through_a_model(device):
    """The use case: a penalty on the gradient w.r.t. the model's input, differentiated w.r.t. the
    model's parameters (second derivatives through the loss), against F.cross_entropy."""
    lin = torch.nn.Linear(6, 5).double().to(device)
    a = torch.randn(7, 6, dtype=f64, device=device, requires_grad=True)
    t = torch.randint(0, 5, (7,), device=device)

    def penalised(loss_fn):
        loss = loss_fn(lin(a), t, label_smoothing=0.1)
        (ga,) = torch.autograd.grad(loss, a, create_graph=True)
        return torch.autograd.grad(loss + (ga ** 2).sum(), lin.weight)[0]

    close(penalised(smoothing_ext.cross_entropy), penalised(F.cross_entropy))


# ---------------------------------------------------------------------------------------------
# weight gradients
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["weighted", "off_target", "softcap", "everything"], ids=str)
@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2), (4,)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_index_weight_gradient(device, case, shape, reduction):
    _, kw = _split(INDEX_CASES[case])
    x, t, w = index_data(device, shape)
    x.requires_grad_()
    w.requires_grad_()
    f = lambda x, w: smoothing_ext.cross_entropy(x, t, weight=w, reduction=reduction, **kw)
    assert gradcheck(f, (x, w), check_forward_ad=True)
    assert gradgradcheck(f, (x, w))
    out = f(x, w)
    ref = reference_cross_entropy(x, t, weight=w, reduction=reduction, **kw)
    up = torch.rand_like(out)
    for a, b in zip(torch.autograd.grad(out, (x, w), up), torch.autograd.grad(ref, (x, w), up)):
        close(a, b)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 2)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_prob_weight_gradient(device, shape, reduction):
    x, y, w = prob_data(device, shape)
    for tensor in (x, y, w):
        tensor.requires_grad_()
    kw = dict(label_smoothing=0.2, smoothing_mode="off_target", softcap=2.0)
    f = lambda x, y, w: smoothing_ext.cross_entropy(x, y, weight=w, reduction=reduction, **kw)
    assert gradcheck(f, (x, y, w), check_forward_ad=True)
    assert gradgradcheck(f, (x, y, w))
    ref = reference_cross_entropy(x, y, weight=w, reduction=reduction, **kw)
    out = f(x, y, w)
    for a, b in zip(torch.autograd.grad(out.sum(), (x, y, w)), torch.autograd.grad(ref.sum(), (x, y, w))):
        close(a, b)


def test_weight_gradient_formula(device):
    """d loss_i / d w_j = q_ij (lse_i - x_ij), written out (the mean's denominator sum w_t too)."""
    x, t, w = index_data(device, (6, 5))
    w.requires_grad_()
    eps = 0.2
    loss = smoothing_ext.cross_entropy(x, t, weight=w, reduction="sum", label_smoothing=eps)
    (gw,) = torch.autograd.grad(loss, w)
    valid = t != -100
    q = (1 - eps) * F.one_hot(torch.where(valid, t, 0), 5).double() + eps / 5
    expected = (q * (torch.logsumexp(x, 1, keepdim=True) - x))[valid].sum(0)
    close(gw, expected)


# ---------------------------------------------------------------------------------------------
# forward-mode AD
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,shape", CASE_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_index_forward_ad_gradcheck(device, case, shape, reduction):
    weighted, kw = _split(INDEX_CASES[case])
    x, t, w = index_data(device, shape)
    f = ours_fn(t, w if weighted else None, reduction, kw)
    # batched forward grad: vmap over the jvp (jacfwd)
    assert gradcheck(f, (x.requires_grad_(),), check_forward_ad=True, check_backward_ad=False,
                     check_batched_forward_grad=True)


@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 2), (5,)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_prob_forward_ad_gradcheck(device, shape, reduction):
    x, y, w = prob_data(device, shape)
    f = lambda x, y: smoothing_ext.cross_entropy(x, y, weight=w, reduction=reduction, label_smoothing=0.1,
                                                 z_loss=0.02, softcap=3.0)
    assert gradcheck(f, (x.requires_grad_(), y.requires_grad_()), check_forward_ad=True, check_backward_ad=False,
                     check_batched_forward_grad=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_jvp_and_dual_tensors_match_torch(device, reduction):
    x, t, w = index_data(device, (6, 5))
    v = torch.randn_like(x)
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.15)
    ours = jvp(lambda x: smoothing_ext.cross_entropy(x, t, **kw), (x,), (v,))
    theirs = jvp(lambda x: F.cross_entropy(x, t, **kw), (x,), (v,))
    close(ours[0], theirs[0])
    close(ours[1], theirs[1])
    with fwAD.dual_level():
        d = fwAD.make_dual(x, v)
        tangent = fwAD.unpack_dual(smoothing_ext.cross_entropy(d, t, **kw)).tangent
    close(tangent, theirs[1])
    # probability targets: tangents of both the logits and the target
    _, y, _ = prob_data(device, (6, 5))
    vy = torch.randn_like(y)
    ours = jvp(lambda x, y: smoothing_ext.cross_entropy(x, y, **kw), (x, y), (v, vy))
    theirs = jvp(lambda x, y: F.cross_entropy(x, y, **kw), (x, y), (v, vy))
    close(ours[1], theirs[1])


def test_jacfwd_matches_torch(device):
    x, t, w = index_data(device, (4, 5))
    kw = dict(weight=w, reduction="none", label_smoothing=0.1)
    close(jacfwd(lambda x: smoothing_ext.cross_entropy(x, t, **kw))(x),
          jacfwd(lambda x: F.cross_entropy(x, t, **kw))(x))


# ---------------------------------------------------------------------------------------------
# torch.func
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 2), (4,), (3, 1)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_func_transforms_match_torch(device, shape, reduction):
    x, t, w = index_data(device, shape)
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.2)
    ours = lambda x: smoothing_ext.cross_entropy(x, t, **kw)
    theirs = lambda x: F.cross_entropy(x, t, **kw)
    for transform in (grad, jacrev, hessian, jacfwd):
        close(transform(ours)(x), transform(theirs)(x))
    # w.r.t. the class weights too (F.cross_entropy cannot: the reference is the oracle)
    ref = lambda w: reference_cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=0.2)
    mine = lambda w: smoothing_ext.cross_entropy(x, t, weight=w, reduction=reduction, label_smoothing=0.2)
    close(grad(mine)(w), grad(ref)(w))
    close(hessian(mine)(w), hessian(ref)(w))


def test_func_transforms_extended_options(device):
    x, t, w = index_data(device, (5, 4))
    _, kw = _split(INDEX_CASES["everything"])
    ours = lambda x: smoothing_ext.cross_entropy(x, t, weight=w, **kw)
    ref = lambda x: reference_cross_entropy(x, t, weight=w, **kw)
    for transform in (grad, hessian, jacfwd):
        close(transform(ours)(x), transform(ref)(x))
    xp, y, wp = prob_data(device, (4, 5))
    ours = lambda x, y: smoothing_ext.cross_entropy(x, y, weight=wp, **kw)
    ref = lambda x, y: reference_cross_entropy(x, y, weight=wp, **kw)
    for a, b in zip(hessian(ours, argnums=(0, 1))(xp, y), hessian(ref, argnums=(0, 1))(xp, y)):
        for c, d in zip(a, b):
            close(c, d)


@pytest.mark.parametrize("target_kind", ["index", "prob"])
@pytest.mark.parametrize("shape", [(5, 4), (2, 4, 3)], ids=str)
def test_per_sample_gradients(device, target_kind, shape):
    """vmap(grad): per-sample gradients, against a loop of plain backward passes and against the same
    transform of F.cross_entropy."""
    if target_kind == "index":
        x, t, w = index_data(device, shape)
    else:
        x, t, w = prob_data(device, shape)
    kw = dict(weight=w, label_smoothing=0.1, reduction="sum")  # "mean" of an ignored sample is nan

    def per_sample(fn):
        return lambda xs, ts: fn(xs.unsqueeze(0), ts.unsqueeze(0), **kw)

    ours = vmap(grad(per_sample(smoothing_ext.cross_entropy)))(x, t)
    close(ours, vmap(grad(per_sample(F.cross_entropy)))(x, t))
    loop = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].clone().requires_grad_()
        smoothing_ext.cross_entropy(xi, t[i : i + 1], **kw).backward()
        loop.append(xi.grad[0])
    close(ours, torch.stack(loop))


def test_per_sample_gradients_of_model_parameters(device):
    """The usual per-sample-gradient recipe: vmap(grad(functional_call)) over a model's parameters."""
    model = torch.nn.Linear(6, 5).double().to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}
    a = torch.randn(7, 6, dtype=f64, device=device)
    t = torch.randint(0, 5, (7,), device=device)
    t[2] = -100

    def loss_of(fn):
        def f(p, ai, ti):
            return fn(torch.func.functional_call(model, p, (ai.unsqueeze(0),)), ti.unsqueeze(0), label_smoothing=0.1,
                      reduction="sum")
        return f

    ours = vmap(grad(loss_of(smoothing_ext.cross_entropy)), in_dims=(None, 0, 0))(params, a, t)
    theirs = vmap(grad(loss_of(F.cross_entropy)), in_dims=(None, 0, 0))(params, a, t)
    for k in params:
        close(ours[k], theirs[k])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_vmap_of_the_loss(device, reduction):
    x, _, _ = index_data(device, (3, 5, 4))  # vmap over 3 batches of (5, 4)
    w = torch.rand(4, dtype=f64, device=device) + 0.2
    t = torch.randint(0, 4, (3, 5), device=device)
    t[1, 2] = -100
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.1)
    # oracle: a loop of F.cross_entropy (whose own weighted "mean" does not vmap)
    close(vmap(lambda x, t: smoothing_ext.cross_entropy(x, t, **kw))(x, t),
          torch.stack([F.cross_entropy(xi, ti, **kw) for xi, ti in zip(x, t)]))
    xp, y, _ = prob_data(device, (3, 5, 4))
    close(vmap(lambda x, y: smoothing_ext.cross_entropy(x, y, **kw))(xp, y),
          torch.stack([F.cross_entropy(xi, yi, **kw) for xi, yi in zip(xp, y)]))
    # a per-sample weight (the ops loop over the batch) and logits shared by every sample
    ws = torch.rand(3, 4, dtype=f64, device=device) + 0.2
    ours = vmap(lambda w: smoothing_ext.cross_entropy(x[0], t[0], weight=w, reduction=reduction))(ws)
    close(ours, torch.stack([F.cross_entropy(x[0], t[0], weight=wi, reduction=reduction) for wi in ws]))


def test_vmap_of_the_ops(device):
    """Batching rules of every op against a loop, with the batch dim anywhere and some operands
    unbatched (including a batched class weight: the loop fallback)."""
    x, _, _ = index_data(device, (4, 3, 5))  # vmapped over 4 samples of (3, 5)
    w = torch.rand(5, dtype=f64, device=device) + 0.2
    t = torch.randint(0, 5, (4, 3), device=device)
    t[1, 2] = -100
    xb = x.permute(1, 2, 0)  # (3, 5, 4): rows, classes, batch
    loss, lse = vmap(lambda xi, ti: ops.cross_entropy_forward(xi, ti, w, -100, 0.1), in_dims=(2, 0))(xb, t)
    for i in range(4):
        li, si = ops.cross_entropy_forward(x[i], t[i], w, -100, 0.1)
        close(loss[i], li)
        close(lse[i], si)
    ws = torch.rand(4, 5, dtype=f64, device=device)
    loss, _ = vmap(lambda wi: ops.cross_entropy_forward(x[0], t[0], wi, -100, 0.1))(ws)
    close(loss, torch.stack([ops.cross_entropy_forward(x[0], t[0], wi, -100, 0.1)[0] for wi in ws]))
    g = torch.rand(4, 3, dtype=f64, device=device)
    _, lse0 = ops.cross_entropy_forward(x[0], t[0], w, -100, 0.1)
    gb = vmap(lambda gi: ops._cross_entropy_backward(gi, None, x[0], t[0], w, lse0, -100, 0.1))(g)
    close(gb, torch.stack([ops._cross_entropy_backward(gi, None, x[0], t[0], w, lse0, -100, 0.1) for gi in g]))
    _, y, _ = prob_data(device, (4, 3, 5))
    lp, sp = vmap(lambda xi, yi: ops.cross_entropy_prob_forward(xi, yi, w, 0.2))(x, y)
    gp = vmap(lambda gi, xi, yi, si: ops._cross_entropy_prob_backward(gi, si, xi, yi, w, si, 0.2))(g, x, y, sp)
    for i in range(4):
        close(lp[i], ops.cross_entropy_prob_forward(x[i], y[i], w, 0.2)[0])
        close(gp[i], ops._cross_entropy_prob_backward(g[i], sp[i], x[i], y[i], w, sp[i], 0.2))
    # 1-D logits: the vmapped dim becomes the row dim
    loss, _ = vmap(lambda xi, ti: ops.cross_entropy_forward(xi, ti, None, -100, 0.1))(x[0], t[0])
    close(loss, ops.cross_entropy_forward(x[0], t[0], None, -100, 0.1)[0])


# ---------------------------------------------------------------------------------------------
# the backward ops' own derivatives (for direct callers)
# ---------------------------------------------------------------------------------------------
def test_backward_ops_are_differentiable(device):
    x, t, w = index_data(device, (4, 5))
    _, lse = ops.cross_entropy_forward(x, t, w, -100, 0.1, True, 2.0)
    gen = _gen(3)
    gl = torch.rand(4, generator=gen, dtype=f64).to(device)
    gs = torch.rand(4, generator=gen, dtype=f64).to(device)
    leaves = [v.clone().requires_grad_() for v in (gl, gs, x, w, lse)]
    f = lambda gl, gs, x, w, lse: ops._cross_entropy_backward(gl, gs, x, t, w, lse, -100, 0.1, True, 2.0)
    assert gradcheck(f, leaves)
    assert gradgradcheck(f, leaves)
    _, y, _ = prob_data(device, (4, 5))
    _, lse = ops.cross_entropy_prob_forward(x, y, w, 0.1)
    leaves = [v.clone().requires_grad_() for v in (gl, gs, x, y, w, lse)]
    assert gradcheck(lambda gl, gs, x, y, w, lse: ops._cross_entropy_prob_backward(gl, gs, x, y, w, lse, 0.1), leaves)
    yb = torch.rand(4, 5, dtype=f64, device=device)
    pw = torch.rand(5, dtype=f64, device=device) + 0.5
    leaves = [v.clone().requires_grad_() for v in (torch.rand_like(x), x, yb, w, pw)]
    fb = lambda g, x, y, w, pw: ops._binary_cross_entropy_with_logits_backward(g, x, y, w, pw, 0.1)
    assert gradcheck(fb, leaves)
    assert gradgradcheck(fb, leaves)


def test_ops_called_directly_double_backward(device):
    """The ops' own register_autograd registrations (what compiled code uses) are differentiable
    twice too."""
    x, t, w = index_data(device, (4, 5))
    _, y, _ = prob_data(device, (4, 5))
    yb = torch.rand(4, 5, dtype=f64, device=device)
    x.requires_grad_()
    assert gradgradcheck(lambda x, w: ops.cross_entropy_forward(x, t, w, -100, 0.1, True, 2.0),
                         (x, w.clone().requires_grad_()))
    assert gradgradcheck(lambda x, y: ops.cross_entropy_prob_forward(x, y, w, 0.1, False, 2.0),
                         (x, y.clone().requires_grad_()))
    for op in (ops.binary_cross_entropy_with_logits_forward, ops.binary_cross_entropy_with_logits_sum):
        assert gradgradcheck(lambda x, y: op(x, y, w, w + 0.5, 0.1), (x, yb.clone().requires_grad_()))


def test_compiled_weight_gradient(device):
    torch._dynamo.reset()
    x, t, w = index_data(device, (6, 5))
    f = lambda x, w: smoothing_ext.cross_entropy(x, t, weight=w, label_smoothing=0.1, softcap=3.0)
    compiled = torch.compile(f, fullgraph=True)
    x.requires_grad_()
    w.requires_grad_()
    got = torch.autograd.grad(compiled(x, w), (x, w))
    expected = torch.autograd.grad(reference_cross_entropy(x, t, weight=w, label_smoothing=0.1, softcap=3.0), (x, w))
    for a, b in zip(got, expected):
        close(a, b)


# ---------------------------------------------------------------------------------------------
# the plain path stays fast
# ---------------------------------------------------------------------------------------------
class _OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[int]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        sizes = [o.numel() for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
        self.calls.append((str(func), sizes))
        return out


@pytest.mark.parametrize("prob", [False, True])
def test_plain_backward_uses_the_kernels_and_saves_logits_and_lse_only(prob):
    N, C = 16, 300
    x, t, w = index_data("cpu", (N, C))
    if prob:
        _, t, _ = prob_data("cpu", (N, C))
    x.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s) or s, lambda s: s):
        loss = smoothing_ext.cross_entropy(x, t, weight=w, label_smoothing=0.1, z_loss=1e-3, softcap=5.0)
    # logits-sized: only the caller's own tensors (the logits, a probability target), never a copy
    big = [s for s in saved if s.numel() >= N * C]
    assert big and all(s.data_ptr() in (x.data_ptr(), t.data_ptr()) for s in big)
    assert len([s for s in saved if s.numel() < N * C and s.is_floating_point() and s.numel() != C]) >= 1  # lse
    log = _OpLog()
    with log:
        loss.backward()
    names = [name for name, _ in log.calls]
    kernel = "smoothing_ext._cross_entropy_prob_backward" if prob else "smoothing_ext._cross_entropy_backward"
    assert any(n.startswith(kernel) for n in names), names
    # the gradient the kernel writes is the only logits-sized result
    big_ops = [name for name, sizes in log.calls if any(s >= N * C for s in sizes) and name != "aten.detach.default"]
    assert all(n.startswith(kernel) for n in big_ops), big_ops


def test_plain_bce_backward_uses_the_kernel():
    x = torch.randn(8, 50, dtype=f64, requires_grad=True)
    y = torch.rand(8, 50, dtype=f64)
    loss = smoothing_ext.binary_cross_entropy_with_logits(x, y, label_smoothing=0.1)
    log = _OpLog()
    with log:
        loss.backward()
    assert any(n.startswith("smoothing_ext._binary_cross_entropy_with_logits_backward") for n, _ in log.calls)
    assert not any(n in ("aten.sigmoid.default", "aten.exp.default") for n, _ in log.calls)


# ---------------------------------------------------------------------------------------------
# binary cross entropy
# ---------------------------------------------------------------------------------------------
def bce_data(device, shape=(4, 3), seed=0):
    gen = _gen(seed)
    x = (torch.randn(shape, generator=gen, dtype=f64) * 3).to(device)
    y = torch.rand(shape, generator=gen, dtype=f64).to(device)
    w = (torch.rand(shape[-1], generator=gen, dtype=f64) + 0.3).to(device)
    pw = (torch.rand(shape[-1], generator=gen, dtype=f64) + 0.5).to(device)
    return x, y, w, pw


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2), (5,)], ids=str)
def test_bce_double_backward_and_forward_ad(device, reduction, weights, shape):
    x, y, w, pw = bce_data(device, shape)
    w, pw = (w, pw) if weights else (None, None)
    f = lambda x, y: smoothing_ext.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction,
                                                                    label_smoothing=0.2)
    inputs = (x.requires_grad_(), y.requires_grad_())
    assert gradcheck(f, inputs, check_forward_ad=True, check_batched_grad=True, check_batched_forward_grad=True)
    assert gradgradcheck(f, inputs, check_fwd_over_rev=True)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bce_func_transforms_match_torch(device, reduction):
    x, y, w, pw = bce_data(device, (4, 3))
    eps = 0.2
    ours = lambda x, y: smoothing_ext.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction,
                                                                       label_smoothing=eps)
    theirs = lambda x, y: F.binary_cross_entropy_with_logits(x, y * (1 - eps) + eps / 2, weight=w, pos_weight=pw,
                                                             reduction=reduction)
    for transform in (grad, jacrev, jacfwd):
        for a, b in zip(transform(ours, argnums=(0, 1))(x, y), transform(theirs, argnums=(0, 1))(x, y)):
            close(a, b)
    for a, b in zip(hessian(ours, argnums=(0, 1))(x, y), hessian(theirs, argnums=(0, 1))(x, y)):
        for c, d in zip(a, b):
            close(c, d)
    close(vmap(grad(ours))(x, y), vmap(grad(theirs))(x, y))  # per-sample (per-row) gradients
    close(vmap(ours)(x, y), vmap(theirs)(x, y))
    v = torch.randn_like(x)
    close(jvp(lambda x: ours(x, y), (x,), (v,))[1], jvp(lambda x: theirs(x, y), (x,), (v,))[1])
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(ours(fwAD.make_dual(x, v), y)).tangent
    close(tangent, jvp(lambda x: theirs(x, y), (x,), (v,))[1])
    # per-sample weights and pos_weights (batched operands of the element-wise op)
    ws, pws = torch.rand(4, 3, dtype=f64, device=device), torch.rand(4, 3, dtype=f64, device=device) + 0.5
    mine = vmap(lambda x, y, w, pw: smoothing_ext.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw,
                                                                                   reduction=reduction))
    ref = vmap(lambda x, y, w, pw: F.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw, reduction=reduction))
    close(mine(x, y, ws, pws), ref(x, y, ws, pws))


def test_bce_weights_are_constants(device):
    x, y, w, pw = bce_data(device)
    with pytest.raises(RuntimeError, match="not differentiable with respect to weight"):
        smoothing_ext.binary_cross_entropy_with_logits(x, y, weight=w.clone().requires_grad_())
    with pytest.raises(RuntimeError, match="not differentiable with respect to"):
        jvp(lambda w: smoothing_ext.binary_cross_entropy_with_logits(x, y, weight=w), (w,), (torch.ones_like(w),))
    with pytest.raises(RuntimeError, match="not differentiable with respect to"):
        grad(lambda pw: smoothing_ext.binary_cross_entropy_with_logits(x, y, pos_weight=pw))(pw)


# ---------------------------------------------------------------------------------------------
# the fused mode refuses what it cannot differentiate
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inplace", [False, True])
def test_fused_mode_raises_instead_of_wrong_derivatives(device, inplace):
    x, t, w = index_data(device, (6, 5))
    leaf = x.clone().requires_grad_()
    kw = dict(label_smoothing=0.1, grad_in_forward=True, inplace_backward=inplace)
    # double backward: the first-order gradient is right, differentiating it raises
    h = leaf * 1
    (g,) = torch.autograd.grad(smoothing_ext.cross_entropy(h, t, **kw), h, create_graph=True)
    xr = x.clone().requires_grad_()
    (g_ref,) = torch.autograd.grad(F.cross_entropy(xr, t, label_smoothing=0.1), xr)
    close(g.detach(), g_ref)
    with pytest.raises(RuntimeError, match="grad_in_forward=True .* cannot differentiate it again"):
        g.sum().backward()
    # forward-mode AD (dual tensors, jvp, jacfwd) and torch.func transforms
    with fwAD.dual_level():
        with pytest.raises(RuntimeError, match="not forward-mode AD"):
            smoothing_ext.cross_entropy(fwAD.make_dual(leaf * 1, torch.ones_like(x)), t, **kw)
    for call in (
        lambda: jvp(lambda v: smoothing_ext.cross_entropy(v * 1, t, **kw), (x,), (x,)),
        lambda: jacfwd(lambda v: smoothing_ext.cross_entropy(v * 1, t, **kw))(x),
        lambda: grad(lambda v: smoothing_ext.cross_entropy(v * 1, t, **kw))(x),
        lambda: jacrev(lambda v: smoothing_ext.cross_entropy(v * 1, t, **kw))(x),
        lambda: vmap(grad(lambda v, ti: smoothing_ext.cross_entropy(v[None] * 1, ti[None], **kw)))(x, t),
        lambda: vmap(lambda v: smoothing_ext.cross_entropy(v, t, **kw))(x[None]),
    ):
        with pytest.raises(RuntimeError, match="torch.func transforms"):
            call()
    # class weights that require grad would get no gradient: refused
    with pytest.raises(RuntimeError, match="weight requires grad"):
        smoothing_ext.cross_entropy(leaf * 1, t, weight=w.clone().requires_grad_(), **kw)
