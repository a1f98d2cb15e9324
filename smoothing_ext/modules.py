"""nn.Module wrappers: drop-ins for ``torch.nn.CrossEntropyLoss``."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from .functional import cross_entropy

__all__ = ["CrossEntropyLoss", "LabelSmoothingCrossEntropy"]


class CrossEntropyLoss(nn.Module):
    """Drop-in for :class:`torch.nn.CrossEntropyLoss`, computed by smoothing_ext's fused kernels.

    ``weight`` is registered as a buffer (it follows ``.to()``/``.cuda()`` and the state dict), as in
    PyTorch. The keyword-only arguments (``smoothing_mode``, ``z_loss``, ``return_z_loss``,
    ``softcap``, ``grad_in_forward``, ``inplace_backward``) go beyond PyTorch; see
    :func:`smoothing_ext.cross_entropy` for all of them.
    """

    weight: Optional[Tensor]

    def __init__(
        self,
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
    ) -> None:
        super().__init__()
        if smoothing_mode not in ("uniform", "off_target"):
            raise ValueError(
                f"CrossEntropyLoss: smoothing_mode must be 'uniform' or 'off_target', got {smoothing_mode!r}"
            )
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing}")
        self.register_buffer("weight", weight)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)
        self.smoothing_mode = smoothing_mode
        self.z_loss = float(z_loss)
        self.return_z_loss = bool(return_z_loss)
        self.softcap = None if softcap is None else float(softcap)
        self.grad_in_forward = bool(grad_in_forward)
        self.inplace_backward = bool(inplace_backward)

    def forward(self, input: Tensor, target: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            smoothing_mode=self.smoothing_mode,
            z_loss=self.z_loss,
            return_z_loss=self.return_z_loss,
            softcap=self.softcap,
            grad_in_forward=self.grad_in_forward,
            inplace_backward=self.inplace_backward,
        )

    def extra_repr(self) -> str:
        extra = [
            f"ignore_index={self.ignore_index}",
            f"reduction={self.reduction!r}",
            f"label_smoothing={self.label_smoothing}",
        ]
        if self.smoothing_mode != "uniform":
            extra.append(f"smoothing_mode={self.smoothing_mode!r}")
        if self.z_loss:
            extra.append(f"z_loss={self.z_loss}")
        if self.softcap is not None:
            extra.append(f"softcap={self.softcap}")
        if self.grad_in_forward:
            extra.append(f"grad_in_forward=True, inplace_backward={self.inplace_backward}")
        return ", ".join(extra)


class LabelSmoothingCrossEntropy(CrossEntropyLoss):
    """:class:`CrossEntropyLoss` with label smoothing on by default (``label_smoothing=0.1``); the
    keyword-only arguments are :class:`CrossEntropyLoss`'s."""

    def __init__(
        self,
        label_smoothing: float = 0.1,
        weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        **kwargs: object,
    ) -> None:
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            **kwargs,  # type: ignore[arg-type]
        )
