"""Public functional API: a drop-in for ``torch.nn.functional.cross_entropy``."""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.nn import _reduction as _Reduction

from . import _autograd
from . import parallel as _parallel
from ._degenerate import autocast_enabled as _autocast_enabled
from ._degenerate import cross_entropy_degenerate
from ._errors import (
    SmoothingExtIndexError,
    SmoothingExtNotImplementedError,
    SmoothingExtTypeError,
    SmoothingExtValueError,
    scalar_type_name,
)

__all__ = ["cross_entropy"]

_REDUCTIONS = ("none", "mean", "sum")
_INDEX_DTYPES = (torch.int64, torch.int32, torch.uint8)


def _device_mismatch_wording(input: Tensor, other: Tensor, name: str) -> str:
    """PyTorch's wording for an argument on another device than the input (with ``meta``, its
    device check names one of them as the expected one, depending on the argument)."""
    if "meta" not in (input.device.type, other.device.type):
        return f"Expected all tensors to be on the same device, but found at least two devices, {input.device} and {other.device}!"
    found, expected = (other, input) if name == "weight" else (input, other)
    return f"Tensor on device {found.device} is not on the expected device {expected.device}!"


def _argument_type_error(position: int, name: str, expected: str, value: Any, hint: str = "") -> TypeError:
    # PyTorch's argument parser wording, which its tests match
    return TypeError(
        f"cross_entropy(): argument '{name}' (position {position}) must be {expected}, not "
        f"{type(value).__name__}; smoothing_ext.cross_entropy: {name} must be {expected}{hint}"
    )


def _target_shape_message(input: Tensor, target: Tensor) -> str:
    """Our half of a target-shape error: what the target's shape must be, for either kind of target."""
    if target.is_floating_point():
        return (
            "smoothing_ext.cross_entropy: a floating-point target holds class probabilities and must have "
            f"the input's shape {tuple(input.shape)}, got {tuple(target.shape)}"
        )
    cdim = 0 if input.dim() == 1 else 1
    expected = list(input.shape[:cdim]) + list(input.shape[cdim + 1:])
    return (
        f"smoothing_ext.cross_entropy: target must have shape {expected} for input of shape {list(input.shape)} "
        f"(the input without its class dim {cdim}), got target of shape {list(target.shape)}"
    )


def _check_label_smoothing(label_smoothing: float) -> None:
    # PyTorch accepts (and ignores) a negative value with class-index targets; a negative smoothing
    # mass has no meaning, so it is rejected here, with PyTorch's wording for the out-of-range case.
    if not (0.0 <= label_smoothing <= 1.0):
        raise SmoothingExtValueError(
            f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing:g}; "
            f"smoothing_ext.cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}"
        )


def _check_input_dtype(input: Tensor) -> None:
    if not input.is_floating_point():
        raise SmoothingExtNotImplementedError(
            f"\"cross_entropy\" not implemented for '{scalar_type_name(input.dtype)}'; smoothing_ext.cross_entropy: "
            "input must be floating-point logits (float32, float64, bfloat16, float16), got "
            f"{input.dtype} with shape {tuple(input.shape)}"
        )


def _check_weight(input: Tensor, weight: Optional[Tensor], torch_message: str) -> None:
    if weight is None:
        return
    C = input.shape[0 if input.dim() == 1 else 1]
    if weight.dim() != 1 or weight.shape[0] != C:
        raise SmoothingExtValueError(
            f"{torch_message}; smoothing_ext: weight must have shape (C,) = ({C},) for input of shape "
            f"{list(input.shape)}, got weight of shape {list(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise SmoothingExtTypeError(
            f"expected scalar type {scalar_type_name(input.dtype)} but found {scalar_type_name(weight.dtype)}; "
            f"smoothing_ext: weight must be a floating-point tensor, got {scalar_type_name(weight.dtype)}"
        )


def _check_args(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    reduction: str,
    label_smoothing: float,
    ignore_index: int = -100,
) -> None:
    """Every check PyTorch's ``F.cross_entropy`` makes, in its order, with its exception classes
    (or classes deriving from both theirs and ours) and its wording followed by ours.

    The C++ ops check everything again; these checks run first so that the message can speak of
    the public arguments, and so that device mismatches never reach the dispatcher.
    """
    for position, name, value, optional in ((1, "input", input, False), (2, "target", target, False),
                                            (3, "weight", weight, True)):
        if not isinstance(value, Tensor) and not (optional and value is None):
            raise _argument_type_error(position, name, "Tensor", value, " or None" if optional else "")
    if ignore_index is None or isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise _argument_type_error(
            5, "ignore_index", "int", ignore_index,
            " (the class index whose targets are skipped; PyTorch's default -100 skips nothing when no "
            "target equals it)" if ignore_index is None else "",
        )
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real):
        raise _argument_type_error(6, "label_smoothing", "float", label_smoothing)
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{reduction} is not a valid value for reduction; smoothing_ext.cross_entropy: reduction must be "
            f"one of {_REDUCTIONS}, got {reduction!r}"
        )
    for name, t in (("target", target), ("weight", weight)):
        if t is not None and t.device != input.device:
            raise RuntimeError(
                f"{_device_mismatch_wording(input, t, name)} smoothing_ext.cross_entropy: {name} is on {t.device} but "
                f"input is on {input.device}; move both to the same device"
            )
    label_smoothing = float(label_smoothing)
    ignore_index = int(ignore_index)

    if input.shape == target.shape:
        # PyTorch's rule: a target of the input's shape holds class probabilities.
        if not target.is_floating_point() and input.dim() == 0:
            raise SmoothingExtValueError(
                "Expected floating point type for target with class probabilities, got "
                f"{scalar_type_name(target.dtype)}; smoothing_ext.cross_entropy: input must have shape (C,), "
                "(N, C) or (N, C, d1, ...), got a 0-dim tensor"
            )
        if not target.is_floating_point():
            raise SmoothingExtTypeError(
                "Expected floating point type for target with class probabilities, got "
                f"{scalar_type_name(target.dtype)}; smoothing_ext.cross_entropy: a target of the input's shape "
                f"{tuple(input.shape)} holds class probabilities; class indices have the input's shape "
                "without its class dim"
            )
        if ignore_index >= 0:
            raise SmoothingExtValueError(
                f"ignore_index is not supported for floating point target; smoothing_ext.cross_entropy: "
                f"ignore_index={ignore_index} is not supported with probability targets (as in PyTorch); "
                "leave it negative (the default -100)"
            )
        _check_label_smoothing(label_smoothing)
        _check_input_dtype(input)
        if input.dim() == 0:
            raise SmoothingExtIndexError(
                "Dimension specified as 1 but tensor has no dimensions; smoothing_ext.cross_entropy: input must "
                "have shape (C,), (N, C) or (N, C, d1, ...), got a 0-dim tensor"
            )
        C = input.shape[0 if input.dim() == 1 else 1]
        _check_weight(
            input, weight,
            f"cross_entropy: weight tensor should be defined either for all {C} classes or no classes but got "
            f"weight tensor of shape: {list(weight.shape) if weight is not None else []}",
        )
        return

    # class indices: log_softmax(input) first, then nll_loss_nd's checks
    _check_label_smoothing(label_smoothing)
    _check_input_dtype(input)
    if input.dim() == 0:
        raise SmoothingExtIndexError(
            "Dimension out of range (expected to be in range of [-1, 0], but got 1); smoothing_ext.cross_entropy: "
            "input must have shape (C,), (N, C) or (N, C, d1, ...), got a 0-dim tensor"
        )
    if input.dim() != 1 and (target.dim() == 0 or input.shape[0] != target.shape[0]):
        raise ValueError(
            f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
            f"({target.shape[0] if target.dim() else 0}). {_target_shape_message(input, target)}"
        )
    expected = list(input.shape[:1]) + list(input.shape[2:]) if input.dim() > 1 else []
    if input.dim() <= 2:
        if target.dim() > 1:
            raise SmoothingExtValueError(
                "0D or 1D target tensor expected, multi-target not supported; " + _target_shape_message(input, target)
            )
        if input.dim() == 1 and target.dim() == 1 and target.shape[0] != 1:
            raise ValueError(
                f"For 1D input, 1D target must have size 1, but got target size: {target.shape[0]}; "
                + _target_shape_message(input, target)
            )
        weight_message = "weight tensor should be defined either for all {C} classes or no classes but got weight tensor of shape: {shape}"
    else:
        if input.dim() == 4 and target.dim() != 3:
            torch_message = (
                f"only batches of spatial targets supported (3D tensors) but got targets of dimension: {target.dim()}"
            )
        elif input.dim() == 4:
            torch_message = f"size mismatch (got input: {list(input.shape)} , target: {list(target.shape)}"
        else:
            torch_message = f"Expected target size {expected}, got {list(target.shape)}"
        if list(target.shape) != expected:
            raise SmoothingExtValueError(f"{torch_message}; {_target_shape_message(input, target)}")
        weight_message = "weight tensor should be defined either for all or no classes"
    if target.is_floating_point():
        raise SmoothingExtTypeError(
            f"expected target dtype to be Long or Byte, but got {scalar_type_name(target.dtype)}; "
            f"smoothing_ext.cross_entropy: got a floating-point target of shape {tuple(target.shape)} for input of "
            f"shape {tuple(input.shape)}: class probabilities must have the input's shape, and class indices "
            "must be integers: pass target.long()"
        )
    if target.dtype not in _INDEX_DTYPES:
        raise SmoothingExtTypeError(
            f"expected target dtype to be Long or Byte, but got {scalar_type_name(target.dtype)}; "
            "smoothing_ext.cross_entropy: class-index target must be int64, int32 or uint8 (or a floating tensor "
            f"of the input's shape for probabilities), got {target.dtype}"
        )
    C = input.shape[0 if input.dim() == 1 else 1]
    _check_weight(
        input, weight,
        weight_message.format(C=C, shape=list(weight.shape) if weight is not None else []),
    )


_SMOOTHING_MODES = ("uniform", "off_target")


def _check_grad_scale(who: str, grad_scale: Any, grad_in_forward: bool) -> None:
    """grad_scale: None, or a finite non-zero Python number, with grad_in_forward=True. A tensor is
    refused: its value would be needed on the host to rule out 0 (a zero would make the kept
    gradient unrecoverable), which costs a synchronisation."""
    if grad_scale is None:
        return
    if isinstance(grad_scale, bool) or not isinstance(grad_scale, (int, float)):
        raise TypeError(
            f"{who}: grad_scale must be None or a Python number (the upstream gradient the loss will get, e.g. "
            f"1 / accumulation_steps), got {type(grad_scale).__name__}"
        )
    if not (math.isfinite(grad_scale) and grad_scale != 0):
        raise ValueError(f"{who}: grad_scale must be a finite, non-zero number, got {grad_scale}")
    if not grad_in_forward:
        raise ValueError(
            f"{who}: grad_scale announces the upstream gradient to the gradient computed in the forward; "
            "it needs grad_in_forward=True"
        )


def _check_extras(
    input: Tensor,
    target: Tensor,
    smoothing_mode: str,
    z_loss: float,
    softcap: Optional[float],
    grad_in_forward: bool,
    inplace_backward: bool,
) -> None:
    if smoothing_mode not in _SMOOTHING_MODES:
        raise ValueError(
            f"smoothing_ext.cross_entropy: smoothing_mode must be one of {_SMOOTHING_MODES}, got {smoothing_mode!r}"
        )
    if not (0.0 <= float(z_loss) < math.inf):  # also rejects NaN
        raise ValueError(f"smoothing_ext.cross_entropy: z_loss must be a finite number >= 0, got {z_loss}")
    if softcap is not None and not (0.0 < float(softcap) < math.inf):
        raise ValueError(f"smoothing_ext.cross_entropy: softcap must be None or a finite number > 0, got {softcap}")
    if inplace_backward and not grad_in_forward:
        raise ValueError(
            "smoothing_ext.cross_entropy: inplace_backward=True writes the gradient computed during the "
            "forward over the logits; it needs grad_in_forward=True"
        )
    if grad_in_forward and target.is_floating_point():
        raise ValueError(
            "smoothing_ext.cross_entropy: grad_in_forward=True supports class-index targets only, got a "
            f"probability target of shape {tuple(target.shape)}"
        )
    if inplace_backward and input.requires_grad:
        base = input if input._base is None else input._base
        if base.is_leaf:
            raise ValueError(
                "smoothing_ext.cross_entropy: inplace_backward=True overwrites input, which is a leaf tensor "
                "that requires grad (or a view of one); pass the output of the model's last layer, or use "
                "inplace_backward=False"
            )
    if inplace_backward and input.requires_grad and not input.is_contiguous():
        raise ValueError(
            "smoothing_ext.cross_entropy: inplace_backward=True writes the gradient over input, which must be "
            f"contiguous; got shape {tuple(input.shape)} with strides {input.stride()}"
        )


def _mean_denominator(target: Tensor, weight: Optional[Tensor], ignore_index: int, dtype: torch.dtype) -> Tensor:
    """Sum of the weights of the non-ignored class-index targets (their count without weight)."""
    valid = target.long() != ignore_index  # long: a uint8 target would wrap ignore_index (-100 -> 156)
    if weight is None:
        return valid.sum().to(dtype)
    # Gather w[t] only for targets in [0, C): on CUDA an index >= C would fire a device-side assert
    # (losing the context) and -1 would silently wrap to w[C-1]. An out-of-range target that is not
    # ignored makes the denominator NaN (its loss row is NaN too on CUDA; the CPU op raised already).
    C = weight.shape[0]
    t = target.long()
    in_range = (t >= 0) & (t < C)
    safe = torch.where(in_range, t, torch.zeros((), dtype=t.dtype, device=t.device))
    w_t = weight.to(dtype)[safe]
    nan = torch.full((), math.nan, dtype=dtype, device=w_t.device)
    return torch.where(valid, torch.where(in_range, w_t, nan), 0.0).sum()


def _reduce(rows: Tensor, reduction: str, denom: Optional[Tensor]) -> Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    if denom is None:  # probability targets: mean over the elements
        n = rows.numel()
        return total / n if n > 0 else total / 0.0
    # 0 / 0 = nan when every target is ignored, as in PyTorch; no host sync.
    return total / denom


def _z_rows(lse: Tensor, z_loss: float, valid: Optional[Tensor]) -> Tensor:
    z = z_loss * lse * lse
    return z if valid is None else torch.where(valid, z, torch.zeros((), dtype=z.dtype, device=z.device))


class _FusedCrossEntropy(torch.autograd.Function):
    """Loss and gradient in one pass (grad_in_forward=True). The gradient of the reduced loss for a
    unit upstream gradient is kept (in a separate buffer, or in the logits themselves with
    inplace_backward=True); the backward only multiplies it by the upstream gradient, row by row,
    skipping rows whose factor is exactly 1 (a plain ``loss.backward()``).

    That gradient is a number computed by the kernel, not a function autograd could differentiate:
    double backward, forward-mode AD and torch.func transforms raise (see
    ``_check_fused_supported``) instead of returning a silently wrong (zero) derivative."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        ignore_index: int,
        label_smoothing: float,
        off_target: bool,
        softcap: Optional[float],
        z_loss: float,
        reduction: str,
        inplace: bool,
        grad_scale: Optional[float],
    ):
        ops = torch.ops.smoothing_ext
        acc = torch.float64 if input.dtype == torch.float64 else torch.float32
        denom = _mean_denominator(target, weight, ignore_index, acc) if reduction == "mean" else None
        # mean: the 1 / denominator is folded into the gradient as it is computed (read on the
        # device, no host sync); so is grad_scale, the upstream gradient the caller announced
        scale = None if denom is None else (1.0 / denom).reshape(())
        if grad_scale is not None:
            scale = (
                torch.full((), grad_scale, dtype=acc, device=input.device) if scale is None else scale * grad_scale
            )
        ctx.grad_scale = grad_scale
        args = (target, weight, ignore_index, label_smoothing, off_target, softcap, z_loss, scale)
        if inplace:
            loss, lse = ops.cross_entropy_fused_(input, *args)
            grad = input
            # The logits' producer keeps its place in the graph (the gradient flows back to it);
            # anything else that saved the logits now fails its version check instead of
            # silently using the gradient as logits.
            torch.autograd.graph.increment_version(input)
        else:
            loss, lse, grad = ops.cross_entropy_fused(input, *args)
        valid = target.long() != ignore_index  # long: a uint8 target would wrap ignore_index (-100 -> 156)
        z = _z_rows(lse, z_loss, valid) if z_loss != 0.0 else None
        rows = loss if z is None else loss + z
        out = _reduce(rows, reduction, denom)
        z_out = _reduce(z, reduction, denom) if z is not None else torch.zeros_like(out)
        ctx.save_for_backward(grad)
        ctx.consumed = False
        ctx.mark_non_differentiable(z_out)
        return out, z_out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, *unused: Any):  # type: ignore[override]
        if ctx.consumed:
            raise RuntimeError(
                "smoothing_ext.cross_entropy: with grad_in_forward=True the gradient is computed once, during "
                "the forward, and consumed by the first backward; a second backward through the same loss "
                "(retain_graph=True) is not supported. Use the default mode for that."
            )
        ctx.consumed = True
        create_graph = torch.is_grad_enabled()
        (grad,) = ctx.saved_tensors
        with torch.no_grad():
            # The kept gradient already holds grad_scale: the factor left is exactly 1 (every row
            # skipped, no pass over the gradient) when the upstream gradient is what was announced.
            factor = grad_out if ctx.grad_scale is None else grad_out / ctx.grad_scale
            torch.ops.smoothing_ext._scale_grad_rows_(grad, factor)
        if create_graph:
            # As @once_differentiable, with a message naming the option: the first-order gradient is
            # returned, and differentiating it again raises at that moment.
            err = torch._C._functions.DelayedError(
                b"smoothing_ext.cross_entropy: grad_in_forward=True (and inplace_backward=True) computes the "
                b"gradient in the forward and cannot differentiate it again (double backward: "
                b"create_graph=True, Hessian-vector products, gradient penalties); use the default mode "
                b"(grad_in_forward=False), which supports it",
                1,
            )
            grad = err(grad.detach().requires_grad_())
        return grad, None, None, None, None, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        raise RuntimeError(_FUSED_TRANSFORM_MESSAGE)


_FUSED_TRANSFORM_MESSAGE = (
    "smoothing_ext.cross_entropy: grad_in_forward=True (and inplace_backward=True) supports plain "
    "backward only: not forward-mode AD (dual tensors, torch.func.jvp, jacfwd) nor torch.func transforms "
    "(grad, vmap, jacrev, hessian); use the default mode (grad_in_forward=False), which supports all of them"
)


def _check_fused_supported(input: Tensor, weight: Optional[Tensor]) -> None:
    """Raise for what the fused mode cannot differentiate (instead of returning wrong numbers)."""
    if weight is not None and weight.requires_grad and input.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            "smoothing_ext.cross_entropy: grad_in_forward=True computes the gradient with respect to the "
            "logits only, and weight requires grad; use the default mode (grad_in_forward=False), which "
            "differentiates the class weights too, or pass weight.detach()"
        )
    if torch.compiler.is_compiling():
        return  # neither transforms nor dual tensors reach a compiled region
    from ._autograd import has_tangent, is_transformed

    if is_transformed(input) or is_transformed(weight) or has_tangent(input) or has_tangent(weight):
        raise RuntimeError(_FUSED_TRANSFORM_MESSAGE)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    size_average: Optional[bool] = None,
    ignore_index: int = -100,
    reduce: Optional[bool] = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    softcap: Optional[float] = None,
    grad_in_forward: bool = False,
    inplace_backward: bool = False,
    grad_scale: Optional[float] = None,
    process_group: Optional[Any] = None,
    class_start: Optional[int] = None,
    num_classes: Optional[int] = None,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    r"""Label-smoothed cross entropy between logits and targets, fused in one kernel.

    Same arguments (in the same positional order, the deprecated ``size_average``/``reduce``
    included), exceptions and results as :func:`torch.nn.functional.cross_entropy`, with the
    smoothed target

    .. math:: q_j = (1 - \varepsilon)\,[j = t] + \varepsilon / C

    (PyTorch's convention: the smoothing mass :math:`\varepsilon` is spread over all C classes,
    the target included). The keyword-only arguments go beyond PyTorch; their defaults give exactly
    PyTorch's results.

    Args:
        input: logits of shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``; float32, float64,
            bfloat16 or float16. Read as they are: no float32 copy is made of reduced-precision logits.
        target: class indices of shape ``()``, ``(N,)`` or ``(N, d1, ..., dk)`` (int64, int32 or uint8),
            or class probabilities of the input's shape (floating point).
        weight: optional rescaling weight per class, shape ``(C,)``. Differentiable (unlike
            PyTorch's): with ``weight.requires_grad`` it gets its exact gradient,
            :math:`\partial \ell_i / \partial w_j = q_{ij} (\mathrm{lse}_i - x_{ij})`, the ``"mean"``
            denominator's dependence on the weights included (for learned class weights).
        size_average, reduce: deprecated; when either is given it overrides ``reduction`` exactly as
            in PyTorch (``torch.nn._reduction.legacy_get_string``, with its warning).
        ignore_index: class-index targets equal to this value contribute no loss and no gradient
            (any integer, including a valid class or a value outside ``[0, C)``). With probability
            targets only a negative value is accepted (and has no effect), as in PyTorch.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``. ``"mean"`` divides by the summed weights of
            the non-ignored targets (their count without ``weight``) for class indices, and by the
            number of elements for probability targets; all targets ignored gives ``nan``.
        label_smoothing: :math:`\varepsilon \in [0, 1]`.
        smoothing_mode: ``"uniform"`` (PyTorch: :math:`q_j = (1-\varepsilon)[j=t] + \varepsilon/C`) or
            ``"off_target"`` (fairseq, Megatron: the target keeps exactly :math:`1-\varepsilon` and each
            of the other :math:`C-1` classes gets :math:`\varepsilon/(C-1)`; with ``C == 1`` there is
            nothing to smooth). Probability targets :math:`y` become
            :math:`q_j = (1-\varepsilon) y_j + \varepsilon (1 - y_j)/(C-1)`. Weights, ``ignore_index``
            and the reductions apply to the smoothed target exactly as in uniform mode.
        z_loss: :math:`z \ge 0`: adds :math:`z\,\mathrm{lse}_i^2` (:math:`\mathrm{lse}_i = \log\sum_j
            e^{x_{ij}}`, PaLM's auxiliary loss) to each element's loss before the reduction; ignored
            elements get none. Not multiplied by ``weight``; ``"mean"`` divides it by the same
            denominator as the loss.
        return_z_loss: return ``(loss, z_loss_term)``, the second being the z-loss part of ``loss``
            (reduced the same way, detached: for logging).
        softcap: ``c > 0``: the logits are replaced by :math:`c \tanh(x / c)` (Gemma 2) inside the
            kernel, with the chain rule in the backward; no capped copy is made.
        grad_in_forward: compute the gradient during the forward (one read and one write of the logits
            in total instead of three passes), kept in a buffer of the logits' size until the
            backward, which only scales it by the upstream gradient (row by row; skipped for a plain
            ``loss.backward()``). Class-index targets only. Only takes effect when a gradient is
            needed. A single backward per forward, first order only: double backward, forward-mode
            AD, torch.func transforms and a ``weight`` that requires grad raise (the default mode
            supports all of them).
        inplace_backward: with ``grad_in_forward=True``, write that gradient over ``input`` itself:
            no N x C allocation, but **the logits are destroyed** (``input`` holds the gradient
            afterwards, and autograd raises if anything else saved it for its backward). ``input``
            must be contiguous and not a leaf tensor that requires grad (as for any in-place op).
            Without a gradient to compute, nothing is written.
        grad_scale: with ``grad_in_forward=True``, the upstream gradient the loss will receive, when
            it is known at the forward: ``1 / k`` for ``(loss / k).backward()`` (gradient accumulation
            over k micro-batches), ``s`` for ``(loss * s).backward()`` (a fixed loss scale). The
            gradient is computed with that factor inside the kernel, and the backward then has nothing
            left to do (no pass over the N x C gradient) when the upstream gradient is exactly that
            number in the loss dtype -- always so for powers of two. Any other upstream gradient is
            still applied exactly, at the cost of that pass. Results never depend on it. A finite,
            non-zero Python number.
        process_group, class_start, num_classes: vocabulary-parallel logits (tensor parallelism):
            ``input`` is this rank's ``(N, V_r)`` slice of the classes ``[class_start, class_start +
            V_r)`` of ``num_classes`` (default: the sum of the ranks' widths) over ``process_group``;
            the result is the unsharded loss, computed with one collective of per-row scalars and a
            communication-free backward (:mod:`smoothing_ext.parallel`). A DTensor ``input`` sharded on
            the class dim needs none of them.

    Autograd: every mode of PyTorch's, exactly (float64 ``gradcheck``/``gradgradcheck``): the plain
    backward (the compiled kernel, nothing of size N x C saved), double backward
    (``create_graph=True``: Hessian-vector products, gradient penalties), forward-mode AD (dual
    tensors, :func:`torch.func.jvp`, ``jacfwd``) and :mod:`torch.func` (``grad``, ``vmap(grad)``
    per-sample gradients, ``jacrev``, ``hessian``, ``vmap``), with respect to the logits, a
    probability target and ``weight``. The higher-order modes compute the first-order gradient with
    torch ops, materialising a few N x C tensors. ``torch.compile`` supports the plain backward.

    Returns:
        The loss, in the input's dtype (float32 under :func:`torch.autocast`, as PyTorch), with shape
        ``()`` for ``"mean"``/``"sum"`` and the target's (without the class dim) for ``"none"``;
        ``(loss, z_loss_term)`` with ``return_z_loss=True``.

    Raises:
        TypeError, ValueError, IndexError, RuntimeError: for arguments PyTorch would reject: an
        exception of PyTorch's class (or of one deriving from it and from this package's former
        class, see ``smoothing_ext._errors``) whose message starts with PyTorch's wording and goes on
        with the argument named and the shapes given. Beyond PyTorch, int32 class indices and a
        weight of another floating dtype than the input are accepted, and a negative
        ``label_smoothing`` is rejected. A class index outside ``[0, C)`` that is not
        ``ignore_index`` raises ``IndexError`` on the CPU; on CUDA (where raising would need a host
        synchronisation) that element's loss and its row of the gradient are NaN instead.
    """
    _check_grad_scale("smoothing_ext.cross_entropy", grad_scale, grad_in_forward)
    parallel = _parallel.maybe_parallel(
        input, target, weight=weight, size_average=size_average, ignore_index=ignore_index, reduce=reduce,
        reduction=reduction, label_smoothing=label_smoothing, smoothing_mode=smoothing_mode, z_loss=z_loss,
        return_z_loss=return_z_loss, softcap=softcap, grad_in_forward=grad_in_forward,
        inplace_backward=inplace_backward, process_group=process_group, class_start=class_start,
        num_classes=num_classes,
    )
    if parallel is not None:
        return parallel
    if size_average is not None or reduce is not None:
        # The deprecated arguments override reduction, with PyTorch's warning, exactly as in torch.
        reduction = _Reduction.legacy_get_string(size_average, reduce)
    _check_args(input, target, weight, reduction, label_smoothing, ignore_index)
    _check_extras(input, target, smoothing_mode, z_loss, softcap, grad_in_forward, inplace_backward)
    label_smoothing = float(label_smoothing)
    ignore_index = int(ignore_index)
    z_loss = float(z_loss)
    softcap = None if softcap is None else float(softcap)
    off_target = smoothing_mode == "off_target"
    # _check_args made the two rules agree: floating point <=> the input's shape <=> probabilities
    prob_target = target.is_floating_point()
    if not prob_target and input.dim() == 1 and target.dim() == 1:
        # PyTorch takes a (1,) target for a (C,) input (and returns a 0-dim loss)
        target = target.reshape(())
    if input.device.type == "meta" or input.shape[0 if input.dim() == 1 else 1] == 0:
        # Nothing for the kernels to compute: PyTorch's shapes/dtypes (meta) or values (no class).
        return cross_entropy_degenerate(
            input, target, weight, ignore_index, reduction, label_smoothing, return_z_loss
        )

    out_dtype = torch.float32 if _autocast_enabled(input.device.type) else input.dtype

    if grad_in_forward:
        _check_fused_supported(input, weight)
    if grad_in_forward and torch.is_grad_enabled() and input.requires_grad:
        if input.numel() == 0 or target.numel() == 0:
            inplace_backward = False  # nothing to write; keeps empty inputs on the plain path
        out, z_out = _FusedCrossEntropy.apply(
            input, target, weight, ignore_index, label_smoothing, off_target, softcap, z_loss, reduction,
            bool(inplace_backward), None if grad_scale is None else float(grad_scale),
        )
        out = out.to(out_dtype)
        return (out, z_out.to(out_dtype)) if return_z_loss else out

    # Default (and forward-only) mode: nothing of size N x C is computed in the forward; autograd
    # saves the caller's logits and N lse values only when a gradient is needed.
    # index_forward / prob_forward: the ops, through an autograd.Function where double backward,
    # forward-mode AD or torch.func need one (smoothing_ext/_autograd.py). The reduction below is
    # torch ops on N numbers, differentiable in every mode (with weight.requires_grad the "mean"
    # denominator's dependence on the weights included).
    if prob_target:
        loss, lse = _autograd.prob_forward(input, target, weight, label_smoothing, off_target, softcap)
        valid = None
        denom = None
    else:
        loss, lse = _autograd.index_forward(input, target, weight, ignore_index, label_smoothing, off_target, softcap)
        valid = target.long() != ignore_index  # long: a uint8 target would wrap ignore_index (-100 -> 156)
        denom = _mean_denominator(target, weight, ignore_index, loss.dtype) if reduction == "mean" else None
    z = _z_rows(lse, z_loss, valid) if z_loss != 0.0 else None
    rows = loss if z is None else loss + z
    out = _reduce(rows, reduction, denom).to(out_dtype)
    if not return_z_loss:
        return out
    z_out = torch.zeros_like(out) if z is None else _reduce(z.detach(), reduction, denom).to(out_dtype)
    return out, z_out
