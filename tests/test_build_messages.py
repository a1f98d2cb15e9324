"""setup.py refuses to build without ninja (torch's helper would silently compile one file at a time)
and says what to install; nothing is compiled before it says so.

Runs setup.py from a copy of the build inputs with an interpreter that cannot see any ninja: no
site-packages processing (`-S`, so no .pth files), the `ninja` Python package blocked, the
interpreter reached through a symlink in a directory without a ninja binary, and PATH pointing only
there. Nothing is compiled, so this takes seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _tree_without_ninja(tmp_path: Path) -> tuple[Path, dict, list[str]]:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "setup.py", src / "setup.py")
    shutil.copytree(ROOT / "csrc", src / "csrc")
    shutil.copytree(ROOT / "smoothing_ext", src / "smoothing_ext",
                    ignore=shutil.ignore_patterns("*.so", "_build_info.py", "__pycache__"))
    block = tmp_path / "block"
    block.mkdir()
    (block / "ninja.py").write_text("raise ImportError('ninja is hidden from this test')\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    python = bindir / "python"
    python.symlink_to(os.path.realpath(sys.executable))
    torch_site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SMOOTHING_EXT_NO_NINJA", "MAX_JOBS")}
    env.update(PATH=str(bindir), PYTHONPATH=os.pathsep.join([str(block), torch_site]), FORCE_CPU="1")
    return src, env, [str(python), "-S", "setup.py", "build_ext", "--inplace"]


def test_build_without_ninja_fails_early_and_says_pip_install_ninja(tmp_path):
    src, env, cmd = _tree_without_ninja(tmp_path)
    r = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    assert "ninja was not found" in out and "pip install ninja" in out and "SMOOTHING_EXT_NO_NINJA=1" in out, out[-3000:]
    # the configuration is still reported, and nothing was compiled before the refusal
    assert "smoothing_ext build: torch %s" % torch.__version__ in out, out[-3000:]
    assert not list(src.rglob("*.o")) and not list(src.rglob("_C*.so"))


def test_ninja_next_to_the_interpreter_is_found(tmp_path):
    """`.venv/bin/pip install ...` without activating the venv: ninja sits next to the interpreter,
    not on PATH; setup.py puts that directory on PATH for torch's helper (checked without building:
    setuptools.setup is replaced by a no-op)."""
    src, env, cmd = _tree_without_ninja(tmp_path)
    real = shutil.which("ninja") or os.path.join(os.path.dirname(sys.executable), "ninja")
    if not os.access(real, os.X_OK):
        import pytest

        pytest.skip("no ninja binary in the test environment to place next to the interpreter")
    bindir = Path(cmd[0]).parent
    os.symlink(real, bindir / "ninja")
    empty = tmp_path / "empty"
    empty.mkdir()
    env["PATH"] = str(empty)  # ninja only next to the interpreter
    probe = (
        "import runpy, shutil, setuptools; setuptools.setup = lambda **kw: None; "
        "runpy.run_path('setup.py'); print('NINJA', shutil.which('ninja'))"
    )
    r = subprocess.run([cmd[0], "-S", "-c", probe], cwd=src, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "NINJA %s" % (bindir / "ninja") in r.stdout, r.stdout
