"""Benchmark of the fused LM head + loss: ``python -m smoothing_ext.bench_linear``.

Forward + backward (gradients of the input and the linear weight) of ``N x H`` activations through
a ``V x H`` output layer into the label-smoothed cross entropy, side by side in one run:

- ``ours``: :func:`smoothing_ext.linear_cross_entropy` (chunked, never holds N x V logits);
- ``linear + F.cross_entropy`` eager and under ``torch.compile``;
- ``linear + smoothing_ext.cross_entropy``;
- torch's own chunked ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``, which
  supports ``label_smoothing=0`` only (its rows are measured with and against ours at 0).

Times are medians of ``--reps`` calls after a warm-up, with the run-to-run spread. Memory, measured
after all timings, two ways for one call beyond what was held before it, the gradients it returns
included: the exact peak of tensor allocations (the profiler's allocation events; the ratio column
uses it) and the process's resident-set peak (sampled; Linux), which also sees memory allocated
outside ATen (BLAS scratch) but can miss a short-lived buffer. Results are printed as a Markdown
table and optionally saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import smoothing_ext
from smoothing_ext.bench import peak_extra_bytes, peak_tensor_bytes, prepare_cpu_memory_measurement


def _impls(eps: float) -> dict[str, Callable]:
    def ours(x, W, t):
        return smoothing_ext.linear_cross_entropy(x, W, t, label_smoothing=eps)

    def eager(x, W, t):
        return F.cross_entropy(F.linear(x, W), t, label_smoothing=eps)

    def ours_unfused(x, W, t):
        return smoothing_ext.cross_entropy(F.linear(x, W), t, label_smoothing=eps)

    compiled = torch.compile(eager)
    impls = {"ours": ours, "linear + F.cross_entropy": eager, "linear + F.cross_entropy (compiled)": compiled,
             "linear + smoothing_ext.cross_entropy": ours_unfused}
    if eps == 0.0 and hasattr(torch.nn, "LinearCrossEntropyOptions"):
        opts = torch.nn.LinearCrossEntropyOptions()

        def torch_chunked(x, W, t):
            return F.linear_cross_entropy(x, W, t, options=opts)

        impls["F.linear_cross_entropy (chunked)"] = torch_chunked
    return impls


def _step(fn: Callable, x: torch.Tensor, W: torch.Tensor, t: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run():
        xx = x.detach().requires_grad_()
        WW = W.detach().requires_grad_()
        loss = fn(xx, WW, t)
        loss.backward()
        return loss.detach()

    return run


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4096x1024x32000", help="NxHxV (default 4096x1024x32000)")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--eps", default="0.1,0.0", help="label_smoothing values")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--impls", default=None,
                    help="comma-separated implementation names to run (default: all; 'ours' always runs)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    N, H, V = (int(v) for v in args.shape.lower().split("x"))
    wanted = None if args.impls is None else set(args.impls.split(","))
    known = set(_impls(0.0)) | set(_impls(0.1))
    if wanted is not None and not wanted <= known:
        ap.error(f"unknown --impls {sorted(wanted - known)}; known: {sorted(known)}")
    rows: list[dict] = []
    gen = torch.Generator().manual_seed(0)
    print(f"# linear + label-smoothed cross entropy, N={N} H={H} V={V}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, CPU kernels {torch.ops.smoothing_ext._cpu_capability()}", flush=True)
    cases = []
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        x = torch.randn(N, H, generator=gen).to(dtype)
        W = (torch.randn(V, H, generator=gen) / H**0.5).to(dtype)
        t = torch.randint(0, V, (N,), generator=gen)
        for eps in (float(e) for e in args.eps.split(",")):
            ref = None
            for name, fn in _impls(eps).items():
                if wanted is not None and name != "ours" and name not in wanted:
                    continue
                run = _step(fn, x, W, t)
                t0 = time.perf_counter()
                loss = run()  # warm-up (and compilation)
                warm = time.perf_counter() - t0
                if ref is None:
                    ref = loss.double()
                samples = []
                for _ in range(args.reps):
                    t0 = time.perf_counter()
                    run()
                    samples.append(time.perf_counter() - t0)
                med = statistics.median(samples)
                spread = (max(samples) - min(samples)) / med * 100
                row = dict(dtype=dname, eps=eps, impl=name, ms=med * 1e3, spread_pct=spread, warmup_s=warm,
                           loss=float(loss), loss_err_vs_ours=abs(float(loss) - float(ref)))
                rows.append(row)
                cases.append((row, run))
                print(f"  {dname} eps={eps} {name}: {med * 1e3:.0f} ms (spread {spread:.0f}%)", flush=True)
    if not args.no_memory:
        for row, run in cases:
            exact = peak_tensor_bytes(run)
            row["peak_tensor_mb"] = None if exact is None else exact / 2**20
        if prepare_cpu_memory_measurement():
            for row, run in cases:
                extra = peak_extra_bytes(run, "cpu")
                row["peak_rss_mb"] = None if extra is None else extra / 2**20
    print()
    print("| dtype | eps | implementation | fwd+bwd ms | spread % | speed-up of ours | peak tensors MiB | "
          "peak RSS MiB | memory: ours / it |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        o = next(q for q in rows if q["dtype"] == r["dtype"] and q["eps"] == r["eps"] and q["impl"] == "ours")
        tm = r["ms"] / o["ms"]
        mem = r.get("peak_tensor_mb")
        om = o.get("peak_tensor_mb")
        mr = f"{om / mem:.2f}" if mem and om is not None else "-"
        rss = r.get("peak_rss_mb")
        print(f"| {r['dtype']} | {r['eps']} | {r['impl']} | {r['ms']:.0f} | {r['spread_pct']:.0f} | {tm:.2f} | "
              f"{'-' if mem is None else f'{mem:.0f}'} | {'-' if rss is None else f'{rss:.0f}'} | {mr} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(shape=[N, H, V], threads=torch.get_num_threads(), torch=torch.__version__,
                           cpu_capability=torch.ops.smoothing_ext._cpu_capability(), date=time.strftime("%Y-%m-%d %H:%M"),
                           host_cpus=os.cpu_count(), rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
