"""scripts/sass_report.py: the SASS parser on hand-written listings (no tools), on two tiny kernels
compiled here with nvcc (loops counted by hand from their listing), and on the sm_90 code of the
suite's CUDA build (tests/test_cuda_build.py: cached_build()), whose report goes to
build/sass_report.md (SMOOTHING_EXT_SASS_REPORT overrides; SMOOTHING_EXT_SASS_LIB names a library to
report on instead of the cached build). No budget is asserted: the report is evidence, not a gate.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import sass_report as sr  # noqa: E402

sys.path.pop(0)


# --------------------------------------------------------------------------------------------
# hand-written listings
# --------------------------------------------------------------------------------------------

# Two loops: outer [0x30, 0xb0] (9 instructions) holds inner [0x40, 0x80] (5 instructions). The inner
# one is the hot loop: it loads, and no loading loop is nested in it. The trap `BRA 0xf0` branches to
# itself: not a loop. The encoding halves (/* 0x... */ lines) are skipped.
NESTED = """
\t\tFunction : _Z6nestedIN3c108BFloat16EfEvPKT_PT0_
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                      /* 0x00000a00ff017b82 */
                                                                               /* 0x000fe20000000800 */
        /*0010*/                   ISETP.GE.AND P0, PT, R2, R3, PT ;
        /*0020*/               @P0 EXIT ;
        /*0030*/                   LDG.E.64 R4, desc[UR4][R2.64] ;
        /*0040*/                   IADD3 R6, R6, 0x1, RZ ;
        /*0050*/                   LDG.E.128.CONSTANT R8, desc[UR4][R6.64] ;
        /*0060*/                   LDG.E.U16 R12, desc[UR4][R6.64+0x10] ;
        /*0070*/                   ISETP.NE.AND P1, PT, R6, R7, PT ;
        /*0080*/               @P1 BRA 0x40 ;
        /*0090*/                   STG.E.128 desc[UR4][R2.64], R8 ;
        /*00a0*/                   ISETP.NE.AND P0, PT, R2, R3, PT ;
        /*00b0*/              @!P0 BRA 0x30 ;
        /*00c0*/                   LDS.64 R4, [R0] ;
        /*00d0*/                   STS [R0], R4 ;
        /*00e0*/                   EXIT ;
        /*00f0*/                   BRA 0xf0;
"""

# One loop [0x0, 0x90], 10 instructions, 20 global bytes (LDG.E.128 + LDG.E). Two alternative store
# sequences (2 x STG.E.U16 at 0x20-0x40, or STG.E.128 at 0x50) and optional weights (LDG.E at 0x70,
# skipped by `@P1 BRA 0x80`). Heaviest path: 0x0, 0x10, 0x50, 0x60, 0x70, 0x80, 0x90 = 7 instructions,
# 20 bytes. A second backward branch to 0x0 at 0x40 would not change the loop: the later one closes it.
ALTERNATIVES = """
\t\tFunction : _Z3altI13__nv_bfloat16EvPT_
        /*0000*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0010*/               @P0 BRA 0x50 ;
        /*0020*/                   STG.E.U16 desc[UR4][R2.64], R4 ;
        /*0030*/                   STG.E.U16 desc[UR4][R2.64+0x2], R5 ;
        /*0040*/                   BRA 0x60 ;
        /*0050*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*0060*/               @P1 BRA 0x80 ;
        /*0070*/                   LDG.E R8, desc[UR4][R10.64] ;
        /*0080*/                   ISETP.NE.AND P2, PT, R2, R3, PT ;
        /*0090*/               @P2 BRA P3, 0x0 ;
        /*00a0*/                   EXIT ;
"""

# nvdisasm's form of a loop: labels and `(.L_x_N) targets, functions opened by `.text.NAME:`.
NVDISASM = """
//--------------------- .text.lbl --------------------------
\t.section\t.text.lbl,"ax",@progbits
lbl:
.text.lbl:
        /*0000*/                   MOV R0, RZ ;
.L_x_0:
        /*0010*/                   LDG.E.64 R2, desc[UR4][R4.64] ;
        /*0020*/                   IADD3 R4, P0, R4, 0x8, RZ ;
        /*0030*/               @!P0 BRA `(.L_x_0) ;
        /*0040*/                   EXIT ;
.L_x_1:
        /*0050*/                   BRA `(.L_x_1);
.L_x_2:
"""

RES_USAGE = """
Fatbin elf code:
================
arch = sm_90
Resource usage:
 Common:
  GLOBAL:0
 Function _Z3altI13__nv_bfloat16EvPT_:
  REG:40 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:536 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z6nestedIN3c108BFloat16EfEvPKT_PT0_:
  REG:128 STACK:16 SHARED:2048 LOCAL:8 CONSTANT[0]:536 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_parse_functions_and_skip_encoding():
    funcs = sr.parse_sass(NESTED + ALTERNATIVES)
    assert list(funcs) == ["_Z6nestedIN3c108BFloat16EfEvPKT_PT0_", "_Z3altI13__nv_bfloat16EvPT_"]
    nested = funcs["_Z6nestedIN3c108BFloat16EfEvPKT_PT0_"]
    assert len(nested) == 16 and nested[0] == (0, "", "LDC", "R1, c[0x0][0x28]")
    assert nested[2] == (0x20, "@P0", "EXIT", "")
    assert nested[8] == (0x80, "@P1", "BRA", "0x40")
    assert sr.branch_target("BRA", "P3, 0x0") == 0 and sr.branch_target("BRA.DIV", "UR4, 0x1a0") == 0x1A0
    assert sr.branch_target("BSSY", "B0, 0x57c0") is None


def test_nested_loops_and_hot_loop():
    insns = sr.parse_sass(NESTED)["_Z6nestedIN3c108BFloat16EfEvPKT_PT0_"]
    loops = sr.find_loops(insns)
    assert [(lp["start"], lp["end"]) for lp in loops] == [(0x30, 0xB0), (0x40, 0x80)]  # no self-branch 0xf0
    outer = sr.loop_stats(insns, loops[0])
    assert outer["instructions"] == 9 and outer["load_bytes"] == 8 + 16 + 2
    hot = sr.hot_loop(insns)
    assert (hot["start"], hot["end"], hot["instructions"], hot["load_bytes"]) == (0x40, 0x80, 5, 18)
    assert hot["stores"] == {} and hot["path_instructions"] == 5 and hot["path_load_bytes"] == 18
    assert sr.mem_counts(insns) == {"LDG.64": 1, "LDG.128": 1, "LDG.16": 1, "STG.128": 1, "LDS.64": 1, "STS.32": 1}


def test_alternative_paths():
    insns = sr.parse_sass(ALTERNATIVES)["_Z3altI13__nv_bfloat16EvPT_"]
    (loop,) = sr.find_loops(insns)
    assert (loop["start"], loop["end"]) == (0, 0x90)
    hot = sr.hot_loop(insns)
    assert hot["instructions"] == 10 and hot["load_bytes"] == 20
    assert hot["stores"] == {"STG.16": 2, "STG.128": 1}
    assert sr.heaviest_path(insns, loop) == (7, 20)
    assert (hot["path_instructions"], hot["path_load_bytes"]) == (7, 20)
    # a second back branch to the same start, before the last: still one loop, closed at 0x90
    twice = ALTERNATIVES.replace("BRA 0x60 ;", "BRA 0x0 ;")
    insns2 = sr.parse_sass(twice)["_Z3altI13__nv_bfloat16EvPT_"]
    assert [(lp["start"], lp["end"]) for lp in sr.find_loops(insns2)] == [(0, 0x90)]
    assert sr.heaviest_path(insns2, sr.find_loops(insns2)[0]) == (7, 20)  # 0x40 ends an iteration too


def test_vector_path():
    # Hand-counted on ALTERNATIVES: the iteration with the 16-byte load and the 16-byte store that
    # skips the scalar load at 0x70 (a class weight, say) is 0x00, 0x10 (taken), 0x50, 0x60 (taken),
    # 0x80, 0x90: 6 instructions for 16 bytes = 8 bf16 elements.
    insns = sr.parse_sass(ALTERNATIVES)["_Z3altI13__nv_bfloat16EvPT_"]
    (loop,) = sr.find_loops(insns)
    assert sr.vector_path(insns, loop) == (6, 16)
    hot = sr.hot_loop(insns)
    assert (hot["vector_instructions"], hot["vector_load_bytes"]) == (6, 16)
    (row,) = [r for r in sr.analyze(ALTERNATIVES) if r["kernel"].startswith("alt")]
    assert row["vector_instr_per_element"] == 6 / 8
    # a narrower store there: the vector load alone decides
    no_vec_store = ALTERNATIVES.replace("STG.E.128 desc[UR4][R2.64], R4 ;", "STG.E desc[UR4][R2.64], R4 ;")
    insns3 = sr.parse_sass(no_vec_store)["_Z3altI13__nv_bfloat16EvPT_"]
    assert sr.vector_path(insns3, sr.find_loops(insns3)[0]) == (6, 16)  # the load alone still counts
    # a guard that skips the vector store: only the path through it counts
    guarded = ALTERNATIVES.replace("@P0 BRA 0x50 ;", "@P0 BRA 0x60 ;")
    insns4 = sr.parse_sass(guarded)["_Z3altI13__nv_bfloat16EvPT_"]
    assert sr.vector_path(insns4, sr.find_loops(insns4)[0]) is None


def test_nvdisasm_labels():
    funcs = sr.parse_sass(NVDISASM)
    insns = funcs["lbl"]
    assert insns[3] == (0x30, "@!P0", "BRA", "0x10")
    assert [(lp["start"], lp["end"]) for lp in sr.find_loops(insns)] == [(0x10, 0x30)]
    hot = sr.hot_loop(insns)
    assert hot["instructions"] == 3 and hot["load_bytes"] == 8


def test_no_loop_no_hot_loop():
    text = NESTED.replace("@P1 BRA 0x40", "@P1 BRA 0xc0").replace("@!P0 BRA 0x30", "@!P0 BRA 0xc0")
    insns = sr.parse_sass(text)["_Z6nestedIN3c108BFloat16EfEvPKT_PT0_"]
    assert sr.find_loops(insns) == [] and sr.hot_loop(insns) is None


def test_widths():
    assert sr.mem_access("LDG.E.128.CONSTANT") == ("LDG", 16)
    assert sr.mem_access("LDG.E.64") == ("LDG", 8)
    assert sr.mem_access("LDG.E") == ("LDG", 4)
    assert sr.mem_access("LDG.E.EL.U16") == ("LDG", 2)
    assert sr.mem_access("LDG.E.S8") == ("LDG", 1)
    assert sr.mem_access("STG.E.U8") == ("STG", 1)
    assert sr.mem_access("LDS.U.128") == ("LDS", 16)
    assert sr.mem_access("LDC.64") is None and sr.mem_access("LDL") is None


def test_dtype_and_names():
    assert sr.kernel_dtype("void cuda::fwd_rows_kernel<__nv_bfloat16, float, 0, false, 32>("
                           "cuda::XentParams<__nv_bfloat16, float>, long)") == ("bf16", 2)
    assert sr.kernel_dtype("void k<c10::BFloat16, float>(c10::BFloat16 const*)") == ("bf16", 2)
    assert sr.kernel_dtype("void k<c10::Half, float>(float*)") == ("f16", 2)
    assert sr.kernel_dtype("void k<__half, float>(float*)") == ("f16", 2)
    assert sr.kernel_dtype("void k<double, double, 2, false>(double*)") == ("double", 8)
    assert sr.kernel_dtype("void k<float, float>(double*)") == ("float", 4)
    assert sr.kernel_dtype("void k(double*)") == (None, 4)  # parameters are not template arguments
    assert sr.kernel_dtype("copy_u4") == (None, 4)
    dem = ("void smoothing_ext::cuda::bwd_rows_kernel<__nv_bfloat16, float, (bool)0, true, false, 0>"
           "(smoothing_ext::cuda::XentParams<__nv_bfloat16, float>, long, long)")
    assert sr.short_name(dem) == "bwd_rows_kernel<bf16, float, false, true, false, 0>"
    assert sr.short_name("void smoothing_ext::bce::cuda::bce_sum_finish<double>(double const*, long, double*)") \
        == "bce_sum_finish<double>"


def test_res_usage():
    res = sr.parse_res_usage(RES_USAGE)
    assert res["_Z3altI13__nv_bfloat16EvPT_"] == dict(regs=40, stack=0, shared=0, local=0)
    assert res["_Z6nestedIN3c108BFloat16EfEvPKT_PT0_"] == dict(regs=128, stack=16, shared=2048, local=8)


def test_occupancy_and_block():
    # sm_90, 256 threads (8 warps): 255 registers -> 8192 per warp -> 8 warps -> 1 block = 8/64
    assert sr.occupancy("sm_90", 255, 0, 256) == 8 / 64
    assert sr.occupancy("sm_90", 128, 0, 256) == 16 / 64
    assert sr.occupancy("sm_90", 64, 0, 512) == 32 / 64
    assert sr.occupancy("sm_90", 32, 0, 256) == 1.0  # 2048 threads
    assert sr.occupancy("sm_90", 32, 100 * 1024, 256) == 16 / 64  # 2 blocks of 101 KiB in 228 KiB
    assert sr.occupancy("sm_70", 32, 0, 256) is None
    import test_cuda_build as tcb  # the same numbers as the build test's table

    for arch in ("sm_75", "sm_80", "sm_90"):
        for regs in (24, 40, 64, 65, 96, 128, 168, 255):
            for smem in (0, 2048, 40000):
                for block in (256, 512):
                    assert sr.occupancy(arch, regs, smem, block) == tcb._occupancy(arch, regs, smem, block)
    for k in ("fwd_rows_kernel<bf16, float, 0, false, 0>", "bwd_rows_kernel<float, float, true, true, false, 8>",
              "fused_rows_kernel<double, double, false, 32>", "scale_rows_kernel<f16, float, 0>",
              "fwd_strided_kernel<float, float, 1, true>", "fwd_combine_kernel<bf16, float, 0, false>"):
        assert sr.block_size(k) == tcb._block_size(k)[0], k
    assert sr.block_size("bce_kernel<bf16, float, true, false>") == 256


def test_family_and_budget():
    assert sr.family("fwd_rows_kernel<bf16, float, 0, false, 0>") == "forward"
    assert sr.family("fwd_combine_kernel<bf16, float, 0, false>") == "other"
    assert sr.family("bwd_strided_kernel<bf16, float, true, false>") == "backward"
    assert sr.family("scale_rows_kernel<bf16, float, 32>") == "backward"
    assert sr.family("fused_strided_kernel<float, float, true>") == "fused"
    assert sr.family("bce_kernel<bf16, float, true, false>") == "backward"
    assert sr.family("bce_kernel<bf16, float, false, true>") == "forward"
    assert sr.family("bce_sum_finish<float>") == "other"
    rows = {r["mangled"]: r for r in sr.analyze(NESTED + ALTERNATIVES, RES_USAGE)}
    alt = rows["_Z3altI13__nv_bfloat16EvPT_"]
    assert (alt["regs"], alt["occupancy"], alt["loops"]) == (40, 0.75, 1)  # 40 regs: 48 warps of 64
    if shutil.which("c++filt"):
        assert alt["kernel"] == "alt<bf16>" and alt["dtype"] == "bf16"
        assert alt["elements_per_iter"] == 10 and alt["instr_per_element"] == 1.0
        assert alt["path_instr_per_element"] == 7 / 10
        nested = rows["_Z6nestedIN3c108BFloat16EfEvPKT_PT0_"]
        assert nested["instr_per_element"] == 5 / 9  # 18 bytes of bf16
    b = sr.budget(dict(alt, family="backward"))
    # the vector path (0x00, 0x10, 0x50, 0x60, 0x80, 0x90) stores only with STG.E.128; the two 16-bit
    # stores are the fall-back beside it
    assert alt["hot_loop"]["vector_stores"] == {"STG.128": 1}
    assert b == {"instr/elem": "pass", "STG.128": "pass", "occupancy": "pass"}
    # no vector path (the 16-byte store unreachable): the body's stores decide, and 16-bit ones fail
    guarded = ALTERNATIVES.replace("@P0 BRA 0x50 ;", "@P0 BRA 0x60 ;")
    (g,) = [r for r in sr.analyze(guarded, RES_USAGE) if r["mangled"] == "_Z3altI13__nv_bfloat16EvPT_"]
    assert g["hot_loop"]["vector_stores"] is None
    assert sr.budget(dict(g, family="backward"))["STG.128"] == "FAIL"
    assert sr.budget(dict(alt, family="other"))["instr/elem"] == "n/a"
    assert sr.budget(dict(alt, kernel="bwd_strided_kernel<bf16, float, true, false>"))["STG.128"] == "n/a"
    md = sr.markdown(list(rows.values()), "sm_90") + sr.budget_markdown(list(rows.values()))
    assert md.count("\n| `") == 4


# --------------------------------------------------------------------------------------------
# a kernel compiled here, its loop counted by hand
# --------------------------------------------------------------------------------------------

KERNELS = r"""
#include <cstdint>
extern "C" __global__ void copy_u4(const uint4* __restrict__ in, uint4* __restrict__ out, long n) {
#pragma unroll 1
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    out[i] = in[i];
}
template <typename T>
__global__ void scale_kernel(const T* __restrict__ in, T* __restrict__ out, T a, long n) {
#pragma unroll 1
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
    out[i] = a * in[i];
}
template __global__ void scale_kernel<float>(const float*, float*, float, long);
"""


def _nvcc():
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


def _disasm_skip():
    if sr.find_cuobjdump() is None:
        return "needs cuobjdump"
    if sr.find_nvdisasm(sr.find_cuobjdump()) is None:
        return "needs nvdisasm (cuobjdump -sass runs it)"
    return None


def _tools_skip():
    return "needs nvcc" if _nvcc() is None else _disasm_skip()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    why = _tools_skip()
    if why:
        pytest.skip(why)
    d = tmp_path_factory.mktemp("sass_report")
    (d / "k.cu").write_text(KERNELS)
    r = subprocess.run([_nvcc(), "-cubin", "-arch=sm_90", "-O3", "-o", str(d / "k.cubin"), str(d / "k.cu")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    sass, res = sr.run_cuobjdump(str(d / "k.cubin"), "sm_90")
    return dict(dir=d, sass=sass, res=res, rows={x["kernel"]: x for x in sr.analyze(sass, res)})


def _listing(sass):
    """The listing without encodings and padding, for a failure message to recount from."""
    return "\n".join(line for line in sass.splitlines() if not line.lstrip().startswith("/* 0x")
                     and "NOP" not in line)


def test_tiny_copy_u4(tiny):
    # nvcc 13.0, sm_90 -O3: the grid-stride loop of copy_u4 (`#pragma unroll 1`)
    #   /*01b0*/  MOV R4, R10                                  <- target of the back branch
    #   /*01c0*/  IMAD.MOV.U32 R5, RZ, RZ, R13
    #   /*01d0*/  LDG.E.128.CONSTANT R4, desc[UR4][R4.64]      16 bytes
    #   /*01e0*/  IMAD.MOV.U32 R8, RZ, RZ, R0
    #   /*01f0*/  IADD3 R19, P0, R19, R2, RZ
    #   /*0200*/  IMAD.MOV.U32 R9, RZ, RZ, R11
    #   /*0210*/  IADD3 R10, P1, R10, R15, RZ
    #   /*0220*/  IADD3.X R14, R14, R17, RZ, P0, !PT
    #   /*0230*/  ISETP.GE.U32.AND P0, PT, R19, UR6, PT
    #   /*0240*/  IMAD.X R13, R13, 0x1, R12, P1
    #   /*0250*/  IADD3 R0, P2, R0, R15, RZ
    #   /*0260*/  ISETP.GE.AND.EX P0, PT, R14, UR7, PT, P0
    #   /*0270*/  IMAD.X R11, R11, 0x1, R12, P2
    #   /*0280*/  STG.E.128 desc[UR4][R8.64], R4
    #   /*0290*/  @!P0 BRA 0x1b0                               <- back branch
    # (0x290 - 0x1b0) / 16 + 1 = 15 instructions, 16 bytes; no dtype: 4 elements of 4 bytes, 3.75 each.
    # Another nvcc may schedule differently: recount from the listing in the failure message.
    r = tiny["rows"]["copy_u4"]
    why = _listing(tiny["sass"])
    assert r["mem"] == {"LDG.128": 1, "STG.128": 1}, why
    h = r["hot_loop"]
    assert r["loops"] == 1 and h["mem"] == {"LDG.128": 1, "STG.128": 1}, why
    assert (h["start"], h["end"], h["instructions"], h["load_bytes"]) == (0x1B0, 0x290, 15, 16), why
    assert h["instructions"] == (h["end"] - h["start"]) // 16 + 1
    assert r["dtype"] is None and r["elements_per_iter"] == 4 and r["instr_per_element"] == 15 / 4, why
    assert (h["path_instructions"], h["path_load_bytes"]) == (15, 16)
    assert r["regs"] > 0 and r["stack"] == 0 and r["local"] == 0 and r["shared"] == 0
    assert sr.budget(r)["STG.128"] == "pass"


def test_tiny_scale_float(tiny):
    # nvcc 13.0, sm_90 -O3: the loop of scale_kernel<float>
    #   /*01c0*/  IMAD.MOV.U32 R4, RZ, RZ, R8                  <- target of the back branch
    #   /*01d0*/  IMAD.MOV.U32 R5, RZ, RZ, R11
    #   /*01e0*/  LDG.E.CONSTANT R0, desc[UR4][R4.64]          4 bytes
    #   /*01f0*/  IADD3 R17, P0, R17, R2, RZ
    #   /*0200*/  IADD3 R8, P1, R8, R13, RZ
    #   /*0210*/  IMAD.X R12, R12, 0x1, R15, P0
    #   /*0220*/  ISETP.GE.U32.AND P0, PT, R17, UR6, PT
    #   /*0230*/  IADD3.X R11, R11, R10, RZ, P1, !PT
    #   /*0240*/  IMAD.MOV.U32 R5, RZ, RZ, R9
    #   /*0250*/  MOV R4, R6
    #   /*0260*/  ISETP.GE.AND.EX P0, PT, R12, UR7, PT, P0
    #   /*0270*/  IADD3 R6, P2, R6, R13, RZ
    #   /*0280*/  IMAD.X R9, R9, 0x1, R10, P2
    #   /*0290*/  FMUL R7, R0, UR8
    #   /*02a0*/  STG.E desc[UR4][R4.64], R7
    #   /*02b0*/  @!P0 BRA 0x1c0                               <- back branch
    # 16 instructions, 4 bytes: one float element, 16 instructions per element.
    r = tiny["rows"]["scale_kernel<float>"]
    why = _listing(tiny["sass"])
    assert r["mem"] == {"LDG.32": 1, "STG.32": 1}, why
    h = r["hot_loop"]
    assert (h["start"], h["end"], h["instructions"], h["load_bytes"]) == (0x1C0, 0x2B0, 16, 4), why
    assert r["dtype"] == "float" and r["elements_per_iter"] == 1 and r["instr_per_element"] == 16, why


def test_tiny_cli(tiny):
    out, js = tiny["dir"] / "r.md", tiny["dir"] / "r.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sass_report.py"), str(tiny["dir"] / "k.cubin"),
                        "--out", str(out), "--json", str(js), "--budget"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    text = out.read_text()
    assert "| `copy_u4` | 256 |" in text and "| `scale_kernel<float>` |" in text and "## Budget" in text
    assert text in r.stdout
    data = json.loads(js.read_text())
    assert data["arch"] == "sm_90" and {k["kernel"] for k in data["kernels"]} == {"copy_u4", "scale_kernel<float>"}


# --------------------------------------------------------------------------------------------
# the suite's CUDA build
# --------------------------------------------------------------------------------------------

@pytest.mark.cuda_build
@pytest.mark.slow
def test_sass_report_of_the_build(tmp_path):
    lib = os.environ.get("SMOOTHING_EXT_SASS_LIB")
    if not lib:
        import test_cuda_build as tcb

        why = tcb._skip_reason()
        if why:
            pytest.skip(why)
        lib = tcb.cached_build()["lib"]
    why = _disasm_skip()
    if why:
        pytest.skip(why)
    out = os.environ.get("SMOOTHING_EXT_SASS_REPORT", os.path.join(ROOT, "build", "sass_report.md"))
    js = tmp_path / "sass.json"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "sass_report.py"), lib, "--arch", "sm_90",
                        "--out", out, "--json", str(js), "--budget"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    print(r.stdout)
    rows = json.loads(js.read_text())["kernels"]
    # every sm_90 kernel of the library (cuobjdump -res-usage lists them) has a row
    res = subprocess.run([sr.find_cuobjdump(), "-res-usage", "-arch", "sm_90", lib], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    listed = set(re.findall(r"^\s*Function (\S+?):\s*$", res.stdout, re.M))
    assert listed and listed == {x["mangled"] for x in rows}
    with open(out) as f:
        text = f.read()
    for x in rows:
        assert f"| `{x['kernel']}` |" in text, x["kernel"]
    names = " ".join(x["kernel"] for x in rows)
    for k in ("fwd_rows_kernel", "bwd_rows_kernel", "fused_rows_kernel", "scale_rows_kernel", "fwd_strided_kernel",
              "fwd_combine_kernel", "bce_kernel", "bce_sum_finish"):
        assert k + "<" in names, k
    spills = [f"{x['kernel']}: stack {x['stack']} B, local {x['local']} B" for x in rows if x["stack"] or x["local"]]
    assert not spills, "\n".join(spills)
    # the element loops of the forward, backward and fused kernels are found
    lost = [x["kernel"] for x in rows if x["family"] in ("forward", "backward", "fused") and not x["hot_loop"]]
    assert not lost, lost
