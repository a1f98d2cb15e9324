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



def _has_compiled_extension(pkg_dir: str) -> bool:
    """Whether a compiled ``_C`` library lies in ``pkg_dir`` (built in place or installed)."""
    import glob
    import os

    return bool(glob.glob(os.path.join(pkg_dir, "_C*.so")) + glob.glob(os.path.join(pkg_dir, "_C*.pyd")))


def _looks_like_source_checkout(pkg_dir: str) -> bool:
    """A repository root (setup.py and csrc/ next to the package), not an installed copy."""
    import os

    root = os.path.dirname(os.path.abspath(pkg_dir))
    return os.path.isfile(os.path.join(root, "setup.py")) and os.path.isdir(os.path.join(root, "csrc"))


def _installed_elsewhere(pkg_dir: str) -> "str | None":
    """The directory of another smoothing_ext with a compiled ``_C`` that the import system would
    find if ``pkg_dir``'s parent were not on sys.path (a regular or an editable install), or None."""
    import importlib.machinery
    import os
    import sys

    here = os.path.realpath(pkg_dir)
    root = os.path.dirname(here)
    # '' and '.' mean the current directory, which is how a checkout shadows the installed package
    others = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
    for finder in sys.meta_path:
        try:
            if finder is importlib.machinery.PathFinder:
                spec = finder.find_spec(__name__, others)
            else:
                spec = finder.find_spec(__name__, None)  # e.g. setuptools' editable-install finder
        except Exception:  # a third-party finder may fail in any way: it just does not count
            continue
        for loc in (spec.submodule_search_locations or []) if spec is not None else []:
            if os.path.realpath(loc) != here and _has_compiled_extension(loc):
                return loc
    return None


def _source_tree_message(pkg_dir: str, installed: "str | None") -> str:
    """What to do when ``import smoothing_ext`` found an unbuilt source checkout (pure: testable)."""
    import os

    root = os.path.dirname(os.path.abspath(pkg_dir))
    head = (
        f"smoothing_ext: `import smoothing_ext` found the source checkout at {root} (its smoothing_ext/ has "
        "no compiled _C library), because that directory (the current directory or the script's) comes "
        "first on sys.path. "
    )
    if installed is not None:
        return head + (
            f"It shadows the installed smoothing_ext in {installed}. Either:\n"
            "  - run from another directory (cd elsewhere), or\n"
            "  - run `python -P ...` (Python 3.11+; or set PYTHONSAFEPATH=1) so that the current or script "
            "directory is not put on sys.path (for the tests: `python -P -m pytest tests`), or\n"
            "  - install this checkout in editable mode instead, which builds _C in place:\n"
            f"      cd {root} && pip install -v --no-build-isolation -e ."
        )
    return head + (
        "This checkout has not been built, and no installed smoothing_ext was found either. Build it in place "
        "(editable install, compiled against the torch of this environment):\n"
        f"      cd {root} && pip install -v --no-build-isolation -e .\n"
        "(or `make build`), or install it (`pip install -v --no-build-isolation .`) and import it from "
        "another directory."
    )


try:
    from . import _C  # noqa: F401  (registers torch.ops.smoothing_ext.*)
except ImportError as e:  # pragma: no cover - depends on the installation (tests/test_import_errors.py)
    _pkg_dir = __path__[0]
    if not _has_compiled_extension(_pkg_dir) and _looks_like_source_checkout(_pkg_dir):
        # Reinstalling cannot help here: the checkout would shadow the reinstalled package again.
        raise ImportError(_source_tree_message(_pkg_dir, _installed_elsewhere(_pkg_dir))) from e
    raise ImportError(
        "smoothing_ext: the compiled extension smoothing_ext._C failed to load "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda}). It must be built against the torch "
        "that imports it: reinstall with `pip install -v --no-build-isolation .` in this environment. "
        f"Original error: {e}"
    ) from e

from . import _fake  # noqa: F401,E402  (register_fake for every op)
from . import _autograd  # noqa: F401,E402  (register_autograd for every op)
from .functional import cross_entropy  # noqa: E402
from .modules import CrossEntropyLoss, LabelSmoothingCrossEntropy  # noqa: E402
from .binary import BCEWithLogitsLoss, binary_cross_entropy_with_logits  # noqa: E402
from .linear import LinearCrossEntropyLoss, linear_cross_entropy  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "cross_entropy",
    "CrossEntropyLoss",
    "LabelSmoothingCrossEntropy",
    "binary_cross_entropy_with_logits",
    "BCEWithLogitsLoss",
    "linear_cross_entropy",
    "LinearCrossEntropyLoss",
    "__version__",
]
