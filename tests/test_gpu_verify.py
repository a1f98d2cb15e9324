"""scripts/gpu_verify.sh (make gpu-check) cannot run here for real (no GPU); these tests keep it from
rotting: its plumbing (step records, a failed step followed by the next, the time budget, the exit
status) with a fake build, and a full --dry-run that runs every step it can on the CPU against the
CUDA build tests/test_cuda_build.py makes (shared through its cached_build(): no extra build here).

The dry run takes ~2-3 min on 2 cores (collection of the CUDA tests with CUDA faked, the checks and
the sanitizer case on the CPU with tiny shapes, the benchmark script with tiny shapes and one
torch.compile); it is marked slow and cuda_build (it needs nvcc and a CUDA build of torch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPT = os.path.join(REPO, "scripts", "gpu_verify.sh")
sys.path.insert(0, HERE)

STEPS = ["device", "venv", "build", "pytest", "checks", "memcheck", "racecheck", "synccheck", "extras", "bench"]


def _venv() -> str:
    return sys.prefix  # the interpreter running the tests: its venv has torch, so the venv step is skipped


def _run(out, extra_env=None, timeout=900):
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update(GPU_VERIFY_VENV=_venv())
    env.update(extra_env or {})
    r = subprocess.run(["bash", SCRIPT, "--dry-run", str(out)], env=env, capture_output=True, text=True,
                       timeout=timeout)
    res = json.load(open(os.path.join(out, "results.json")))
    return r, res, {s["name"]: s for s in res["steps"]}


def test_script_syntax_and_help():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
    r = subprocess.run(["bash", SCRIPT, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--dry-run" in r.stdout
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "-S", "error", SCRIPT], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


@pytest.mark.slow
def test_failed_build_is_recorded_and_the_rest_skipped(tmp_path):
    """A failing step is recorded (with its log), the later steps are recorded as skipped, the exit
    status is 1 and results.md says so."""
    r, res, steps = _run(tmp_path / "out", dict(GPU_VERIFY_PREBUILT=str(tmp_path / "missing")), timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert steps["device"]["status"] == "pass" and steps["venv"]["status"] == "pass", steps
    assert steps["build"]["status"] == "fail", steps["build"]
    for s in STEPS[3:]:
        assert steps[s]["status"] == "skipped", steps[s]
    md = open(tmp_path / "out" / "results.md").read()
    assert "Dry run: no GPU was used" in md and "| build | fail |" in md
    assert os.path.exists(tmp_path / "out" / "logs" / "build.log")
    assert "FAILED: build" in r.stdout


@pytest.mark.slow
def test_time_budget_skips_steps(tmp_path):
    """Steps that would start with less than 3 s of the budget left are skipped, not started."""
    fake = tmp_path / "tree"
    (fake / "smoothing_ext").mkdir(parents=True)
    (fake / "smoothing_ext" / "_C.fake.so").write_text("")
    r, res, steps = _run(tmp_path / "out", dict(GPU_VERIFY_PREBUILT=str(fake), GPU_VERIFY_BUDGET_S="9"),
                         timeout=300)
    assert r.returncode == 1
    assert any(s["status"] == "skipped" and "budget" in s["note"] for s in steps.values()), steps
    assert res["meta"]["budget"] == 9


def test_report_tool(tmp_path):
    rep = [sys.executable, os.path.join(REPO, "scripts", "gpu_verify_report.py")]
    out = str(tmp_path)
    assert subprocess.run(rep + ["init", out, "--mode", "gpu", "--budget", "480", "--root", REPO]).returncode == 0
    subprocess.run(rep + ["step", out, "--name", "a", "--status", "pass", "--seconds", "1.5", "--note", "ok"], check=True)
    subprocess.run(rep + ["step", out, "--name", "b", "--status", "fail", "--seconds", "2", "--note", "x",
                          "--required", "0"], check=True)
    r = subprocess.run(rep + ["finish", out, "--seconds", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout  # only an optional step failed
    subprocess.run(rep + ["step", out, "--name", "c", "--status", "timeout", "--seconds", "9", "--note", ""],
                   check=True)
    r = subprocess.run(rep + ["finish", out, "--seconds", "12"], capture_output=True, text=True)
    assert r.returncode == 1 and "FAILED: c" in r.stdout
    res = json.load(open(tmp_path / "results.json"))
    assert [s["name"] for s in res["steps"]] == ["a", "b", "c"] and res["meta"]["total_seconds"] == 12


def _dry_run_skip_reason():
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if torch.version.cuda is None:
        return "needs a CUDA build of torch (the dry run uses the CUDA build of tests/test_cuda_build.py)"
    import test_cuda_build

    if test_cuda_build._cuda_home() is None:
        return "needs nvcc (set CUDA_HOME)"
    return None


@pytest.mark.slow
@pytest.mark.cuda_build
def test_dry_run(tmp_path):
    why = _dry_run_skip_reason()
    if why:
        pytest.skip(why)
    import test_cuda_build

    build = test_cuda_build.cached_build()
    out = tmp_path / "out"
    r, res, steps = _run(out, dict(GPU_VERIFY_PREBUILT=build["tree"]), timeout=1500)
    log = r.stdout + r.stderr
    print(open(out / "results.md").read())
    print(f"(the CUDA build it used took {build['seconds']:.0f} s{', cached' if build['reused'] else ''})")
    assert r.returncode == 0, log[-6000:]
    assert [s for s in STEPS if s not in steps] == [], steps.keys()
    for s in STEPS:
        assert steps[s]["status"] == "pass", (s, steps[s], open(out / "logs" / f"{s}.log").read()[-3000:])
    assert "collected" in steps["pytest"]["note"] and " 0 CUDA cases" not in steps["pytest"]["note"]
    checks = json.load(open(out / "checks.json"))
    assert checks["device"] == "cpu" and checks["tiny"]
    assert not [c for c in checks["results"] if c["status"] == "fail"]
    assert sum(c["status"] == "pass" for c in checks["results"]) > 100
    bench = json.load(open(out / "bench.json"))
    impls = {(row.get("impl"), row.get("mode")) for row in bench["rows"] if "ms" in row}
    assert {("copy", "d2d copy"), ("ours", "forward"), ("ours", "forward+backward"), ("ours", "fused"),
            ("eager", "forward+backward"), ("compiled", "forward+backward")} <= impls, impls
    assert bench["bars"] and all(b["status"] == "not evaluated (dry run)" for b in bench["bars"])
    md = open(out / "results.md").read()
    assert "Dry run: no GPU was used" in md and "not GPU results" in md
