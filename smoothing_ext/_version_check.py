"""Import-time check that the running torch is the one this build of smoothing_ext was compiled for.

The compiled extension links against libtorch's C++ ABI, which changes between torch minors, and
its CUDA kernels against one CUDA major. A mismatch otherwise surfaces as an undefined-symbol error
deep inside the dynamic loader (or a crash); this check turns it into an ImportError that says
what to install. Called from ``smoothing_ext/__init__.py`` *before* the compiled ``_C`` is loaded.

Set ``SMOOTHING_EXT_SKIP_VERSION_CHECK=1`` to bypass it (at your own risk).
"""

from __future__ import annotations

import os
from typing import Any, Optional

__all__ = ["build_info", "check_torch_compat", "describe_build"]

_WHEEL_INDEX = "https://download.pytorch.org/whl/{platform}"


def build_info() -> Optional[Any]:
    """The generated ``smoothing_ext._build_info`` module, or None in a source tree never built."""
    try:
        from . import _build_info
    except ImportError:
        return None
    return _build_info


def _minor(version: str) -> tuple[int, int]:
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int(parts[1])


def _cuda_major(version: Optional[str]) -> Optional[int]:
    return int(version.split(".")[0]) if version else None


def _platform(cuda_version: Optional[str]) -> str:
    if not cuda_version:
        return "cpu"
    major, minor = cuda_version.split(".")[:2]
    return "cu%s%s" % (major, minor)


def describe_build(info: Any = None) -> str:
    info = info if info is not None else build_info()
    if info is None:
        return "smoothing_ext (no build information: a source tree that was never built)"
    cuda = (
        "CUDA %s kernels for archs %s" % (info.cuda_version, info.cuda_arch_list)
        if info.with_cuda
        else "CPU kernels only"
    )
    return "smoothing_ext %s, built against torch %s, %s" % (info.version, info.torch_version, cuda)


def mismatch(torch_version: str, torch_cuda: Optional[str], info: Any) -> Optional[str]:
    """The reason this build cannot run under torch ``torch_version`` (CUDA ``torch_cuda``), or None.

    Pure function of its arguments, so the error messages are testable without other torches."""
    built_minor = _minor(info.torch_version)
    run_minor = _minor(torch_version)
    want_platform = _platform(info.cuda_version)
    fix_torch = "pip install 'torch==%d.%d.*' --index-url %s" % (
        built_minor + (_WHEEL_INDEX.format(platform=want_platform),)
    )
    if run_minor != built_minor:
        return (
            "%s, but torch %s is installed: the compiled extension is built for torch %d.%d.x (torch's C++ "
            "ABI changes between minor releases).\n"
            "Either install the matching torch:\n    %s\n"
            "or install the smoothing_ext wheel built for torch %d.%d (a local version label such as "
            "+%storch%d.%d), or build it from source against this torch, in a checkout:\n"
            "    pip install --no-build-isolation ."
            % (
                (describe_build(info), torch_version) + built_minor + (fix_torch,) + run_minor
                + (_platform(torch_cuda),) + run_minor
            )
        )
    if info.with_cuda:
        if torch_cuda is None:
            return (
                "%s, but torch %s is a CPU-only build: the CUDA kernels need CUDA %s's runtime.\n"
                "Either install torch with CUDA %s:\n    %s\n"
                "or install the CPU wheel of smoothing_ext (local version label +cputorch%d.%d)."
                % ((describe_build(info), torch_version, info.cuda_version, info.cuda_version, fix_torch)
                   + built_minor)
            )
        if _cuda_major(torch_cuda) != _cuda_major(info.cuda_version):
            return (
                "%s, but torch %s uses CUDA %s: the kernels need a CUDA %d runtime.\n"
                "Either install torch built for CUDA %s:\n    %s\n"
                "or install the smoothing_ext wheel for this torch (local version label +%storch%d.%d)."
                % (
                    (describe_build(info), torch_version, torch_cuda, _cuda_major(info.cuda_version),
                     info.cuda_version, fix_torch, _platform(torch_cuda)) + run_minor
                )
            )
    return None


def check_torch_compat() -> None:
    """Raise ImportError when the running torch cannot load this build (see the module docstring)."""
    if os.environ.get("SMOOTHING_EXT_SKIP_VERSION_CHECK", "0").lower() in ("1", "true", "yes", "on"):
        return
    info = build_info()
    if info is None:
        return  # a source tree (editable/in-place) build that predates _build_info: nothing to compare
    import torch

    reason = mismatch(torch.__version__, torch.version.cuda, info)
    if reason is not None:
        raise ImportError("smoothing_ext: " + reason + "\n(Set SMOOTHING_EXT_SKIP_VERSION_CHECK=1 to try anyway.)")
