"""Binary / multi-label cross entropy with logits and label smoothing: a drop-in for
``torch.nn.functional.binary_cross_entropy_with_logits`` / ``torch.nn.BCEWithLogitsLoss``.

The smoothed target is ``y' = y (1 - eps) + eps / 2`` (uniform smoothing over the two classes of
each element); with ``label_smoothing=0`` the results are PyTorch's. The ops, their autograd
formula and their fake kernels are registered here (formula: csrc/smoothing_ext.cpp).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from .functional import _autocast_enabled

__all__ = ["binary_cross_entropy_with_logits", "BCEWithLogitsLoss"]

_ops = torch.ops.smoothing_ext
_REDUCTIONS = ("none", "mean", "sum")
_NAME = "smoothing_ext.binary_cross_entropy_with_logits"


def _check_args(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    pos_weight: Optional[Tensor],
    reduction: str,
    label_smoothing: float,
) -> None:
    # The C++ ops check everything again (broadcastability included); these run first so that
    # the messages speak of the public arguments and device mismatches never reach the dispatcher.
    for name, t, optional in (("input", input, False), ("target", target, False),
                              ("weight", weight, True), ("pos_weight", pos_weight, True)):
        if not isinstance(t, Tensor) and not (optional and t is None):
            raise TypeError(f"{_NAME}: {name} must be a Tensor{' or None' if optional else ''}, "
                            f"got {type(t).__name__}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{_NAME}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"{_NAME}: label_smoothing must be in [0, 1], got {label_smoothing}")
    for name, t in (("input", input), ("target", target), ("weight", weight), ("pos_weight", pos_weight)):
        if t is not None and not t.is_floating_point():
            raise TypeError(
                f"{_NAME}: {name} must be a floating-point tensor (float32, float64, bfloat16, float16), "
                f"got {t.dtype} with shape {tuple(t.shape)}"
            )
    if target.shape != input.shape:
        raise ValueError(
            f"{_NAME}: target size {tuple(target.shape)} must be the same as input size {tuple(input.shape)}"
        )
    for name, t in (("target", target), ("weight", weight), ("pos_weight", pos_weight)):
        if t is not None and t.device != input.device:
            raise RuntimeError(
                f"{_NAME}: {name} is on {t.device} but input is on {input.device}; move both to the same device"
            )
    for name, t in (("weight", weight), ("pos_weight", pos_weight)):
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            # as PyTorch: weights are constants of the loss
            raise RuntimeError(
                f"{_NAME}: the loss is not differentiable with respect to {name}; pass {name}.detach()"
            )


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    pos_weight: Optional[Tensor] = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Label-smoothed binary cross entropy between logits and (multi-label) targets, in one pass.

    :func:`torch.nn.functional.binary_cross_entropy_with_logits` applied to the smoothed target

    .. math:: y' = y\,(1 - \varepsilon) + \varepsilon / 2,

    i.e. per element, with weight :math:`w` and positive-class weight :math:`p`,

    .. math:: \ell = w\,[(1 - y')\,x + (1 + (p - 1)\,y')\,\operatorname{softplus}(-x)],

    evaluated without cancellation for logits of any magnitude.

    Args:
        input: logits of any shape; float32, float64, bfloat16 or float16 (read as they are).
        target: targets in [0, 1] of the input's shape, floating point (gradients flow to them).
        weight: optional rescaling weight broadcastable to the input's shape (e.g. ``(C,)``,
            ``(N, 1)``, a scalar or the full shape); a constant, as in PyTorch.
        pos_weight: optional weight of the positive class, broadcast like PyTorch does (a ``(C,)``
            tensor applies along the last dim); a constant.
        reduction: ``"none"`` | ``"mean"`` (over all elements) | ``"sum"``.
        label_smoothing: :math:`\varepsilon \in [0, 1]`.

    Returns:
        The loss in the target's dtype, as PyTorch (float32 under :func:`torch.autocast`, where
        PyTorch computes this loss in float32; bfloat16/float16 logits are read directly and
        accumulated in float32, which gives the same result as upcasting them first). Shape
        ``()`` for ``"mean"``/``"sum"``, the input's for ``"none"``; ``"mean"`` of an empty input
        is ``nan``.

    Raises:
        TypeError, ValueError, RuntimeError: for arguments PyTorch would reject (wrong dtypes,
        shapes, devices, ``label_smoothing`` outside [0, 1], non-broadcastable weights), naming the
        argument and the shapes.
    """
    _check_args(input, target, weight, pos_weight, reduction, label_smoothing)
    eps = float(label_smoothing)
    # PyTorch's result has the target's dtype (its in-place arithmetic starts from 1 - target).
    out_dtype = torch.float32 if _autocast_enabled(input.device.type) else target.dtype
    if reduction == "none":
        return _ops.binary_cross_entropy_with_logits_forward(input, target, weight, pos_weight, eps).to(out_dtype)
    # The sum op reduces in the loss pass (no input-sized loss tensor written and read back); its
    # backward hands the 0-dim upstream gradient over as a 0-stride expand (read as one number).
    total = _ops.binary_cross_entropy_with_logits_sum(input, target, weight, pos_weight, eps)
    if reduction == "sum":
        return total.to(out_dtype)
    # 0 / 0 = nan for an empty input, as in PyTorch.
    return (total / input.numel()).to(out_dtype)


class BCEWithLogitsLoss(nn.Module):
    """Drop-in for :class:`torch.nn.BCEWithLogitsLoss` with ``label_smoothing``.

    Same keywords as PyTorch's (without the deprecated ``size_average``/``reduce``, like this
    package's other modules); ``weight`` and ``pos_weight`` are buffers (they follow ``.to()`` and
    the state dict). See :func:`smoothing_ext.binary_cross_entropy_with_logits`.
    """

    weight: Optional[Tensor]
    pos_weight: Optional[Tensor]

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        reduction: str = "mean",
        pos_weight: Optional[Tensor] = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"BCEWithLogitsLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"BCEWithLogitsLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input,
            target,
            weight=self.weight,
            pos_weight=self.pos_weight,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}"


# ---- op registrations: fake kernels and autograd --------------------------------------------------


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.register_fake("smoothing_ext::binary_cross_entropy_with_logits_forward")
def _forward_fake(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    pos_weight: Optional[Tensor],
    label_smoothing: float,
) -> Tensor:
    return input.new_empty(input.shape, dtype=_acc_dtype(input.dtype))


@torch.library.register_fake("smoothing_ext::binary_cross_entropy_with_logits_sum")
def _sum_fake(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    pos_weight: Optional[Tensor],
    label_smoothing: float,
) -> Tensor:
    return input.new_empty((), dtype=_acc_dtype(input.dtype))


@torch.library.register_fake("smoothing_ext::_binary_cross_entropy_with_logits_backward")
def _backward_fake(
    grad_loss: Tensor,
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    pos_weight: Optional[Tensor],
    label_smoothing: float,
) -> Tensor:
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    input, target, weight, pos_weight, label_smoothing = inputs
    ctx.save_for_backward(input, target, weight, pos_weight)
    ctx.label_smoothing = label_smoothing


def _sum_backward(ctx: Any, grad_sum: Tensor):
    # d sum / d loss_i = 1: the element-wise backward with the 0-dim gradient broadcast as a
    # 0-stride view (the backward op reads it as one number, nothing input-sized is allocated).
    return _backward(ctx, grad_sum.expand(ctx.saved_tensors[0].shape))


def _backward(ctx: Any, grad_loss: Tensor):
    input, target, weight, pos_weight = ctx.saved_tensors
    eps = ctx.label_smoothing
    grad_input = grad_target = None
    if ctx.needs_input_grad[0]:
        grad_input = _ops._binary_cross_entropy_with_logits_backward(
            grad_loss, input, target, weight, pos_weight, eps
        )
    if ctx.needs_input_grad[1]:
        # d loss / d y = (1 - eps) w [-x + (pw - 1) softplus(-x)]  (dy'/dy = 1 - eps). Rare (learned
        # or distilled targets), so plain torch ops in the accumulation dtype.
        acc = _acc_dtype(input.dtype)
        x = input.to(acc)
        g = -x
        if pos_weight is not None:
            softplus_neg = torch.clamp_min(-x, 0.0) + torch.log1p(torch.exp(-x.abs()))
            g = g + (pos_weight.to(acc) - 1.0) * softplus_neg
        g = g * ((1.0 - eps) * grad_loss.to(acc))
        if weight is not None:
            g = g * weight.to(acc)
        grad_target = g.to(target.dtype)
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        raise RuntimeError(f"{_NAME}: the loss is not differentiable with respect to weight or pos_weight")
    return grad_input, grad_target, None, None, None


torch.library.register_autograd(
    "smoothing_ext::binary_cross_entropy_with_logits_forward", _backward, setup_context=_setup_context
)
torch.library.register_autograd(
    "smoothing_ext::binary_cross_entropy_with_logits_sum", _sum_backward, setup_context=_setup_context
)
