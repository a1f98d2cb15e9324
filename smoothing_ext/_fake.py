"""Fake (meta) kernels: shapes and dtypes of every op, for torch.compile and opcheck."""

from __future__ import annotations

from typing import Optional

import torch

__all__: list[str] = []


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _loss_shape(input: torch.Tensor) -> list[int]:
    if input.dim() == 1:
        return []
    return [input.shape[0], *input.shape[2:]]


@torch.library.register_fake("smoothing_ext::cross_entropy_forward")
def _index_forward_fake(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float,
    off_target: bool = False,
    softcap: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = _loss_shape(input)
    acc = _acc_dtype(input.dtype)
    return input.new_empty(shape, dtype=acc), input.new_empty(shape, dtype=acc)


@torch.library.register_fake("smoothing_ext::cross_entropy_prob_forward")
def _prob_forward_fake(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor],
    label_smoothing: float,
    off_target: bool = False,
    softcap: Optional[float] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = _loss_shape(input)
    acc = _acc_dtype(input.dtype)
    return input.new_empty(shape, dtype=acc), input.new_empty(shape, dtype=acc)


@torch.library.register_fake("smoothing_ext::_cross_entropy_backward")
def _index_backward_fake(
    grad_loss: torch.Tensor,
    grad_lse: Optional[torch.Tensor],
    input: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor],
    lse: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    off_target: bool = False,
    softcap: Optional[float] = None,
) -> torch.Tensor:
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("smoothing_ext::_cross_entropy_prob_backward")
def _prob_backward_fake(
    grad_loss: torch.Tensor,
    grad_lse: Optional[torch.Tensor],
    input: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor],
    lse: torch.Tensor,
    label_smoothing: float,
    off_target: bool = False,
    softcap: Optional[float] = None,
) -> torch.Tensor:
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("smoothing_ext::cross_entropy_fused")
def _fused_fake(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float,
    off_target: bool,
    softcap: Optional[float],
    z_loss: float,
    grad_scale: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    shape = _loss_shape(input)
    acc = _acc_dtype(input.dtype)
    grad = torch.empty_like(input, memory_format=torch.contiguous_format)
    return input.new_empty(shape, dtype=acc), input.new_empty(shape, dtype=acc), grad


@torch.library.register_fake("smoothing_ext::cross_entropy_fused_")
def _fused_inplace_fake(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: Optional[torch.Tensor],
    ignore_index: int,
    label_smoothing: float,
    off_target: bool,
    softcap: Optional[float],
    z_loss: float,
    grad_scale: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = _loss_shape(input)
    acc = _acc_dtype(input.dtype)
    return input.new_empty(shape, dtype=acc), input.new_empty(shape, dtype=acc)


@torch.library.register_fake("smoothing_ext::_scale_grad_rows_")
def _scale_grad_rows_fake(grad: torch.Tensor, scale: torch.Tensor) -> None:
    return None
