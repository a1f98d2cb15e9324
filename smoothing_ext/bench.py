"""Side-by-side benchmark: ``python -m smoothing_ext.bench``.

For each workload (shape named by what users train), dtype and mode (forward, forward+backward),
every implementation is timed in the same process: smoothing_ext, eager
``F.cross_entropy(label_smoothing=eps)``, ``torch.compile`` of it, the seeds' two plain-PyTorch
formulations, and Liger / apex / flash-attn on CUDA when importable. Each row reports the median
time after warm-up, the speed-up over eager and over compiled PyTorch, the time of the memory-traffic
floor measured in the same run (forward: ``exp(x, out=)``, forward+backward: ``x.sum() + x.exp()`` on the CPU; CUDA: fractions
of a device-to-device copy), the effective bandwidth (ideal traffic: one read for the forward, read +
read + write for forward+backward) and its percentage of the bandwidth measured in the same run (CPU:
a read pass ``x.sum()``; CUDA: a copy), the peak extra memory, and the error against a float64
reference.

    python -m smoothing_ext.bench                 # default set (< 3 minutes on 2 CPU cores)
    python -m smoothing_ext.bench --quick         # CI smoke run (< 1 minute)
    python -m smoothing_ext.bench --workloads lm-32k --dtypes bfloat16 --modes fwdbwd --json out.json
    python -m smoothing_ext.bench --workloads lm-32k --dtypes bfloat16 --modes fwdbwd --features fused
    python -m smoothing_ext.bench --quick --strict  # exit 1 when a check below fails

Every run checks that its numbers can be trusted, warns loudly (stdout and stderr) when not, and
exits 1 with ``--strict``: the machine is busy (the 1-minute load average at the start, and a
calibration loop before every case that measures the share of the CPU this process gets and its
speed, compared across the run), a row's run-to-run spread (interquartile range of the repeats over
their median) is above ``--max-spread``, a floor is implausible (its bandwidth above the copy
bandwidth measured on the same tensor), or a row's result differs from the oracle's
(``F.cross_entropy`` in float64 on the same inputs, or the feature's float64 reference) by more than
the dtype's tolerance. ``--threads`` (default: the physical cores) sets ``torch.set_num_threads``.

Features beyond F.cross_entropy are compared with the same computation written in plain PyTorch
(eager and compiled): ``fused`` (grad_in_forward, separate buffer and in place, against the default
mode too), ``off_target`` (fairseq's formulation), ``zloss+softcap`` (capped logits, then
F.cross_entropy + z * lse^2) and ``bce`` (F.binary_cross_entropy_with_logits on the smoothed target).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

import smoothing_ext
from smoothing_ext import _bench_impls
from smoothing_ext._reference import reference_cross_entropy
from smoothing_ext.info import physical_cores

# Largest accepted error against the oracle (float64 on the same, already rounded, inputs): the
# mean loss relative to max(1, |loss|), and for fwdbwd the gradient relative to its largest entry.
# Output rounding of bfloat16/float16 implementations dominates their error.
ORACLE_TOL = {"float64": 1e-7, "float32": 1e-4, "bfloat16": 4e-2, "float16": 5e-3}
# The calibration loop must get at least this share of the CPU (1.0: every torch thread ran all the
# time) and its speed may vary at most this much across the run; otherwise the machine is busy.
MIN_CPU_SHARE = 0.85
MAX_CALIBRATION_DRIFT = 1.25
DEFAULT_MAX_SPREAD_PCT = 10.0
# A floor whose implied bandwidth exceeds the copy bandwidth measured on the same tensor by more
# than this factor cannot be a real memory-traffic floor (a timing that did not wait, or a cache effect).
FLOOR_BW_MARGIN = 1.25

# ---------------------------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    shape: tuple[int, ...]  # input shape; class dim 1
    devices: tuple[str, ...] = ("cpu", "cuda")

    @property
    def C(self) -> int:
        return self.shape[1]

    @property
    def target_shape(self) -> tuple[int, ...]:
        return (self.shape[0], *self.shape[2:])

    @property
    def rows(self) -> int:
        return math.prod(self.target_shape)


WORKLOADS = {
    "cls-1k-small": Workload("cls-1k-small", (256, 1000)),
    "cls-1k": Workload("cls-1k", (8192, 1000)),
    "seg-21": Workload("seg-21", (8, 21, 128, 128)),
    "lm-32k": Workload("lm-32k", (4096, 32000)),
    "lm-128k": Workload("lm-128k", (2048, 128256), devices=("cpu",)),
    "lm-128k-gpu": Workload("lm-128k-gpu", (8192, 128256), devices=("cuda",)),
}

# (workload, dtype, mode, weighted, implementations) of the default run; the seeds' formulations
# only where they finish in reasonable time on 2 cores.
ALL_IMPLS = ("smoothing_ext", "torch", "torch.compile", "seed_onehot", "seed_nll", "liger", "apex", "flash_attn")


# Features beyond F.cross_entropy (see _bench_impls.FEATURE_IMPLS): "" is plain label smoothing.
FEATURES = ("", "fused", "off_target", "zloss+softcap", "bce")


def default_cases(device: str, quick: bool) -> list[tuple[str, str, str, bool, str]]:
    if quick:
        return [
            ("cls-1k-small", "float32", "fwdbwd", False, ""),
            ("cls-1k", "float32", "fwd", False, ""),
            ("cls-1k", "float32", "fwdbwd", True, ""),
            ("seg-21", "float32", "fwdbwd", False, ""),
            ("cls-1k-small", "float32", "fwdbwd", False, "fused"),
            ("cls-1k-small", "float32", "fwdbwd", False, "zloss+softcap"),
            ("cls-1k-small", "float32", "fwdbwd", False, "bce"),
        ]
    if device == "cuda":
        cases = []
        for wl in ("cls-1k", "seg-21", "lm-32k", "lm-128k-gpu"):
            for dt in ("float32", "bfloat16", "float16"):
                for mode in ("fwd", "fwdbwd"):
                    cases.append((wl, dt, mode, False, ""))
        cases += [("lm-128k-gpu", "bfloat16", "fwdbwd", True, ""), ("cls-1k", "float32", "fwdbwd", True, "")]
        cases += [("lm-128k-gpu", "bfloat16", "fwdbwd", False, f) for f in FEATURES[1:4]]
        cases += [("cls-1k", "bfloat16", "fwdbwd", False, "bce")]
        return cases
    return [
        ("cls-1k-small", "float32", "fwdbwd", False, ""),
        ("cls-1k", "float32", "fwd", False, ""),
        ("cls-1k", "float32", "fwdbwd", False, ""),
        ("cls-1k", "float32", "fwdbwd", True, ""),
        ("seg-21", "float32", "fwdbwd", False, ""),
        ("lm-32k", "float32", "fwd", False, ""),
        ("lm-32k", "float32", "fwdbwd", False, ""),
        ("lm-32k", "bfloat16", "fwd", False, ""),
        ("lm-32k", "bfloat16", "fwdbwd", False, ""),
        ("lm-32k", "float32", "fwdbwd", True, ""),
        ("lm-128k", "bfloat16", "fwdbwd", False, ""),
        ("lm-32k", "bfloat16", "fwdbwd", False, "fused"),
        ("lm-32k", "float32", "fwdbwd", False, "fused"),
        ("cls-1k", "float32", "fwdbwd", False, "off_target"),
        ("lm-32k", "bfloat16", "fwdbwd", False, "zloss+softcap"),
        ("lm-32k", "bfloat16", "fwd", False, "zloss+softcap"),
        ("cls-1k", "float32", "fwdbwd", False, "bce"),
        ("cls-1k", "bfloat16", "fwdbwd", False, "bce"),
    ]


# ---------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], device: str, min_reps: int, budget_s: float, max_reps: int = 50) -> float:
    """Median wall time of fn() in seconds (see time_samples)."""
    return statistics.median(time_samples(fn, device, min_reps, budget_s, max_reps))


def spread_pct(samples: list[float]) -> Optional[float]:
    """Run-to-run spread of timed repeats: interquartile range over the median, in percent (robust
    to the odd outlier, such as one call that paid for page faults); None below 3 samples."""
    if len(samples) < 3:
        return None
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return 100.0 * (q3 - q1) / statistics.median(samples)


def time_samples(fn: Callable[[], object], device: str, min_reps: int, budget_s: float,
                 max_reps: int = 50) -> list[float]:
    """Wall times of repeated fn() calls in seconds, after warm-up (at least two calls and 0.4 x budget).

    The warm-up matters for large shapes on virtual machines: memory freed and left idle for a
    couple of seconds is handed back to the hypervisor (free page reporting), and the first calls
    after that pay for faulting it in again, several times the steady-state time."""
    w0 = time.perf_counter()
    for i in range(max_reps):
        fn()
        _sync(device)
        if i >= 1 and time.perf_counter() - w0 >= 0.4 * budget_s:
            break
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


@dataclasses.dataclass
class Calibration:
    cpu_share: float  # CPU time of the process / (wall time x torch threads) during the loop
    rate: float  # loop iterations per second


def calibrate(seconds: float = 0.1) -> Calibration:
    """A fixed parallel compute loop (torch.exp over 4 MiB) on the torch threads, timed by the wall
    clock and by the process's CPU clock (all threads): on an idle machine every thread runs the
    whole time (share ~1); competing processes take cores away (two busy loops on two cores: ~0.5),
    which a median time alone cannot tell from a slow kernel. The rate, compared across the run,
    catches a machine that changes under the benchmark."""
    x = torch.rand(1 << 20)
    buf = torch.empty_like(x)
    torch.exp(x, out=buf)  # warm
    n, w0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        torch.exp(x, out=buf)
        n += 1
        wall = time.perf_counter() - w0
        if wall >= seconds:
            break
    cpu = time.process_time() - c0
    return Calibration(cpu_share=cpu / (wall * torch.get_num_threads()), rate=n / wall)


class _RssSampler:
    """Peak resident set size of this process while active, sampled every ~0.2 ms from /proc
    (torch ops release the GIL, so the sampler runs while a kernel runs)."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self) -> "_RssSampler":
        self.base = self._rss()
        self.peak = self.base

        def run():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss())
                time.sleep(0.0002)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def prepare_cpu_memory_measurement() -> bool:
    """Make freed buffers leave the process at once, so that RSS peaks measure allocations:
    glibc otherwise keeps (and reuses) freed chunks below a self-raising mmap threshold. Called
    after all timings, because it would change the timing of allocation-heavy implementations."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 64 * 1024)
        libc.malloc_trim(0)
        return True
    except (OSError, AttributeError):
        return False


def peak_extra_bytes(fn: Callable[[], object], device: str) -> Optional[int]:
    """Peak memory allocated by one call beyond what was allocated before it (CUDA: the caching
    allocator's max_memory_allocated; CPU: sampled process RSS, Linux/glibc only)."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if not os.path.exists("/proc/self/statm"):
        return None
    fn()  # warm (lazy initialisations are not the call's memory)
    with _RssSampler() as s:
        fn()
    return s.peak - s.base


def peak_tensor_bytes(fn: Callable[[], object]) -> Optional[int]:
    """Exact peak of the tensor memory one call allocates beyond what was allocated before it, from
    the profiler's allocation events (every ATen allocation and free, in order). Unlike a sampled
    RSS it cannot miss a short-lived buffer, and glibc's reuse of freed memory does not hide one;
    it does not see memory a library allocates outside ATen (e.g. BLAS scratch). None if the
    profiler records no memory events."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm (lazy initialisations are not the call's memory; its warnings are shown)
    # the profiler's C++ side logs its start and stop to stderr: silenced for the profiled call only
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    events = sorted(((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]"), key=lambda ev: ev[0])  # stable: ties keep their order
    if not events:
        return None
    level = peak = 0
    for _, nbytes in events:
        level += nbytes
        peak = max(peak, level)
    return peak


# ---------------------------------------------------------------------------------------------
# one case
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    workload: str
    shape: str
    dtype: str
    mode: str
    weighted: bool
    impl: str
    device: str
    time_ms: Optional[float] = None
    speedup_vs_torch: Optional[float] = None
    speedup_vs_compile: Optional[float] = None
    floor_ms: Optional[float] = None
    pct_of_floor: Optional[float] = None
    gbps: Optional[float] = None
    pct_of_bw: Optional[float] = None  # effective GB/s over the measured read (CPU) / copy (CUDA) bandwidth
    peak_extra_mb: Optional[float] = None
    max_err: Optional[float] = None
    note: str = ""
    feature: str = ""  # "" (plain label smoothing) or one of FEATURES
    spread_pct: Optional[float] = None  # interquartile range of the timed repeats over their median
    cpu_share: Optional[float] = None  # calibration just before this case (see calibrate)
    oracle_ok: Optional[bool] = None  # max_err within ORACLE_TOL of the dtype
    checks: str = ""  # failed checks of this row, "; "-separated ("" = all passed)


def _compiled(eps: float, feature: str = ""):
    base = _bench_impls.FEATURE_IMPLS[feature]["torch"] if feature else _bench_impls.torch_eager

    def f(x, t, w):
        return base(x, t, w, eps)

    return torch.compile(f, dynamic=False)


def _impls_for(feature: str, device: str) -> dict:
    if not feature:
        return _bench_impls.available(device)
    impls = dict(_bench_impls.FEATURE_IMPLS[feature])
    if feature == "bce" and not hasattr(smoothing_ext, "binary_cross_entropy_with_logits"):
        impls.pop("smoothing_ext")
    return impls


def _inputs(wl: Workload, dtype: torch.dtype, weighted: bool, device: str, feature: str):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(wl.shape, generator=gen, dtype=torch.float32).mul_(2.0).to(dtype).to(device)
    if feature == "bce":  # multi-label: a 0/1 target per logit, weights per class (last dim)
        t = (torch.rand(wl.shape, generator=gen) < 0.1).to(dtype).to(device)
        w = (torch.rand(wl.shape[-1], generator=gen) + 0.5).to(dtype).to(device) if weighted else None
        return x, t, w
    t = torch.randint(0, wl.C, wl.target_shape, generator=gen).to(device)
    w = (torch.rand(wl.C, generator=gen) + 0.5).to(dtype).to(device) if weighted else None
    return x, t, w


def _make_runner(fn, x, t, w, eps, mode):
    if mode == "fwd":

        def run():
            with torch.no_grad():
                return fn(x, t, w, eps)

    else:

        def run():
            xx = x.detach().requires_grad_()
            loss = fn(xx, t, w, eps)
            (g,) = torch.autograd.grad(loss, xx)
            return g

    return run


def _error(fn, x, t, w, eps, mode, rows: int, feature: str = "") -> float:
    """Error against the oracle on the first `rows` rows: the mean loss relative to max(1, |loss|),
    and for fwdbwd the gradient relative to its largest entry. The oracle is F.cross_entropy in
    float64 on the same (already rounded) inputs; for the features without an F.cross_entropy
    equivalent, the feature's float64 reference."""
    xs, ts = x[:rows], t[:rows]
    xr = xs.detach().double().requires_grad_()
    if feature == "bce":
        ref = _bench_impls.reference_bce(xr, ts, w, eps)
    elif feature in ("", "fused"):
        ref = F.cross_entropy(xr, ts, weight=None if w is None else w.double(), label_smoothing=eps)
    else:
        ref = reference_cross_entropy(xr, ts, weight=None if w is None else w.double(), label_smoothing=eps,
                                      **_bench_impls.FEATURE_REFERENCE_KWARGS.get(feature, {}))
    xx = xs.detach().clone().requires_grad_(mode == "fwdbwd")
    with torch.enable_grad() if mode == "fwdbwd" else torch.no_grad():
        out = fn(xx, ts, w, eps)
    err = (out.double() - ref).abs().item() / max(1.0, abs(ref.item()))
    if mode == "fwdbwd":
        (g,) = torch.autograd.grad(out, xx)
        (gr,) = torch.autograd.grad(ref, xr)
        # the gradient of a mean is ~1/rows: report it relative to its largest entry
        err = max(err, ((g.double() - gr).abs().max() / gr.abs().max()).item())
    return err


def floors(x: torch.Tensor, device: str, budget: float) -> dict[str, float]:
    out: dict[str, float] = {}
    if device == "cuda":
        y = torch.empty_like(x)
        out["copy"] = time_fn(lambda: y.copy_(x), device, 5, budget)
        out["bw_gbps"] = 2 * x.numel() * x.element_size() / out["copy"] / 1e9
        out["fwd"] = out["copy"] / 2  # one read of x (a copy reads and writes)
        out["fwdbwd"] = out["copy"] * 1.5  # read for the forward, read + write for the backward
        del y
        return out
    buf = torch.empty_like(x)
    out["read"] = time_fn(lambda: x.sum(), device, 3, budget)
    out["bw_gbps"] = x.numel() * x.element_size() / out["read"] / 1e9
    # the plausibility reference of the floors (both move at least a read and a write of x)
    out["copy"] = time_fn(lambda: buf.copy_(x), device, 3, budget)
    out["copy_gbps"] = 2 * x.numel() * x.element_size() / out["copy"] / 1e9
    out["fwd"] = time_fn(lambda: torch.exp(x, out=buf), device, 3, budget)
    del buf
    out["fwdbwd"] = time_fn(lambda: (x.sum(), x.exp()), device, 3, budget)
    return out


def floor_problems(fl: dict[str, float], nbytes: int) -> list[str]:
    """Floors that cannot be real: the bandwidth implied by their least traffic (fwd: exp(x, out=buf),
    a read and a write; fwdbwd: x.sum() + x.exp(), two reads and a write) above the copy bandwidth
    measured on the same tensor (by more than FLOOR_BW_MARGIN). CUDA floors are fractions of that
    copy, so there is nothing to check."""
    if "copy_gbps" not in fl:
        return []
    out = []
    for mode, traffic in (("fwd", 2), ("fwdbwd", 3)):
        implied = traffic * nbytes / fl[mode] / 1e9
        if implied > FLOOR_BW_MARGIN * fl["copy_gbps"]:
            out.append(f"implausible {mode} floor ({implied:.1f} GB/s > copy {fl['copy_gbps']:.1f} GB/s)")
    return out


def run_case(
    wl: Workload,
    dtype: torch.dtype,
    mode: str,
    weighted: bool,
    impl_names: Iterable[str],
    device: str,
    eps: float,
    budget: float,
    err_rows: int,
    compiled_cache: dict,
    floor_cache: dict,
    feature: str = "",
) -> list[Row]:
    x, t, w = _inputs(wl, dtype, weighted, device, feature)
    key = (wl.name, str(dtype), device)
    if key not in floor_cache:
        floor_cache[key] = floors(x, device, budget)
    fl = floor_cache[key]
    nbytes = x.numel() * x.element_size()
    passes = 1 if mode == "fwd" else 3  # ideal traffic: R (fwd), R + R + W (fwd + bwd)

    available = _impls_for(feature, device)
    if feature:  # the feature's own implementations, then compiled PyTorch
        impl_names = [n for n in available if n != "torch"] + ["torch"] + (
            ["torch.compile"] if "torch.compile" in impl_names else [])
    rows: list[Row] = []
    for name in impl_names:
        row = Row(wl.name, "x".join(map(str, wl.shape)), str(dtype).replace("torch.", ""), mode, weighted, name, device,
                  feature=feature)
        if name == "torch.compile":
            ckey = (eps, feature)
            if ckey not in compiled_cache:
                compiled_cache[ckey] = _compiled(eps, feature)
            cf = compiled_cache[ckey]
            fn = lambda x, t, w, eps, cf=cf: cf(x, t, w)  # noqa: E731
        elif name in available:
            fn = available[name]
        else:
            row.note = "not installed" if name in ("liger", "apex", "flash_attn") else "n/a"
            rows.append(row)
            continue
        if weighted and name in ("seed_onehot", "seed_nll"):
            row.note = "no class weights"
            rows.append(row)
            continue
        try:
            # the in-place mode overwrites its logits with the gradient: it gets its own copy
            xi = x.clone() if "inplace" in name else x
            runner = _make_runner(fn, xi, t, w, eps, mode)
            samples = time_samples(runner, device, 3, budget)
            row.time_ms = statistics.median(samples) * 1e3
            row.spread_pct = spread_pct(samples)
            del xi
            row.max_err = _error(fn, x, t, w, eps, mode, min(err_rows, wl.shape[0]), feature)
            row.oracle_ok = bool(row.max_err <= ORACLE_TOL.get(row.dtype, 1e-4))
            row.floor_ms = fl[mode] * 1e3
            row.pct_of_floor = 100.0 * fl[mode] * 1e3 / row.time_ms
            row.gbps = passes * nbytes / (row.time_ms * 1e-3) / 1e9
            row.pct_of_bw = 100.0 * row.gbps / fl["bw_gbps"]
        except Exception as e:  # an implementation that cannot run this case is reported, not fatal
            row.note = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
        rows.append(row)
    by = {r.impl: r for r in rows}
    for r in rows:
        if r.time_ms is None:
            continue
        if by.get("torch") and by["torch"].time_ms:
            r.speedup_vs_torch = by["torch"].time_ms / r.time_ms
        if by.get("torch.compile") and by["torch.compile"].time_ms:
            r.speedup_vs_compile = by["torch.compile"].time_ms / r.time_ms
        if feature == "fused" and r.impl.startswith("smoothing_ext[") and by["smoothing_ext"].time_ms:
            r.note = f"{by['smoothing_ext'].time_ms / r.time_ms:.2f}x vs smoothing_ext default mode"
    for problem in floor_problems(fl, nbytes):
        for r in rows:
            if r.time_ms is not None:
                _add_check(r, problem)
    del x, t, w
    return rows


def _add_check(row: Row, problem: str) -> None:
    row.checks = problem if not row.checks else row.checks + "; " + problem


def check_rows(rows: list[Row], calibration: Optional[Calibration], max_spread: float) -> None:
    """Record on each timed row what makes it untrustworthy (floor problems are added by run_case)."""
    for r in rows:
        if r.time_ms is None:
            continue
        if calibration is not None:
            r.cpu_share = calibration.cpu_share
            if calibration.cpu_share < MIN_CPU_SHARE:
                _add_check(r, f"machine busy (CPU share {calibration.cpu_share:.2f})")
        if r.spread_pct is not None and r.spread_pct > max_spread:
            _add_check(r, f"spread {r.spread_pct:.0f}% > {max_spread:g}%")
        if r.oracle_ok is False:
            _add_check(r, f"WRONG RESULT: error {r.max_err:.1e} > {ORACLE_TOL.get(r.dtype, 1e-4):.0e} vs the oracle")


def machine_problems(load1: Optional[float], cores: int, threads: int, calibrations: list[Calibration]) -> list[str]:
    """Run-wide reasons not to trust the numbers (pure function of the measurements, for tests)."""
    out = []
    if load1 is not None and load1 >= max(1.0, 0.5 * cores):
        out.append(f"machine busy: 1-minute load average {load1:.2f} on {cores} CPUs before the run started")
    if threads > cores:
        out.append(f"{threads} torch threads on {cores} CPUs: oversubscribed")
    busy = [c.cpu_share for c in calibrations if c.cpu_share < MIN_CPU_SHARE]
    if busy:
        out.append(f"machine busy: the calibration loop got {min(busy):.2f} of the CPU (< {MIN_CPU_SHARE}) "
                   f"in {len(busy)} of {len(calibrations)} calibrations: other processes are competing")
    rates = [c.rate for c in calibrations if c.rate > 0]
    if len(rates) >= 2 and max(rates) / min(rates) > MAX_CALIBRATION_DRIFT:
        out.append(f"machine changed during the run: the calibration loop's speed varied {max(rates) / min(rates):.2f}x "
                   f"(> {MAX_CALIBRATION_DRIFT}x)")
    return out


def warning_block(machine: list[str], rows: list[Row]) -> str:
    """The loud summary of every failed check ("" when all passed)."""
    flagged = [r for r in rows if r.checks]
    if not machine and not flagged:
        return ""
    lines = [f"!!! WARNING: {len(machine)} machine problem(s) and {len(flagged)} flagged row(s): "
             "these numbers may not mean what they say."]
    lines += [f"!!!   {m}" for m in machine]
    for r in flagged:
        label = " ".join(v for v in (r.workload, r.dtype, r.mode, r.feature, "weighted" if r.weighted else "") if v)
        lines.append(f"!!!   {label} {r.impl}: {r.checks}")
    return "\n".join(lines)


def measure_memory(rows: list[Row], device: str, eps: float, compiled_cache: dict) -> None:
    """Second pass, after every timing: peak extra memory of one call of each implementation that
    ran, beyond the inputs and (fwdbwd) the returned gradient, which every implementation must
    allocate."""
    if device == "cpu" and not prepare_cpu_memory_measurement():
        return
    cases: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.time_ms is not None:
            cases.setdefault((r.workload, r.dtype, r.mode, r.weighted, r.feature), []).append(r)
    for (wl_name, dt, mode, weighted, feature), case_rows in cases.items():
        available = _impls_for(feature, device)
        wl = WORKLOADS[wl_name]
        dtype = getattr(torch, dt)
        x, t, w = _inputs(wl, dtype, weighted, device, feature)
        grad_bytes = x.numel() * x.element_size() if mode == "fwdbwd" else 0
        for r in case_rows:
            if r.impl == "torch.compile":
                cf = compiled_cache[(eps, feature)]
                fn = lambda x, t, w, eps, cf=cf: cf(x, t, w)  # noqa: E731
            else:
                fn = available[r.impl]
            xi = x.clone() if "inplace" in r.impl else x
            extra = peak_extra_bytes(_make_runner(fn, xi, t, w, eps, mode), device)
            del xi
            if extra is not None:
                # the in-place mode returns the logits' own storage as the gradient: nothing to subtract
                r.peak_extra_mb = max(0, extra - (0 if "inplace" in r.impl else grad_bytes)) / 2**20
        del x, t, w


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown_summary(rows: list[Row]) -> str:
    """One line per case: smoothing_ext against eager and compiled PyTorch and the floor."""
    cases: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        cases.setdefault((r.device, r.workload, r.shape, r.dtype, r.mode, r.weighted, r.feature), {})[r.impl] = r
    lines = [
        "| device | workload | shape | dtype | mode | weight | smoothing_ext ms | torch ms | torch.compile ms "
        "| vs torch | vs compile | floor ms | floor / ours | GB/s (% of bw) | peak extra MB (ours / torch / compile) "
        "| spread % (ours / torch / compile) | checks |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for (dev, wl, shape, dt, mode, weighted, feature), by in cases.items():
        e, c = by.get("torch"), by.get("torch.compile")
        for name in [n for n in by if n.startswith("smoothing_ext")] or ["smoothing_ext"]:
            o = by.get(name)
            label = " ".join(v for v in (mode, feature, name[len("smoothing_ext"):]) if v)
            mem = " / ".join(_fmt(r.peak_extra_mb if r else None, ".0f") for r in (o, e, c))
            spread = " / ".join(_fmt(r.spread_pct if r else None, ".0f") for r in (o, e, c))
            checks = "; ".join(dict.fromkeys(p for r in (o, e, c) if r and r.checks for p in r.checks.split("; ")))
            lines.append(
            f"| {dev} | {wl} | {shape} | {dt} | {label} | {'yes' if weighted else 'no'} "
            f"| {_fmt(o and o.time_ms, '.2f')} | {_fmt(e and e.time_ms, '.2f')} | {_fmt(c and c.time_ms, '.2f')} "
            f"| {_fmt(o and o.speedup_vs_torch, '.2f')}x | {_fmt(o and o.speedup_vs_compile, '.2f')}x "
            f"| {_fmt(o and o.floor_ms, '.2f')} | {_fmt(o and o.pct_of_floor, '.0f')}% "
            f"| {_fmt(o and o.gbps, '.1f')} ({_fmt(o and o.pct_of_bw, '.0f')}%) | {mem} | {spread} "
            f"| {checks or 'ok'} |"
            )
    return "\n".join(lines)


def markdown_detail(rows: list[Row]) -> str:
    lines = [
        "| device | workload | dtype | mode | feature | weight | impl | ms | vs torch | vs compile | GB/s | % of bw "
        "| % of floor | peak extra MB | max err | note | spread % | checks |",
        "|---|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.device} | {r.workload} | {r.dtype} | {r.mode} | {r.feature or '–'} | {'yes' if r.weighted else 'no'} "
            f"| {r.impl} "
            f"| {_fmt(r.time_ms, '.2f')} | {_fmt(r.speedup_vs_torch, '.2f')} | {_fmt(r.speedup_vs_compile, '.2f')} "
            f"| {_fmt(r.gbps, '.1f')} | {_fmt(r.pct_of_bw, '.0f')} | {_fmt(r.pct_of_floor, '.0f')} | {_fmt(r.peak_extra_mb, '.0f')} "
            f"| {_fmt(r.max_err, '.1e')} | {r.note} | {_fmt(r.spread_pct, '.0f')} "
            f"| {r.checks or ('ok' if r.time_ms is not None else '–')} |"
        )
    return "\n".join(lines)


def machine_info(device: str) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "physical_cores": physical_cores(),
        "torch": torch.__version__,
        "smoothing_ext": smoothing_ext.__version__,
        "cpu_kernels": torch.ops.smoothing_ext._cpu_capability(),
        "python": platform.python_version(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def plot(rows: list[Row], path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed (pip install smoothing_ext[plot]); no plot written", file=sys.stderr)
        return False
    ours = [r for r in rows if r.impl.startswith("smoothing_ext") and r.time_ms is not None]
    labels = [f"{r.workload}\n{r.dtype} {r.mode}{' w' if r.weighted else ''}"
              f"{' ' + r.feature if r.feature else ''}{r.impl[len('smoothing_ext'):]}" for r in ours]
    vs_t = [r.speedup_vs_torch or 0 for r in ours]
    vs_c = [r.speedup_vs_compile or 0 for r in ours]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(ours) + 2), 4.5))
    xs = range(len(ours))
    ax.bar([i - 0.2 for i in xs], vs_t, width=0.4, label="vs torch (eager)")
    ax.bar([i + 0.2 for i in xs], vs_c, width=0.4, label="vs torch.compile")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("speed-up of smoothing_ext (x)")
    ax.set_title("smoothing_ext label-smoothed cross entropy, eps = 0.1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def _progress(total: int):
    try:
        from tqdm import tqdm  # type: ignore

        return tqdm(total=total, file=sys.stderr, desc="bench", leave=False)
    except ImportError:

        class _Plain:
            def __init__(self):
                self.n = 0

            def update(self, k=1):
                self.n += k
                print(f"[bench] {self.n}/{total}", file=sys.stderr, flush=True)

            def set_postfix_str(self, s):
                print(f"[bench] {s}", file=sys.stderr, flush=True)

            def close(self):
                pass

        return _Plain()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smoothing_ext.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small CI run (< 1 minute)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available, else cpu")
    p.add_argument("--workloads", default=None, help=f"comma list of {','.join(WORKLOADS)} (default: a curated set)")
    p.add_argument("--shapes", default=None,
                   help="extra custom shapes, comma list of NxC or NxCxD1..., e.g. 1024x50000,4x19x256x256")
    p.add_argument("--dtypes", default=None, help="comma list of float32,bfloat16,float16,float64")
    p.add_argument("--modes", default=None, help="comma list of fwd,fwdbwd")
    p.add_argument("--weight", default=None, choices=["no", "yes", "both"], help="class weights")
    p.add_argument("--features", default=None,
                   help="comma list of plain," + ",".join(FEATURES[1:]) + " (with --workloads etc.; default: plain)")
    p.add_argument("--impls", default=None, help=f"comma list of {','.join(ALL_IMPLS)} (default: all available)")
    p.add_argument("--eps", type=float, default=0.1, help="label smoothing (default 0.1)")
    p.add_argument("--budget", type=float, default=None, help="seconds of repeats per measurement")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--json", default=None, help="write rows and machine info as JSON")
    p.add_argument("--csv", default=None, help="write rows as CSV")
    p.add_argument("--markdown", default=None, help="also write the tables to this file")
    p.add_argument("--plot", default=None, help="write a speed-up bar chart PNG (needs matplotlib)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (torch.set_num_threads); default: the physical cores (%d here)" % physical_cores())
    p.add_argument("--max-spread", type=float, default=DEFAULT_MAX_SPREAD_PCT,
                   help="flag rows whose run-to-run spread (IQR / median) exceeds this percentage (default %(default)g)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any check fails (busy machine, spread, implausible floor, wrong result)")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    try:
        load1: Optional[float] = os.getloadavg()[0]  # before this process adds to it
    except (OSError, AttributeError):
        load1 = None

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no GPU is available")
    budget = args.budget if args.budget is not None else (0.3 if args.quick else 1.0)
    try:
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = max(dynamo.config.cache_size_limit, 64)
        if hasattr(dynamo.config, "recompile_limit"):
            dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
    except Exception:
        pass

    custom = []
    for spec in (args.shapes.split(",") if args.shapes else []):
        try:
            shape = tuple(int(v) for v in spec.lower().split("x"))
        except ValueError:
            p.error(f"bad shape {spec!r}: expected NxC or NxCxD1...")
        if len(shape) < 2 or min(shape) < 1:
            p.error(f"bad shape {spec!r}: expected NxC or NxCxD1... with positive sizes")
        WORKLOADS[spec] = Workload(spec, shape)
        custom.append(spec)
    if args.workloads or args.dtypes or args.modes or args.weight or args.features or custom:
        wls = (args.workloads.split(",") if args.workloads else ([] if custom else ["cls-1k", "lm-32k"])) + custom
        dts = (args.dtypes or "float32").split(",")
        modes = (args.modes or "fwd,fwdbwd").split(",")
        weights = {"no": [False], "yes": [True], "both": [False, True]}[args.weight or "no"]
        feats = ["" if f == "plain" else f for f in (args.features or "plain").split(",")]
        for f in feats:
            if f not in FEATURES:
                p.error(f"unknown feature {f!r}; choose from plain, {', '.join(FEATURES[1:])}")
        cases = [(a, b, c, d, f) for a in wls for b in dts for c in modes for d in weights for f in feats]
    else:
        cases = default_cases(device, args.quick)
    for wl, dt, mode, _, _ in cases:
        if wl not in WORKLOADS:
            p.error(f"unknown workload {wl!r}; choose from {', '.join(WORKLOADS)}")
        if mode not in ("fwd", "fwdbwd"):
            p.error(f"unknown mode {mode!r}; choose fwd or fwdbwd")
        if not isinstance(getattr(torch, dt, None), torch.dtype):
            p.error(f"unknown dtype {dt!r}")
    cases = [c for c in cases if device in WORKLOADS[c[0]].devices]
    impls = args.impls.split(",") if args.impls else list(ALL_IMPLS)
    if device == "cpu":
        impls = [i for i in impls if i not in ("liger", "apex", "flash_attn")]
    if args.quick and not args.impls:
        impls = [i for i in impls if i not in ("seed_onehot", "seed_nll")]

    compile_ok = "torch.compile" in impls
    info = machine_info(device)
    print(f"# smoothing_ext benchmark — {info['date']}, {info['cpu']} ({info['cores']} cores, "
          f"{info['torch_threads']} torch threads), torch {info['torch']}, CPU kernels: {info['cpu_kernels']}"
          + (f", GPU {info['gpu']} (CUDA {info['cuda']})" if device == "cuda" else ""))
    calibrations = [calibrate()]
    early = machine_problems(load1, os.cpu_count() or 1, threads, calibrations)
    for m in early:  # say it now, so that a run on a busy machine can be stopped
        print(f"!!! WARNING: {m}", file=sys.stderr, flush=True)
    print(f"label_smoothing = {args.eps}; median of repeats after warm-up; floor = "
          + ("a device copy: fwd = half a copy (one read), fwdbwd = 1.5 copies (R + R + W)"
             if device == "cuda" else "fwd: exp(x, out=buf) (one read + all the exps); fwdbwd: x.sum() + x.exp() (read, then read + exp + write of a fresh tensor)"))
    print()

    rows: list[Row] = []
    compiled_cache: dict = {}
    floor_cache: dict = {}
    bar = _progress(len(cases))
    t_start = time.perf_counter()
    for wl, dt, mode, weighted, feature in cases:
        bar.set_postfix_str(f"{wl} {dt} {mode}{' weighted' if weighted else ''} {feature}")
        case_impls = impls
        if not args.impls and wl in ("lm-128k", "lm-128k-gpu"):
            # the seeds' formulations take seconds per call there; they are measured on lm-32k
            case_impls = [i for i in impls if i not in ("seed_onehot", "seed_nll")]
        calibrations.append(calibrate())  # the machine as this case meets it
        case_rows = run_case(
            WORKLOADS[wl], getattr(torch, dt), mode, weighted, case_impls, device, args.eps, budget,
            err_rows=64, compiled_cache=compiled_cache, floor_cache=floor_cache, feature=feature,
        )
        check_rows(case_rows, calibrations[-1], args.max_spread)
        rows += case_rows
        bar.update(1)
    bar.close()
    calibrations.append(calibrate())
    problems = machine_problems(load1, os.cpu_count() or 1, threads, calibrations)
    if not args.no_memory:
        print("measuring memory ...", file=sys.stderr, flush=True)
        measure_memory(rows, device, args.eps, compiled_cache)
    if compile_ok and all(r.time_ms is None for r in rows if r.impl == "torch.compile"):
        print("note: torch.compile did not work on this machine; its columns are empty\n")

    summary = markdown_summary(rows)
    detail = markdown_detail(rows)
    print("## smoothing_ext vs PyTorch\n")
    print(summary)
    print("\n## All implementations\n")
    print(detail)
    warning = warning_block(problems, rows)
    if warning:  # after the tables, where it is read, and (shorter) on stderr, where CI logs show it
        print("\n" + warning)
        flagged = sum(1 for r in rows if r.checks)
        print("\n".join(warning.splitlines()[: 1 + len(problems)])
              + (f"\n!!!   {flagged} row(s) flagged: see the 'checks' column" if flagged else ""), file=sys.stderr)
    else:
        print(f"\nchecks passed: machine idle (CPU share >= {MIN_CPU_SHARE} in {len(calibrations)} calibrations), "
              f"every spread <= {args.max_spread:g}%, floors plausible, every result within tolerance of the oracle")
    print(f"\n(total {time.perf_counter() - t_start:.0f} s; peak extra memory: "
          + ("CUDA max_memory_allocated above the inputs" if device == "cuda" else
             "process RSS sampled every 0.2 ms above the inputs, minus the returned gradient for fwdbwd, "
             "measured after the timings with glibc's mmap threshold lowered so freed memory is returned")
          + ")")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"{json.dumps(info)}\n\n{summary}\n\n{detail}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "eps": args.eps, "rows": [dataclasses.asdict(r) for r in rows],
                       "checks": {"machine_problems": problems, "load1": load1,
                                  "calibrations": [dataclasses.asdict(c) for c in calibrations],
                                  "max_spread_pct": args.max_spread, "passed": not warning}}, f, indent=1)
    if args.csv:
        import csv

        with open(args.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=[fld.name for fld in dataclasses.fields(Row)])
            wr.writeheader()
            for r in rows:
                wr.writerow(dataclasses.asdict(r))
    if args.plot:
        plot(rows, args.plot)
    return 1 if (args.strict and warning) else 0


if __name__ == "__main__":
    sys.exit(main())
