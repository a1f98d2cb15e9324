"""Pure-PyTorch float64 reference of every op, for tests and benchmarks only (never a fallback)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["reference_cross_entropy"]


def reference_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
    softcap: Optional[float] = None,
) -> Tensor:
    """Label-smoothed cross entropy in float64 straight from its definition,
    -sum_j w_j q_j log p_j (+ z lse^2 per non-ignored element), with PyTorch's reduction rules.
    Differentiable w.r.t. ``input``."""
    x = input.double()
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    class_dim = 0 if x.dim() == 1 else 1
    C = x.shape[class_dim]
    logp = torch.log_softmax(x, dim=class_dim)
    zrow = z_loss * torch.logsumexp(x, dim=class_dim) ** 2
    wshape = [1] * x.dim()
    wshape[class_dim] = C
    w = torch.ones(C, dtype=torch.float64, device=x.device) if weight is None else weight.double()
    wv = w.view(wshape)
    eps = float(label_smoothing)
    off_target = smoothing_mode == "off_target"
    if target.is_floating_point():
        y = target.double()
        if off_target:
            q = y * (1.0 - eps) + (1.0 - y) * (eps / (C - 1) if C > 1 else 0.0) if C > 1 else y
        else:
            q = y * (1.0 - eps) + eps / C
        loss = -(wv * q * logp).sum(class_dim) + zrow
        if reduction == "none":
            return loss
        if reduction == "sum":
            return loss.sum()
        return loss.sum() / loss.numel() if loss.numel() else loss.sum() / 0.0
    t = target.long()
    valid = t != ignore_index
    safe = torch.where(valid, t, torch.zeros_like(t))
    onehot = torch.nn.functional.one_hot(safe, C).double()
    if class_dim == 1:
        onehot = onehot.movedim(-1, 1)
    if off_target:
        q = (1.0 - eps) * onehot + (1.0 - onehot) * (eps / (C - 1)) if C > 1 else onehot
    else:
        q = (1.0 - eps) * onehot + eps / C
    # mask before multiplying: an ignored row may hold -inf logits, and 0 * inf is nan
    lossmat = torch.where(q != 0, -(wv * q * logp), torch.zeros((), dtype=torch.float64, device=x.device))
    loss = torch.where(valid, lossmat.sum(class_dim) + zrow, torch.zeros((), dtype=torch.float64, device=x.device))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    denom = torch.where(valid, w[safe], torch.zeros((), dtype=torch.float64, device=x.device)).sum()
    return loss.sum() / denom
