"""Build the CUDA extension for sm_75, sm_80 and sm_90 (+PTX) without a GPU, and record the GPU-health
numbers a build can give: registers per thread, spill stores/loads (must be 0), stack, static shared
memory per kernel and architecture (ptxas -v), and the theoretical occupancy that follows for the launch
configuration each kernel is used with. sm_75 is the oldest architecture of the release list, sm_90 the
one the GPU checks run on. One build (~4-6 min on 2 cores, most of it the CPU kernel files) shared by
every check here and by the dry run of scripts/gpu_verify.sh (tests/test_gpu_verify.py): cached_build()
keeps it under the temp dir, keyed by a hash of the tree, torch, the toolkit and the flags.

Selected with `-m cuda_build`; skipped with the reason when nvcc, a CUDA build of torch or cuobjdump
(PyPI: nvidia-cuda-cuobjdump) is missing. Environment:
  CUDA_HOME (default /usr/local/cuda), MAX_JOBS (default 2),
  SMOOTHING_EXT_RESOURCE_REPORT  where the table goes (default <repo>/build/cuda_resource_usage.md)
  SMOOTHING_EXT_CUDA_BUILD_CACHE where the cached build lives (default <tmp>/smoothing_ext_cuda_build_<uid>)
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = "7.5;8.0;9.0+PTX"

pytestmark = pytest.mark.cuda_build


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if os.path.isdir("/usr/local/cuda") else None)
    return home if home and os.path.exists(os.path.join(home, "bin", "nvcc")) else None


def _cuobjdump():
    cands = [shutil.which("cuobjdump")]
    home = _cuda_home()
    if home:
        cands.append(os.path.join(home, "bin", "cuobjdump"))
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cands += sorted(glob.glob(os.path.join(loc, "*", "bin", "cuobjdump")))
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def _skip_reason():
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build (the CUDA build needs a CUDA torch)"
    if _cuda_home() is None:
        return "no CUDA toolkit (set CUDA_HOME to a directory with bin/nvcc)"
    if _cuobjdump() is None:
        return "cuobjdump not found (pip install nvidia-cuda-cuobjdump)"
    return None


# --------------------------------------------------------------------------------------------
# launch configurations (csrc/cuda/cross_entropy_kernels.cuh: plan_rows and the launchers)
# --------------------------------------------------------------------------------------------

def _block_size(kernel: str) -> tuple[int, str]:
    if kernel.startswith(("fwd_rows_kernel", "bwd_rows_kernel", "fused_rows_kernel", "scale_rows_kernel")):
        g = int(re.search(r",\s*(-?\d+)>$", kernel).group(1))
        if g == 8:
            return 256, "8 lanes/row, C<=64"
        if g == 32:
            return 256, "warp/row, C<=2048"
        return 512, "block/row (split when rows are few), C>=16384 (256 threads for 2048<C<16384)"
    if kernel.startswith(("fwd_strided_kernel", "bwd_strided_kernel", "fused_strided_kernel", "scale_strided_kernel")):
        return 256, "32 positions x 8 class slices, S>1"
    if kernel.startswith("fwd_combine_kernel"):
        return 256, "combine split rows, thread/row"
    return 256, "?"


# Per-SM limits: registers, max threads, max blocks, shared memory per SM (bytes).
SM_LIMITS = {
    "sm_75": dict(regs=65536, threads=1024, blocks=16, smem=65536),
    "sm_80": dict(regs=65536, threads=2048, blocks=32, smem=167936),
    "sm_90": dict(regs=65536, threads=2048, blocks=32, smem=233472),
}


def _occupancy(arch: str, regs: int, smem: int, block: int) -> float:
    lim = SM_LIMITS[arch]
    warps_per_block = (block + 31) // 32
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256
    by_regs = (lim["regs"] // regs_per_warp) // warps_per_block
    by_threads = lim["threads"] // block
    by_smem = lim["smem"] // (smem + 1024) if smem >= 0 else lim["blocks"]  # 1 KiB reserved per block
    blocks = max(0, min(by_regs, by_threads, by_smem, lim["blocks"]))
    return blocks * warps_per_block / (lim["threads"] // 32)


_IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", ".pytest_cache",
                                 ".venv", "venv", ".hypothesis", "build-cmake", "_build_info.py")


# What the compiled library depends on; the rest of the tree (Python package, tests, scripts) is
# refreshed in the cached copy on every use.
_BUILD_INPUTS = ("csrc", "setup.py", "pyproject.toml")


def _tree_hash(extra: str) -> str:
    """sha256 of the build inputs (paths and bytes) plus `extra`."""
    h = hashlib.sha256(extra.encode())
    tops = [os.path.join(REPO, p) for p in _BUILD_INPUTS]
    for path in tops:
        if os.path.isfile(path):
            h.update(os.path.basename(path).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(fh.read())
    for root, dirs, files in (w for top in tops if os.path.isdir(top) for w in os.walk(top)):
        rel = os.path.relpath(root, REPO)
        skip = _IGNORE(root, dirs + files)
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for f in sorted(files):
            if f in skip:
                continue
            path = os.path.join(root, f)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            h.update(os.path.join(rel, f).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]


def cached_build(archs: str = ARCHS) -> dict:
    """A copy of the tree with the CUDA extension built in place (setup.py build_ext --inplace,
    FORCE_CUDA=1, ptxas -v), reused while its build inputs are unchanged (the other files of the
    copy are refreshed from the repository). Returns tree, lib, log, seconds (of the build that made
    it) and reused. Raises AssertionError when the build fails."""
    import torch

    home = _cuda_home()
    nvcc_v = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True,
                            text=True).stdout
    key = _tree_hash("|".join([archs, torch.__version__, home, nvcc_v, os.environ.get("NVCC_APPEND_FLAGS", ""),
                               os.environ.get("SMOOTHING_EXT_DEBUG", ""), sys.version]))
    base = os.environ.get("SMOOTHING_EXT_CUDA_BUILD_CACHE") or os.path.join(
        tempfile.gettempdir(), f"smoothing_ext_cuda_build_{os.getuid() if hasattr(os, 'getuid') else 0}")
    final = os.path.join(base, key)
    if os.path.exists(os.path.join(final, "build_ok")):
        shutil.copytree(REPO, final, ignore=_IGNORE, dirs_exist_ok=True)  # same build inputs; fresh Python files
        info = dict(tree=final, lib=glob.glob(os.path.join(final, "smoothing_ext", "_C*.so"))[0], reused=True)
        with open(os.path.join(final, "build_log.txt")) as f:
            info["log"] = f.read()
        with open(os.path.join(final, "build_ok")) as f:
            info["seconds"] = float(f.read().strip() or "nan")
        return info
    os.makedirs(base, exist_ok=True)
    import fcntl
    import time

    # Built where it stays (no rename): the object paths in its ninja file remain valid, so a later
    # build in the same tree (the cu130 wheel of tests/test_packaging.py) only relinks.
    with open(os.path.join(base, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a waiter then finds it done
        if os.path.exists(os.path.join(final, "build_ok")):
            lock.close()
            return cached_build(archs)
        for old in glob.glob(os.path.join(base, "*")):  # drop other builds an hour old
            name = os.path.basename(old)
            if re.fullmatch(r"[0-9a-f]{16}", name) and name != key and time.time() - os.path.getmtime(old) > 3600:
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # an unfinished build of this key
        shutil.copytree(REPO, final, ignore=_IGNORE)
        env = dict(os.environ)
        env.update(FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=archs, CUDA_HOME=home)
        env.setdefault("MAX_JOBS", "2")
        # --threads: the archs of one .cu file in parallel, as packaging/build_wheel.sh does (the
        # same flags there: the cu130 wheel test builds in this tree and finds every object current).
        env["NVCC_APPEND_FLAGS"] = (env.get("NVCC_APPEND_FLAGS", "") + " -Xptxas -v --threads " + env["MAX_JOBS"]).strip()
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=final, env=env,
                           capture_output=True, text=True, timeout=3000)
        seconds = time.perf_counter() - t0
        log = r.stdout + r.stderr
        assert r.returncode == 0, "CUDA build failed:\n" + log[-12000:]
        libs = glob.glob(os.path.join(final, "smoothing_ext", "_C*.so"))
        assert libs, "no smoothing_ext/_C*.so after the build:\n" + log[-4000:]
        with open(os.path.join(final, "build_log.txt"), "w") as f:
            f.write(log)
        with open(os.path.join(final, "build_ok"), "w") as f:
            f.write("%.1f\n" % seconds)
    return dict(tree=final, lib=glob.glob(os.path.join(final, "smoothing_ext", "_C*.so"))[0], log=log,
                seconds=seconds, reused=False)


@pytest.fixture(scope="module")
def cuda_build():
    why = _skip_reason()
    if why:
        pytest.skip(why)
    info = cached_build()
    print(f"CUDA build ({ARCHS}): {info['seconds']:.0f} s{' (cached)' if info['reused'] else ''}, {info['tree']}")
    return info


def _parse_ptxas(log: str):
    """[(mangled, arch, regs, stack, spill_st, spill_ld, smem)] from ptxas -v output."""
    rows = []
    cur = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
        if m:
            cur = dict(name=m.group(1), arch=m.group(2))
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur.update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
        if m:
            cur.update(regs=int(m.group(1)), smem=int(m.group(2) or 0))
            cur.setdefault("stack", 0)
            cur.setdefault("spill_st", 0)
            cur.setdefault("spill_ld", 0)
            rows.append(cur)
            cur = None
    return rows


def _demangle(names):
    filt = shutil.which("c++filt")
    if not filt:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    res = {}
    for n, d in zip(names, out):
        d = d.replace("smoothing_ext::cuda::", "")
        d = re.sub(r"\(.*\)$", "", d)  # drop the parameter list
        d = re.sub(r"^void ", "", d)
        d = d.replace("(bool)0", "false").replace("(bool)1", "true").replace("__nv_bfloat16", "bf16")
        d = d.replace("__half", "f16")
        res[n] = d
    return res


def test_cuda_elf_has_every_arch(cuda_build):
    tool = _cuobjdump()
    elf = subprocess.run([tool, "--list-elf", cuda_build["lib"]], capture_output=True, text=True)
    assert elf.returncode == 0, elf.stderr
    print(elf.stdout)
    for arch in ("sm_75", "sm_80", "sm_90"):
        assert arch in elf.stdout, elf.stdout
    ptx = subprocess.run([tool, "--list-ptx", cuda_build["lib"]], capture_output=True, text=True)
    assert "compute_90" in ptx.stdout or "sm_90" in ptx.stdout, ptx.stdout  # 9.0+PTX: forward-compatible PTX


def test_cuda_ops_registered(cuda_build):
    """The built library loads without a GPU and registers a CUDA kernel for every op."""
    code = (
        "import torch, smoothing_ext\n"
        "ops = ['cross_entropy_forward', '_cross_entropy_backward', 'cross_entropy_prob_forward',"
        " '_cross_entropy_prob_backward', 'cross_entropy_fused', 'cross_entropy_fused_', '_scale_grad_rows_',"
        " 'binary_cross_entropy_with_logits_forward', '_binary_cross_entropy_with_logits_backward',"
        " 'binary_cross_entropy_with_logits_sum']\n"
        "missing = [o for o in ops if not torch._C._dispatch_has_kernel_for_dispatch_key('smoothing_ext::' + o, 'CUDA')]\n"
        "assert not missing, missing\n"
        "print('CUDA kernels registered for', len(ops), 'ops')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=cuda_build["tree"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_cuda_resource_usage(cuda_build):
    rows = _parse_ptxas(cuda_build["log"])
    assert rows, "no ptxas -v output in the build log (NVCC_APPEND_FLAGS honoured?):\n" + cuda_build["log"][-4000:]
    names = _demangle(sorted({r["name"] for r in rows}))
    archs = sorted({r["arch"] for r in rows})
    assert {"sm_75", "sm_80", "sm_90"} <= set(archs), archs
    # The kernel files partition the instances (csrc/cuda/xent_launch.h): none is compiled twice.
    seen = {}
    for r in rows:
        seen[(r["name"], r["arch"])] = seen.get((r["name"], r["arch"]), 0) + 1
    twice = sorted(f"{names[n]} {a}" for (n, a), k in seen.items() if k > 1)
    assert not twice, "kernels compiled in more than one translation unit:\n" + "\n".join(twice)
    lines = [
        "# CUDA kernel resource usage",
        "",
        f"From `ptxas -v` of the build for TORCH_CUDA_ARCH_LIST=\"{ARCHS}\" (no GPU involved). Occupancy is the",
        "theoretical one for the block size the launcher uses (registers, threads, blocks and static shared",
        "memory per SM; 64K registers per SM; 2048 threads and 32 blocks per SM on sm_80/sm_90, 1024 and 16",
        "on sm_75).",
        "",
        "| kernel | arch | block | regs/thread | spill st/ld (B) | stack (B) | static smem (B) | occupancy | used for |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    bad = []
    for r in sorted(rows, key=lambda r: (names[r["name"]], r["arch"])):
        k = names[r["name"]]
        block, use = _block_size(k)
        occ = _occupancy(r["arch"], r["regs"], r["smem"], block) if r["arch"] in SM_LIMITS else float("nan")
        lines.append(f"| `{k}` | {r['arch']} | {block} | {r['regs']} | {r['spill_st']}/{r['spill_ld']} | {r['stack']} "
                     f"| {r['smem']} | {occ:.0%} | {use} |")
        if r["spill_st"] or r["spill_ld"]:
            bad.append(f"{k} {r['arch']}: {r['spill_st']} B spill stores, {r['spill_ld']} B spill loads")
        if occ == 0:
            bad.append(f"{k} {r['arch']}: cannot launch {block} threads with {r['regs']} registers")
    text = "\n".join(lines) + "\n"
    out = os.environ.get("SMOOTHING_EXT_RESOURCE_REPORT", os.path.join(REPO, "build", "cuda_resource_usage.md"))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(text)
    print(f"written to {out}")
    assert not bad, "\n".join(bad)
