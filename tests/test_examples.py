"""Smoke tests of examples/: the digits label-smoothing study in --quick mode and the swap-in example.

They run the scripts as a user would (a subprocess with this interpreter) and check the outputs exist
and the metrics are sane; the numbers themselves are not asserted (they are reported in docs/example.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_digits_quick(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="examples/label_smoothing_digits.py needs scikit-learn (extra 'example')")
    pytest.importorskip("matplotlib", reason="examples/label_smoothing_digits.py needs matplotlib (extra 'example')")
    out = tmp_path / "out"
    proc = _run([str(EXAMPLES / "label_smoothing_digits.py"), "--quick", "--out", str(out), "--no-progress"],
                cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"

    for name in ("reliability_diagram.png", "confidence_histogram.png"):
        png = out / name
        assert png.is_file() and png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    md = (out / "results.md").read_text()
    assert "| eps |" in md and "ECE" in md

    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert set(summary) == {"0", "0.1"}
    assert results["config"]["seeds"] == 2 and results["config"]["quick"] is True
    for eps, runs in results["per_seed"].items():
        assert len(runs) == 2, eps
        for r in runs:
            assert 0.5 < r["accuracy"] <= 1.0, (eps, r)
            assert 0.0 <= r["ece"] <= 1.0, (eps, r)
            assert math.isfinite(r["nll"]) and r["nll"] > 0.0, (eps, r)
            assert 0.0 < r["mean_confidence"] <= 1.0, (eps, r)
        for key in ("accuracy", "nll", "ece"):
            assert math.isfinite(summary[eps][key]["mean"]) and summary[eps][key]["std"] >= 0.0
    # The table printed on stdout is the one written to results.md.
    assert md.split("\n", 2)[2].strip() in proc.stdout


@pytest.mark.slow
def test_swap_in_training_loop(tmp_path: Path) -> None:
    # Default settings: bf16 autocast + torch.compile(fullgraph=True); most of the time is compilation.
    proc = _run([str(EXAMPLES / "swap_in_training_loop.py")], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "OK: losses agree" in proc.stdout
