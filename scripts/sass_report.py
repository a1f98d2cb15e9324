"""SASS report of the CUDA kernels of a compiled library or cubin, for one architecture (default sm_90).

  python scripts/sass_report.py LIB [--arch sm_90] [--out build/sass_report.md] [--json PATH] [--budget]

LIB is a shared library with embedded device code (smoothing_ext/_C*.so of a CUDA build) or a cubin.
The report comes from `cuobjdump -sass -arch ARCH LIB` and `cuobjdump -res-usage -arch ARCH LIB`
(cuobjdump needs nvdisasm for -sass; both are looked up in PATH, $CUDA_HOME/bin, /usr/local/cuda/bin,
the nvidia-* pip packages, and for nvdisasm also the copy bundled with triton). Per kernel it gives:

  * registers per thread, stack and local bytes (non-zero means spills), static shared memory;
  * theoretical occupancy on the architecture for the block size the launcher uses (block_size());
  * static counts of global loads and stores by width (LDG/STG 128, 64, 32, 16, 8 bits; generic LD/ST
    are counted apart) and of shared loads and stores (LDS/STS);
  * the hot loop and its instructions per element (below).

Loops. A loop is a backward branch: a BRA (predicated or not, e.g. `@!P0 BRA 0x1a0`, `@P1 BRA P2, 0x1a0`)
whose target address is lower than its own address. Its body is every instruction from the target to
the branch, both included; backward branches to the same target are one loop (the last one closes it).
A branch to itself (the trap `BRA` after the final EXIT) is not a loop. Loop A is nested in loop B when
A's address range lies inside B's.

Hot loop. Among the loops whose body holds at least one global load (LDG, LDGSTS, or a generic LD,
taken as global), those with no such loop nested inside them (the innermost loading loops) are the
candidates; the hot loop is the candidate whose body loads the most global bytes, ties going to the
shorter body, then to the lower address. Its numbers:
  instructions   every SASS instruction in the body's address range;
  bytes/iter     the sum over the body's global loads of their width in bytes (LDG.E.128 16, .64 8,
                 plain LDG.E 4, .U16/.S16 2, .U8/.S8 1), each counted once whatever its predicate;
  elements/iter  bytes/iter / element size;
  instr/element  instructions / elements/iter.
Element size: that of the first dtype named in the kernel's template argument list (the scalar type
of this project's kernels; acc_t comes after it): c10::BFloat16, __nv_bfloat16, c10::Half, __half,
half 2 bytes, float 4, double 8. A kernel with no such argument (a plain or extern "C" kernel) is
counted per 4 bytes.

The body mixes alternatives (an aligned and a misaligned store sequence, a vector and a scalar path),
so the report also follows one iteration along a single path (heaviest_path()): from the loop's first
instruction to a branch back to its start, through fall-throughs and forward branches that stay in
the body (a branch out of the body leaves the loop; backward branches inside it are taken zero times),
choosing the path that loads the most global bytes and, among those, the one with the fewest
instructions: path instr, path LDG B, and path instr/elem = path instr / (path LDG B / element size).
It drops alternatives but keeps optional work whose loads add bytes (class weights, say).

Vector path (vector_path()): the same walk counting only 16-byte accesses: the shortest iteration
that issues all of the body's LDG.E.128 and STG.E.128. In these kernels the optional work (a scalar load of a class
weight per element, the scalar fall-back for a misaligned second stream) sits on branches without
vector accesses, so this is the iteration of the common case: aligned rows, no class weights.
vec instr/elem = its instructions / (its 16-byte load bytes / element size): per element of the
vector streams only, so scalar weight or target loads do not inflate the element count.

Limits. The counts are static: one pass over the code, no trip counts, no timing. Code that forward
branches skip inside the body still counts in the body numbers; the instructions of subroutines the
body CALLs (the slow path of an IEEE division, say) count as one CALL. The hot loop is the loop that
loads the most per iteration, not necessarily the one that runs longest (a scalar tail loop can
dominate for short rows). A loop that ptxas laid out in pieces (a part placed after the back branch)
shows as two overlapping loops. Every global load counts towards the elements, including other
streams (targets, class weights, probability targets): a loop reading two bf16 streams reports twice
the elements it processes per logit, a loop loading an int64 target per row counts it as elements
too. Stores, shuffles and shared-memory traffic count as instructions, not elements.

--budget prints, per kernel, pass/fail against: instructions per element (of the vector path where
there is one, else of the whole body) <= 8
for forward kernels (fwd_*, BCE forward and sum), <= 12 for backward ones (bwd_*, scale_*, BCE
backward), <= 20 for fused_*, none for the others (fwd_combine_kernel, bce_sum_finish); every global
store of the vector path an STG.E.128 (of the whole hot loop where there is no vector path; the scalar
stores of a misaligned gradient's fall-back are not on it; a 16-byte vector store that ptxas split
shows as narrower stores; n/a when the hot loop stores nothing, and for *_strided_kernel, which stores one element per position,
S elements apart); occupancy >= 50%. It only prints: the exit status does not depend on it.
"""

from __future__ import annotations

import argparse
import bisect
import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------------------------------
# tools
# ------------------------------------------------------------------------------------------------


def _tool_candidates(name: str) -> list:
    cands = [shutil.which(name)]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            cands.append(os.path.join(home, "bin", name))
    spec = importlib.util.find_spec("nvidia")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cands += sorted(glob.glob(os.path.join(loc, "*", "bin", name)))
    return cands


def _first_exe(cands):
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def find_cuobjdump():
    return _first_exe(_tool_candidates("cuobjdump"))


def find_nvdisasm(cuobjdump=None):
    cands = _tool_candidates("nvdisasm")
    if cuobjdump:
        cands.insert(1, os.path.join(os.path.dirname(cuobjdump), "nvdisasm"))
    spec = importlib.util.find_spec("triton")  # triton wheels bundle an nvdisasm
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cands.append(os.path.join(loc, "backends", "nvidia", "bin", "nvdisasm"))
    return _first_exe(cands)


def run_cuobjdump(lib: str, arch: str = "sm_90") -> tuple:
    """(sass, res_usage) text of `lib` for `arch`. Raises RuntimeError with the reason."""
    tool = find_cuobjdump()
    if tool is None:
        raise RuntimeError("cuobjdump not found (CUDA toolkit, or pip install nvidia-cuda-cuobjdump)")
    nvdisasm = find_nvdisasm(tool)
    if nvdisasm is None:
        raise RuntimeError("nvdisasm not found (cuobjdump -sass needs it: CUDA toolkit or nvidia-cuda-nvdisasm)")
    env = dict(os.environ, NVDISASM_PATH=os.path.dirname(nvdisasm))
    env["PATH"] = os.path.dirname(nvdisasm) + os.pathsep + env.get("PATH", "")
    out = []
    for flag in ("-sass", "-res-usage"):
        r = subprocess.run([tool, flag, "-arch", arch, lib], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"{tool} {flag} -arch {arch} {lib} failed:\n{r.stderr[-4000:]}")
        out.append(r.stdout)
    return out[0], out[1]


# ------------------------------------------------------------------------------------------------
# parsing (pure functions on cuobjdump / nvdisasm text)
# ------------------------------------------------------------------------------------------------

_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)|^\.text\.(\S+):\s*$")  # cuobjdump | nvdisasm
_INSN = re.compile(r"^\s*/\*([0-9a-fA-F]+)\*/\s+([^;]*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L[\w.$]+):")
_PRED = re.compile(r"^@!?U?P(?:[0-7]|T)\s+")
_HEX = re.compile(r"0x([0-9a-fA-F]+)")
_LABEL_REF = re.compile(r"`\((\.L[\w.$]+)\)")


def parse_sass(text: str) -> dict:
    """{mangled name: [(address, predicate, opcode, operands)]} of every function of a
    `cuobjdump -sass` listing (`Function : NAME` sections) or an nvdisasm one (`.text.NAME:`), in
    address order. Branch targets given as labels (nvdisasm) become the label's address in hex."""
    funcs = {}
    cur = None
    labels = {}
    pending = []  # labels waiting for the address of the next instruction
    for line in text.splitlines():
        s = line.lstrip()
        if s.startswith("/* 0x"):  # the second half of an instruction's encoding
            continue
        if "Function" in s or s.startswith(".text."):
            m = _FUNC.match(s)
            if m:
                if cur is not None:
                    _resolve(funcs[cur], labels)
                cur = m.group(1) or m.group(2)
                while cur in funcs:  # the same name in two sections: keep both
                    cur += "#"
                funcs[cur] = []
                labels, pending = {}, []
                continue
        if cur is None:
            continue
        m = _INSN.match(line)
        if m:
            addr = int(m.group(1), 16)
            for lab in pending:
                labels[lab] = addr
            pending = []
            body = m.group(2)
            pred = ""
            pm = _PRED.match(body)
            if pm:
                pred = pm.group(0).strip()
                body = body[pm.end():]
            op, _, operands = body.partition(" ")
            funcs[cur].append((addr, pred, op, operands.strip()))
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
    if cur is not None:
        _resolve(funcs[cur], labels)
    return funcs


def _resolve(insns, labels):
    if not labels:
        return
    for i, (a, p, op, ops) in enumerate(insns):
        if "`(" in ops:
            insns[i] = (a, p, op, _LABEL_REF.sub(lambda m: hex(labels.get(m.group(1), -1)), ops))


def parse_res_usage(text: str) -> dict:
    """{mangled name: dict(regs, stack, shared, local)} from `cuobjdump -res-usage`."""
    res = {}
    cur = None
    for line in text.splitlines():
        m = re.match(r"\s*Function\s+(\S+?):?\s*$", line)
        if m:
            cur = m.group(1)
            continue
        if cur is not None and "REG:" in line:
            vals = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line))
            res.setdefault(cur, dict(regs=int(vals.get("REG", 0)), stack=int(vals.get("STACK", 0)),
                                     shared=int(vals.get("SHARED", 0)), local=int(vals.get("LOCAL", 0))))
            cur = None
    return res


_WIDTH = {"128": 16, "256": 32, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


def mem_access(opcode: str):
    """(kind, bytes) of a memory instruction, or None. kind: LDG, STG (global), LD, ST (generic),
    LDS, STS (shared), LDGSTS (global to shared); bytes from the width modifier (32 bits when none)."""
    parts = opcode.split(".")
    kind = parts[0]
    if kind not in ("LDG", "STG", "LD", "ST", "LDS", "STS", "LDGSTS"):
        return None
    width = 4
    for p in parts[1:]:
        if p in _WIDTH:
            width = _WIDTH[p]
    return kind, width


_GLOBAL_LOADS = ("LDG", "LD", "LDGSTS")


def mem_counts(insns) -> dict:
    """{'LDG.128': n, 'STG.32': n, 'LDS.64': n, ...} over `insns` (width in bits)."""
    counts = {}
    for _, _, op, _ in insns:
        acc = mem_access(op)
        if acc:
            key = f"{acc[0]}.{acc[1] * 8}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def branch_target(opcode: str, operands: str):
    """Target address of a BRA (the last hexadecimal operand), else None."""
    if opcode.split(".")[0] != "BRA":
        return None
    hexes = _HEX.findall(operands)
    return int(hexes[-1], 16) if hexes else None


def find_loops(insns) -> list:
    """Loops of a function (backward branches, see the module docstring), sorted by start address:
    dicts with start, end (the closing branch's address), first and last (instruction indices)."""
    ends = {}
    for addr, _, op, ops in insns:
        t = branch_target(op, ops)
        if t is not None and t < addr:
            ends[t] = max(ends.get(t, -1), addr)
    addrs = [a for a, *_ in insns]
    loops = []
    for start, end in sorted(ends.items()):
        first = bisect.bisect_left(addrs, start)
        last = bisect.bisect_right(addrs, end) - 1
        loops.append(dict(start=start, end=end, first=first, last=last))
    return loops


def _nested(inner: dict, outer: dict) -> bool:
    return inner is not outer and outer["start"] <= inner["start"] and inner["end"] <= outer["end"]


def _load_bytes(op: str) -> int:
    acc = mem_access(op)
    return acc[1] if acc and acc[0] in _GLOBAL_LOADS else 0


def loop_stats(insns, loop: dict) -> dict:
    """Static numbers of a loop's body: instructions, global load bytes, memory counts, global stores."""
    body = insns[loop["first"]:loop["last"] + 1]
    mem = mem_counts(body)
    stores = {k: n for k, n in mem.items() if k.startswith(("STG.", "ST."))}
    return dict(start=loop["start"], end=loop["end"], instructions=len(body),
                load_bytes=sum(_load_bytes(op) for _, _, op, _ in body), mem=mem, stores=stores)


def _unconditional(pred: str, op: str, operands: str) -> bool:
    """Control never falls through: an unpredicated BRA without a condition operand, EXIT or RET."""
    if pred not in ("", "@PT"):
        return False
    base = op.split(".")[0]
    if base == "BRA":
        return "DIV" not in op and not re.match(r"!?U?P[0-7T],", operands)
    return base in ("EXIT", "RET", "JMP")


def _vector_bytes(op: str) -> int:
    acc = mem_access(op)
    return acc[1] if acc and acc[0] in _GLOBAL_LOADS + ("STG", "ST") and acc[1] == 16 else 0


def vector_path(insns, loop: dict, with_path=False):
    """(instructions, 16-byte global load bytes) of the shortest iteration of `loop` that issues every
    16-byte global load and store of its body (heaviest_path() counting only those), or None when no
    path does. In this project's kernels that is the common case -- aligned rows, no class weights,
    no target inside the vectors -- because the other work (per-element weight loads, scalar
    fall-backs for misaligned streams) sits on branches without vector accesses. Requiring the stores
    too keeps out paths that load a vector and skip its computation (a guard the walk cannot see is
    always true)."""
    body = insns[loop["first"]:loop["last"] + 1]
    want = sum(_vector_bytes(op) for _, _, op, _ in body)
    loads = sum(_vector_bytes(op) for _, _, op, _ in body if _vector_bytes(op) and mem_access(op)[0] in _GLOBAL_LOADS)
    vp = heaviest_path(insns, loop, _vector_bytes, with_path=True)
    if vp is None or vp[1] != want or loads == 0:
        return None
    return (vp[0], loads, vp[2]) if with_path else (vp[0], loads)


def heaviest_path(insns, loop: dict, load_bytes=None, with_path=False):
    """(instructions, global load bytes) of one iteration of `loop` along the path that loads the
    most bytes, the shortest such path: from the loop's first instruction to a branch back to its
    start, through fall-throughs and forward branches inside the body (a branch out of the body leaves
    the loop; a backward branch inside it is taken zero times). None when no path gets back.
    `load_bytes(opcode)` says what a load counts (default: every global load, its width).
    with_path: a third item, the indices into `insns` of the path's instructions in order."""
    _load_bytes = load_bytes or globals()["_load_bytes"]
    first, last, start = loop["first"], loop["last"], loop["start"]
    addrs = [a for a, *_ in insns]
    n = last - first + 1
    best = [None] * n  # (bytes, -instructions) of the best path reaching instruction first + k
    best[0] = (_load_bytes(insns[first][2]), -1)
    prev = [None] * n
    done = None
    done_at = None
    for k in range(n):
        cost = best[k]
        if cost is None:
            continue
        addr, pred, op, ops = insns[first + k]
        succ = []
        t = branch_target(op, ops)
        if t is not None:
            if t == start:
                if done is None or cost > done:
                    done, done_at = cost, k
            elif addr < t <= insns[last][0]:
                succ.append(bisect.bisect_left(addrs, t) - first)
        if k + 1 < n and not _unconditional(pred, op, ops):
            succ.append(k + 1)
        for j in succ:
            nc = (cost[0] + _load_bytes(insns[first + j][2]), cost[1] - 1)
            if best[j] is None or nc > best[j]:
                best[j] = nc
                prev[j] = k
    if done is None:
        return None
    if not with_path:
        return (-done[1], done[0])
    path = []
    k = done_at
    while k is not None:
        path.append(first + k)
        k = prev[k]
    return (-done[1], done[0], path[::-1])


def hot_loop(insns, loops=None):
    """loop_stats() of the hot loop (module docstring), or None when no loop loads global memory."""
    loops = find_loops(insns) if loops is None else loops
    stats = [loop_stats(insns, lp) for lp in loops]
    loading = [i for i, s in enumerate(stats) if s["load_bytes"] > 0]
    cands = [i for i in loading if not any(_nested(loops[j], loops[i]) for j in loading)]
    if not cands:
        return None
    best = max(cands, key=lambda i: (stats[i]["load_bytes"], -stats[i]["instructions"], -stats[i]["start"]))
    hp = heaviest_path(insns, loops[best])
    vp = vector_path(insns, loops[best], with_path=True)
    vstores = None
    if vp:
        vstores = {}
        for i in vp[2]:
            key = mem_counts([insns[i]])
            for k2, c in key.items():
                if k2.startswith(("STG.", "ST.")):
                    vstores[k2] = vstores.get(k2, 0) + c
    return dict(stats[best], path_instructions=hp and hp[0], path_load_bytes=hp and hp[1],
                vector_instructions=vp and vp[0], vector_load_bytes=vp and vp[1], vector_stores=vstores)


_DTYPES = [(re.compile(r"(?<![\w:])(?:c10::)?(BFloat16|__nv_bfloat16|bf16)(?!\w)"), "bf16", 2),
           (re.compile(r"(?<![\w:])(?:c10::)?(Half|__half|half|f16)(?!\w)"), "f16", 2),
           (re.compile(r"(?<![\w:])float(?!\w)"), "float", 4),
           (re.compile(r"(?<![\w:])double(?!\w)"), "double", 8)]


def template_args(demangled: str) -> str:
    """The template argument list of the function name (outermost <...> before the parameters)."""
    depth = 0
    start = None
    for i, ch in enumerate(demangled):
        if ch == "(" and depth == 0:
            break
        if ch == "<":
            if depth == 0:
                start = i + 1
            depth += 1
        elif ch == ">":
            depth -= 1
            if depth == 0 and start is not None:
                return demangled[start:i]
    return ""


def kernel_dtype(demangled: str):
    """(dtype, element bytes) of the first dtype among the template arguments, or (None, 4)."""
    args = template_args(demangled)
    best = None
    for rx, name, size in _DTYPES:
        m = rx.search(args)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), name, size)
    return (best[1], best[2]) if best else (None, 4)


def demangle(names) -> dict:
    names = list(names)
    filt = shutil.which("c++filt") or shutil.which("cu++filt")
    if not filt or not names:
        return {n: n for n in names}
    clean = [n.rstrip("#") for n in names]
    r = subprocess.run([filt], input="\n".join(clean) + "\n", capture_output=True, text=True)
    out = r.stdout.splitlines()
    if r.returncode != 0 or len(out) != len(names):
        return {n: n for n in names}
    return dict(zip(names, out))


def short_name(demangled: str) -> str:
    """The kernel's name without namespaces, `void` and the parameter list; bf16 / f16 for the
    CUDA half types (the names tests/test_cuda_build.py prints)."""
    d = re.sub(r"^void ", "", demangled)
    depth = 0
    for i, ch in enumerate(d):  # drop the parameter list: the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            d = d[:i]
            break
    d = re.sub(r"\b(?:smoothing_ext|bce|cuda)::", "", d)
    d = d.replace("(bool)0", "false").replace("(bool)1", "true")
    return d.replace("__nv_bfloat16", "bf16").replace("__half", "f16")


# ------------------------------------------------------------------------------------------------
# launch configuration, occupancy, budget
# ------------------------------------------------------------------------------------------------

def block_size(kernel: str) -> int:
    """Threads per block the launchers use (csrc/cuda/cross_entropy_kernels.cuh, bce_kernels.cuh):
    row kernels 256 with G = 8 or 32 lanes per row, 512 for block-per-row (G = 0; 256 when
    2048 < C < 16384); strided, combine and BCE kernels 256. `kernel` is a short_name()."""
    if kernel.startswith(("fwd_rows_kernel", "bwd_rows_kernel", "fused_rows_kernel", "scale_rows_kernel")):
        m = re.search(r",\s*(-?\d+)>$", kernel)
        if m and int(m.group(1)) == 0:
            return 512
    return 256


# Per-SM limits: registers, threads, blocks, shared memory (bytes; 1 KiB of it reserved per block).
SM_LIMITS = {
    "sm_75": dict(regs=65536, threads=1024, blocks=16, smem=65536),
    "sm_80": dict(regs=65536, threads=2048, blocks=32, smem=167936),
    "sm_86": dict(regs=65536, threads=1536, blocks=16, smem=102400),
    "sm_89": dict(regs=65536, threads=1536, blocks=24, smem=102400),
    "sm_90": dict(regs=65536, threads=2048, blocks=32, smem=233472),
}


def occupancy(arch: str, regs: int, smem: int, block: int):
    """Theoretical occupancy (resident warps / max warps per SM), or None for an unknown arch.
    Registers are allocated per warp in units of 256."""
    lim = SM_LIMITS.get(arch)
    if lim is None:
        return None
    warps_per_block = (block + 31) // 32
    regs_per_warp = ((max(regs, 1) * 32 + 255) // 256) * 256
    by_regs = (lim["regs"] // regs_per_warp) // warps_per_block
    by_threads = lim["threads"] // block
    by_smem = lim["smem"] // (smem + 1024)
    blocks = max(0, min(by_regs, by_threads, by_smem, lim["blocks"]))
    return blocks * warps_per_block / (lim["threads"] // 32)


BUDGET = {"forward": 8, "backward": 12, "fused": 20}


def family(kernel: str) -> str:
    """forward, backward, fused or other, from a short_name()."""
    if kernel.startswith("fused_"):
        return "fused"
    if kernel.startswith(("bwd_", "scale_rows_kernel", "scale_strided_kernel")):
        return "backward"
    if kernel.startswith("fwd_combine"):
        return "other"
    if kernel.startswith("fwd_"):
        return "forward"
    m = re.match(r"bce_kernel<[^,]+,[^,]+,\s*(true|false)", kernel)
    if m:
        return "backward" if m.group(1) == "true" else "forward"
    return "other"


def budget(row: dict) -> dict:
    """{'instr/elem', 'STG.128', 'occupancy'}: 'pass', 'FAIL' or 'n/a' (module docstring). `row`: an
    analyze() row."""
    limit = BUDGET.get(row["family"])
    ipe = row.get("vector_instr_per_element")
    ipe = row["instr_per_element"] if ipe is None else ipe
    res = {"instr/elem": "n/a" if limit is None or ipe is None else ("pass" if ipe <= limit else "FAIL")}
    hot = row["hot_loop"] or {}
    stores = hot.get("stores", {})
    if hot.get("vector_stores") is not None:
        stores = hot["vector_stores"]  # the vector path's stores: a scalar fall-back is not a 16-byte store
    if not stores or "_strided_" in row["kernel"]:
        res["STG.128"] = "n/a"
    else:
        res["STG.128"] = "pass" if set(stores) == {"STG.128"} else "FAIL"
    occ = row["occupancy"]
    res["occupancy"] = "n/a" if occ is None else ("pass" if occ >= 0.5 else "FAIL")
    return res


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

def analyze(sass: str, res_usage: str = "", arch: str = "sm_90") -> list:
    """Per-kernel rows (dicts, sorted by name) from the SASS and -res-usage text."""
    funcs = parse_sass(sass)
    res = parse_res_usage(res_usage)
    names = demangle(funcs)
    rows = []
    for mangled, insns in funcs.items():
        dem = names[mangled]
        short = short_name(dem)
        dtype, esize = kernel_dtype(dem)
        r = res.get(mangled.rstrip("#"), {})
        block = block_size(short)
        loops = find_loops(insns)
        hot = hot_loop(insns, loops)
        elems = hot["load_bytes"] / esize if hot else None
        path_elems = hot["path_load_bytes"] / esize if hot and hot["path_instructions"] else None
        rows.append(dict(
            kernel=short, mangled=mangled, demangled=dem, dtype=dtype, element_bytes=esize,
            instructions=len(insns), regs=r.get("regs"), stack=r.get("stack"), local=r.get("local"),
            shared=r.get("shared"), block=block,
            occupancy=occupancy(arch, r["regs"], r["shared"], block) if r else None,
            mem=mem_counts(insns), loops=len(loops), hot_loop=hot,
            elements_per_iter=elems, instr_per_element=hot["instructions"] / elems if hot else None,
            path_instr_per_element=hot["path_instructions"] / path_elems if path_elems else None,
            vector_instr_per_element=(hot["vector_instructions"] / (hot["vector_load_bytes"] / esize)
                                      if hot and hot["vector_instructions"] else None),
            family=family(short)))
    rows.sort(key=lambda x: x["kernel"])
    return rows


def _widths(mem: dict, kind: str, bits=(128, 64, 32, 16, 8)) -> str:
    return "/".join(str(mem.get(f"{kind}.{b}", 0)) for b in bits)


def _num(v, fmt="{}"):
    return "-" if v is None else fmt.format(v)


def markdown(rows: list, arch: str, lib: str = "") -> str:
    lines = [
        f"# SASS report ({arch})",
        "",
        f"`cuobjdump -sass -arch {arch}`{' of `' + os.path.basename(lib) + '`' if lib else ''}: static counts.",
        "The docstring of scripts/sass_report.py defines the hot loop and instructions per element.",
        "LDG/STG: global loads/stores of 128/64/32/16/8 bits; LDS/STS: shared, all widths.",
        "instr/elem: the whole hot-loop body; path: one iteration along its path that loads the most.",
        "",
        "| kernel | block | regs | stack/local (B) | smem (B) | occupancy | LDG 128/64/32/16/8 "
        "| STG 128/64/32/16/8 | LDS/STS | loops | hot loop instr | LDG B/iter | elem/iter | instr/elem "
        "| path instr | path LDG B | path instr/elem | vec path instr | vec instr/elem |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["mem"]
        lds = sum(v for k, v in m.items() if k.startswith("LDS."))
        sts = sum(v for k, v in m.items() if k.startswith("STS."))
        h = r["hot_loop"]
        lines.append(
            f"| `{r['kernel']}` | {r['block']} | {_num(r['regs'])} | {_num(r['stack'])}/{_num(r['local'])} "
            f"| {_num(r['shared'])} | {_num(r['occupancy'], '{:.0%}')} | {_widths(m, 'LDG')} | {_widths(m, 'STG')} "
            f"| {lds}/{sts} | {r['loops']} | {_num(h and h['instructions'])} | {_num(h and h['load_bytes'])} "
            f"| {_num(r['elements_per_iter'], '{:g}')} | {_num(r['instr_per_element'], '{:.1f}')} "
            f"| {_num(h and h['path_instructions'])} | {_num(h and h['path_load_bytes'])} "
            f"| {_num(r['path_instr_per_element'], '{:.1f}')} "
            f"| {_num(h and h['vector_instructions'])} | {_num(r['vector_instr_per_element'], '{:.1f}')} |")
    return "\n".join(lines) + "\n"


def budget_markdown(rows: list) -> str:
    lines = [
        "## Budget (informational)",
        "",
        "instr/elem <= 8 forward, <= 12 backward, <= 20 fused; hot-loop global stores all STG.E.128; "
        "occupancy >= 50%.",
        "",
        "| kernel | family | instr/elem | path instr/elem | vec instr/elem | budget | within budget | stores STG.128 "
        "| occupancy >= 50% |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = budget(r)
        lines.append(f"| `{r['kernel']}` | {r['family']} | {_num(r['instr_per_element'], '{:.1f}')} "
                     f"| {_num(r['path_instr_per_element'], '{:.1f}')} "
                     f"| {_num(r['vector_instr_per_element'], '{:.1f}')} "
                     f"| {_num(BUDGET.get(r['family']))} | {b['instr/elem']} | {b['STG.128']} | {b['occupancy']} |")
    return "\n".join(lines) + "\n"


def report(lib: str, arch: str = "sm_90") -> list:
    sass, res = run_cuobjdump(lib, arch)
    rows = analyze(sass, res, arch)
    if not rows:
        raise RuntimeError(f"no {arch} kernels in {lib}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lib", help="shared library or cubin with device code")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", default=os.path.join(REPO, "build", "sass_report.md"), help="Markdown report")
    ap.add_argument("--json", help="raw per-kernel numbers")
    ap.add_argument("--budget", action="store_true", help="also print the budget table (never fails)")
    args = ap.parse_args(argv)
    try:
        rows = report(args.lib, args.arch)
    except (RuntimeError, OSError) as e:
        print(f"sass_report: {e}", file=sys.stderr)
        return 1
    text = markdown(rows, args.arch, args.lib)
    if args.budget:
        text += "\n" + budget_markdown(rows)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"written to {args.out}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(arch=args.arch, lib=os.path.abspath(args.lib), kernels=rows), f, indent=1)
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
