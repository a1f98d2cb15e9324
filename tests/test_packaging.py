"""Release packaging: build the wheels with packaging/build_wheel.sh, check their contents and
metadata, install each into a fresh virtual environment outside the source tree and smoke-test it.

The wheels are built with the interpreter running the tests (USE_CURRENT_ENV=1: its torch is the
one the wheel is built against). The fresh venv gets that same torch through a .pth file instead of
a second 5.5 GB install (about a minute): it has no smoothing_ext, no source tree on its path, and
pip must find the wheel's `torch>=X.Y,<X.Y+1` requirement satisfied with --no-index. Set
SMOOTHING_EXT_SMOKE_FULL_VENV=1 to install torch into the fresh venv from the package index instead.

    python -m pytest tests/test_packaging.py -m slow -rs        # ~4-5 min on 2 cores (MAX_JOBS=2)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_WHEEL = ROOT / "packaging" / "build_wheel.sh"
sys.path.insert(0, str(ROOT / "packaging"))
import check_wheel  # noqa: E402

sys.path.pop(0)

CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")
# The cu130 wheel is built in the tree of tests/test_cuda_build.py's CUDA build (BUILD_TREE), with its
# archs: ninja finds every object current and only the link runs, instead of compiling the CUDA
# sources a second time. What is tested is the packaging of that build (the compile is tested there).
CU130_ARCHS = "7.5;8.0;9.0+PTX"


def _torch():
    try:
        import torch
    except ImportError:  # pragma: no cover
        return None
    return torch


def _torch_minor() -> str:
    return ".".join(_torch().__version__.split("+")[0].split(".")[:2])


def _torch_version() -> str:
    return _torch().__version__.split("+")[0]


def _run(cmd, *, env=None, cwd=None, timeout=900) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(
            "command failed (%d): %s\n--- stdout (tail) ---\n%s\n--- stderr (tail) ---\n%s"
            % (r.returncode, " ".join(map(str, cmd)), r.stdout[-4000:], r.stderr[-8000:])
        )
    return r


def _build_env(**extra) -> dict:
    env = dict(os.environ)
    for k in ("FORCE_CPU", "FORCE_CUDA", "TORCH_CUDA_ARCH_LIST", "SMOOTHING_EXT_LOCAL_VERSION", "SMOOTHING_EXT_DEBUG"):
        env.pop(k, None)
    env.update(USE_CURRENT_ENV="1", PYTHON=sys.executable, MAX_JOBS=env.get("MAX_JOBS", "2"))
    # `python` on PATH must not matter: build_wheel.sh uses $PYTHON.
    env.update(extra)
    return env


def build_wheel(platform: str, out_dir: Path, **extra_env) -> Path:
    r = _run(["bash", BUILD_WHEEL, platform, _torch_version()], env=_build_env(OUT_DIR=str(out_dir), **extra_env))
    wheel = Path(r.stdout.strip().splitlines()[-1])
    assert wheel.is_file(), r.stdout
    print(r.stderr[-3000:])  # the check_wheel.py report, shown with -s or on failure
    return wheel


class FreshVenv:
    """A new venv outside the source tree with only the built wheel (and torch) installed."""

    def __init__(self, path: Path):
        self.path = path
        self.python = path / "bin" / "python"
        if os.environ.get("SMOOTHING_EXT_SMOKE_FULL_VENV") == "1":
            _run([sys.executable, "-m", "venv", path])
            _run([self.python, "-m", "pip", "install", "-q", "torch==%s" % _torch_version()])
            self.pip = [self.python, "-m", "pip"]
            self.no_index = False
        else:
            # No pip or setuptools of its own (their old copies would shadow what torch requires);
            # the test interpreter's pip installs into it (pip --python). It shares the test
            # interpreter's torch (and its dependencies) through a .pth file.
            _run([sys.executable, "-m", "venv", "--without-pip", path])
            site = Path(_run([self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
            torch_site = Path(_torch().__file__).resolve().parents[1]
            (site / "_smoothing_ext_test_torch.pth").write_text(str(torch_site) + "\n")
            self.pip = [sys.executable, "-m", "pip", "--python", self.python]
            self.no_index = True
        self.cwd = path  # run everything from inside the venv: no source tree on sys.path

    def install(self, wheel: Path) -> None:
        cmd = [*self.pip, "install", "-q"] + (["--no-index"] if self.no_index else []) + [wheel]
        _run(cmd, cwd=self.cwd)

    def run(self, *args: str, env=None) -> subprocess.CompletedProcess:
        return _run([self.python, *args], cwd=self.cwd, env=env)


SMOKE = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.nn.functional as F
    import smoothing_ext

    here = os.path.dirname(os.path.abspath(smoothing_ext.__file__))
    assert here.startswith(sys.prefix), ("smoothing_ext imported from outside the venv", here, sys.prefix)
    torch.manual_seed(0)
    x = torch.randn(16, 37, dtype=torch.float32, requires_grad=True)
    t = torch.randint(0, 37, (16,))
    t[3] = -100
    w = torch.rand(37) + 0.5
    out = {}
    for kw in ({}, {"weight": w}):
        x.grad = None
        loss = smoothing_ext.cross_entropy(x, t, label_smoothing=0.1, **kw)
        loss.backward()
        g = x.grad.clone()
        x.grad = None
        ref = F.cross_entropy(x, t, label_smoothing=0.1, **kw)
        ref.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, x.grad, rtol=1e-5, atol=1e-6)
    # the op itself, per element
    l, lse = torch.ops.smoothing_ext.cross_entropy_forward(x.detach(), t, None, -100, 0.1)
    torch.testing.assert_close(l, F.cross_entropy(x.detach(), t, reduction="none", label_smoothing=0.1))
    print(json.dumps({"file": here, "version": smoothing_ext.__version__, "loss": float(loss)}))
    """
)

MISMATCH = textwrap.dedent(
    """
    import sys, torch
    torch.__version__ = sys.argv[1]            # pretend another torch is installed
    torch.version.cuda = None if sys.argv[2] == "None" else sys.argv[2]
    try:
        import smoothing_ext
    except ImportError as e:
        print("IMPORT_ERROR:" + str(e))
    else:
        print("IMPORTED")
    """
)


def smoke_test(venv: FreshVenv, wheel: Path, platform: str) -> None:
    venv.install(wheel)
    label = "+%storch%s" % (platform, _torch_minor())

    r = venv.run("-c", SMOKE)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert str(venv.path) in res["file"]

    r = venv.run("-m", "smoothing_ext.info")
    assert label in r.stdout and "compatible    : yes" in r.stdout, r.stdout
    info = json.loads(venv.run("-m", "smoothing_ext.info", "--json").stdout)
    assert info["smoothing_ext"].endswith(label)
    assert info["loaded"] and all(info["ops"].values()), info
    assert info["build"]["with_cuda"] == (platform != "cpu")
    assert info["runtime"]["compatible"] is True

    # Another torch minor (or, for CUDA wheels, a CPU torch / another CUDA major): a clear ImportError.
    major, minor = (int(v) for v in _torch_minor().split("."))
    cases = [("%d.%d.0" % (major, minor + 1), _torch().version.cuda)]
    if platform != "cpu":
        cases += [(_torch_version(), "None"), (_torch_version(), "12.8")]
    for fake_version, fake_cuda in cases:
        out = venv.run("-c", MISMATCH, fake_version, str(fake_cuda)).stdout
        assert out.startswith("IMPORT_ERROR:"), (
            "importing under torch %s / CUDA %s did not raise: is smoothing_ext/__init__.py calling "
            "_version_check.check_torch_compat()? output: %s" % (fake_version, fake_cuda, out)
        )
        assert "pip install" in out, out


# ---------------------------------------------------------------------------------------------------
# fast: the version-mismatch logic as a pure function
# ---------------------------------------------------------------------------------------------------
def _load_version_check():
    path = ROOT / "smoothing_ext" / "_version_check.py"
    mod = types.ModuleType("_se_version_check_under_test")
    exec(compile(path.read_text(), str(path), "exec"), mod.__dict__)
    return mod


def _info(**kw):
    base = dict(version="0.1.0+cu130torch2.14", torch_version="2.14.1+cu130", torch_cuda_version="13.0",
                with_cuda=True, cuda_version="13.0", cuda_arch_list="8.0;9.0+PTX")
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_version_check_messages():
    vc = _load_version_check()
    cu = _info()
    cpu = _info(version="0.1.0+cputorch2.14", with_cuda=False, cuda_version=None, cuda_arch_list=None)
    assert vc.mismatch("2.14.0", "13.0", cu) is None
    assert vc.mismatch("2.14.1+cu130", "13.2", cu) is None          # same CUDA major
    assert vc.mismatch("2.14.1+cpu", None, cpu) is None
    assert vc.mismatch("2.14.1+cu126", "12.6", cpu) is None          # CPU build under any 2.14 variant

    msg = vc.mismatch("2.15.0", "13.0", cu)
    assert "torch 2.15.0 is installed" in msg and "torch==2.14.*" in msg and "whl/cu130" in msg
    msg = vc.mismatch("2.13.0+cpu", None, cpu)
    assert "torch==2.14.*" in msg and "whl/cpu" in msg and "+cputorch2.13" in msg
    msg = vc.mismatch("2.14.1+cpu", None, cu)
    assert "CPU-only build" in msg and "+cputorch2.14" in msg and "whl/cu130" in msg
    msg = vc.mismatch("2.14.1+cu126", "12.6", cu)
    assert "CUDA 12.6" in msg and "CUDA 13 runtime" in msg and "+cu126torch2.14" in msg


def test_arch_list_parsing():
    assert check_wheel.arch_list("8.0;9.0+PTX") == (["sm_80", "sm_90"], ["compute_90"])
    assert check_wheel.arch_list("8.0 8.6;12.0+PTX") == (["sm_80", "sm_86", "sm_120"], ["compute_120"])


def _cuda_build_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_cuda_build", ROOT / "tests" / "test_cuda_build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cu130_wheel_build_is_the_cached_cuda_build():
    """The cu130 wheel is built in the test suite's CUDA build tree, with its archs."""
    assert _cuda_build_module().ARCHS == CU130_ARCHS
    assert {"sm_80", "sm_90"} <= set(check_wheel.arch_list(CU130_ARCHS)[0])


# ---------------------------------------------------------------------------------------------------
# slow: real builds
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("packaging")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _skip_without_build_tools():
    if _torch() is None:
        pytest.skip("torch is not installed in the test environment")
    for mod in ("setuptools", "wheel"):
        try:
            __import__(mod)
        except ImportError:
            pytest.skip("%s is not installed in the test environment (needed for --no-build-isolation)" % mod)


@pytest.mark.slow
def test_cpu_wheel(workdir):
    _skip_without_build_tools()
    wheel = build_wheel("cpu", workdir / "dist-cpu")
    failures = check_wheel.check(str(wheel), "cpu", _torch_minor(), None, None, False)
    assert not failures
    smoke_test(FreshVenv(workdir / "venv-cpu"), wheel, "cpu")


@pytest.mark.slow
def test_cu130_wheel(workdir):
    _skip_without_build_tools()
    torch = _torch()
    if not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        pytest.skip("no nvcc in CUDA_HOME=%s: the cu130 wheel cannot be compiled here" % CUDA_HOME)
    if torch.version.cuda != "13.0":
        pytest.skip("the test environment's torch %s is not a CUDA 13.0 build: cannot build the cu130 wheel"
                    % torch.__version__)
    assert list((ROOT / "csrc" / "cuda").glob("*.cu")), "csrc/cuda/ has no .cu sources"
    cuobjdump = check_wheel.find_cuobjdump()
    assert cuobjdump, "cuobjdump not found: pip install nvidia-cuda-cuobjdump (needed to check the architectures)"
    cuda_build = _cuda_build_module()
    if cuda_build._skip_reason():
        pytest.skip(cuda_build._skip_reason())
    tree = cuda_build.cached_build(CU130_ARCHS)["tree"]
    wheel = build_wheel("cu130", workdir / "dist-cu130", TORCH_CUDA_ARCH_LIST=CU130_ARCHS, CUDA_HOME=CUDA_HOME,
                        BUILD_TREE=tree)
    failures = check_wheel.check(str(wheel), "cu130", _torch_minor(), CU130_ARCHS, cuobjdump, True)
    assert not failures
    # The bar: sm_80 and sm_90 code in the library.
    so = workdir / "cu130-so"
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        lib = [n for n in z.namelist() if n.endswith(".so")][0]
        path = z.extract(lib, so)
    elf = _run([cuobjdump, "--list-elf", path]).stdout
    assert "sm_80" in elf and "sm_90" in elf, elf
    smoke_test(FreshVenv(workdir / "venv-cu130"), wheel, "cu130")
