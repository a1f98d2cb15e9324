"""The denominator of reduction="mean" for class-index targets (smoothing_ext.functional._mean_denominator):
the sum of w[t] over the targets that are not ignore_index (their count without a weight).

On CUDA a plain gather w[t] with a target >= C fires a device-side assert (the CUDA context is lost
for the rest of the process) and a target of -1 silently wraps to w[C-1]. The function gathers only
in-range indices (clamped and masked) and makes the denominator NaN when a target is out of range and
not ignored: the CUDA ops give that row a NaN loss, so the mean is NaN either way, without a device
assert and without a host synchronisation.

The gather is plain torch code, so its logic is tested here on the CPU (and on the meta device, which
shows that nothing reads a value on the host); the device-assert itself can only show on a GPU
(scripts/gpu_verify_checks.py runs the out-of-range case there in a subprocess). The simt case at the
end feeds 1 / denominator to the real fused CUDA kernel executed on the CPU (tests/simt).
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from smoothing_ext.functional import _mean_denominator

C = 7


def _weight(dtype=torch.float64):
    return torch.arange(1, C + 1, dtype=dtype) / 4.0  # distinct weights: a wrong index changes the sum


def _expected(t, w, ignore_index):
    """Oracle: a Python loop over the targets."""
    total = 0.0
    for v in t.reshape(-1).tolist():
        if v == ignore_index:
            continue
        if not 0 <= v < C:
            return math.nan
        total += 1.0 if w is None else float(w[v])
    return total


@pytest.mark.parametrize("tdtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("weighted", [False, True])
def test_in_range_matches_the_sum_of_weights(tdtype, weighted):
    t = torch.tensor([0, 3, -100, 6, 6, 2, -100, 1], dtype=tdtype)
    w = _weight() if weighted else None
    d = _mean_denominator(t, w, -100, torch.float64)
    assert d.dtype == torch.float64 and d.dim() == 0
    assert d.item() == pytest.approx(_expected(t, w, -100), rel=1e-15)


def test_in_range_matches_pytorch_mean():
    """mean = sum of the per-row losses / denominator equals F.cross_entropy(reduction="mean")."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, C, generator=g, dtype=torch.float64)
    t = torch.randint(0, C, (9,), generator=g)
    t[[2, 5]] = -100
    w = _weight()
    rows = F.cross_entropy(x, t, weight=w, label_smoothing=0.1, reduction="none")
    mean = F.cross_entropy(x, t, weight=w, label_smoothing=0.1, reduction="mean")
    d = _mean_denominator(t, w, -100, torch.float64)
    torch.testing.assert_close(rows.sum() / d, mean, rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", [C, C + 3, 10**9, -1, -5, -(10**9)])
def test_out_of_range_weighted_is_nan_without_error_or_wrap(bad):
    """>= C: no IndexError from the gather (it was clamped); -1: NaN, not w[C-1] (no wrap)."""
    w = _weight()
    t = torch.tensor([0, bad, 2, -100])
    d = _mean_denominator(t, w, -100, torch.float32)
    assert d.dtype == torch.float32
    assert torch.isnan(d), d


def test_minus_one_would_wrap_in_a_plain_gather():
    """The failure mode the masking prevents: w[t] with t = -1 silently reads w[C-1]."""
    w = _weight()
    t = torch.tensor([0, -1])
    plain = w[t].sum()
    assert torch.isfinite(plain) and plain.item() == pytest.approx(float(w[0] + w[C - 1]))
    assert torch.isnan(_mean_denominator(t, w, -100, torch.float64))


@pytest.mark.parametrize("ignore_index", [-1, -100, C, C + 5, 0])
def test_ignored_targets_never_index_the_weight(ignore_index):
    """ignore_index may be any int, also -1 or >= C: those rows are skipped, not gathered."""
    w = _weight()
    t = torch.tensor([1, ignore_index, 4, ignore_index, 6 if ignore_index != 6 else 5])
    d = _mean_denominator(t, w, ignore_index, torch.float64)
    assert torch.isfinite(d)
    assert d.item() == pytest.approx(_expected(t, w, ignore_index), rel=1e-15)


def test_unweighted_counts_out_of_range_rows():
    """Without a weight the denominator is the count of non-ignored targets (out of range included:
    the CUDA loss row is NaN, the CPU op raised before)."""
    t = torch.tensor([0, C + 3, -1, -100, 2])
    assert _mean_denominator(t, None, -100, torch.float64).item() == 4.0


def test_all_ignored_gives_zero_and_a_nan_mean():
    w = _weight()
    t = torch.full((5,), -100)
    for weight in (None, w):
        d = _mean_denominator(t, weight, -100, torch.float64)
        assert d.item() == 0.0
        assert torch.isnan(torch.zeros((), dtype=torch.float64) / d)  # 0 / 0, as PyTorch's mean


def test_empty_target():
    d = _mean_denominator(torch.empty(0, dtype=torch.int64), _weight(), -100, torch.float32)
    assert d.item() == 0.0 and d.dtype == torch.float32


def test_kdim_target_and_uint8():
    t = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.uint8)
    w = _weight()
    assert _mean_denominator(t, w, -100, torch.float64).item() == pytest.approx(_expected(t.long(), w, -100))
    t2 = t.clone()
    t2[1, 2] = 200  # uint8, out of range
    assert torch.isnan(_mean_denominator(t2, w, -100, torch.float64))


def test_bf16_weight_accumulates_in_the_requested_dtype():
    w = _weight(torch.bfloat16)
    t = torch.tensor([0, 1, 2, 3])
    d = _mean_denominator(t, w, -100, torch.float32)
    assert d.dtype == torch.float32
    assert d.item() == pytest.approx(float(w[:4].float().sum()), rel=1e-6)


def test_meta_device_needs_no_host_value():
    """Works on meta tensors (no data): nothing reads a value on the host, so nothing syncs on CUDA."""
    t = torch.empty(16, dtype=torch.int64, device="meta")
    w = torch.empty(C, dtype=torch.float32, device="meta")
    d = _mean_denominator(t, w, -100, torch.float32)
    assert d.device.type == "meta" and d.shape == () and d.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_out_of_range_no_assert_no_sync():
    w = _weight(torch.float32).cuda()
    t = torch.tensor([0, C + 3, -1, -100], device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        d = _mean_denominator(t, w, -100, torch.float32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isnan(d.cpu())
    torch.cuda.synchronize()  # a device-side assert would surface here


# --- simt: 1 / denominator as the grad_scale of the real fused CUDA kernel (run on the CPU) --------
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "simt"))
import simt_lib  # noqa: E402

_SIMT_OK, _SIMT_WHY = simt_lib.simt_available()


@pytest.fixture(scope="module")
def simt_kernels():
    if not _SIMT_OK:
        pytest.skip(f"simt runtime unavailable: {_SIMT_WHY}")
    return simt_lib.SimtKernels(simt_lib.build(asan=False))


@pytest.mark.simt
@pytest.mark.parametrize("C_", [300, 40000])  # warp per row / split rows + combine
def test_simt_fused_mean_gradient(simt_kernels, C_):
    """In range: the fused kernel with grad_scale = 1 / _mean_denominator gives the gradient of
    F.cross_entropy(reduction="mean") (float64 autograd oracle). Out of range (C + 3 and -1, not
    ignored): the denominator is NaN, the kernel neither reads out of bounds nor stops; the bad rows'
    losses are NaN and so is every gradient element (the mean is NaN)."""
    g = torch.Generator().manual_seed(1)
    N, eps = 6, 0.1
    x = torch.randn(N, C_, generator=g, dtype=torch.float64).float()
    t = torch.randint(0, C_, (N,), generator=g)
    t[4] = -100
    w = (torch.rand(C_, generator=g, dtype=torch.float64) + 0.5).float()
    d = _mean_denominator(t, w, -100, torch.float32)
    loss, lse, grad = simt_kernels.fused(x, t, w, -100, eps, False, None, 0.0, float(1.0 / d), num_sms=4)
    xr = x.double().requires_grad_(True)
    ref = F.cross_entropy(xr, t, weight=w.double(), label_smoothing=eps, reduction="mean")
    ref.backward()
    torch.testing.assert_close(grad.double(), xr.grad, rtol=2e-5, atol=1e-7)
    rows = F.cross_entropy(x.double(), t, weight=w.double(), label_smoothing=eps, reduction="none")
    torch.testing.assert_close((loss.double().sum() / d.double()), ref.detach(), rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(loss.double(), rows, rtol=2e-5, atol=1e-6)

    tb = t.clone()
    tb[1], tb[3] = C_ + 3, -1
    db = _mean_denominator(tb, w, -100, torch.float32)
    assert torch.isnan(db)
    loss_b, _, grad_b = simt_kernels.fused(x, tb, w, -100, eps, False, None, 0.0, float(1.0 / db), num_sms=4)
    assert torch.isnan(loss_b[[1, 3]]).all(), loss_b
    assert torch.isfinite(loss_b[[0, 2, 5]]).all() and loss_b[4].item() == 0.0, loss_b
    assert torch.isnan(grad_b[[0, 1, 2, 3, 5]]).all()
    assert torch.isnan(loss_b.sum() / db)
