"""The benchmark runs end to end and writes what it promises (numbers themselves are not asserted:
timings belong to the benchmark, not to tests)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys


def test_bench_small_run_writes_json_csv_markdown(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "smoothing_ext.bench", "--workloads", "cls-1k-small,seg-21", "--dtypes", "float32",
         "--modes", "fwd,fwdbwd", "--weight", "both", "--impls", "smoothing_ext,torch,seed_nll", "--budget", "0.05",
         "--json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv"), "--markdown", str(tmp_path / "b.md")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| smoothing_ext ms |" in out.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    rows = data["rows"]
    assert {r["impl"] for r in rows} == {"smoothing_ext", "torch", "seed_nll"}
    assert len(rows) == 2 * 2 * 2 * 3
    ours = [r for r in rows if r["impl"] == "smoothing_ext"]
    assert all(r["time_ms"] > 0 and r["max_err"] < 1e-4 for r in ours)
    # the seed formulation has no class weights: reported, not run
    assert all(r["note"] == "no class weights" for r in rows if r["impl"] == "seed_nll" and r["weighted"])
    with open(tmp_path / "b.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert "smoothing_ext" in (tmp_path / "b.md").read_text()


def test_bench_rejects_unknown_workload():
    out = subprocess.run([sys.executable, "-m", "smoothing_ext.bench", "--workloads", "nope"], capture_output=True, text=True)
    assert out.returncode != 0 and "unknown workload" in out.stderr


def test_bench_feature_rows(tmp_path):
    """Each feature row runs smoothing_ext's implementation(s) next to the plain-PyTorch formula, with
    a small error against the float64 reference."""
    out = subprocess.run(
        [sys.executable, "-m", "smoothing_ext.bench", "--workloads", "cls-1k-small", "--modes", "fwd,fwdbwd",
         "--features", "fused,off_target,zloss+softcap,bce", "--impls", "smoothing_ext,torch", "--budget", "0.02",
         "--no-memory", "--json", str(tmp_path / "f.json")],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    got = {(r["feature"], r["mode"], r["impl"]) for r in rows}
    for mode in ("fwd", "fwdbwd"):
        for impl in ("smoothing_ext", "smoothing_ext[fused]", "smoothing_ext[fused,inplace]", "torch"):
            assert ("fused", mode, impl) in got
        for feature in ("off_target", "zloss+softcap", "bce"):
            assert (feature, mode, "smoothing_ext") in got and (feature, mode, "torch") in got
    for r in rows:
        assert r["time_ms"] and r["time_ms"] > 0, r
        assert r["max_err"] < 1e-4, r
