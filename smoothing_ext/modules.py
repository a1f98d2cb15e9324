"""nn.Module wrappers: drop-ins for ``torch.nn.CrossEntropyLoss``.

The classes subclass PyTorch's own, so ``isinstance``, the positional signature (the deprecated
``size_average``/``reduce`` included), the attributes, the ``weight`` buffer, ``state_dict``,
pickling and ``repr`` are PyTorch's; only ``forward`` runs this package's kernels. As in PyTorch,
the loss arguments are validated when the loss is computed, not at construction.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .functional import _SMOOTHING_MODES, _check_grad_scale, cross_entropy

__all__ = ["CrossEntropyLoss", "LabelSmoothingCrossEntropy"]

# Keyword-only options beyond PyTorch and their defaults (the defaults give PyTorch's results).
_EXTRA_DEFAULTS: dict[str, Any] = {
    "smoothing_mode": "uniform",
    "z_loss": 0.0,
    "return_z_loss": False,
    "softcap": None,
    "grad_in_forward": False,
    "inplace_backward": False,
    "grad_scale": None,
    "process_group": None,
    "class_start": None,
    "num_classes": None,
}


def _check_extra_options(
    cls_name: str, smoothing_mode: str, z_loss: float, softcap: Optional[float],
    grad_in_forward: bool, inplace_backward: bool, grad_scale: Optional[float] = None,
) -> None:
    # These options are this package's own: a typo in one is reported at construction, where
    # it was made (PyTorch's own arguments are left to the forward, as PyTorch does).
    if smoothing_mode not in _SMOOTHING_MODES:
        raise ValueError(f"{cls_name}: smoothing_mode must be 'uniform' or 'off_target', got {smoothing_mode!r}")
    if not (0.0 <= float(z_loss) < math.inf):
        raise ValueError(f"{cls_name}: z_loss must be a finite number >= 0, got {z_loss}")
    if softcap is not None and not (0.0 < float(softcap) < math.inf):
        raise ValueError(f"{cls_name}: softcap must be None or a finite number > 0, got {softcap}")
    if inplace_backward and not grad_in_forward:
        raise ValueError(f"{cls_name}: inplace_backward=True needs grad_in_forward=True")
    _check_grad_scale(cls_name, grad_scale, grad_in_forward)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Drop-in for :class:`torch.nn.CrossEntropyLoss` (a subclass of it), computed by
    smoothing_ext's fused kernels.

    Same positional arguments as PyTorch's: ``weight, size_average, ignore_index, reduce,
    reduction, label_smoothing`` (``size_average``/``reduce`` are deprecated and, when given,
    override ``reduction`` with PyTorch's warning). ``weight`` is a buffer, as in PyTorch. The
    keyword-only arguments (``smoothing_mode``, ``z_loss``, ``return_z_loss``, ``softcap``,
    ``grad_in_forward``, ``inplace_backward``, ``grad_scale``, and ``process_group``/``class_start``/``num_classes``
    for vocabulary-parallel logits) go beyond PyTorch and appear in ``repr`` when not at
    their defaults; see :func:`smoothing_ext.cross_entropy` for all of them.
    """

    def __init__(
        self,
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
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        _check_extra_options(
            type(self).__name__, smoothing_mode, z_loss, softcap, grad_in_forward, inplace_backward, grad_scale
        )
        self.smoothing_mode = smoothing_mode
        self.z_loss = float(z_loss)
        self.return_z_loss = bool(return_z_loss)
        self.softcap = None if softcap is None else float(softcap)
        self.grad_in_forward = bool(grad_in_forward)
        self.inplace_backward = bool(inplace_backward)
        self.grad_scale = None if grad_scale is None else float(grad_scale)
        # vocabulary-parallel logits (see smoothing_ext.cross_entropy); a DTensor input needs none
        self.process_group = process_group
        self.class_start = class_start
        self.num_classes = num_classes

    def forward(self, input: Tensor, target: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        """The loss of ``input`` (logits) against ``target``, as :class:`torch.nn.CrossEntropyLoss`."""
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
            grad_scale=self.grad_scale,
            process_group=self.process_group,
            class_start=self.class_start,
            num_classes=self.num_classes,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Modules pickled before an option existed get its default (as torch's own modules do).
        super().__setstate__(state)
        for name, default in _EXTRA_DEFAULTS.items():
            if name not in self.__dict__:
                self.__dict__[name] = default

    def extra_repr(self) -> str:
        # PyTorch's repr of this class is bare (``CrossEntropyLoss()``); only our options at a
        # non-default value are added, so that a printed model tells them apart.
        return ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name, default in _EXTRA_DEFAULTS.items()
            if getattr(self, name) != default
        )


class LabelSmoothingCrossEntropy(CrossEntropyLoss):
    """:class:`CrossEntropyLoss` with label smoothing on by default (``label_smoothing=0.1``).

    ``smoothing=`` is accepted as another name of ``label_smoothing`` (timm's
    ``LabelSmoothingCrossEntropy(smoothing=0.1)``); the keyword-only arguments are
    :class:`CrossEntropyLoss`'s.
    """

    def __init__(
        self,
        label_smoothing: float = 0.1,
        weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        *,
        smoothing: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        if smoothing is not None:
            if label_smoothing not in (0.1, smoothing):
                raise ValueError(
                    f"LabelSmoothingCrossEntropy: smoothing={smoothing} and label_smoothing={label_smoothing} "
                    "are two names of the same argument; pass one of them"
                )
            label_smoothing = smoothing
        super().__init__(
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            **kwargs,
        )
