"""Binary / multi-label cross entropy with logits and label smoothing: a drop-in for
``torch.nn.functional.binary_cross_entropy_with_logits`` / ``torch.nn.BCEWithLogitsLoss``.

The smoothed target is ``y' = y (1 - eps) + eps / 2`` (uniform smoothing over the two classes of
each element); with ``label_smoothing=0`` the results are PyTorch's. The ops, their autograd
formula and their fake kernels are registered here (formula: csrc/smoothing_ext.cpp).
"""

from __future__ import annotations

import numbers
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.nn import _reduction as _Reduction

from ._errors import SmoothingExtNotImplementedError, SmoothingExtTypeError, SmoothingExtValueError, scalar_type_name
from .functional import _autocast_enabled

__all__ = ["binary_cross_entropy_with_logits", "BCEWithLogitsLoss"]

_ops = torch.ops.smoothing_ext
_REDUCTIONS = ("none", "mean", "sum")
_NAME = "smoothing_ext.binary_cross_entropy_with_logits"


def _device_mismatch_wording(input: Tensor, other: Tensor, name: str) -> str:
    """PyTorch's wording for an argument on another device than the input (with ``meta``, its
    device check names one of them as the expected one, depending on the argument)."""
    if "meta" not in (input.device.type, other.device.type):
        return f"Expected all tensors to be on the same device, but found at least two devices, {input.device} and {other.device}!"
    found, expected = (other, input) if name == "weight" else (input, other)
    return f"Tensor on device {found.device} is not on the expected device {expected.device}!"


def _broadcast_error(a: tuple, b: tuple, input_shape: tuple) -> Optional[str]:
    """PyTorch's message for an element-wise op on shapes ``a`` and ``b`` that do not broadcast to
    the loss's shape (None if they do), worded as its shape inference words it."""
    ndim = max(len(a), len(b))
    out = []
    for i in range(ndim - 1, -1, -1):  # PyTorch checks from the last dim
        offset = ndim - 1 - i
        da = a[len(a) - 1 - offset] if offset < len(a) else 1
        db = b[len(b) - 1 - offset] if offset < len(b) else 1
        if da != db and da != 1 and db != 1:
            return f"The size of tensor a ({da}) must match the size of tensor b ({db}) at non-singleton dimension {i}"
        out.insert(0, da if db == 1 else db)
    if tuple(out) != tuple(input_shape):
        # broadcastable, but to a larger shape than the loss: PyTorch's in-place op refuses it
        return f"output with shape {list(input_shape)} doesn't match the broadcast shape {out}"
    return None


def _check_args(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    pos_weight: Optional[Tensor],
    reduction: str,
    label_smoothing: float,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
) -> str:
    """PyTorch's checks (its exception classes, or classes deriving from both theirs and ours, and
    its wording followed by ours); returns the reduction, resolved from the deprecated
    ``size_average``/``reduce`` as PyTorch does when either is given.

    The C++ ops check everything again (broadcastability included); these run first so that the
    messages speak of the public arguments and device mismatches never reach the dispatcher.
    """
    for position, name, t, optional in ((1, "input", input, False), (2, "target", target, False),
                                        (3, "weight", weight, True), (7, "pos_weight", pos_weight, True)):
        if not isinstance(t, Tensor) and not (optional and t is None):
            raise TypeError(
                f"binary_cross_entropy_with_logits(): argument '{name}' (position {position}) must be Tensor, "
                f"not {type(t).__name__}; {_NAME}: {name} must be a Tensor{' or None' if optional else ''}, "
                f"got {type(t).__name__}"
            )
    if size_average is not None or reduce is not None:
        # deprecated arguments: they override reduction, with PyTorch's warning, as in torch
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{reduction} is not a valid value for reduction; {_NAME}: reduction must be one of {_REDUCTIONS}, "
            f"got {reduction!r}"
        )
    if target.shape != input.shape:
        raise ValueError(
            f"Target size ({target.size()}) must be the same as input size ({input.size()}); "
            f"{_NAME}: target size {tuple(target.shape)} must be the same as input size {tuple(input.shape)}"
        )
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise TypeError(f"{_NAME}: label_smoothing must be a float, got {type(label_smoothing).__name__}")
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"{_NAME}: label_smoothing must be in [0, 1], got {label_smoothing}")
    for name, t in (("target", target), ("weight", weight), ("pos_weight", pos_weight)):
        if t is not None and t.device != input.device:
            raise RuntimeError(
                f"{_device_mismatch_wording(input, t, name)} {_NAME}: {name} is on {t.device} but input is on "
                f"{input.device}; move both to the same device"
            )
    ours = (
        "{name} must be a floating-point tensor (float32, float64, bfloat16, float16), got {dtype} with "
        "shape {shape}"
    )
    if not input.is_floating_point():
        raise SmoothingExtNotImplementedError(
            f"\"binary_cross_entropy_with_logits\" not implemented for '{scalar_type_name(input.dtype)}'; "
            + f"{_NAME}: " + ours.format(name="input", dtype=input.dtype, shape=tuple(input.shape))
        )
    if not target.is_floating_point():
        raise SmoothingExtTypeError(
            f"result type {scalar_type_name(input.dtype)} can't be cast to the desired output type "
            f"{scalar_type_name(target.dtype)}; "
            + f"{_NAME}: " + ours.format(name="target", dtype=target.dtype, shape=tuple(target.shape))
        )
    for name, t in (("weight", weight), ("pos_weight", pos_weight)):
        if t is not None and not t.is_floating_point():
            # PyTorch promotes integer weights; the kernels read floating-point weights only
            raise TypeError(f"{_NAME}: " + ours.format(name=name, dtype=t.dtype, shape=tuple(t.shape)))
    # PyTorch's formula: loss * weight, and pos_weight * target (so its messages name those operands)
    for name, t in (("weight", weight), ("pos_weight", pos_weight)):
        if t is None:
            continue
        a, b = (input.shape, t.shape) if name == "weight" else (t.shape, target.shape)
        torch_message = _broadcast_error(tuple(a), tuple(b), tuple(input.shape))
        if torch_message is not None:
            raise SmoothingExtValueError(
                f"{torch_message}; smoothing_ext (binary_cross_entropy_with_logits): {name} of shape "
                f"{list(t.shape)} is not broadcastable to the input's shape {list(input.shape)} (trailing dims "
                "are aligned, e.g. (C,) or (N, 1) for an (N, C) input)"
            )
    for name, t in (("weight", weight), ("pos_weight", pos_weight)):
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            # as PyTorch: weights are constants of the loss
            raise RuntimeError(
                f"The function 'binary_cross_entropy_with_logits' is not differentiable with respect to argument "
                f"'{name}'. This input cannot have requires_grad True. {_NAME}: the loss is not differentiable "
                f"with respect to {name}; pass {name}.detach()"
            )
    return reduction


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    pos_weight: Optional[Tensor] = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Label-smoothed binary cross entropy between logits and (multi-label) targets, in one pass.

    :func:`torch.nn.functional.binary_cross_entropy_with_logits` applied to the smoothed target

    .. math:: y' = y\,(1 - \varepsilon) + \varepsilon / 2,

    i.e. per element, with weight :math:`w` and positive-class weight :math:`p`,

    .. math:: \ell = w\,[(1 - y')\,x + (1 + (p - 1)\,y')\,\operatorname{softplus}(-x)],

    evaluated without cancellation for logits of any magnitude.

    Same positional arguments as PyTorch's (``input, target, weight, size_average, reduce,
    reduction, pos_weight``), then ``label_smoothing``.

    Args:
        input: logits of any shape; float32, float64, bfloat16 or float16 (read as they are).
        target: targets in [0, 1] of the input's shape, floating point (gradients flow to them).
        weight: optional rescaling weight broadcastable to the input's shape (e.g. ``(C,)``,
            ``(N, 1)``, a scalar or the full shape); a constant, as in PyTorch.
        size_average, reduce: deprecated; when either is given it overrides ``reduction`` exactly as
            in PyTorch (``torch.nn._reduction.legacy_get_string``, with its warning).
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
        shapes, devices, ``label_smoothing`` outside [0, 1], non-broadcastable weights): PyTorch's
        exception class (or one deriving from it and from this package's former class) and
        PyTorch's wording, followed by the argument named and the shapes. Integer ``weight`` /
        ``pos_weight`` (which PyTorch promotes) raise ``TypeError``.
    """
    reduction = _check_args(input, target, weight, pos_weight, reduction, label_smoothing, size_average, reduce)
    if input.device.type == "meta":
        from ._degenerate import bce_with_logits_meta

        return bce_with_logits_meta(input, target, reduction)
    eps = float(label_smoothing)
    # PyTorch's result has the target's dtype (its in-place arithmetic starts from 1 - target).
    out_dtype = torch.float32 if _autocast_enabled(input.device.type) else target.dtype
    if reduction == "none":
        return _bce_elementwise(input, target, weight, pos_weight, eps).to(out_dtype)
    # The sum op reduces in the loss pass (no input-sized loss tensor written and read back); its
    # backward hands the 0-dim upstream gradient over as a 0-stride expand (read as one number).
    total = _bce_sum(input, target, weight, pos_weight, eps)
    if reduction == "sum":
        return total.to(out_dtype)
    # 0 / 0 = nan for an empty input, as in PyTorch.
    return (total / input.numel()).to(out_dtype)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """Drop-in for :class:`torch.nn.BCEWithLogitsLoss` (a subclass of it) with ``label_smoothing``.

    Same positional arguments as PyTorch's (``weight, size_average, reduce, reduction,
    pos_weight``; the deprecated ``size_average``/``reduce`` override ``reduction`` with PyTorch's
    warning), then ``label_smoothing``; ``weight`` and ``pos_weight`` are buffers, ``repr``,
    ``state_dict`` and pickling are PyTorch's (``label_smoothing`` shows in ``repr`` when not 0). As
    in PyTorch, the arguments are checked when the loss is computed. See
    :func:`smoothing_ext.binary_cross_entropy_with_logits`.
    """

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        size_average: Optional[bool] = None,
        reduce: Optional[bool] = None,
        reduction: str = "mean",
        pos_weight: Optional[Tensor] = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction, pos_weight)
        # this package's own option: a bad value is reported where it was written
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"BCEWithLogitsLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """The loss of ``input`` (logits) against ``target``, as :class:`torch.nn.BCEWithLogitsLoss`."""
        return binary_cross_entropy_with_logits(
            input,
            target,
            self.weight,
            pos_weight=self.pos_weight,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("label_smoothing", 0.0)

    def extra_repr(self) -> str:
        # PyTorch's repr of this class is bare; only a non-default smoothing is added
        return f"label_smoothing={self.label_smoothing}" if self.label_smoothing else ""


# ---- op registrations: fake kernels and autograd --------------------------------------------------

from ._autograd import (  # noqa: E402
    batch_first,
    needs_differentiable_backward,
    register_backward_op_autograd,
    use_function,
)


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


# Autograd in every mode, as for cross entropy (smoothing_ext/_autograd.py): eager calls that need
# it go through the autograd.Functions below (torch.func needs their separate setup_context / jvp /
# generate_vmap_rule), compiled code calls the ops with their register_autograd registrations. The
# plain backward calls the compiled backward op; double backward, forward-over-reverse and
# torch.func use the same gradient in differentiable torch ops. weight and pos_weight are constants
# (as in PyTorch): asking for their gradient or tangent raises.

_CONSTANTS_MESSAGE = f"{_NAME}: the loss is not differentiable with respect to weight or pos_weight"


def _softplus_neg(x: Tensor) -> Tensor:
    # softplus(-x) = -log sigmoid(x): exact for any x, and differentiable to any order
    return -torch.nn.functional.logsigmoid(x)


def _partials(
    input: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor], eps: float,
    need_x: bool, need_y: bool,
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """d loss / d x = w [(1 + (pw - 1) y') sigmoid(x) - pw y'] and d loss / d y = (1 - eps) w
    [-x + (pw - 1) softplus(-x)] (dy'/dy = 1 - eps), element-wise, in the accumulation dtype."""
    acc = _acc_dtype(input.dtype)
    x = input.to(acc)
    ys = target.to(acc) * (1.0 - eps) + eps / 2.0
    pw = None if pos_weight is None else pos_weight.to(acc)
    w = None if weight is None else weight.to(acc)
    dx = dy = None
    if need_x:
        s = torch.sigmoid(x)
        dx = s - ys if pw is None else (1.0 + (pw - 1.0) * ys) * s - pw * ys
        dx = dx if w is None else w * dx
        dx = dx.expand(input.shape)
    if need_y:
        dy = -x if pw is None else (pw - 1.0) * _softplus_neg(x) - x
        dy = (1.0 - eps) * (dy if w is None else w * dy)
        dy = dy.expand(input.shape)
    return dx, dy


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    input, target, weight, pos_weight, label_smoothing = inputs
    ctx.save_for_backward(input, target, weight, pos_weight)
    ctx.label_smoothing = label_smoothing


def _backward(ctx: Any, grad_loss: Optional[Tensor]):
    input, target, weight, pos_weight = ctx.saved_tensors
    eps = ctx.label_smoothing
    need_x, need_y = ctx.needs_input_grad[:2]
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        raise RuntimeError(_CONSTANTS_MESSAGE)
    if grad_loss is None or not (need_x or need_y):
        return None, None, None, None, None
    grad_input = grad_target = None
    acc = _acc_dtype(input.dtype)
    if needs_differentiable_backward((input, target, grad_loss)):
        dx, dy = _partials(input, target, weight, pos_weight, eps, need_x, need_y)
        g = grad_loss.to(acc)
        grad_input = None if dx is None else (g * dx).to(input.dtype)
        grad_target = None if dy is None else (g * dy).to(target.dtype)
        return grad_input, grad_target, None, None, None
    if need_x:
        # a 0-dim upstream gradient (the sum op) is handed over as a 0-stride view: the backward op
        # reads it as one number, nothing input-sized is allocated
        grad_input = _ops._binary_cross_entropy_with_logits_backward(
            grad_loss.expand(input.shape), input, target, weight, pos_weight, eps
        )
    if need_y:
        # rare (learned or distilled targets), so torch ops
        _, dy = _partials(input, target, weight, pos_weight, eps, False, True)
        grad_target = (grad_loss.to(acc) * dy).to(target.dtype)
    return grad_input, grad_target, None, None, None


def _jvp(ctx: Any, input_t: Optional[Tensor], target_t: Optional[Tensor], weight_t: Optional[Tensor],
         pos_weight_t: Optional[Tensor], *unused: Any) -> Tensor:
    if weight_t is not None or pos_weight_t is not None:
        raise RuntimeError(_CONSTANTS_MESSAGE)
    input, target, weight, pos_weight = ctx.saved_tensors
    dx, dy = _partials(input, target, weight, pos_weight, ctx.label_smoothing, input_t is not None,
                       target_t is not None)
    acc = _acc_dtype(input.dtype)
    out = torch.zeros(input.shape, dtype=acc, device=input.device)
    if dx is not None:
        out = out + dx * input_t.to(acc)
    if dy is not None:
        out = out + dy * target_t.to(acc)
    return out


def _function_setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    _setup_context(ctx, inputs, output)
    ctx.save_for_forward(*inputs[:4])
    # inputs without a tangent (the weights) get None in the jvp rather than zeros
    ctx.set_materialize_grads(False)


class _BCEFunction(torch.autograd.Function):
    """binary_cross_entropy_with_logits_forward in every autograd mode."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],  # type: ignore[override]
                label_smoothing: float) -> Tensor:
        return _ops.binary_cross_entropy_with_logits_forward(input, target, weight, pos_weight, label_smoothing)

    setup_context = staticmethod(_function_setup_context)  # type: ignore[assignment]
    backward = staticmethod(_backward)  # type: ignore[assignment]
    jvp = staticmethod(_jvp)  # type: ignore[assignment]


class _BCESumFunction(torch.autograd.Function):
    """binary_cross_entropy_with_logits_sum in every autograd mode."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],  # type: ignore[override]
                label_smoothing: float) -> Tensor:
        return _ops.binary_cross_entropy_with_logits_sum(input, target, weight, pos_weight, label_smoothing)

    setup_context = staticmethod(_function_setup_context)  # type: ignore[assignment]
    backward = staticmethod(_backward)  # type: ignore[assignment]

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Tensor:
        return _jvp(ctx, *tangents).sum()


def _bce_elementwise(input: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
                     eps: float) -> Tensor:
    if use_function((input, target, weight, pos_weight)):
        return _BCEFunction.apply(input, target, weight, pos_weight, eps)
    return _ops.binary_cross_entropy_with_logits_forward(input, target, weight, pos_weight, eps)


def _bce_sum(input: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
             eps: float) -> Tensor:
    if use_function((input, target, weight, pos_weight)):
        return _BCESumFunction.apply(input, target, weight, pos_weight, eps)
    return _ops.binary_cross_entropy_with_logits_sum(input, target, weight, pos_weight, eps)


torch.library.register_autograd(
    "smoothing_ext::binary_cross_entropy_with_logits_forward", _backward, setup_context=_setup_context
)
torch.library.register_autograd(
    "smoothing_ext::binary_cross_entropy_with_logits_sum", _backward, setup_context=_setup_context
)


def _backward_formula(grad_loss: Tensor, input: Tensor, target: Tensor, weight: Optional[Tensor],
                      pos_weight: Optional[Tensor], label_smoothing: float) -> Tensor:
    dx, _ = _partials(input, target, weight, pos_weight, label_smoothing, True, False)
    return (grad_loss.to(dx.dtype) * dx).to(input.dtype)


# the backward op's own derivatives, for its direct callers (w and pw included: they are its inputs)
register_backward_op_autograd("smoothing_ext::_binary_cross_entropy_with_logits_backward", _backward_formula,
                              (0, 1, 2, 3, 4))


def _batch_weight(w: Optional[Tensor], bdim: Optional[int], ndim: int) -> Optional[Tensor]:
    """A per-sample weight (vmapped) shaped to broadcast against (B, *input's shape)."""
    if w is None or bdim is None:
        return w  # broadcasts from the trailing dims as it is
    w = w.movedim(bdim, 0)
    return w.reshape(w.shape[0], *([1] * (ndim - (w.dim() - 1))), *w.shape[1:])


def _batch_elementwise(info: Any, in_dims: tuple, grad: Optional[Tensor], gdim: Optional[int],
                       input: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Optional[Tensor],
                       ) -> tuple[Optional[Tensor], Tensor, Tensor, Optional[Tensor], Optional[Tensor], int]:
    # element-wise ops: the vmapped dim simply becomes a leading dim of every operand
    i = 0 if grad is None else 1
    B = info.batch_size
    ndim = input.dim() - (in_dims[i] is not None)
    return (
        batch_first(grad, gdim, B),
        batch_first(input, in_dims[i], B),
        batch_first(target, in_dims[i + 1], B),
        _batch_weight(weight, in_dims[i + 2], ndim),
        _batch_weight(pos_weight, in_dims[i + 3], ndim),
        ndim,
    )


@torch.library.register_vmap("smoothing_ext::binary_cross_entropy_with_logits_forward")
def _forward_vmap(info: Any, in_dims: tuple, input: Tensor, target: Tensor, weight: Optional[Tensor],
                  pos_weight: Optional[Tensor], label_smoothing: float) -> tuple[Tensor, int]:
    _, x, y, w, pw, _ = _batch_elementwise(info, in_dims, None, None, input, target, weight, pos_weight)
    return _ops.binary_cross_entropy_with_logits_forward(x, y, w, pw, label_smoothing), 0


@torch.library.register_vmap("smoothing_ext::binary_cross_entropy_with_logits_sum")
def _sum_vmap(info: Any, in_dims: tuple, input: Tensor, target: Tensor, weight: Optional[Tensor],
              pos_weight: Optional[Tensor], label_smoothing: float) -> tuple[Tensor, int]:
    # per-sample sums: one element-wise pass over the whole batch, then a sum per sample (one
    # kernel launch, where the sum op would need one per sample)
    _, x, y, w, pw, ndim = _batch_elementwise(info, in_dims, None, None, input, target, weight, pos_weight)
    loss = _ops.binary_cross_entropy_with_logits_forward(x, y, w, pw, label_smoothing)
    return (loss.sum(list(range(1, ndim + 1))) if ndim > 0 else loss), 0


@torch.library.register_vmap("smoothing_ext::_binary_cross_entropy_with_logits_backward")
def _backward_vmap(info: Any, in_dims: tuple, grad_loss: Tensor, input: Tensor, target: Tensor,
                   weight: Optional[Tensor], pos_weight: Optional[Tensor], label_smoothing: float,
                   ) -> tuple[Tensor, int]:
    g, x, y, w, pw, _ = _batch_elementwise(info, in_dims, grad_loss, in_dims[0], input, target, weight, pos_weight)
    return _ops._binary_cross_entropy_with_logits_backward(g, x, y, w, pw, label_smoothing), 0
