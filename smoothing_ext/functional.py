"""Public functional API: a drop-in for ``torch.nn.functional.cross_entropy``."""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["cross_entropy"]

_REDUCTIONS = ("none", "mean", "sum")
_INDEX_DTYPES = (torch.int64, torch.int32, torch.uint8)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


def _check_args(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    reduction: str,
    label_smoothing: float,
) -> None:
    # The C++ ops check everything again; these checks run first so that the message can speak
    # of the public arguments, and so that device mismatches never reach the dispatcher.
    if not isinstance(input, Tensor):
        raise TypeError(f"smoothing_ext.cross_entropy: input must be a Tensor, got {type(input).__name__}")
    if not isinstance(target, Tensor):
        raise TypeError(f"smoothing_ext.cross_entropy: target must be a Tensor, got {type(target).__name__}")
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"smoothing_ext.cross_entropy: reduction must be one of {_REDUCTIONS}, got {reduction!r}"
        )
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"smoothing_ext.cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if not input.is_floating_point():
        raise TypeError(
            "smoothing_ext.cross_entropy: input must be floating-point logits (float32, float64, "
            f"bfloat16, float16), got {input.dtype} with shape {tuple(input.shape)}"
        )
    if input.dim() == 0:
        raise ValueError("smoothing_ext.cross_entropy: input must have shape (C,), (N, C) or (N, C, d1, ...), got a 0-dim tensor")
    for name, t in (("target", target), ("weight", weight)):
        if t is not None and t.device != input.device:
            raise RuntimeError(
                f"smoothing_ext.cross_entropy: {name} is on {t.device} but input is on {input.device}; "
                "move both to the same device"
            )


_SMOOTHING_MODES = ("uniform", "off_target")


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
    valid = target != ignore_index
    if weight is None:
        return valid.sum().to(dtype)
    safe = torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device))
    return torch.where(valid, weight.to(dtype)[safe.long()], 0.0).sum()


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
    skipping rows whose factor is exactly 1 (a plain ``loss.backward()``)."""

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
    ):
        ops = torch.ops.smoothing_ext
        acc = torch.float64 if input.dtype == torch.float64 else torch.float32
        denom = _mean_denominator(target, weight, ignore_index, acc) if reduction == "mean" else None
        # mean: the 1 / denominator is folded into the gradient as it is computed (read on the
        # device, no host sync)
        scale = None if denom is None else (1.0 / denom).reshape(())
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
        valid = target != ignore_index
        z = _z_rows(lse, z_loss, valid) if z_loss != 0.0 else None
        rows = loss if z is None else loss + z
        out = _reduce(rows, reduction, denom)
        z_out = _reduce(z, reduction, denom) if z is not None else torch.zeros_like(out)
        ctx.save_for_backward(grad)
        ctx.consumed = False
        ctx.mark_non_differentiable(z_out)
        return out, z_out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor, *unused: Any):  # type: ignore[override]
        if ctx.consumed:
            raise RuntimeError(
                "smoothing_ext.cross_entropy: with grad_in_forward=True the gradient is computed once, during "
                "the forward, and consumed by the first backward; a second backward through the same loss "
                "(retain_graph=True) is not supported. Use the default mode for that."
            )
        ctx.consumed = True
        (grad,) = ctx.saved_tensors
        torch.ops.smoothing_ext._scale_grad_rows_(grad, grad_out)
        return grad, None, None, None, None, None, None, None, None, None


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    softcap: Optional[float] = None,
    grad_in_forward: bool = False,
    inplace_backward: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    r"""Label-smoothed cross entropy between logits and targets, fused in one kernel.

    Same arguments and results as :func:`torch.nn.functional.cross_entropy` (without the deprecated
    ``size_average``/``reduce``), with the smoothed target

    .. math:: q_j = (1 - \varepsilon)\,[j = t] + \varepsilon / C

    (PyTorch's convention: the smoothing mass :math:`\varepsilon` is spread over all C classes,
    the target included). The keyword-only arguments go beyond PyTorch; their defaults give exactly
    PyTorch's results.

    Args:
        input: logits of shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dk)``; float32, float64,
            bfloat16 or float16. Read as they are: no float32 copy is made of reduced-precision logits.
        target: class indices of shape ``()``, ``(N,)`` or ``(N, d1, ..., dk)`` (int64, int32 or uint8),
            or class probabilities of the input's shape (floating point).
        weight: optional rescaling weight per class, shape ``(C,)``.
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
            needed. A single backward per forward.
        inplace_backward: with ``grad_in_forward=True``, write that gradient over ``input`` itself:
            no N x C allocation, but **the logits are destroyed** (``input`` holds the gradient
            afterwards, and autograd raises if anything else saved it for its backward). ``input``
            must be contiguous and not a leaf tensor that requires grad (as for any in-place op).
            Without a gradient to compute, nothing is written.

    Returns:
        The loss, in the input's dtype (float32 under :func:`torch.autocast`, as PyTorch), with shape
        ``()`` for ``"mean"``/``"sum"`` and the target's (without the class dim) for ``"none"``;
        ``(loss, z_loss_term)`` with ``return_z_loss=True``.

    Raises:
        TypeError, ValueError, IndexError, RuntimeError: for arguments PyTorch would reject, with the
        argument named and the shapes given. A class index outside ``[0, C)`` that is not
        ``ignore_index`` raises ``IndexError`` on the CPU; on CUDA (where raising would need a host
        synchronisation) that element's loss and its row of the gradient are NaN instead.
    """
    _check_args(input, target, weight, reduction, label_smoothing)
    _check_extras(input, target, smoothing_mode, z_loss, softcap, grad_in_forward, inplace_backward)
    label_smoothing = float(label_smoothing)
    ignore_index = int(ignore_index)
    z_loss = float(z_loss)
    softcap = None if softcap is None else float(softcap)
    off_target = smoothing_mode == "off_target"
    ops = torch.ops.smoothing_ext
    prob_target = target.is_floating_point()

    if prob_target:
        if target.shape != input.shape:
            raise ValueError(
                "smoothing_ext.cross_entropy: a floating-point target holds class probabilities and must "
                f"have the input's shape {tuple(input.shape)}, got {tuple(target.shape)}"
            )
        if ignore_index >= 0:
            raise ValueError(
                f"smoothing_ext.cross_entropy: ignore_index={ignore_index} is not supported with "
                "probability targets (as in PyTorch); leave it negative (the default -100)"
            )
    elif target.dtype not in _INDEX_DTYPES:
        raise TypeError(
            "smoothing_ext.cross_entropy: class-index target must be int64, int32 or uint8 (or a "
            f"floating tensor of the input's shape for probabilities), got {target.dtype}"
        )

    out_dtype = torch.float32 if _autocast_enabled(input.device.type) else input.dtype

    if grad_in_forward and torch.is_grad_enabled() and input.requires_grad:
        if input.numel() == 0 or target.numel() == 0:
            inplace_backward = False  # nothing to write; keeps empty inputs on the plain path
        out, z_out = _FusedCrossEntropy.apply(
            input, target, weight, ignore_index, label_smoothing, off_target, softcap, z_loss, reduction,
            bool(inplace_backward),
        )
        out = out.to(out_dtype)
        return (out, z_out.to(out_dtype)) if return_z_loss else out

    # Default (and forward-only) mode: nothing of size N x C is computed in the forward; autograd
    # saves the caller's logits and N lse values only when a gradient is needed.
    if prob_target:
        loss, lse = ops.cross_entropy_prob_forward(input, target, weight, label_smoothing, off_target, softcap)
        valid = None
        denom = None
    else:
        loss, lse = ops.cross_entropy_forward(input, target, weight, ignore_index, label_smoothing, off_target, softcap)
        valid = target != ignore_index
        denom = _mean_denominator(target, weight, ignore_index, loss.dtype) if reduction == "mean" else None
    z = _z_rows(lse, z_loss, valid) if z_loss != 0.0 else None
    rows = loss if z is None else loss + z
    out = _reduce(rows, reduction, denom).to(out_dtype)
    if not return_z_loss:
        return out
    z_out = torch.zeros_like(out) if z is None else _reduce(z.detach(), reduction, denom).to(out_dtype)
    return out, z_out
