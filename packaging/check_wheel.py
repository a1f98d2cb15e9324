"""Check a built smoothing_ext wheel before it is published (run by packaging/build_wheel.sh and
tests/test_packaging.py).

    python packaging/check_wheel.py WHEEL --platform cu130 --torch 2.14 [--archs "8.0;9.0+PTX"]
                                          [--cuobjdump PATH | --require-cuobjdump]

Checks: version = <base>+<platform>torch<X.Y> in the file name and METADATA; Requires-Dist pins
torch to that minor; contents are the Python package, one compiled _C and _build_info.py and
nothing else (no .o, build directories, sources, tests, or copies of torch / CUDA libraries);
_build_info agrees with the platform; for CUDA wheels, `cuobjdump --list-elf` shows SASS for every
architecture of the list (and --list-ptx the PTX of a "+PTX" one). cuobjdump is looked up on PATH,
in $CUDA_HOME/bin and in the nvidia-cuda-cuobjdump PyPI package; without it that part is skipped
(reported), unless --require-cuobjdump.
"""

from __future__ import annotations

import argparse
import email.parser
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile

# Libraries that must come from the torch installation, never from this wheel.
FORBIDDEN_LIBS = re.compile(
    r"(^|/)(libtorch\w*|libc10\w*|libcaffe2\w*|libshm|libgomp[\w-]*|libcuda\w*|libcudart\w*|libcublas\w*"
    r"|libnvrtc\w*|libnvToolsExt\w*|libcudnn\w*|libnccl\w*)\.so"
)
BUILD_LEFTOVERS = re.compile(
    r"(\.o|\.obj|\.a|\.ninja_deps|\.ninja_log|build\.ninja|\.cpp|\.cu|\.cuh|\.h|\.pyc)$"
    r"|(^|/)(build|temp\.[^/]*|lib\.[^/]*|__pycache__|csrc|tests)/"
)


def find_cuobjdump() -> str | None:
    candidates = [shutil.which("cuobjdump")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "cuobjdump"))
    purelib = sysconfig.get_paths()["purelib"]
    candidates += sorted(glob.glob(os.path.join(purelib, "nvidia", "*", "bin", "cuobjdump")))
    candidates += sorted(glob.glob(os.path.join(purelib, "nvidia", "cuda_cuobjdump", "bin", "cuobjdump")))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def arch_list(archs: str) -> tuple[list[str], list[str]]:
    """"8.0;9.0+PTX" -> (["sm_80", "sm_90"], ["compute_90"])."""
    sass, ptx = [], []
    for a in re.split(r"[;\s]+", archs.strip()):
        if not a:
            continue
        base = a.replace("+PTX", "")
        code = base.replace(".", "")
        sass.append("sm_" + code)
        if a.endswith("+PTX"):
            ptx.append("compute_" + code)
    return sass, ptx


class Checker:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def ok(self, cond: bool, what: str) -> None:
        print(("  ok    " if cond else "  FAIL  ") + what)
        if not cond:
            self.failures.append(what)


def check(wheel: str, platform: str, torch_minor: str, archs: str | None, cuobjdump: str | None,
          require_cuobjdump: bool) -> list[str]:
    c = Checker()
    print("checking %s" % wheel)
    name = os.path.basename(wheel)
    label = "%storch%s" % (platform, torch_minor)
    m = re.match(r"smoothing_ext-([^-]+)-", name)
    file_version = m.group(1) if m else ""
    c.ok(file_version.endswith("+" + label), "file name version %s has the label +%s" % (file_version, label))

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = [n for n in names if re.match(r"smoothing_ext-[^/]+\.dist-info/METADATA$", n)]
        c.ok(len(dist_info) == 1, "one METADATA")
        meta = email.parser.Parser().parsestr(z.read(dist_info[0]).decode()) if dist_info else {}
        build_info_src = z.read("smoothing_ext/_build_info.py").decode() if "smoothing_ext/_build_info.py" in names else None
        so_names = [n for n in names if n.endswith(".so") or ".so." in n]
        tmp = tempfile.mkdtemp()
        try:
            sos = [z.extract(n, tmp) for n in so_names]
            _check_contents(c, names, so_names)
            _check_metadata(c, meta, file_version, torch_minor)
            _check_build_info(c, build_info_src, platform, file_version, archs)
            if platform != "cpu" and archs:
                _check_archs(c, sos, archs, cuobjdump, require_cuobjdump)
            _check_needed(c, sos, platform)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print("%s: %s" % (name, "OK" if not c.failures else "%d check(s) FAILED" % len(c.failures)))
    return c.failures


def _check_contents(c: Checker, names: list[str], so_names: list[str]) -> None:
    c.ok(len(so_names) == 1 and re.match(r"smoothing_ext/_C(\.[\w-]+)?\.so$", so_names[0]) is not None,
         "exactly one compiled library, smoothing_ext/_C*.so (found %s)" % so_names)
    bad = [n for n in names if FORBIDDEN_LIBS.search(n)]
    c.ok(not bad, "no copy of torch/CUDA libraries %s" % (bad or ""))
    left = [n for n in names if BUILD_LEFTOVERS.search(n)]
    c.ok(not left, "no build leftovers, sources or tests %s" % (left or ""))
    outside = [n for n in names if not (n.startswith("smoothing_ext/") or re.match(r"smoothing_ext-[^/]+\.dist-info/", n))]
    c.ok(not outside, "only smoothing_ext/ and its dist-info %s" % (outside or ""))
    c.ok("smoothing_ext/__init__.py" in names and "smoothing_ext/info.py" in names
         and "smoothing_ext/_version_check.py" in names and "smoothing_ext/_build_info.py" in names,
         "package modules present (__init__, info, _version_check, _build_info)")


def _check_metadata(c: Checker, meta, file_version: str, torch_minor: str) -> None:
    c.ok(meta.get("Version") == file_version, "METADATA Version %s == file name version" % meta.get("Version"))
    reqs = (meta.get_all("Requires-Dist") or []) if meta else []
    torch_reqs = [r for r in reqs if re.match(r"torch\b", r) and "extra ==" not in r]
    major, minor = (int(x) for x in torch_minor.split("."))
    pinned = False
    if len(torch_reqs) == 1:
        try:
            from packaging.requirements import Requirement
            from packaging.version import Version

            spec = Requirement(torch_reqs[0]).specifier
            pinned = (
                spec.contains(Version("%d.%d.0" % (major, minor)))
                and spec.contains(Version("%d.%d.9" % (major, minor)))
                and not spec.contains(Version("%d.%d.0" % (major, minor + 1)))
                and not spec.contains(Version("%d.%d.99" % (major, minor - 1)))
            )
        except ImportError:  # no `packaging`: compare the text
            pinned = set(re.sub(r"^torch\s*", "", torch_reqs[0]).replace(" ", "").split(",")) == {
                ">=%d.%d" % (major, minor), "<%d.%d" % (major, minor + 1)}
    c.ok(pinned, "Requires-Dist pins torch %s.x: %s" % (torch_minor, torch_reqs))


def _check_build_info(c: Checker, src: str | None, platform: str, file_version: str, archs: str | None) -> None:
    if src is None:
        c.ok(False, "_build_info.py present")
        return
    info: dict = {}
    exec(compile(src, "_build_info.py", "exec"), {}, info)
    c.ok(info.get("version") == file_version, "_build_info.version %s == wheel version" % info.get("version"))
    if platform == "cpu":
        c.ok(info.get("with_cuda") is False, "_build_info: CPU-only build")
    else:
        want = "%s.%s" % (platform[2:-1], platform[-1])
        c.ok(info.get("with_cuda") is True and info.get("cuda_version") == want,
             "_build_info: CUDA %s build (with_cuda=%s, cuda_version=%s)" % (want, info.get("with_cuda"),
                                                                             info.get("cuda_version")))
        if archs:
            c.ok(info.get("cuda_arch_list") == archs, "_build_info.cuda_arch_list %r" % info.get("cuda_arch_list"))


def _check_archs(c: Checker, sos: list[str], archs: str, cuobjdump: str | None, require: bool) -> None:
    cuobjdump = cuobjdump or find_cuobjdump()
    if cuobjdump is None:
        msg = "cuobjdump not found (pip install nvidia-cuda-cuobjdump): architectures not checked"
        if require:
            c.ok(False, msg)
        else:
            print("  SKIP  " + msg)
        return
    sass, ptx = arch_list(archs)
    for so in sos:
        elf = subprocess.run([cuobjdump, "--list-elf", so], capture_output=True, text=True)
        found = sorted(set(re.findall(r"\bsm_\d+[a-z]?\b", elf.stdout)))
        c.ok(elf.returncode == 0 and all(a in found for a in sass),
             "cuobjdump --list-elf: SASS for %s (found %s)" % (", ".join(sass), ", ".join(found)))
        if ptx:
            out = subprocess.run([cuobjdump, "--list-ptx", so], capture_output=True, text=True).stdout
            found_ptx = sorted(set(re.findall(r"\bsm_\d+[a-z]?\b|\bcompute_\d+[a-z]?\b", out)))
            c.ok(all(p in out or p.replace("compute_", "sm_") in out for p in ptx),
                 "cuobjdump --list-ptx: PTX for %s (found %s)" % (", ".join(ptx), ", ".join(found_ptx)))


def _check_needed(c: Checker, sos: list[str], platform: str) -> None:
    readelf = shutil.which("readelf")
    if readelf is None:
        print("  SKIP  readelf not found: dynamic dependencies not checked")
        return
    for so in sos:
        out = subprocess.run([readelf, "-d", so], capture_output=True, text=True).stdout
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
        rpath = re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library \w+: \[([^\]]*)\]", out)
        c.ok(not rpath, "no RPATH/RUNPATH into the build machine %s" % (rpath or ""))
        if platform == "cpu":
            cuda = [n for n in needed if re.match(r"lib(cudart|c10_cuda|torch_cuda)", n)]
            c.ok(not cuda, "CPU wheel needs no CUDA library %s" % (cuda or ""))
        else:
            c.ok(any(n.startswith("libc10_cuda") for n in needed), "CUDA wheel links libc10_cuda (NEEDED %s)" % needed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("wheel")
    p.add_argument("--platform", required=True, choices=["cpu", "cu126", "cu128", "cu130"])
    p.add_argument("--torch", required=True, help="torch minor the wheel was built against, e.g. 2.14")
    p.add_argument("--archs", default=None, help="TORCH_CUDA_ARCH_LIST it was built with")
    p.add_argument("--cuobjdump", default=None)
    p.add_argument("--require-cuobjdump", action="store_true")
    a = p.parse_args(argv)
    failures = check(a.wheel, a.platform, a.torch, a.archs, a.cuobjdump, a.require_cuobjdump)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
