"""Bad input raises a Python exception that names the argument and the shapes; never a crash, a
hang or a silent wrong value. PyTorch is the oracle for the rest: where ``F.cross_entropy``
raises for the same arguments, ours is an instance of PyTorch's exception class and its message
contains PyTorch's wording (so ``except`` clauses and regexes written for PyTorch keep working)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import smoothing_ext
from smoothing_ext._errors import (
    SmoothingExtIndexError,
    SmoothingExtNotImplementedError,
    SmoothingExtTypeError,
    SmoothingExtValueError,
)

ops = torch.ops.smoothing_ext


def _x(n=4, c=5, dtype=torch.float32):
    return torch.randn(n, c, dtype=dtype)


def _torch_wording(message: str) -> str:
    """The part of PyTorch's message that does not name its internal kernel or binding: the kernel
    in ``"log_softmax_lastdim_kernel_impl" not implemented for 'Long'`` and the binding in
    ``cross_entropy_loss(): argument ...`` depend on the input's layout and PyTorch's version."""
    message = re.sub(r'^"[^"]*" ', "", message)
    return re.sub(r"^\w+\(\): ", "", message)


def _raises_like_torch(ours_fn, torch_fn) -> BaseException:
    """Run both; assert ours raises what PyTorch raises (class and wording); return ours."""
    with pytest.raises(Exception) as theirs:
        torch_fn()
    with pytest.raises(Exception) as info:
        ours_fn()
    assert isinstance(info.value, type(theirs.value)), (
        f"PyTorch raises {type(theirs.value).__name__}, ours {type(info.value).__mro__}"
    )
    assert _torch_wording(str(theirs.value)) in str(info.value), (
        f"PyTorch's wording {str(theirs.value)!r} not in ours {str(info.value)!r}"
    )
    return info.value


# (arguments, this package's former exception class, words of our own message). The former class
# stays catchable: where PyTorch raises another class, ours derives from both.
_CASES = [
    (dict(input=_x(), target=torch.zeros(3, dtype=torch.long)), ValueError, ["target", "[4]", "[3]", "[4, 5]"]),
    (dict(input=_x(), target=torch.zeros(4, 2, dtype=torch.long)), ValueError, ["target", "[4, 2]"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.int16)), TypeError, ["target", "int16"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.bool)), TypeError, ["target", "bool"]),
    (dict(input=_x(), target=torch.rand(4, 6)), ValueError, ["target", "(4, 5)", "(4, 6)"]),
    (dict(input=_x(), target=torch.rand(4)), TypeError, ["target", "(4,)", ".long()"]),
    (dict(input=torch.randn(2, 3, 5), target=torch.rand(2, 5)), TypeError, ["target", ".long()"]),
    (dict(input=_x(), target=torch.zeros(4, 5, dtype=torch.long)), TypeError, ["target", "probabilities"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), label_smoothing=1.5), ValueError, ["label_smoothing", "1.5"]),
    (dict(input=_x(), target=torch.rand(4, 5), label_smoothing=1.5), ValueError, ["label_smoothing", "1.5"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), reduction="avg"), ValueError, ["reduction", "avg"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), weight=torch.ones(4)), ValueError, ["weight", "(5,)", "[4]"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), weight=torch.ones(5, 1)), ValueError, ["weight", "[5, 1]"]),
    (dict(input=_x(), target=torch.rand(4, 5), weight=torch.ones(4)), ValueError, ["weight", "(5,)", "[4]"]),
    (dict(input=torch.randn(2, 3, 5), target=torch.zeros(2, 5, dtype=torch.long), weight=torch.ones(2)), ValueError, ["weight", "(3,)"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), weight=torch.ones(5, dtype=torch.long)), TypeError, ["weight", "Long"]),
    (dict(input=torch.ones(4, 5, dtype=torch.long), target=torch.zeros(4, dtype=torch.long)), TypeError, ["input", "floating", "torch.int64"]),
    (dict(input=torch.ones(4, 5, 2, dtype=torch.long), target=torch.zeros(4, 2, dtype=torch.long)), TypeError, ["input", "floating"]),
    (dict(input=torch.tensor(1.0), target=torch.tensor(0)), ValueError, ["input", "0-dim"]),
    (dict(input=torch.tensor(1.0), target=torch.tensor(0.5)), ValueError, ["input", "0-dim"]),
    (dict(input=torch.tensor(1.0), target=torch.zeros(1, dtype=torch.long)), ValueError, ["input", "0-dim"]),
    (dict(input=torch.randn(4, 0), target=torch.zeros(4, dtype=torch.long)), IndexError, ["class", "[4, 0]"]),
    (dict(input=torch.randn(2, 3, 5), target=torch.zeros(2, 4, dtype=torch.long)), ValueError, ["target", "[2, 5]", "[2, 4]"]),
    (dict(input=torch.randn(2, 3, 5, 4), target=torch.zeros(2, 5, 3, dtype=torch.long)), ValueError, ["target", "[2, 5, 4]"]),
    (dict(input=torch.randn(2, 3, 5, 4), target=torch.zeros(2, 5, dtype=torch.long)), ValueError, ["target", "[2, 5]"]),
    (dict(input=torch.randn(3), target=torch.zeros(2, dtype=torch.long)), ValueError, ["target", "[2]"]),
    (dict(input=_x(), target=torch.rand(4, 5), ignore_index=1), ValueError, ["ignore_index=1", "probability"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), ignore_index=None), TypeError, ["ignore_index", "int"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), ignore_index=1.5), TypeError, ["ignore_index"]),
    (dict(input=_x(), target=[0, 1, 2, 3]), TypeError, ["target", "Tensor"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), weight=[1.0] * 5), TypeError, ["weight", "Tensor"]),
    (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), label_smoothing="a"), TypeError, ["label_smoothing"]),
]


@pytest.mark.parametrize("kwargs, former, words", _CASES)
def test_bad_arguments(kwargs, former, words):
    x = kwargs["input"].clone() if isinstance(kwargs["input"], torch.Tensor) else None
    err = _raises_like_torch(lambda: smoothing_ext.cross_entropy(**kwargs), lambda: F.cross_entropy(**kwargs))
    assert isinstance(err, former)
    msg = str(err)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    if x is not None:
        assert torch.equal(x, kwargs["input"])  # nothing modified


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(input=_x(), target=torch.zeros(3, dtype=torch.long)),
        dict(input=_x(), target=torch.zeros(4, dtype=torch.int16)),
        dict(input=_x(), target=torch.zeros(4, dtype=torch.long), label_smoothing=1.5),
        dict(input=_x(), target=torch.zeros(4, dtype=torch.long), weight=torch.ones(2)),
        dict(input=_x(), target=torch.rand(4, 5), ignore_index=1),
        dict(input=torch.randn(2, 3, 5), target=torch.zeros(2, 4, dtype=torch.long)),
    ],
)
def test_module_raises_like_torch_in_forward(kwargs):
    """nn.CrossEntropyLoss checks its arguments in the forward (not at construction): so does ours."""
    inputs = (kwargs.pop("input"), kwargs.pop("target"))
    ours = smoothing_ext.CrossEntropyLoss(**kwargs)  # constructing raises nothing, as in PyTorch
    theirs = torch.nn.CrossEntropyLoss(**kwargs)
    _raises_like_torch(lambda: ours(*inputs), lambda: theirs(*inputs))


def test_torch_accepts_but_we_reject_negative_label_smoothing():
    # PyTorch silently ignores a negative smoothing with class indices; a negative mass has no
    # meaning, so we raise (PyTorch's out-of-range wording, catchable as its RuntimeError).
    x, t = _x(), torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(F.cross_entropy(x, t, label_smoothing=-0.1), F.cross_entropy(x, t))
    with pytest.raises(RuntimeError, match=r"label_smoothing must be between 0\.0 and 1\.0\. Got: -0\.1") as info:
        smoothing_ext.cross_entropy(x, t, label_smoothing=-0.1)
    assert isinstance(info.value, ValueError)


def test_exception_classes_catch_both_ways():
    assert issubclass(SmoothingExtValueError, ValueError) and issubclass(SmoothingExtValueError, RuntimeError)
    assert issubclass(SmoothingExtTypeError, TypeError) and issubclass(SmoothingExtTypeError, RuntimeError)
    assert issubclass(SmoothingExtIndexError, ValueError) and issubclass(SmoothingExtIndexError, IndexError)
    assert issubclass(SmoothingExtNotImplementedError, TypeError)
    assert issubclass(SmoothingExtNotImplementedError, NotImplementedError)


def test_ignore_index_none_says_what_it_is():
    with pytest.raises(TypeError, match=r"ignore_index.*must be int, not NoneType.*default -100"):
        smoothing_ext.cross_entropy(_x(), torch.zeros(4, dtype=torch.long), ignore_index=None)


def test_out_of_bounds_target_class():
    # Class and our wording; PyTorch's own wording ("Target 5 is out of bounds.") is checked below.
    for bad in (5, -1):
        t = torch.tensor([0, 1, bad, 2])
        with pytest.raises(IndexError, match=rf"target value {bad} at flat position 2 .* \[0, 5\)"):
            smoothing_ext.cross_entropy(_x(), t)
        with pytest.raises(IndexError):
            F.cross_entropy(_x(), t)


def test_out_of_bounds_target_wording_is_torchs():
    t = torch.tensor([0, 1, 5, 2])
    _raises_like_torch(lambda: smoothing_ext.cross_entropy(_x(), t), lambda: F.cross_entropy(_x(), t))


def test_bad_target_in_kdim_names_position():
    x = torch.randn(2, 3, 4)
    t = torch.zeros(2, 4, dtype=torch.long)
    t[1, 2] = 3
    with pytest.raises(IndexError, match=r"target value 3 at flat position 6"):
        smoothing_ext.cross_entropy(x, t)


def test_bad_target_through_ops_directly():
    with pytest.raises(IndexError, match="out of bounds"):
        ops.cross_entropy_forward(_x(), torch.tensor([0, 1, 2, 9]), None, -100, 0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.cross_entropy_forward(_x(), torch.tensor([0, 1, 2, 3]), None, -100, 2.0)
    loss, lse = ops.cross_entropy_forward(_x(), torch.tensor([0, 1, 2, 3]), None, -100, 0.0)
    with pytest.raises(ValueError, match="grad_loss"):
        ops._cross_entropy_backward(torch.ones(3), None, _x(), torch.tensor([0, 1, 2, 3]), None, lse, -100, 0.0)
    with pytest.raises(ValueError, match="grad_lse"):
        ops._cross_entropy_backward(loss, torch.ones(5), _x(), torch.tensor([0, 1, 2, 3]), None, lse, -100, 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: tensors on two devices")
def test_mixed_devices():
    x = torch.randn(4, 5, device="cuda")
    with pytest.raises(RuntimeError, match="target is on cpu"):
        smoothing_ext.cross_entropy(x, torch.zeros(4, dtype=torch.long))
    with pytest.raises(RuntimeError, match="weight is on cpu"):
        smoothing_ext.cross_entropy(x, torch.zeros(4, dtype=torch.long, device="cuda"), weight=torch.ones(5))


def test_mixed_devices_meta():
    # a second device without a GPU: the meta device; PyTorch raises RuntimeError too
    x = torch.randn(4, 5)
    t_meta = torch.zeros(4, dtype=torch.long, device="meta")
    with pytest.raises(RuntimeError):
        F.cross_entropy(x, t_meta)
    with pytest.raises(RuntimeError, match=r"target is on meta but input is on cpu"):
        smoothing_ext.cross_entropy(x, t_meta)
    with pytest.raises(RuntimeError, match=r"weight is on meta but input is on cpu"):
        smoothing_ext.cross_entropy(x, torch.zeros(4, dtype=torch.long), weight=torch.ones(5, device="meta"))


def test_ignore_index_with_probabilities():
    # As in PyTorch: a non-negative ignore_index is an error with probability targets, a negative
    # one (the default -100) is accepted and has no effect.
    x = torch.randn(4, 5)
    y = torch.softmax(torch.randn(4, 5), 1)
    with pytest.raises(ValueError, match="ignore_index=2 .*probability"):
        smoothing_ext.cross_entropy(x, y, ignore_index=2)
    torch.testing.assert_close(
        smoothing_ext.cross_entropy(x, y, ignore_index=-1), torch.nn.functional.cross_entropy(x, y, ignore_index=-1)
    )


_BX, _BT = torch.randn(4, 5), torch.rand(4, 5)


@pytest.mark.parametrize(
    "kwargs, former",
    [
        (dict(target=torch.rand(4, 6)), ValueError),
        (dict(target=torch.ones(4, 5, dtype=torch.long)), TypeError),
        (dict(input=torch.ones(4, 5, dtype=torch.long)), TypeError),
        (dict(weight=torch.ones(4)), ValueError),
        (dict(weight=torch.ones(2, 4, 5)), ValueError),
        (dict(pos_weight=torch.ones(4)), ValueError),
        (dict(weight=[1.0] * 5), TypeError),
        (dict(reduction="avg"), ValueError),
        (dict(target=torch.rand(4, 5, device="meta")), RuntimeError),
        (dict(weight=torch.rand(5, requires_grad=True)), RuntimeError),
    ],
)
def test_bce_raises_like_torch(kwargs, former):
    args = dict(input=_BX, target=_BT)
    args.update(kwargs)
    err = _raises_like_torch(
        lambda: smoothing_ext.binary_cross_entropy_with_logits(**args),
        lambda: F.binary_cross_entropy_with_logits(**args),
    )
    assert isinstance(err, former)
