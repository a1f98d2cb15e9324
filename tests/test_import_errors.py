"""What `import smoothing_ext` says when it cannot load the compiled extension.

The cases are built in a temporary directory from copies of the package and imported in a fresh
interpreter, so nothing here depends on how the test environment itself was installed:

- an unbuilt source checkout (setup.py and csrc/ next to a package without `_C`) that shadows an
  installed copy: the message names both and says how to get the installed one (cd elsewhere,
  `python -P`, or an editable install), and `python -P` from the same directory then really imports
  the installed copy;
- an unbuilt checkout with nothing installed: build it in place;
- an installed copy whose build info names another torch minor: the torch-mismatch message of
  `_version_check.py` is kept.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import smoothing_ext

PKG = Path(smoothing_ext.__file__).resolve().parent


def _copy_package(dest: Path, *, with_c: bool) -> Path:
    """A copy of the Python sources of the package (and the compiled `_C` if with_c) at dest/smoothing_ext."""
    pkg = dest / "smoothing_ext"
    pkg.mkdir(parents=True)
    for f in PKG.glob("*.py"):
        if f.name != "_build_info.py":
            shutil.copy(f, pkg / f.name)
    if with_c:
        libs = glob.glob(str(PKG / "_C*.so"))
        assert libs, "the test environment's smoothing_ext has no compiled _C next to it"
        for lib in libs:
            shutil.copy(lib, pkg / os.path.basename(lib))
        if (PKG / "_build_info.py").exists():
            shutil.copy(PKG / "_build_info.py", pkg / "_build_info.py")
    return pkg


def _source_checkout(dest: Path) -> Path:
    """dest laid out like the repository root, with an unbuilt package."""
    (dest / "csrc").mkdir(parents=True)
    (dest / "setup.py").write_text("# stand-in for the repository's setup.py\n")
    _copy_package(dest, with_c=False)
    return dest


def _python(args: list[str], cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    """Run the test interpreter with `-S`: no site-packages processing, so no .pth file (an editable
    install's import hook would resolve smoothing_ext._C to the tree under test whatever shadows it);
    torch comes from its own directory, after `pythonpath`."""
    import torch

    torch_site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), torch_site])
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_unbuilt_checkout_shadowing_an_install_says_how_to_get_the_install(tmp_path):
    site = tmp_path / "site"
    installed = _copy_package(site, with_c=True)
    repo = _source_checkout(tmp_path / "repo")

    r = _python(["-c", "import smoothing_ext"], cwd=repo, pythonpath=site)
    assert r.returncode != 0
    err = r.stderr
    assert "ImportError" in err and "source checkout at %s" % repo in err, err
    assert "shadows the installed smoothing_ext in %s" % installed in err, err
    assert "python -P" in err and "cd elsewhere" in err and "pip install -v --no-build-isolation -e ." in err, err
    assert "reinstall" not in err, err  # the advice that cannot help

    # The advice works: -P keeps the checkout off sys.path, and the installed copy loads and computes.
    check = (
        "import smoothing_ext, torch, torch.nn.functional as F; print(smoothing_ext.__file__); "
        "x = torch.randn(4, 7, dtype=torch.float64); t = torch.tensor([0, 3, 6, 2]); "
        "a = smoothing_ext.cross_entropy(x, t, label_smoothing=0.1); b = F.cross_entropy(x, t, label_smoothing=0.1); "
        "torch.testing.assert_close(a, b); print('ok')"
    )
    r = _python(["-P", "-c", check], cwd=repo, pythonpath=site)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[0] == str(installed / "__init__.py") and r.stdout.split()[-1] == "ok", r.stdout
    # and so does running from another directory
    r = _python(["-c", check], cwd=tmp_path, pythonpath=site)
    assert r.returncode == 0 and r.stdout.split()[0] == str(installed / "__init__.py"), r.stderr[-3000:]


def test_unbuilt_checkout_without_an_install_says_build_it(tmp_path):
    # `import smoothing_ext` in the test environment always finds an installed copy (the one under
    # test), so the no-install branch is checked on the message function itself.
    repo = _source_checkout(tmp_path / "repo")
    msg = smoothing_ext._source_tree_message(str(repo / "smoothing_ext"), None)
    assert "source checkout at %s" % repo in msg
    assert "has not been built" in msg and "cd %s && pip install -v --no-build-isolation -e ." % repo in msg
    assert "shadows" not in msg


def test_detection_helpers(tmp_path):
    repo = _source_checkout(tmp_path / "repo")
    assert not smoothing_ext._has_compiled_extension(str(repo / "smoothing_ext"))
    assert smoothing_ext._looks_like_source_checkout(str(repo / "smoothing_ext"))
    installed = _copy_package(tmp_path / "site", with_c=True)
    assert smoothing_ext._has_compiled_extension(str(installed))
    assert not smoothing_ext._looks_like_source_checkout(str(installed))  # no setup.py/csrc next to it


def test_installed_copy_built_for_another_torch_keeps_the_mismatch_message(tmp_path):
    site = tmp_path / "site"
    installed = _copy_package(site, with_c=True)
    import torch

    major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    other = "%d.%d.0" % (major, minor - 1)
    # what setup.py writes for a CPU-only build, made for the previous torch minor
    (installed / "_build_info.py").write_text(
        "version = '0.1.0'\ntorch_version = %r\ntorch_cuda_version = None\nwith_cuda = False\n"
        "cuda_version = None\nnvcc_version = None\ncuda_arch_list = None\ncxx11_abi = True\n"
        "cxx_flags = []\nnvcc_flags = []\ndefine_macros = []\npython_version = '3.11'\n" % other
    )

    r = _python(["-c", "import smoothing_ext"], cwd=tmp_path, pythonpath=site)
    assert r.returncode != 0
    assert "built against torch %s" % other in r.stderr, r.stderr
    assert "pip install 'torch==%d.%d.*'" % (major, minor - 1) in r.stderr, r.stderr
    assert "source checkout" not in r.stderr
