"""smoothing_ext: fused label-smoothed cross entropy for PyTorch.

A drop-in for ``torch.nn.functional.cross_entropy`` / ``torch.nn.CrossEntropyLoss`` with hand-written
CPU (and, in CUDA builds, GPU) kernels: one read of the logits in the forward, one read and one write
in the backward, and O(N) extra memory instead of an N x C log-probability tensor.

    import smoothing_ext
    loss = smoothing_ext.cross_entropy(logits, target, label_smoothing=0.1)
    criterion = smoothing_ext.CrossEntropyLoss(label_smoothing=0.1)
"""

from __future__ import annotations

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from ._version_check import check_torch_compat as _check_torch_compat

# A wheel is bound to the torch minor and CUDA major it was built with: say what to install
# instead of failing with an undefined symbol.
_check_torch_compat()

try:
    from . import _C  # noqa: F401  (registers torch.ops.smoothing_ext.*)
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError(
        "smoothing_ext: the compiled extension smoothing_ext._C failed to load "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda}). It must be built against the torch "
        "that imports it: reinstall with `pip install --no-build-isolation .` in this environment. "
        f"Original error: {e}"
    ) from e

from . import _fake  # noqa: F401,E402  (register_fake for every op)
from . import _autograd  # noqa: F401,E402  (register_autograd for every op)
from .functional import cross_entropy  # noqa: E402
from .modules import CrossEntropyLoss, LabelSmoothingCrossEntropy  # noqa: E402
from .binary import BCEWithLogitsLoss, binary_cross_entropy_with_logits  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "cross_entropy",
    "CrossEntropyLoss",
    "LabelSmoothingCrossEntropy",
    "binary_cross_entropy_with_logits",
    "BCEWithLogitsLoss",
    "__version__",
]
