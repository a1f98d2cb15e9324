"""Autograd for the forward ops: the backward ops recompute p = exp(x - lse) from the saved logits
and lse, so nothing of size N x C is saved besides the (caller's) logits themselves."""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__: list[str] = []


def smoothing_coefficients(eps: float, C: int, off_target: bool) -> tuple[float, float]:
    """(on, off) of the smoothed target q_j = on [j == t] + off (see csrc/smoothing_ext.cpp)."""
    if not off_target:
        return 1.0 - eps, eps / C
    if C <= 1:
        return 1.0, 0.0
    off = eps / (C - 1)
    return 1.0 - eps - off, off

_ops = torch.ops.smoothing_ext


def _index_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    input, target, weight, ignore_index, label_smoothing, off_target, softcap = inputs
    _, lse = output
    ctx.save_for_backward(input, target, weight, lse)
    ctx.ignore_index = ignore_index
    ctx.label_smoothing = label_smoothing
    ctx.off_target = off_target
    ctx.softcap = softcap


def _index_backward(ctx: Any, grad_loss: torch.Tensor, grad_lse: Optional[torch.Tensor]):
    input, target, weight, lse = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0]:
        grad_input = _ops._cross_entropy_backward(
            grad_loss, grad_lse, input, target, weight, lse, ctx.ignore_index, ctx.label_smoothing,
            ctx.off_target, ctx.softcap,
        )
    return grad_input, None, None, None, None, None, None


def _prob_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    input, target, weight, label_smoothing, off_target, softcap = inputs
    _, lse = output
    ctx.save_for_backward(input, target, weight, lse)
    ctx.label_smoothing = label_smoothing
    ctx.off_target = off_target
    ctx.softcap = softcap


def _prob_backward(ctx: Any, grad_loss: torch.Tensor, grad_lse: Optional[torch.Tensor]):
    input, target, weight, lse = ctx.saved_tensors
    grad_input = grad_target = None
    if ctx.needs_input_grad[0]:
        grad_input = _ops._cross_entropy_prob_backward(
            grad_loss, grad_lse, input, target, weight, lse, ctx.label_smoothing, ctx.off_target, ctx.softcap
        )
    if ctx.needs_input_grad[1]:
        # d loss / d y_j = -on w_j log p_j (q = on y + off): rare (learned soft targets), so plain
        # torch ops.
        class_dim = 0 if input.dim() == 1 else 1
        x = input.to(lse.dtype)
        if ctx.softcap is not None:
            x = ctx.softcap * torch.tanh(x / ctx.softcap)
        logp = x - lse.unsqueeze(class_dim)
        on = smoothing_coefficients(ctx.label_smoothing, input.shape[class_dim], ctx.off_target)[0]
        g = -on * logp * grad_loss.unsqueeze(class_dim)
        if weight is not None:
            shape = [1] * input.dim()
            shape[class_dim] = -1
            g = g * weight.to(g.dtype).view(shape)
        grad_target = g.to(target.dtype)
    return grad_input, grad_target, None, None, None, None


torch.library.register_autograd(
    "smoothing_ext::cross_entropy_forward", _index_backward, setup_context=_index_setup_context
)
torch.library.register_autograd(
    "smoothing_ext::cross_entropy_prob_forward", _prob_backward, setup_context=_prob_setup_context
)
