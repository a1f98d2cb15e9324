"""Print how this smoothing_ext was built and what it runs on: ``python -m smoothing_ext.info``.

Version; the torch and CUDA it was built against and runs under; the CPU instruction set its
kernels use and the ones the processor offers; threads; every op registered under
``torch.ops.smoothing_ext`` (read from the dispatcher, not from a list kept here) with the dispatch
keys that have a kernel; the CUDA architectures compiled into the library. ``--json`` prints the same
as one JSON object (for scripts and bug reports).
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from typing import Any, Optional

__all__ = ["collect", "cpu_isa_available", "main", "physical_cores", "registered_ops"]

NAMESPACE = "smoothing_ext"

# A kernel line of torch._C._dispatch_dump: "CPU: registered at file:line :: (schema) [ boxed unboxed ]",
# alias keys as "Autograd[alias]: ...".
_DUMP_KERNEL = re.compile(r"^(\w+)(\[alias\])?: registered at (.+?)(?: :: .*)?$")
# Keys probed when the dump cannot be parsed (its text format is not a public API).
_FALLBACK_KEYS = ("CPU", "CUDA", "Meta", "Autograd", "AutogradCPU", "AutogradCUDA", "CompositeImplicitAutograd",
                  "CompositeExplicitAutograd", "BackendSelect", "Functionalize")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_isa_available(flags: Optional[set[str]] = None) -> list[str]:
    """The instruction sets the processor offers among those the CPU kernels are compiled for
    (``default`` always; ``avx2`` needs AVX2 + FMA; ``avx512`` the F/BW/VL/DQ subsets), from
    /proc/cpuinfo (empty beyond ``default`` where that is unreadable)."""
    flags = _cpu_flags() if flags is None else flags
    out = ["default"]
    if {"avx2", "fma"} <= flags:
        out.append("avx2")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        out.append("avx512")
    return out


def physical_cores() -> int:
    """Physical cores of this machine (hyper-threads not counted), from /proc/cpuinfo's
    (physical id, core id) pairs; the logical CPU count where that is unavailable. Restricted to
    the CPUs this process may run on when that is smaller."""
    cores: set[tuple[str, str]] = set()
    phys = core = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and phys is not None and core is not None:  # blank line ends a processor
                    cores.add((phys, core))
                    phys = core = None
        if phys is not None and core is not None:
            cores.add((phys, core))
    except OSError:
        pass
    n = len(cores) or os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        n = min(n, len(os.sched_getaffinity(0)))
    return max(1, n)


def _parse_dump(dump: str) -> tuple[Optional[str], dict[str, str]]:
    schema, kernels = None, {}
    for line in dump.splitlines():
        line = line.strip()
        if line.startswith("schema:"):
            schema = line.split(":", 1)[1].strip()
            continue
        m = _DUMP_KERNEL.match(line)
        if m and m.group(1) not in ("debug", "name", "schema"):
            kernels[m.group(1)] = os.path.basename(m.group(3).rsplit(":", 1)[0])
    return schema, kernels


def registered_ops(namespace: str = NAMESPACE) -> dict[str, dict[str, Any]]:
    """Every operator of ``namespace`` known to the dispatcher: name -> {"schema", "dispatch_keys",
    "registered_in"}; dispatch_keys are the keys with a kernel (``Autograd`` and ``Meta`` come from the
    Python registrations of _autograd.py / _fake.py, backend keys from the compiled library)."""
    import torch

    ops: dict[str, dict[str, Any]] = {}
    prefix = namespace + "::"
    for qualname in sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith(prefix)):
        name = qualname[len(prefix):]
        schema, kernels = None, {}
        try:
            schema, kernels = _parse_dump(torch._C._dispatch_dump(qualname))
        except Exception:  # a private API: fall back to probing keys one by one
            pass
        if not kernels:
            kernels = {k: "?" for k in _FALLBACK_KEYS if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, k)}
        ops[name] = {"schema": schema, "dispatch_keys": sorted(kernels), "registered_in": kernels}
    return ops


def collect() -> dict[str, Any]:
    """Everything ``main`` prints, as a JSON-serialisable dict."""
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

    cuda_available = torch.cuda.is_available()
    reason = None if info is None else _version_check.mismatch(torch.__version__, torch.version.cuda, info)
    capability = None
    if loaded:
        try:
            capability = torch.ops.smoothing_ext._cpu_capability()
        except (AttributeError, RuntimeError):
            pass
    arch_list = build.get("cuda_arch_list")
    return {
        "smoothing_ext": build.get("version"),
        "build": build,
        "runtime": {
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_available": cuda_available,
            "devices": [
                {"name": torch.cuda.get_device_name(i), "capability": "%d.%d" % torch.cuda.get_device_capability(i)}
                for i in range(torch.cuda.device_count())
            ]
            if cuda_available
            else [],
            "compatible": None if info is None else reason is None,
            "incompatible_because": reason,
        },
        "cpu": {
            "isa_in_use": capability,
            "isa_available": cpu_isa_available(),
            "isa_forced": os.environ.get("SMOOTHING_EXT_CPU_CAPABILITY"),
            "torch_isa": torch.backends.cpu.get_cpu_capability(),
        },
        "threads": {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "logical_cpus": os.cpu_count(),
            "physical_cores": physical_cores(),
        },
        "cuda_archs": [a for a in arch_list.replace(" ", ";").split(";") if a] if arch_list else [],
        "loaded": loaded,
        "load_error": load_error,
        "ops": registered_ops() if loaded else {},
    }


def main(argv: Optional[list[str]] = None) -> int:
    """Print the report (``--json``: as JSON); exit status 1 when the compiled library did not load
    or registered no op."""
    argv = sys.argv[1:] if argv is None else argv
    data = collect()
    ok = data["loaded"] and bool(data["ops"])
    if "--json" in argv:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0 if ok else 1
    b, r, c, t = data["build"], data["runtime"], data["cpu"], data["threads"]
    print("smoothing_ext %s" % (data["smoothing_ext"] or "(no build info: source tree never built)"))
    if b:
        print("  built against : torch %s (CUDA %s), python %s, C++11 ABI %s"
              % (b["torch_version"], b["torch_cuda_version"], b["python_version"], b["cxx11_abi"]))
        if b["with_cuda"]:
            print("  CUDA kernels  : CUDA %s (nvcc %s), archs %s" % (b["cuda_version"], b["nvcc_version"],
                                                                   " ".join(data["cuda_archs"]) or "-"))
        else:
            print("  CUDA kernels  : none (CPU-only build)")
        print("  cxx flags     : %s" % " ".join(b["cxx_flags"]))
        if b["nvcc_flags"]:
            print("  nvcc flags    : %s" % " ".join(b["nvcc_flags"]))
    print("  running under : torch %s (CUDA %s), python %s, %s"
          % (r["torch"], r["torch_cuda"], r["python"], r["platform"]))
    print("  CUDA devices  : %s" % (", ".join("%s (sm %s)" % (d["name"], d["capability"]) for d in r["devices"])
                                    or "none"))
    print("  compatible    : %s" % {True: "yes", False: "NO", None: "unknown"}[r["compatible"]])
    if r["incompatible_because"]:
        print("                  " + r["incompatible_because"].replace("\n", "\n                  "))
    print("  CPU kernels   : %s in use%s; this CPU offers %s; torch's own kernels: %s"
          % (c["isa_in_use"] or "?", " (forced by SMOOTHING_EXT_CPU_CAPABILITY)" if c["isa_forced"] else "",
             ", ".join(c["isa_available"]), c["torch_isa"]))
    print("  threads       : torch %d intra-op, %d inter-op (OMP_NUM_THREADS=%s); %s logical CPUs, %d physical cores"
          % (t["torch_intra_op"], t["torch_inter_op"], t["OMP_NUM_THREADS"] or "unset", t["logical_cpus"],
             t["physical_cores"]))
    if not data["loaded"]:
        print("  load error    : %s" % data["load_error"])
        return 1
    print("  ops (%d, torch.ops.%s) with the dispatch keys that have a kernel:" % (len(data["ops"]), NAMESPACE))
    width = max((len(n) for n in data["ops"]), default=0)
    for name, op in data["ops"].items():
        print("    %-*s  %s" % (width, name, ", ".join(op["dispatch_keys"]) or "(no kernel)"))
    if not data["ops"]:
        print("    none registered")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
