"""smoothing_ext.linear_cross_entropy (the LM head fused with the loss) against the unfused
composition: torch's own F.linear_cross_entropy reference path and OpInfo samples, float64
gradcheck, chunk-size and batch invariance, memory, errors."""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.testing._internal.common_methods_invocations import op_db

import smoothing_ext
from smoothing_ext import linear_cross_entropy

_OPINFO = next(o for o in op_db if o.name == "nn.functional.linear_cross_entropy" and o.variant_test_name == "")


def _composed(x, W, t, *, linear_bias=None, **kw):
    """cross_entropy(input @ W.T + b, target) on explicit logits (rows flattened for (B, T, H))."""
    V, H = W.shape[0], W.shape[-1]
    out = W.shape[1:-1]
    z = F.linear(x, W.reshape(-1, H), None if linear_bias is None else linear_bias.reshape(-1))
    if out:
        z = z.reshape(x.shape[0], V, *out)
    elif x.dim() > 2:
        z = z.flatten(0, -2)
        t = t.flatten(0, -2) if t.is_floating_point() else t.flatten()
        loss = smoothing_ext.cross_entropy(z, t, **kw)
        return loss.reshape(x.shape[:-1]) if kw.get("reduction") == "none" else loss
    if kw.get("ignore_index") is None:
        kw.pop("ignore_index", None)
    return smoothing_ext.cross_entropy(z, t, **kw)


def _grads(out, inputs, seed=0):
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    diff = [i for i in inputs if i is not None and i.requires_grad]
    return torch.autograd.grad(out, diff, up, allow_unused=True)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.25])
def test_torch_opinfo_samples(label_smoothing):
    """Every sample of torch's OpInfo ``nn.functional.linear_cross_entropy`` (index and probability
    targets, K-dim weights, weight, bias, ignore_index, every reduction), with and without
    smoothing: values and gradients of all differentiable inputs equal torch's reference path."""
    n = 0
    for s in _OPINFO.sample_inputs("cpu", torch.float64, requires_grad=True):
        x, W, t = s.input, s.args[0], s.args[1]
        kw = dict(s.kwargs, label_smoothing=label_smoothing)
        ours = linear_cross_entropy(x, W, t, chunk_size=2, **kw)
        theirs = F.linear_cross_entropy(x, W, t, **kw)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
        inputs = [x, W, t if t.is_floating_point() else None, kw.get("linear_bias")]
        for a, b in zip(_grads(ours, inputs), _grads(theirs, inputs)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        n += 1
    assert n > 20


_FEATURES = [
    {},
    dict(label_smoothing=0.1),
    dict(label_smoothing=0.1, smoothing_mode="off_target"),
    dict(label_smoothing=0.1, z_loss=1e-2),
    dict(label_smoothing=0.2, softcap=3.0, z_loss=1e-3),
]


@pytest.mark.parametrize("kw", _FEATURES, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "plain")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target_kind", ["index", "prob"])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_composition_float64(kw, reduction, target_kind, bias):
    g = torch.Generator().manual_seed(1)
    N, H, V = 37, 12, 29
    x = torch.randn(N, H, generator=g, dtype=torch.float64, requires_grad=True)
    W = (torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    w = torch.rand(V, generator=g, dtype=torch.float64) + 0.5
    if target_kind == "prob":
        t = torch.softmax(torch.randn(N, V, generator=g, dtype=torch.float64), 1).requires_grad_()
        ig = -100
    else:
        t = torch.randint(0, V, (N,), generator=g)
        t[::4] = 3
        ig = 3
    ours = linear_cross_entropy(x, W, t, linear_bias=b, weight=w, reduction=reduction, ignore_index=ig, chunk_size=5, **kw)
    ref = _composed(x, W, t, linear_bias=b, weight=w, reduction=reduction, ignore_index=ig, **kw)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    inputs = [x, W, b, t if target_kind == "prob" else None]
    for a, r in zip(_grads(ours, inputs), _grads(ref, inputs)):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target_kind", ["index", "prob"])
def test_gradcheck(reduction, target_kind):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 5, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    if target_kind == "prob":
        t = torch.softmax(torch.randn(9, 7, generator=g, dtype=torch.float64), 1).requires_grad_()
        args = (x, W, b, t)
        f = lambda x, W, b, t: linear_cross_entropy(x, W, t, linear_bias=b, reduction=reduction,  # noqa: E731
                                                    label_smoothing=0.2, z_loss=0.01, chunk_size=4)
    else:
        t = torch.randint(0, 7, (9,), generator=g)
        args = (x, W, b)
        f = lambda x, W, b: linear_cross_entropy(x, W, t, linear_bias=b, reduction=reduction,  # noqa: E731
                                                 label_smoothing=0.2, softcap=2.0, z_loss=0.01, chunk_size=4)
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reduced_precision_close_to_float64(dtype):
    """float32 / bfloat16 results within dtype tolerance of the float64 composition on the same
    (rounded) operands; the weight gradient accumulated over 8 chunks stays as accurate as one GEMM."""
    g = torch.Generator().manual_seed(3)
    N, H, V = 512, 64, 3000
    x = torch.randn(N, H, generator=g).to(dtype)
    W = (torch.randn(V, H, generator=g) * 0.1).to(dtype)
    t = torch.randint(0, V, (N,), generator=g)
    xr, Wr = x.clone().requires_grad_(), W.clone().requires_grad_()
    ours = linear_cross_entropy(xr, Wr, t, label_smoothing=0.1, chunk_size=64)
    ours.backward()
    x64, W64 = x.double().requires_grad_(), W.double().requires_grad_()
    ref = F.cross_entropy(x64 @ W64.T, t, label_smoothing=0.1)
    ref.backward()
    # the unfused composition in the same dtype, as the yardstick of the dtype's own error
    xu, Wu = x.clone().requires_grad_(), W.clone().requires_grad_()
    F.cross_entropy(xu @ Wu.T, t, label_smoothing=0.1).backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(ours.double(), ref, **tol)
    for ours_g, unf_g, ref_g in ((xr.grad, xu.grad, x64.grad), (Wr.grad, Wu.grad, W64.grad)):
        err_ours = (ours_g.double() - ref_g).abs().max().item()
        err_unfused = (unf_g.double() - ref_g).abs().max().item()
        assert err_ours <= 2 * err_unfused + 1e-7, (err_ours, err_unfused)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunk_size_and_batch_invariance_bitwise(dtype):
    """Each row's loss and input gradient are bit-identical whatever the chunk size and whatever
    else is in the batch (RL fine-tuning compares log-probs across batch compositions)."""
    g = torch.Generator().manual_seed(4)
    N, H, V = 200, 48, 700
    x = torch.randn(N, H, generator=g).to(dtype)
    W = (torch.randn(V, H, generator=g) * 0.2).to(dtype)
    t = torch.randint(0, V, (N,), generator=g)

    def run(rows, chunk):
        xx = x[rows].clone().requires_grad_()
        loss = linear_cross_entropy(xx, W, t[rows], reduction="none", label_smoothing=0.1, z_loss=1e-3, chunk_size=chunk)
        (gx,) = torch.autograd.grad(loss, xx, torch.ones_like(loss))
        return loss, gx

    full, gfull = run(slice(None), None)
    for chunk in (16, 33, 64, 200):
        loss, gx = run(slice(None), chunk)
        assert torch.equal(loss, full) and torch.equal(gx, gfull), chunk
    for rows in (slice(0, 1), slice(5, 6), slice(17, 120), slice(150, 200)):
        loss, gx = run(rows, 32)
        assert torch.equal(loss, full[rows]) and torch.equal(gx, gfull[rows]), rows


def test_lm_layout_and_vector_input():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(40, 8, generator=g, dtype=torch.float64, requires_grad=True)
    xb = torch.randn(3, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    tb = torch.randint(0, 40, (3, 5), generator=g)
    for red in ("none", "mean"):
        ours = linear_cross_entropy(xb, W, tb, reduction=red, label_smoothing=0.1, chunk_size=4)
        ref = _composed(xb, W, tb, reduction=red, label_smoothing=0.1)
        torch.testing.assert_close(ours, ref)
    xv = torch.randn(8, generator=g, dtype=torch.float64)
    tv = torch.tensor(7)
    torch.testing.assert_close(linear_cross_entropy(xv, W, tv), F.cross_entropy(xv @ W.T, tv))


def test_retain_graph_and_repeated_backward():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(20, 8, generator=g, requires_grad=True)
    W = torch.randn(30, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 30, (20,), generator=g)
    for red in ("mean", "none"):
        loss = linear_cross_entropy(x, W, t, reduction=red, label_smoothing=0.1)
        loss = loss.sum() if red == "none" else loss
        g1 = torch.autograd.grad(loss * 2.0, (x, W), retain_graph=True)
        g2 = torch.autograd.grad(loss * 2.0, (x, W))
        for a, b in zip(g1, g2):
            assert torch.equal(a, b)
        ref = F.cross_entropy(x @ W.T, t, label_smoothing=0.1, reduction=red)
        ref = ref.sum() if red == "none" else ref
        for a, b in zip(g1, torch.autograd.grad(ref * 2.0, (x, W))):
            torch.testing.assert_close(a, b)


def test_unsupported_paths_raise():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 4, generator=g, requires_grad=True)
    W = torch.randn(9, 4, generator=g, requires_grad=True)
    t = torch.randint(0, 9, (6,), generator=g)
    loss = linear_cross_entropy(x, W, t)
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.func.jvp(lambda x: linear_cross_entropy(x, W.detach(), t), (x.detach(),), (torch.ones_like(x),))
    with pytest.raises(RuntimeError):
        torch.func.grad(lambda x: linear_cross_entropy(x, W.detach(), t))(x.detach())
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level(), pytest.raises((RuntimeError, NotImplementedError)):
        linear_cross_entropy(fwAD.make_dual(x.detach(), torch.ones_like(x)), W.detach(), t)
    with pytest.raises(RuntimeError, match="weight"):
        linear_cross_entropy(x, W, t, weight=torch.ones(9, requires_grad=True))
    with pytest.raises(RuntimeError, match="in_features"):
        linear_cross_entropy(x, torch.randn(9, 5), t)
    with pytest.raises(ValueError, match="target must have shape"):
        linear_cross_entropy(x, W, t[:5])
    with pytest.raises(ValueError, match=r"target.long\(\)"):
        linear_cross_entropy(x, W, t.float())


def test_signature_is_a_superset_of_torch():
    theirs = inspect.signature(F.linear_cross_entropy).parameters
    ours = inspect.signature(linear_cross_entropy).parameters
    for name, p in theirs.items():
        assert name in ours, name
        assert ours[name].kind == p.kind, name
        assert ours[name].default == p.default, name


def test_compile_fullgraph_and_autocast():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(40, 16, generator=g, requires_grad=True)
    W = torch.randn(50, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (40,), generator=g)
    torch._dynamo.reset()
    f = torch.compile(lambda x, W: linear_cross_entropy(x, W, t, label_smoothing=0.1, z_loss=1e-3, chunk_size=16),
                      fullgraph=True)
    loss = f(x, W)
    gc = torch.autograd.grad(loss, (x, W))
    ref = linear_cross_entropy(x, W, t, label_smoothing=0.1, z_loss=1e-3, chunk_size=16)
    torch.testing.assert_close(loss, ref)
    for a, b in zip(gc, torch.autograd.grad(ref, (x, W))):
        torch.testing.assert_close(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(x, W, t, label_smoothing=0.1)
        theirs = F.cross_entropy(F.linear(x, W), t, label_smoothing=0.1)
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    (gw,) = torch.autograd.grad(ours, W)
    assert gw.dtype == torch.float32


def test_never_holds_the_logits():
    """No allocation of the N x V logits' size during forward + backward (only the chunk buffer,
    the N x H / V x H gradients and their accumulators)."""
    g = torch.Generator().manual_seed(9)
    N, H, V = 2048, 32, 4096
    x = torch.randn(N, H, generator=g, requires_grad=True)
    W = torch.randn(V, H, generator=g, requires_grad=True)
    t = torch.randint(0, V, (N,), generator=g)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        linear_cross_entropy(x, W, t, label_smoothing=0.1, chunk_size=128).backward()
        linear_cross_entropy(x, W, t, reduction="none", label_smoothing=0.1, chunk_size=128).sum().backward()
    sizes = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert sizes
    logits_bytes = N * V * 4
    assert max(sizes) <= max(V * H * 4, 128 * V * 4) < logits_bytes // 4, max(sizes)


def test_module():
    torch.manual_seed(10)
    m = smoothing_ext.LinearCrossEntropyLoss(16, 30, bias=True, label_smoothing=0.1, chunk_size=8)
    x = torch.randn(12, 16)
    t = torch.randint(0, 30, (12,))
    torch.testing.assert_close(m(x, t), F.cross_entropy(F.linear(x, m.weight, m.bias), t, label_smoothing=0.1))
    assert "label_smoothing=0.1" in repr(m)
    assert set(m.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("reduction,kw", list(itertools.product(["mean", "none"], [{}, dict(ignore_index=2)])))
def test_opinfo_chunked_variants_kwargs_accepted(reduction, kw):
    """torch's LinearCrossEntropyOptions are accepted (batch_chunk_size sets the chunk size)."""
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=3)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(10, 6, generator=g, dtype=torch.float64)
    W = torch.randn(8, 6, generator=g, dtype=torch.float64)
    t = torch.randint(0, 8, (10,), generator=g)
    ours = linear_cross_entropy(x, W, t, reduction=reduction, options=opts, **kw)
    torch.testing.assert_close(ours, F.linear_cross_entropy(x, W, t, reduction=reduction, **kw))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_ignored_chunks_cost_no_gemm(reduction):
    """A chunk whose rows are all ignored (a padded batch's tail) runs no GEMM on the CPU, and the
    results still equal the composition's (float64)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountGemms(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
                self.n += 1
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(12)
    N, H, V, chunk = 64, 8, 40, 16
    x = torch.randn(N, H, generator=g, dtype=torch.float64)
    W = torch.randn(V, H, generator=g, dtype=torch.float64)
    t = torch.randint(0, V, (N,), generator=g)
    padded = t.clone()
    padded[N // 2 - 3:] = -100  # chunks 3 and 4 are all padding; chunk 2 only partly

    counts = {}
    for name, tt in (("full", t), ("padded", padded)):
        xx, WW = x.clone().requires_grad_(), W.clone().requires_grad_()
        with CountGemms() as c:
            loss = linear_cross_entropy(xx, WW, tt, reduction=reduction, label_smoothing=0.1, z_loss=1e-3,
                                        chunk_size=chunk)
            up = torch.randn(loss.shape, generator=g, dtype=torch.float64)
            gx, gw = torch.autograd.grad(loss, (xx, WW), up)
        counts[name] = c.n
        xr, Wr = x.clone().requires_grad_(), W.clone().requires_grad_()
        logits = xr @ Wr.T
        ref = F.cross_entropy(logits, tt, reduction=reduction, label_smoothing=0.1)
        ref = ref + 1e-3 * _zloss_ref(logits, tt, reduction)
        rx, rw = torch.autograd.grad(ref, (xr, Wr), up)
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(gx, rx)
        torch.testing.assert_close(gw, rw)
    assert counts["padded"] * 2 == counts["full"], counts


def _zloss_ref(logits, t, reduction):
    keep = (t != -100).to(logits.dtype)
    z = torch.logsumexp(logits, 1).pow(2) * keep
    if reduction == "none":
        return z
    return z.sum() / keep.sum() if reduction == "mean" else z.sum()
