"""Which torch `make` installs (scripts/pick_torch.py and the Makefile's use of it): CPU-only machines
get a CPU build of torch when the index has one, GPU machines the pinned CUDA build, existing venvs keep
theirs, and TORCH_VERSION= overrides. No network needed except for the one `make -n` case that asks
pip's configured index (its answer is checked for shape, not for a particular version)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import pick_torch  # noqa: E402

sys.path.pop(0)

LISTED = ["2.15.0", "2.14.1", "2.14.0", "2.13.0+cpu", "2.13.0", "2.12.1+cpu", "2.12.0"]


def test_pick():
    assert pick_torch.pick(LISTED, have_gpu=True, default="2.14.1") == "2.14.1"
    assert pick_torch.pick(LISTED, have_gpu=False, default="2.14.1") == "2.13.0+cpu"
    # never newer than the pinned default (the pip constraint caps torch there)
    assert pick_torch.pick(LISTED + ["2.15.0+cpu"], have_gpu=False, default="2.14.1") == "2.13.0+cpu"
    assert pick_torch.pick(LISTED + ["2.14.1+cpu"], have_gpu=False, default="2.14.1") == "2.14.1+cpu"
    # no CPU build listed, or no index answer: the default
    assert pick_torch.pick(["2.14.1", "2.13.0"], have_gpu=False, default="2.14.1") == "2.14.1"
    assert pick_torch.pick([], have_gpu=False, default="2.14.1") == "2.14.1"
    # an existing venv keeps its torch, GPU or not
    assert pick_torch.pick(LISTED, have_gpu=False, default="2.14.1", existing="2.14.1") == "2.14.1"
    assert pick_torch.pick(LISTED, have_gpu=True, default="2.14.1", existing="2.13.0+cpu") == "2.13.0+cpu"


def test_venv_stamp(tmp_path):
    assert pick_torch.venv_torch(str(tmp_path / "missing")) is None
    assert pick_torch.venv_torch(str(tmp_path)) is None
    (tmp_path / ".deps-2.14.1").touch()  # the stamp of older Makefiles
    assert pick_torch.venv_torch(str(tmp_path)) == "2.14.1"
    newer = tmp_path / ".deps-2.13.0+cpu-3"
    newer.touch()
    os.utime(newer, (os.path.getmtime(tmp_path / ".deps-2.14.1") + 10,) * 2)
    assert pick_torch.venv_torch(str(tmp_path)) == "2.13.0+cpu"


def _make_n(tmp_path, *args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    r = subprocess.run(["make", "-n", "-C", ROOT, "venv", "VENV=%s" % (tmp_path / "venv"), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if '"torch==' in ln]
    return line


def test_makefile_gpu_machine_gets_the_pinned_cuda_torch(tmp_path):
    line = _make_n(tmp_path, "HAVE_GPU=1")
    assert '"torch==2.14.1"' in line and "nvidia-cuda-cuobjdump" in line


def test_makefile_torch_version_overrides(tmp_path):
    line = _make_n(tmp_path, "HAVE_GPU=0", "TORCH_VERSION=2.13.0+cpu")
    assert '"torch==2.13.0+cpu"' in line and "nvidia-cuda-cuobjdump" not in line


def test_makefile_cpu_machine(tmp_path):
    line = _make_n(tmp_path, "HAVE_GPU=0")
    version = re.search(r'"torch==([^"]+)"', line).group(1)
    # whatever the configured index offers: a CPU build of torch (then no CUDA tools), or the default
    assert version.endswith("+cpu") or version == "2.14.1", line
    assert ("nvidia-cuda-cuobjdump" in line) == (not version.endswith("+cpu")), line
