"""`python -m smoothing_ext.info`: what it reports is checked against independent sources (the schema
block in csrc/smoothing_ext.cpp, the dispatcher queried key by key, the op itself, /proc/cpuinfo-style
flags, the build info), not against the same call it makes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import smoothing_ext  # noqa: F401  (registers the ops)
from smoothing_ext import _version_check, info

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_BLOCK = ROOT / "csrc" / "smoothing_ext.cpp"


def _run_info(*args: str, threads: str = "1") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=threads)
    return subprocess.run([sys.executable, "-m", "smoothing_ext.info", *args], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def report() -> dict:
    r = _run_info("--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _ops_defined_in_source() -> set[str]:
    text = SCHEMA_BLOCK.read_text()
    return set(re.findall(r'm\.def\(\s*"(\w+)\(', text))


def test_ops_are_every_op_of_the_schema_block(report):
    if not SCHEMA_BLOCK.exists():
        pytest.skip("needs the source checkout (csrc/smoothing_ext.cpp) as the oracle")
    defined = _ops_defined_in_source()
    assert len(defined) >= 11
    assert set(report["ops"]) == defined
    for name, op in report["ops"].items():
        overload = getattr(torch.ops.smoothing_ext, name).default
        assert op["schema"] == str(overload._schema), name


def test_dispatch_keys_agree_with_the_dispatcher(report):
    with_cuda = bool(report["build"].get("with_cuda"))
    for name, op in report["ops"].items():
        qual = "smoothing_ext::" + name
        keys = op["dispatch_keys"]
        assert keys, name
        for k in keys:
            if not k.startswith("Composite"):  # alias keys are not answered by the per-key query
                assert torch._C._dispatch_has_kernel_for_dispatch_key(qual, k), (name, k)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CUDA") == ("CUDA" in keys), name
        if name != "_cpu_capability":
            assert "CPU" in keys and "Meta" in keys, (name, keys)  # compiled kernel + register_fake
            assert ("CUDA" in keys) == with_cuda, (name, keys)
    # register_autograd of the differentiable public ops (smoothing_ext/_autograd.py)
    for name in ("cross_entropy_forward", "cross_entropy_prob_forward"):
        assert "Autograd" in report["ops"][name]["dispatch_keys"]


def test_cpu_isa_and_threads(report):
    cpu = report["cpu"]
    assert cpu["isa_in_use"] == torch.ops.smoothing_ext._cpu_capability()
    assert cpu["isa_in_use"] in cpu["isa_available"]
    assert report["threads"]["torch_intra_op"] == 1  # OMP_NUM_THREADS=1 in _run_info
    assert 1 <= report["threads"]["physical_cores"] <= report["threads"]["logical_cpus"]


def test_cpu_isa_available_from_flags():
    assert info.cpu_isa_available(set()) == ["default"]
    assert info.cpu_isa_available({"avx2"}) == ["default"]  # AVX2 kernels need FMA too
    assert info.cpu_isa_available({"avx", "avx2", "fma"}) == ["default", "avx2"]
    avx512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
    assert info.cpu_isa_available(avx512) == ["default", "avx2", "avx512"]
    assert info.cpu_isa_available(avx512 - {"avx512bw"}) == ["default", "avx2"]


def test_versions_and_cuda_archs_from_the_build_info(report):
    b = _version_check.build_info()
    if b is None:
        pytest.skip("the build under test has no _build_info.py (built before setup.py wrote it)")
    assert report["smoothing_ext"] == b.version
    assert report["build"]["torch_version"] == b.torch_version
    assert report["runtime"]["torch"] == torch.__version__ and report["runtime"]["torch_cuda"] == torch.version.cuda
    expected = [a for a in re.split(r"[;\s]+", b.cuda_arch_list or "") if a] if b.with_cuda else []
    assert report["cuda_archs"] == expected


def test_parse_dispatch_dump():
    dump = (
        "name: ns::op\n"
        "schema: ns::op(Tensor x) -> Tensor\n"
        "debug: registered at /src/a.cpp:60\n"
        "alias analysis kind: FROM_SCHEMA\n"
        "CPU: registered at /src/cpu/k.cpp:304 :: (Tensor _0) -> Tensor _0 [ boxed unboxed ]\n"
        "Meta: registered at /py/torch/library.py:1012 :: (none) [ boxed ]\n"
        "Autograd[alias]: registered at /py/torch/library.py:1012 :: (none) [ boxed ]\n"
    )
    schema, kernels = info._parse_dump(dump)
    assert schema == "ns::op(Tensor x) -> Tensor"
    assert kernels == {"CPU": "k.cpp", "Meta": "library.py", "Autograd": "library.py"}


def test_text_report_lists_every_op_with_its_keys(report):
    r = _run_info()
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert out.startswith("smoothing_ext %s" % report["smoothing_ext"])
    assert "ops (%d, torch.ops.smoothing_ext)" % len(report["ops"]) in out
    for name, op in report["ops"].items():
        assert re.search(r"^\s+%s\s+%s$" % (re.escape(name), re.escape(", ".join(op["dispatch_keys"]))), out, re.M), name
    assert "%s in use" % report["cpu"]["isa_in_use"] in out
    assert "torch 1 intra-op" in out
