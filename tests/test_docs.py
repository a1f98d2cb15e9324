"""Every Python and C++ code block of README.md and docs/*.md runs, and checks its result.

Blocks are fenced (```python / ```cpp); shell, CMake and text blocks are not run. HTML comments right
before or after a block (invisible in the rendered Markdown) control how it runs:

    <!-- doctest: setup
    code run before the block (Python) / put before it (C++): imports, small inputs, `int main() {`
    -->
    <!-- doctest: check
    code run after the block (right after its closing fence): compares what it computed with an oracle
    -->
    <!-- doctest: skip (the reason, required) -->
    <!-- doctest: signatures (omitted: name, ...) -->   an API listing: each `smoothing_ext.NAME(...)` is
        compared with inspect.signature of the real object (names, order, defaults, keyword-only), the
        omitted names excepted

Python blocks run in a fresh interpreter each (small inputs, seconds). C++ blocks are compiled with
the compiler torch's extensions use, against the headers and libraries of the torch under test, linked
with the compiled smoothing_ext library (loading it registers the ops, as the docs say), and run;
marked slow (~1 minute for both).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGS = {"python": "python", "py": "python", "cpp": "cpp", "c++": "cpp"}

_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"<!--\s*doctest:\s*(\w+)(.*?)-->", re.S)


@dataclasses.dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str  # "python" or "cpp"
    code: str
    setup: str = ""
    check: str = ""
    skip: str | None = None  # the reason
    signatures: str | None = None  # the directive's argument ("" if none)

    @property
    def id(self) -> str:
        return "%s:%d" % (self.path.relative_to(ROOT), self.line)


def _directives(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _DIRECTIVE.finditer(text)]


def _adjacent_comments(lines: list[str], start: int, step: int) -> str:
    """The HTML comments directly above (step -1) or below (step +1) line `start`, blank lines
    between them allowed, as one text."""
    out: list[str] = []
    i = start
    while 0 <= i < len(lines):
        s = lines[i].strip()
        if not s:
            i += step
            continue
        if step < 0 and s.endswith("-->"):
            j = i
            while j >= 0 and "<!--" not in lines[j]:
                j -= 1
            if j < 0:
                break
            out.insert(0, "\n".join(lines[j:i + 1]))
            i = j - 1
        elif step > 0 and s.startswith("<!--"):
            j = i
            while j < len(lines) and "-->" not in lines[j]:
                j += 1
            out.append("\n".join(lines[i:j + 1]))
            i = j + 1
        else:
            break
    return "\n".join(out)


def extract(path: Path) -> list[Block]:
    """The Python and C++ blocks of a Markdown file, with their directives."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith(fence):
            j += 1
        if lang in RUN_LANGS:
            b = Block(path, i + 1, RUN_LANGS[lang], "\n".join(lines[i + 1:j]) + "\n")
            for where, text in (("before", _adjacent_comments(lines, i - 1, -1)),
                                ("after", _adjacent_comments(lines, j + 1, +1))):
                for name, arg in _directives(text):
                    if name == "setup" and where == "before":
                        b.setup += arg.strip("\n") + "\n"
                    elif name == "check" and where == "after":
                        b.check += arg.strip("\n") + "\n"
                    elif name == "skip" and where == "before":
                        b.skip = arg.strip().strip("()").strip()
                    elif name == "signatures" and where == "before":
                        b.signatures = arg.strip().strip("()").strip()
            blocks.append(b)
        i = j + 1
    return blocks


BLOCKS = [b for p in DOCS for b in extract(p)]


def test_blocks_are_found():
    """The extraction itself: README.md has Python and C++ blocks, and so does docs/install.md."""
    readme = [b for b in BLOCKS if b.path.name == "README.md"]
    install = [b for b in BLOCKS if b.path.name == "install.md"]
    assert sum(b.lang == "python" for b in readme) >= 5 and any(b.lang == "cpp" for b in readme)
    assert any(b.lang == "cpp" for b in install)
    for b in BLOCKS:
        assert b.skip is None or b.skip, "%s: a skip needs a stated reason" % b.id


def _listed_signatures(code: str) -> list[tuple[str, str]]:
    """(name, parameter text) of each `smoothing_ext.NAME(...)` of a listing (multi-line, balanced)."""
    out = []
    for m in re.finditer(r"smoothing_ext\.(\w+)\(", code):
        depth, k = 1, m.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(code[k], 0)
            k += 1
        out.append((m.group(1), code[m.end():k - 1]))
    return out


def _check_signatures(b: Block) -> None:
    import smoothing_ext

    omitted = {s.strip() for s in re.sub(r"^omitted:", "", b.signatures or "").split(",") if s.strip()}
    listed = _listed_signatures(b.code)
    assert listed, b.id
    kwonly_of_ce = [p.name for p in inspect.signature(smoothing_ext.cross_entropy).parameters.values()
                    if p.kind is p.KEYWORD_ONLY]
    for name, text in listed:
        same = "<same keywords>" in text
        text = text.replace("<same keywords>", "").strip().rstrip(",")
        text = re.sub(r",\s*\*\s*,?\s*$", "", text)  # a bare `*,` left before the placeholder
        fn = ast.parse("def f(%s): pass" % text).body[0]
        args = fn.args
        pos = [a.arg for a in args.args]
        pos_defaults = dict(zip(pos[len(pos) - len(args.defaults):], args.defaults))
        kw = [a.arg for a in args.kwonlyargs]
        kw_defaults = dict(zip(kw, args.kw_defaults))
        real = inspect.signature(getattr(smoothing_ext, name))
        params = [p for p in real.parameters.values()
                  if p.name not in omitted and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        real_pos = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        real_kw = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        where = "%s: smoothing_ext.%s" % (b.id, name)
        assert pos == real_pos, "%s positional %s, real %s" % (where, pos, real_pos)
        expected_kw = real_kw if not same else [k for k in real_kw if k not in kwonly_of_ce]
        if same:  # the listing says: the same keywords as cross_entropy
            has_var_kw = any(p.kind is p.VAR_KEYWORD for p in real.parameters.values())
            assert has_var_kw or set(kwonly_of_ce) <= set(real_kw), where
        assert kw == expected_kw, "%s keyword-only %s, real %s" % (where, kw, expected_kw)
        for p in params:
            node = pos_defaults.get(p.name, kw_defaults.get(p.name))
            if node is not None:
                assert ast.literal_eval(node) == p.default, "%s: default of %s" % (where, p.name)
            elif p.name in pos + kw:
                assert p.default is inspect.Parameter.empty, "%s: %s has a default not listed" % (where, p.name)


def _run_python(b: Block, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text("# %s\n%s\n%s\n%s" % (b.id, b.setup, b.code, b.check))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, "%s failed:\n%s\n%s" % (b.id, script.read_text(), r.stderr[-4000:])


PY_BLOCKS = [b for b in BLOCKS if b.lang == "python"]
CPP_BLOCKS = [b for b in BLOCKS if b.lang == "cpp"]


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[b.id for b in PY_BLOCKS])
def test_python_block(block: Block, tmp_path):
    if block.skip is not None:
        pytest.skip(block.skip)
    if block.signatures is not None:
        _check_signatures(block)
        return
    _run_python(block, tmp_path)


def _compile_command(src: Path, exe: Path) -> tuple[list[str], dict]:
    import torch
    import torch.utils.cpp_extension as ce

    import smoothing_ext

    pkg = Path(smoothing_ext.__file__).resolve().parent
    libs = sorted(pkg.glob("_C*.so"))
    if not libs:
        pytest.skip("the smoothing_ext under test has no compiled _C*.so to link")
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        pytest.skip("needs a C++ compiler")
    cmd = [cxx, "-std=c++20", "-O0", "-w", str(src), "-o", str(exe)]
    cmd += ["-I" + d for d in ce.include_paths()]
    cmd += ["-D_GLIBCXX_USE_CXX11_ABI=%d" % int(torch._C._GLIBCXX_USE_CXX11_ABI)]
    cmd += ["-L" + torch_lib, "-Wl,-rpath," + torch_lib, "-Wl,--no-as-needed", str(libs[0]),
            "-ltorch", "-ltorch_cpu", "-lc10"]
    # The Python extension's one Python symbol (its module init, never called here) resolves against
    # libpython; without a shared libpython, leave it unresolved (bound lazily, never used).
    libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY") or ""
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir and ldlib.endswith(".so"):
        cmd += ["-L" + libdir, "-Wl,-rpath," + libdir, "-l" + ldlib[3:-3]]
    else:
        cmd += ["-Wl,--unresolved-symbols=ignore-in-shared-libs"]
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, [torch_lib, os.environ.get("LD_LIBRARY_PATH")])))
    return cmd, env


@pytest.mark.slow
def test_cpp_blocks(tmp_path):
    """All C++ blocks (those with a skip directive excepted: their reasons are checked in
    test_blocks_are_found), compiled in parallel (one compiler process each), then run one by one."""
    todo = [b for b in CPP_BLOCKS if b.skip is None]
    assert todo
    jobs = []
    for k, b in enumerate(todo):
        src, exe = tmp_path / ("block%d.cpp" % k), tmp_path / ("block%d" % k)
        src.write_text("// %s\n%s\n%s\n%s" % (b.id, b.setup, b.code, b.check))
        cmd, env = _compile_command(src, exe)
        jobs.append((b, src, exe, env, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                        text=True)))
    failures = []
    for b, src, exe, env, proc in jobs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failures.append("%s does not compile:\n%s\n%s" % (b.id, src.read_text(), out[-4000:]))
            continue
        r = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            failures.append("%s failed (exit %d):\n%s\n%s%s" % (b.id, r.returncode, src.read_text(), r.stdout,
                                                              r.stderr[-4000:]))
    assert not failures, "\n\n".join(failures)
