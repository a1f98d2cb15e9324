"""Property-based checks over random shapes and options (hypothesis), against F.cross_entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import smoothing_ext
from helpers import assert_close

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis (pip install smoothing_ext[test])")
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 9),
    c=st.integers(1, 70),
    spatial=st.lists(st.integers(1, 5), min_size=0, max_size=2),
    eps=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    reduction=st.sampled_from(["none", "mean", "sum"]),
    weighted=st.booleans(),
    ignore_index=st.sampled_from([-100, -1, 0, 3, 200]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_random_cases_match_pytorch(n, c, spatial, eps, reduction, weighted, ignore_index, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, *spatial, generator=gen, dtype=dtype) * 3).requires_grad_()
    t = torch.randint(0, c, (n, *spatial), generator=gen)
    if t.numel():
        t.view(-1)[torch.rand(t.numel(), generator=gen) < 0.25] = ignore_index
    w = torch.rand(c, generator=gen, dtype=dtype) + 0.1 if weighted else None
    ours = smoothing_ext.cross_entropy(x, t, weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)
    xr = x.detach().clone().requires_grad_()
    ref = F.cross_entropy(xr, t, weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=eps)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    assert_close(ours, ref, dtype, scale=2.0)
    if ref.numel() and torch.isfinite(ref).all():
        up = torch.rand(ref.shape, generator=gen, dtype=dtype)
        (g,) = torch.autograd.grad(ours, x, up)
        (gr,) = torch.autograd.grad(ref, xr, up)
        assert_close(g, gr, dtype, scale=2.0)
