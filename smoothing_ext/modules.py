"""nn.Module wrappers: drop-ins for ``torch.nn.CrossEntropyLoss``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .functional import cross_entropy

__all__ = ["CrossEntropyLoss", "LabelSmoothingCrossEntropy"]


class CrossEntropyLoss(nn.Module):
    """Drop-in for :class:`torch.nn.CrossEntropyLoss`, computed by smoothing_ext's fused kernels.

    ``weight`` is registered as a buffer (it follows ``.to()``/``.cuda()`` and the state dict), as in
    PyTorch. See :func:`smoothing_ext.cross_entropy` for the arguments.
    """

    weight: Optional[Tensor]

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.register_buffer("weight", weight)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )

    def extra_repr(self) -> str:
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}"
        )


class LabelSmoothingCrossEntropy(CrossEntropyLoss):
    """:class:`CrossEntropyLoss` with label smoothing on by default (``label_smoothing=0.1``)."""

    def __init__(
        self,
        label_smoothing: float = 0.1,
        weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(
            weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
        )
