"""Public functional API: a drop-in for ``torch.nn.functional.cross_entropy``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

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


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    r"""Label-smoothed cross entropy between logits and targets, fused in one kernel.

    Same arguments and results as :func:`torch.nn.functional.cross_entropy` (without the deprecated
    ``size_average``/``reduce``), with the smoothed target

    .. math:: q_j = (1 - \varepsilon)\,[j = t] + \varepsilon / C

    (PyTorch's convention: the smoothing mass :math:`\varepsilon` is spread over all C classes,
    the target included).

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

    Returns:
        The loss, in the input's dtype (float32 under :func:`torch.autocast`, as PyTorch), with shape
        ``()`` for ``"mean"``/``"sum"`` and the target's (without the class dim) for ``"none"``.

    Raises:
        TypeError, ValueError, IndexError, RuntimeError: for arguments PyTorch would reject, with the
        argument named and the shapes given. A class index outside ``[0, C)`` that is not
        ``ignore_index`` raises ``IndexError`` on the CPU; on CUDA (where raising would need a host
        synchronisation) that element's loss and its row of the gradient are NaN instead.
    """
    _check_args(input, target, weight, reduction, label_smoothing)
    label_smoothing = float(label_smoothing)
    ignore_index = int(ignore_index)
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
        loss, _ = ops.cross_entropy_prob_forward(input, target, weight, label_smoothing)
    else:
        if target.dtype not in _INDEX_DTYPES:
            raise TypeError(
                "smoothing_ext.cross_entropy: class-index target must be int64, int32 or uint8 (or a "
                f"floating tensor of the input's shape for probabilities), got {target.dtype}"
            )
        loss, _ = ops.cross_entropy_forward(input, target, weight, ignore_index, label_smoothing)

    out_dtype = torch.float32 if _autocast_enabled(input.device.type) else input.dtype
    if out_dtype == torch.float64:
        out_dtype = torch.float64

    if reduction == "none":
        return loss.to(out_dtype)
    total = loss.sum()
    if reduction == "sum":
        return total.to(out_dtype)
    # mean
    if prob_target:
        n = loss.numel()
        return (total / n if n > 0 else total / 0.0).to(out_dtype)
    valid = target != ignore_index
    if weight is None:
        denom = valid.sum().to(total.dtype)
    else:
        safe = torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device))
        denom = torch.where(valid, weight.to(total.dtype)[safe.long()], 0.0).sum()
    # 0 / 0 = nan when every target is ignored, as in PyTorch; no host sync.
    return (total / denom).to(out_dtype)
