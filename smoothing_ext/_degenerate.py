"""PyTorch's results where the compiled ops have nothing to compute: tensors on the ``meta``
device (shapes and dtypes only) and inputs with zero classes.

Both are built from plain torch ops on the input (and the target), so that autograd records a
graph as it would for a real result: ``loss.backward()`` gives gradients of the right (empty or
meta) shapes instead of failing.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

__all__ = ["cross_entropy_degenerate", "bce_with_logits_meta", "autocast_enabled"]


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, False for device types autocast does not know
    (``meta``, where asking raises)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    except RuntimeError:
        return False


def _reduce(rows: Tensor, reduction: str, count: Optional[Tensor]) -> Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum" or count is None:
        return total
    return total / count


def _negated(out: Tensor, return_z_loss: bool) -> Union[Tensor, tuple[Tensor, Tensor]]:
    out = -out
    return (out, torch.zeros_like(out).detach()) if return_z_loss else out


def cross_entropy_degenerate(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    return_z_loss: bool,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """Cross entropy of a meta input, or of an input with zero classes, as PyTorch computes it.

    Zero classes (``(N, 0)``, ``(N, 0, d1, ...)``, ``(0,)``): every class-index target is out of
    bounds unless it is ``ignore_index`` (``IndexError``, PyTorch's message); with all targets
    ignored the element losses are 0, ``"sum"`` is their sum and ``"mean"`` is NaN (no weight to
    divide by); with ``label_smoothing > 0`` every result is NaN (PyTorch scales its smoothing term
    by ``label_smoothing / C``).
    Probability targets give element losses of -0.0 (an empty sum), ``"mean"`` NaN.
    """
    cdim = 0 if input.dim() == 1 else 1
    meta = input.device.type == "meta"
    prob_target = target.is_floating_point()
    if not meta and input.shape[cdim] == 0 and not prob_target:
        # One host synchronisation, only for this degenerate shape.
        live = target[target.long() != ignore_index]
        if live.numel() > 0:
            raise IndexError(
                f"Target {int(live.reshape(-1)[0])} is out of bounds. smoothing_ext.cross_entropy: input of "
                f"shape {list(input.shape)} has no classes, so every target must equal "
                f"ignore_index={ignore_index}"
            )
    out_dtype = torch.float32 if (not meta and autocast_enabled(input.device.type)) else input.dtype
    x = input.to(out_dtype)
    if prob_target:
        w = 1.0 if weight is None else weight.to(out_dtype).reshape([-1] + [1] * (input.dim() - cdim - 1))
        # PyTorch negates after reducing: -0.0 for "none" and "sum", and its mean divides by
        # numel / C, which is 0 / 0 here (NaN); on meta only the shape matters.
        rows = (x * target.to(out_dtype) * w).sum(cdim)
        count = None if reduction != "mean" else torch.zeros((), dtype=out_dtype, device=x.device)
        return _negated(_reduce(rows, reduction, count), return_z_loss)
    rows = x.sum(cdim)  # zeros of the target's shape (meta: its shape only), in the graph
    # no class, so no non-ignored target: the weight sum is 0 and the mean 0 / 0
    count = None if reduction != "mean" else torch.zeros((), dtype=out_dtype, device=x.device)
    out = _reduce(rows, reduction, count)
    if not meta and label_smoothing > 0.0:
        # PyTorch's smoothing term is scaled by label_smoothing / C = inf: NaN for every reduction
        out = out + float("nan")
    return (out, torch.zeros_like(out).detach()) if return_z_loss else out


def bce_with_logits_meta(input: Tensor, target: Tensor, reduction: str) -> Tensor:
    """Shape and dtype of PyTorch's binary cross entropy with logits on meta tensors (the target's
    dtype, as PyTorch), built from torch ops so that autograd records a graph."""
    rows = (input * target).to(target.dtype)
    return rows if reduction == "none" else rows.sum()
