"""Exception classes that are both this package's historical class and the one PyTorch raises.

PyTorch's loss functions raise mostly ``RuntimeError`` (some ``ValueError``, ``IndexError``,
``TypeError`` or ``NotImplementedError``) for bad input; this package raised ``ValueError`` /
``TypeError`` with messages that name the argument and the shapes. Where the two differ, the
exception derives from both, so that ``except RuntimeError`` written for PyTorch and
``except ValueError`` written for this package keep working. Messages start with PyTorch's own
wording (its tests match it by regex) and go on with ours.
"""

from __future__ import annotations

import torch

__all__ = [
    "SmoothingExtValueError",
    "SmoothingExtTypeError",
    "SmoothingExtIndexError",
    "SmoothingExtNotImplementedError",
    "scalar_type_name",
]


class SmoothingExtValueError(ValueError, RuntimeError):
    """A bad value where PyTorch raises ``RuntimeError``: catchable as either."""


class SmoothingExtTypeError(TypeError, RuntimeError):
    """A bad dtype where PyTorch raises ``RuntimeError``: catchable as either."""


class SmoothingExtIndexError(ValueError, IndexError):
    """A bad number of dimensions where PyTorch raises ``IndexError`` (dimension out of range)."""


class SmoothingExtNotImplementedError(TypeError, NotImplementedError):
    """A dtype that PyTorch's kernels do not implement (``NotImplementedError``, itself a
    ``RuntimeError``)."""


def scalar_type_name(dtype: torch.dtype) -> str:
    """c10's name of a dtype as PyTorch's messages print it (``Long``, ``Float``, ``BFloat16``...)."""
    # torch.LongTensor -> Long; the legacy tensor type name is the c10 ScalarType name.
    name = torch.empty(0, dtype=dtype, device="meta").type()
    return name.rsplit(".", 1)[-1].removesuffix("Tensor")
