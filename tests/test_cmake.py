"""The CMake / LibTorch build: configure, build and ctest the top-level CMakeLists.txt in a temporary
directory against the test environment's torch, install it, then build and run a downstream
project that uses the installed package (find_package(smoothing_ext)). Keeps the CMake build and
setup.py from drifting apart.

    python -m pytest tests/test_cmake.py -m slow -rs      # ~2.5 min on 2 cores

CPU only (what CI runs). SMOOTHING_EXT_WITH_CUDA=ON is not built here: see docs/install.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, *, env=None, cwd=None, timeout=900) -> str:
    r = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    if r.returncode != 0:
        raise AssertionError("command failed (%d): %s\n%s" % (r.returncode, " ".join(map(str, cmd)), out[-12000:]))
    return out


def _tools():
    try:
        import torch
    except ImportError:  # pragma: no cover
        pytest.skip("torch is not installed in the test environment")
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    ninja = shutil.which("ninja") or (
        os.path.join(os.path.dirname(sys.executable), "ninja")
        if os.path.exists(os.path.join(os.path.dirname(sys.executable), "ninja"))
        else None
    )
    return torch, cmake, ninja


def _configure_args(torch, ninja) -> list[str]:
    args = ["-DCMAKE_PREFIX_PATH=%s" % torch.utils.cmake_prefix_path, "-DCMAKE_BUILD_TYPE=Release"]
    if ninja:
        args += ["-G", "Ninja", "-DCMAKE_MAKE_PROGRAM=%s" % ninja]
    return args


@pytest.mark.slow
def test_cmake_build_ctest_install_and_consume(tmp_path):
    torch, cmake, ninja = _tools()
    env = dict(os.environ)
    env.setdefault("CUDA_HOME", "/usr/local/cuda")  # torch's CMake config of a CUDA torch needs a toolkit
    jobs = env.get("MAX_JOBS", "2")
    build, prefix = tmp_path / "build", tmp_path / "install"

    _run([cmake, "-S", ROOT, "-B", build, *_configure_args(torch, ninja)], env=env)
    _run([cmake, "--build", build, "-j", jobs], env=env)
    out = _run(["ctest", "--test-dir", build, "--output-on-failure"], env=env)
    assert "100% tests passed" in out, out
    print(out)

    _run([cmake, "--install", build, "--prefix", prefix], env=env)
    libdir = next(d for d in (prefix / "lib", prefix / "lib64") if d.is_dir())
    assert (libdir / "libsmoothing_ext.so").exists()
    assert (prefix / "include" / "smoothing_ext" / "xent_math.h").exists()
    assert (libdir / "cmake" / "smoothing_ext" / "smoothing_extConfig.cmake").exists()
    assert (libdir / "cmake" / "smoothing_ext" / "smoothing_extTargets.cmake").exists()

    # A downstream project against the installed package (prefix first, then torch).
    consumer = tmp_path / "consumer"
    args = _configure_args(torch, ninja)
    args[0] = "-DCMAKE_PREFIX_PATH=%s;%s" % (prefix, torch.utils.cmake_prefix_path)
    _run([cmake, "-S", ROOT / "tests" / "cpp" / "consumer", "-B", consumer, *args], env=env)
    _run([cmake, "--build", consumer, "-j", jobs], env=env)
    out = _run(["ctest", "--test-dir", consumer, "--output-on-failure"], env=env)
    assert "100% tests passed" in out, out
