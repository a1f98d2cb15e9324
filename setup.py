"""Build script for smoothing_ext.

Configuration (environment variables):
  FORCE_CPU=1               never build the CUDA sources
  FORCE_CUDA=1              build the CUDA sources even without a visible GPU (needs nvcc and a
                            CUDA build of torch); TORCH_CUDA_ARCH_LIST picks the architectures
  TORCH_CUDA_ARCH_LIST      e.g. "8.0;9.0+PTX" (default when no GPU is visible: the release list)
  CUDA_HOME                 CUDA toolkit root (default: /usr/local/cuda when it exists)
  SMOOTHING_EXT_DEBUG=1     -O0 -g builds
  SMOOTHING_EXT_LOCAL_VERSION  local version label of release wheels, e.g. "cu130torch2.14" gives
                            0.1.0+cu130torch2.14 (set by packaging/build_wheel.sh; unset: plain 0.1.0)
Every build writes smoothing_ext/_build_info.py (git-ignored; see _release_metadata below) and pins
the torch minor it compiled against (torch>=X.Y,<X.Y+1): the extension's C++ ABI is that torch's.
Without FORCE_*, CUDA sources are built when torch is a CUDA build and a toolkit (nvcc) is found.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
RELEASE_ARCHS = "8.0;8.6;8.9;9.0;10.0;12.0+PTX"
VERSION = "0.1.0"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _cuda_home() -> str | None:
    # A wrapper script named nvcc on PATH makes torch guess the toolkit root wrong (the link then
    # fails on -lcudart); prefer an explicit CUDA_HOME, then the standard location.
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def _want_cuda(torch) -> tuple[bool, str]:
    if _flag("FORCE_CPU"):
        return False, "FORCE_CPU=1"
    home = _cuda_home()
    if _flag("FORCE_CUDA"):
        if torch.version.cuda is None:
            sys.exit("smoothing_ext: FORCE_CUDA=1 but torch %s is not a CUDA build" % torch.__version__)
        if home is None:
            sys.exit("smoothing_ext: FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME)")
        return True, "FORCE_CUDA=1"
    if torch.version.cuda is None:
        return False, "torch %s is a CPU build" % torch.__version__
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return False, "no CUDA toolkit (nvcc) found"
    return True, "CUDA build of torch and nvcc found"


def _extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    with_cuda, why = _want_cuda(torch)
    debug = _flag("SMOOTHING_EXT_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fopenmp: at::parallel_for is an OpenMP construct compiled into this library; without the
    # flag it silently runs on one thread. The libgomp torch ships is the one that gets loaded.
    cxx = opt + ["-fvisibility=hidden", "-Wall", "-Wno-unused-function", "-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    sources = sorted(
        glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp"))
    )
    define_macros = [("SMOOTHING_EXT_VERSION", '"%s"' % VERSION)]
    kwargs = dict(extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"], include_dirs=include_dirs)
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            if not torch.cuda.is_available():
                # torch's helper cannot guess an architecture without a GPU.
                os.environ["TORCH_CUDA_ARCH_LIST"] = RELEASE_ARCHS
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        kwargs["extra_compile_args"]["nvcc"] = opt + ["-lineinfo", "--expt-relaxed-constexpr"]
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    print(
        "smoothing_ext build: torch %s (CUDA %s), CUDA kernels: %s (%s), archs: %s, CUDA_HOME: %s, %s"
        % (
            torch.__version__,
            torch.version.cuda,
            "yes" if with_cuda else "no",
            why,
            os.environ.get("TORCH_CUDA_ARCH_LIST", "-") if with_cuda else "-",
            os.environ.get("CUDA_HOME", "-"),
            "debug" if debug else "release",
        ),
        flush=True,
    )
    _write_build_info(torch, with_cuda, kwargs["extra_compile_args"], define_macros)
    return [ext_cls("smoothing_ext._C", sources, define_macros=define_macros, **kwargs)]


# ---- release metadata: local version label, torch pin, smoothing_ext/_build_info.py -------------
def _full_version() -> str:
    local = os.environ.get("SMOOTHING_EXT_LOCAL_VERSION", "").strip().lstrip("+")
    return VERSION + "+" + local if local else VERSION


def _torch_requirement() -> str:
    import torch

    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return "torch>=%d.%d,<%d.%d" % (major, minor, major, minor + 1)


def _write_build_info(torch, with_cuda: bool, compile_args: dict, define_macros: list) -> None:
    """What smoothing_ext/_version_check.py and `python -m smoothing_ext.info` read at run time."""
    nvcc_version = None
    if with_cuda:
        import re
        import subprocess

        from torch.utils.cpp_extension import CUDA_HOME

        out = subprocess.run([os.path.join(CUDA_HOME, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True).stdout
        m = re.search(r"release (\d+\.\d+)", out)
        nvcc_version = m.group(1) if m else None
    info = dict(
        version=_full_version(),
        torch_version=torch.__version__,
        torch_cuda_version=torch.version.cuda,
        with_cuda=with_cuda,
        cuda_version=torch.version.cuda if with_cuda else None,
        nvcc_version=nvcc_version,
        cuda_arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        cxx_flags=list(compile_args.get("cxx", [])),
        nvcc_flags=list(compile_args.get("nvcc", [])) if with_cuda else [],
        define_macros=["%s=%s" % m if m[1] is not None else m[0] for m in define_macros],
        python_version="%d.%d" % sys.version_info[:2],
    )
    lines = ['"""Generated by setup.py at build time (do not edit; git-ignored)."""\n']
    lines += ["%s = %r\n" % (k, v) for k, v in info.items()]
    path = os.path.join(ROOT, "smoothing_ext", "_build_info.py")
    text = "".join(lines)
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def _cmdclass():
    from torch.utils.cpp_extension import BuildExtension

    return {"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)}


setup(
    name="smoothing_ext",
    version=_full_version(),
    install_requires=[_torch_requirement()],
    packages=find_packages(include=["smoothing_ext", "smoothing_ext.*"]),
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
