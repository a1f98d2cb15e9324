"""The registered ops: gradcheck, opcheck, torch.compile, instruction-set variants, exp accuracy,
and the >2^31-element case."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import smoothing_ext
from smoothing_ext._reference import reference_cross_entropy
from helpers import assert_close

ops = torch.ops.smoothing_ext


def _index_args(device, shape=(6, 9), weighted=True, eps=0.15, ignore=-100, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    C = shape[0] if len(shape) == 1 else shape[1]
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device)
    tshape = () if len(shape) == 1 else (shape[0], *shape[2:])
    t = torch.randint(0, C, tshape, generator=gen).to(device)
    if t.dim() > 0:
        t.view(-1)[1] = ignore
    w = (torch.rand(C, generator=gen, dtype=dtype) + 0.2).to(device) if weighted else None
    return x, t, w, ignore, eps


@pytest.mark.parametrize("shape", [(6, 9), (3, 5, 2, 3), (7,)], ids=str)
@pytest.mark.parametrize("weighted", [False, True])
def test_gradcheck_index(device, shape, weighted):
    x, t, w, ii, eps = _index_args(device, shape, weighted)
    x.requires_grad_()
    # both outputs: the loss and lse (whose gradient p_j goes through grad_lse)
    assert torch.autograd.gradcheck(lambda x: ops.cross_entropy_forward(x, t, w, ii, eps), (x,))
    for red in ["none", "mean", "sum"]:
        assert torch.autograd.gradcheck(
            lambda x: smoothing_ext.cross_entropy(x, t, weight=w, reduction=red, label_smoothing=eps), (x,)
        )


@pytest.mark.parametrize("shape", [(6, 9), (3, 5, 2, 3), (7,)], ids=str)
def test_gradcheck_probabilities(device, shape):
    gen = torch.Generator().manual_seed(1)
    class_dim = 0 if len(shape) == 1 else 1
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    y = torch.softmax(torch.randn(shape, generator=gen, dtype=torch.float64), class_dim).to(device).requires_grad_()
    w = (torch.rand(shape[class_dim], generator=gen, dtype=torch.float64) + 0.2).to(device)
    assert torch.autograd.gradcheck(lambda x, y: ops.cross_entropy_prob_forward(x, y, w, 0.1), (x, y))
    assert torch.autograd.gradcheck(
        lambda x, y: smoothing_ext.cross_entropy(x, y, weight=w, label_smoothing=0.3), (x, y)
    )


def test_opcheck_all_ops(device):
    x, t, w, ii, eps = _index_args(device, (5, 11), True, dtype=torch.float32)
    x.requires_grad_()
    torch.library.opcheck(ops.cross_entropy_forward, (x, t, w, ii, eps))
    torch.library.opcheck(ops.cross_entropy_forward, (x, t, None, ii, 0.0))
    loss, lse = ops.cross_entropy_forward(x.detach(), t, w, ii, eps)
    g = torch.rand_like(loss)
    torch.library.opcheck(ops._cross_entropy_backward, (g, torch.rand_like(lse), x.detach(), t, w, lse, ii, eps))
    torch.library.opcheck(ops._cross_entropy_backward, (g, None, x.detach(), t, None, lse, ii, eps))
    y = torch.softmax(torch.randn(5, 11, device=device), 1)
    torch.library.opcheck(ops.cross_entropy_prob_forward, (x, y, w, eps))
    loss, lse = ops.cross_entropy_prob_forward(x.detach(), y, w, eps)
    torch.library.opcheck(ops._cross_entropy_prob_backward, (g, None, x.detach(), y, w, lse, eps))
    # K-dim and bfloat16
    xb = torch.randn(2, 4, 3, device=device, dtype=torch.bfloat16, requires_grad=True)
    tb = torch.randint(0, 4, (2, 3), device=device)
    torch.library.opcheck(ops.cross_entropy_forward, (xb, tb, None, -100, 0.1))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_fullgraph_matches_eager(device, dynamic):
    torch._dynamo.reset()

    def f(x, t, w):
        return smoothing_ext.cross_entropy(x, t, weight=w, label_smoothing=0.1) * 2.0

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    for n in (8, 12):
        x = torch.randn(n, 50, device=device, requires_grad=True)
        t = torch.randint(0, 50, (n,), device=device)
        t[0] = -100
        w = torch.rand(50, device=device)
        eager = f(x, t, w)
        (ge,) = torch.autograd.grad(eager, x)
        comp = compiled(x, t, w)
        (gc,) = torch.autograd.grad(comp, x)
        assert_close(comp, eager, torch.float32)
        assert_close(gc, ge, torch.float32)


def test_compile_module_in_training_step(device):
    torch._dynamo.reset()
    model = torch.nn.Linear(16, 10).to(device)
    crit = smoothing_ext.CrossEntropyLoss(label_smoothing=0.1)
    step = torch.compile(lambda x, t: crit(model(x), t), fullgraph=True)
    x = torch.randn(4, 16, device=device)
    t = torch.randint(0, 10, (4,), device=device)
    loss = step(x, t)
    loss.backward()
    ref = F.cross_entropy(model(x), t, label_smoothing=0.1)
    assert_close(loss, ref, torch.float32)
    assert model.weight.grad is not None


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_instruction_set_variants_agree(capability):
    """Each compiled instruction-set copy of the kernels, forced through the environment, against
    the float64 reference (in a subprocess: the choice is made once per process)."""
    code = r"""
import torch, smoothing_ext
from smoothing_ext._reference import reference_cross_entropy
cap = torch.ops.smoothing_ext._cpu_capability()
torch.manual_seed(0)
worst = 0.0
for dt, tol in [(torch.float32, 3e-5), (torch.float64, 1e-10), (torch.bfloat16, 2e-2), (torch.float16, 3e-3)]:
    for shape in [(9, 1), (9, 33), (5, 1031), (3, 21, 5, 7)]:
        C = shape[1]
        x = (torch.randn(shape) * 3).to(dt).requires_grad_()
        t = torch.randint(0, C, (shape[0], *shape[2:]))
        w = torch.rand(C).to(dt)
        y = torch.softmax(torch.randn(shape), 1).to(dt)
        cases = [(tgt, weight, kw) for tgt in (t, y) for weight in (None, w)
                 for kw in ({}, dict(smoothing_mode="off_target", softcap=4.0, z_loss=1e-3))]
        cases += [(t, w, dict(grad_in_forward=True)), (t, None, dict(grad_in_forward=True, z_loss=1e-3))]
        for tgt, weight, kw in cases:
                l = smoothing_ext.cross_entropy(x * 1, tgt, weight=weight, reduction="none", label_smoothing=0.1, **kw)
                (g,) = torch.autograd.grad(l.float().sum(), x)
                xr = x.detach().double().requires_grad_()
                ref_kw = {k: v for k, v in kw.items() if k != "grad_in_forward"}
                lr = reference_cross_entropy(xr, tgt, weight=None if weight is None else weight.double(), reduction="none", label_smoothing=0.1, **ref_kw)
                (gr,) = torch.autograd.grad(lr.sum(), xr)
                e = max(((l.double() - lr).abs() / (1 + lr.abs())).max().item(), ((g.double() - gr).abs()).max().item())
                assert e < tol, (dt, shape, kw, e)
print(cap)
"""
    env = dict(os.environ, SMOOTHING_EXT_CPU_CAPABILITY=capability)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    got = out.stdout.strip().splitlines()[-1]
    # a processor without the requested set falls back to a lower one
    order = ["default", "avx2", "avx512"]
    assert order.index(got) <= order.index(capability)


def test_fast_exp_error_bound():
    """The kernels' exp (documented: relative error < 2^-22 over the range it is used on) seen
    through the gradient: with eps = 0 and g = 1, d loss / d x_j = p_j = exp(x_j - lse) off target."""
    C = 20001
    x = torch.linspace(-103.0, 0.0, C, dtype=torch.float32)
    x = x[torch.randperm(C, generator=torch.Generator().manual_seed(0))].unsqueeze(0).contiguous()
    x[0, 100:105] = float("-inf")
    t = torch.tensor([int(torch.argmax(x))])
    xx = x.clone().requires_grad_()
    loss, lse = ops.cross_entropy_forward(xx, t, None, -100, 0.0)
    (g,) = torch.autograd.grad(loss.sum(), xx)
    lse64 = torch.logsumexp(x.double(), 1, keepdim=True)
    p64 = torch.exp(x.double() - lse64)
    off = torch.ones_like(x, dtype=torch.bool)
    off[0, t] = False
    normal = off & (p64 > 1.2e-38)  # normal fp32 results
    rel = ((g.double() - p64).abs() / p64)[normal]
    # exp's own error plus the rounding of x - lse (|x - lse| <= 103 has an ulp of 2^-17 relative
    # 2^-17 * 103 ~ 8e-4 absolute in the exponent): compare on exactly representable differences
    assert (lse - lse64.float()).abs().item() < 1e-6
    exact = normal & ((x - lse.unsqueeze(1)).double() == (x.double() - lse.double().unsqueeze(1)))
    p_exact = torch.exp(x.double() - lse.double().unsqueeze(1))
    rel_exact = ((g.double() - p_exact).abs() / p_exact)[exact]
    assert rel_exact.numel() > 300
    assert rel_exact.max().item() < 2.0**-22, rel_exact.max().item()
    assert rel.max().item() < 2e-4  # includes the rounding of x - lse itself
    tiny = off & (p64 < 1e-45)
    assert (g[tiny].abs() <= 1.5e-45).all()  # flushed to zero or the smallest subnormal
    assert (g[0, 100:105] == 0).all()  # exp(-inf) is exactly 0


@pytest.mark.slow
def test_more_than_2_pow_31_elements_bfloat16():
    """int64 offsets: a bfloat16 input of 2^31 + 2^20 elements (4 GiB), checked on rows that lie
    past element 2^31."""
    N, C = 65568, 32768  # 2^31 + 2^20 elements
    gen = torch.Generator().manual_seed(0)
    x = torch.empty(N, C, dtype=torch.bfloat16)
    x.normal_(generator=gen)
    t = torch.randint(0, C, (N,), generator=gen)
    x.requires_grad_()
    loss = smoothing_ext.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
    rows = torch.tensor([0, N // 2, N - 33, N - 2, N - 1])
    assert rows[-1] * C > 2**31
    ref = reference_cross_entropy(x.detach()[rows], t[rows], reduction="none", label_smoothing=0.1)
    assert_close(loss[rows], ref, torch.bfloat16)
    up = torch.zeros(N)
    up[rows] = 1.0
    (g,) = torch.autograd.grad(loss, x, grad_outputs=up)
    xr = x.detach()[rows].double().requires_grad_()
    (gr,) = torch.autograd.grad(reference_cross_entropy(xr, t[rows], reduction="sum", label_smoothing=0.1), xr)
    assert_close(g[rows], gr, torch.bfloat16)
    assert torch.count_nonzero(g[N - 3]) == 0
