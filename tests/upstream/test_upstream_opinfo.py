"""Every OpInfo sample PyTorch tests ``nn.functional.cross_entropy`` and
``nn.functional.binary_cross_entropy_with_logits`` with (``op_db`` of the installed torch's
``torch.testing._internal.common_methods_invocations``), run through ours: the forward against
PyTorch's on the same sample, the backward against PyTorch's, and (float64) gradcheck with forward
AD, gradgradcheck and forward-over-reverse, as PyTorch's OpInfo tests check its own op (with
PyTorch's gradcheck wrappers) (the OpInfo
entries declare supports_forward_ad and supports_fwgrad_bwgrad). Cross entropy samples also run
with ``label_smoothing=0.15``.
"""

from __future__ import annotations

import functools
import random
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch.testing._internal.common_methods_invocations import op_db
# PyTorch's test wrappers: fast-mode gradcheck unless PYTORCH_TEST_WITH_SLOW_GRADCHECK=1, as in its CI
from torch.testing._internal.common_utils import gradcheck, gradgradcheck

import smoothing_ext

_OURS: dict[str, Callable[..., torch.Tensor]] = {
    "nn.functional.cross_entropy": smoothing_ext.cross_entropy,
    "nn.functional.binary_cross_entropy_with_logits": smoothing_ext.binary_cross_entropy_with_logits,
}
_OPS = {op.name: op for op in op_db if op.name in _OURS and op.variant_test_name == ""}
_DTYPES = (torch.float32, torch.float64)


@functools.lru_cache(maxsize=None)
def _samples(name: str, dtype: torch.dtype, requires_grad: bool) -> list[Any]:
    """The OpInfo's samples on the CPU, reproducibly (the generators draw random tensors); made
    once, as no test modifies them (gradients are taken with autograd.grad, never accumulated)."""
    torch.manual_seed(0)
    random.seed(0)
    samples = list(_OPS[name].sample_inputs("cpu", dtype, requires_grad=requires_grad))
    if name == "nn.functional.cross_entropy":
        smoothed = list(_OPS[name].sample_inputs("cpu", dtype, requires_grad=requires_grad))
        for s in smoothed:
            s.kwargs = dict(s.kwargs, label_smoothing=0.15)
        samples += smoothed
    return samples


def _cases() -> list[Any]:
    cases = []
    for name in _OURS:
        n = len(_samples(name, torch.float64, False))
        cases += [pytest.param(name, i, id=f"{name.rsplit('.', 1)[-1]}-{i}") for i in range(n)]
    return cases


_CASES = _cases()


def test_both_opinfos_exist():
    assert set(_OPS) == set(_OURS)
    assert len(_CASES) > 30


def _call(fn: Callable[..., torch.Tensor], sample: Any, input: torch.Tensor, args: tuple) -> torch.Tensor:
    return fn(input, *args, **sample.kwargs)


def _inputs(sample: Any) -> list[torch.Tensor]:
    """The sample's tensors that require grad: the input, and a probability target."""
    ts = [sample.input] + [a for a in sample.args if isinstance(a, torch.Tensor)]
    return [t for t in ts if t.requires_grad]


def _fn_of_inputs(fn: Callable[..., torch.Tensor], sample: Any) -> Callable[..., torch.Tensor]:
    """fn as a function of the tensors that require grad (the rest held fixed)."""
    positions = [i for i, a in enumerate([sample.input, *sample.args]) if isinstance(a, torch.Tensor) and a.requires_grad]

    def f(*diff: torch.Tensor) -> torch.Tensor:
        full = [sample.input, *sample.args]
        for p, d in zip(positions, diff):
            full[p] = d
        return fn(full[0], *full[1:], **sample.kwargs)

    return f


@pytest.mark.parametrize("dtype", _DTYPES, ids=str)
@pytest.mark.parametrize("name, index", _CASES)
def test_forward_matches_torch(name, index, dtype):
    sample = _samples(name, dtype, False)[index]
    ours = _call(_OURS[name], sample, sample.input, sample.args)
    theirs = _call(_OPS[name].op, sample, sample.input, sample.args)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("dtype", _DTYPES, ids=str)
@pytest.mark.parametrize("name, index", _CASES)
def test_backward_matches_torch(name, index, dtype):
    sample = _samples(name, dtype, True)[index]
    diff = _inputs(sample)
    ours = _fn_of_inputs(_OURS[name], sample)(*diff)
    theirs = _fn_of_inputs(_OPS[name].op, sample)(*diff)
    up = torch.rand(theirs.shape, dtype=dtype, generator=torch.Generator().manual_seed(index)) + 0.5
    g_ours = torch.autograd.grad(ours, diff, up)
    g_theirs = torch.autograd.grad(theirs, diff, up)
    torch.testing.assert_close(g_ours, g_theirs)


@pytest.mark.parametrize("name, index", _CASES)
def test_gradcheck_and_forward_ad(name, index):
    sample = _samples(name, torch.float64, True)[index]
    assert gradcheck(
        _fn_of_inputs(_OURS[name], sample), _inputs(sample), check_forward_ad=True, check_batched_grad=False
    )


@pytest.mark.parametrize("name, index", _CASES)
def test_gradgradcheck(name, index):
    sample = _samples(name, torch.float64, True)[index]
    assert gradgradcheck(_fn_of_inputs(_OURS[name], sample), _inputs(sample))


@pytest.mark.parametrize("name, index", _CASES)
def test_fwgrad_bwgrad(name, index):
    sample = _samples(name, torch.float64, True)[index]
    assert gradgradcheck(
        _fn_of_inputs(_OURS[name], sample), _inputs(sample), check_fwd_over_rev=True, check_rev_over_rev=False,
        # these two belong to the reverse-over-reverse check, run in test_gradgradcheck
        check_undefined_grad=False, check_batched_grad=False,
    )
