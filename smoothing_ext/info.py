"""Print how this smoothing_ext was built and what it runs on: ``python -m smoothing_ext.info``.

``--json`` prints the same as one JSON object (for scripts and bug reports).
"""

from __future__ import annotations

import json
import platform
import sys
from typing import Any

__all__ = ["collect", "main"]

_OPS = (
    "cross_entropy_forward",
    "_cross_entropy_backward",
    "cross_entropy_prob_forward",
    "_cross_entropy_prob_backward",
)


def collect() -> dict[str, Any]:
    import torch

    from . import _version_check

    info = _version_check.build_info()
    build: dict[str, Any] = {}
    if info is not None:
        build = {k: getattr(info, k) for k in dir(info) if not k.startswith("_")}

    loaded, load_error = True, None
    try:
        import smoothing_ext  # noqa: F401  (loads _C: registers the ops)
    except ImportError as e:  # pragma: no cover - depends on the installation
        loaded, load_error = False, str(e)
    ns = getattr(torch.ops, "smoothing_ext")
    ops = {}
    for name in _OPS:
        try:
            getattr(ns, name)
            ops[name] = True
        except (AttributeError, RuntimeError):
            ops[name] = False

    cuda_available = torch.cuda.is_available()
    reason = None if info is None else _version_check.mismatch(torch.__version__, torch.version.cuda, info)
    return {
        "smoothing_ext": build.get("version"),
        "build": build,
        "runtime": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_available": cuda_available,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda_available
            else [],
            "compatible": None if info is None else reason is None,
            "incompatible_because": reason,
        },
        "loaded": loaded,
        "load_error": load_error,
        "ops": ops,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    data = collect()
    if "--json" in argv:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0 if data["loaded"] else 1
    b, r = data["build"], data["runtime"]
    print("smoothing_ext %s" % (data["smoothing_ext"] or "(no build info: source tree never built)"))
    if b:
        print("  built against : torch %s (CUDA %s), python %s, C++11 ABI %s"
              % (b["torch_version"], b["torch_cuda_version"], b["python_version"], b["cxx11_abi"]))
        if b["with_cuda"]:
            print("  CUDA kernels  : CUDA %s (nvcc %s), archs %s" % (b["cuda_version"], b["nvcc_version"],
                                                                   b["cuda_arch_list"]))
        else:
            print("  CUDA kernels  : none (CPU-only build)")
        print("  cxx flags     : %s" % " ".join(b["cxx_flags"]))
        if b["nvcc_flags"]:
            print("  nvcc flags    : %s" % " ".join(b["nvcc_flags"]))
    print("  running under : torch %s (CUDA %s), python %s, %s"
          % (r["torch"], r["torch_cuda"], r["python"], r["platform"]))
    print("  CUDA devices  : %s" % (", ".join(r["devices"]) if r["devices"] else "none"))
    print("  compatible    : %s" % {True: "yes", False: "NO", None: "unknown"}[r["compatible"]])
    if r["incompatible_because"]:
        print("                  " + r["incompatible_because"].replace("\n", "\n                  "))
    print("  ops           : %s" % (", ".join(n for n, ok in data["ops"].items() if ok) or "none registered"))
    if not data["loaded"]:
        print("  load error    : %s" % data["load_error"])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
