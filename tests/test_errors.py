"""Bad input raises a Python exception that names the argument and the shapes; never a crash, a
hang or a silent wrong value."""

from __future__ import annotations

import pytest
import torch

import smoothing_ext

ops = torch.ops.smoothing_ext


def _x(n=4, c=5, dtype=torch.float32):
    return torch.randn(n, c, dtype=dtype)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(input=_x(), target=torch.zeros(3, dtype=torch.long)), ValueError, ["target", "[4]", "[3]", "[4, 5]"]),
        (dict(input=_x(), target=torch.zeros(4, 2, dtype=torch.long)), ValueError, ["target", "[4, 2]"]),
        (dict(input=_x(), target=torch.zeros(4, dtype=torch.int16)), TypeError, ["target", "int16"]),
        (dict(input=_x(), target=torch.zeros(4, dtype=torch.bool)), TypeError, ["target", "bool"]),
        (dict(input=_x(), target=torch.rand(4, 6)), ValueError, ["target", "(4, 5)", "(4, 6)"]),
        (dict(input=_x(), target=torch.tensor([0, 1, 5, 2])), IndexError, ["target", "5", "[0, 5)", "ignore_index"]),
        (dict(input=_x(), target=torch.tensor([0, 1, -1, 2])), IndexError, ["target", "-1", "[0, 5)"]),
        (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), label_smoothing=1.5), ValueError, ["label_smoothing", "1.5"]),
        (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), label_smoothing=-0.1), ValueError, ["label_smoothing"]),
        (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), reduction="avg"), ValueError, ["reduction", "avg"]),
        (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), weight=torch.ones(4)), ValueError, ["weight", "(5,)", "[4]"]),
        (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), weight=torch.ones(5, 1)), ValueError, ["weight", "[5, 1]"]),
        (dict(input=_x(), target=torch.zeros(4, dtype=torch.long), weight=torch.ones(5, dtype=torch.long)), TypeError, ["weight", "Long"]),
        (dict(input=torch.ones(4, 5, dtype=torch.long), target=torch.zeros(4, dtype=torch.long)), TypeError, ["input", "floating", "torch.int64"]),
        (dict(input=torch.tensor(1.0), target=torch.tensor(0)), ValueError, ["input", "0-dim"]),
        (dict(input=torch.randn(4, 0), target=torch.zeros(4, dtype=torch.long)), ValueError, ["class", "[4, 0]"]),
    ],
)
def test_bad_arguments(kwargs, exc, words):
    x = kwargs["input"].clone()
    with pytest.raises(exc) as info:
        smoothing_ext.cross_entropy(**kwargs)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    assert torch.equal(x, kwargs["input"])  # nothing modified


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
    # a second device without a GPU: the meta device
    x = torch.randn(4, 5)
    with pytest.raises(RuntimeError, match=r"target is on meta but input is on cpu"):
        smoothing_ext.cross_entropy(x, torch.zeros(4, dtype=torch.long, device="meta"))
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
