"""Timings of scripts/gpu_verify.sh: CUDA events (median of N runs) at 8192 x 128256 and 8192 x 32000,
bf16 and fp32, label_smoothing=0.1, against a device-to-device copy of the same tensor measured in the
same run:

  ours     smoothing_ext.cross_entropy: forward (no grad), forward + backward, fused (grad_in_forward)
  eager    F.cross_entropy forward, forward + backward
  compiled torch.compile(F.cross_entropy) forward + backward (while the time budget allows)
  liger    liger_kernel's cross entropy (fused; it overwrites the logits with the gradient), when importable
  quack    quack.cross_entropy (no label smoothing: timed at label_smoothing=0), when importable

and the LM head fused with the loss at N x H x V = 8192 x 4096 x 128256 bf16 (forward + backward with
the input and weight gradients, CUDA-event time and peak allocated memory beyond the inputs):
smoothing_ext.linear_cross_entropy at label_smoothing 0.1 and 0, linear + F.cross_entropy eager,
and torch's chunked F.linear_cross_entropy (label_smoothing=0 only: its chunked path has no smoothing).

One pass = N x C x element size bytes at the copy's bandwidth (the copy reads and writes: 2 passes).
Bars at 8192 x 128256 bf16 (GPU only; printed as pass/fail, exit 1 when one fails):
  forward >= 85% of the copy's bandwidth; forward + backward <= 1.1 x 3 passes;
  fused <= 0.75 x forward + backward.

  python scripts/gpu_verify_bench.py [--device cuda|cpu] [--tiny] [--json F] [--md F] [--note F] [--budget S]

--device cpu --tiny (the dry run) times tiny shapes with perf_counter: the code runs, the numbers mean
nothing and the bars are not evaluated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import smoothing_ext

EPS = 0.1


class Timer:
    def __init__(self, device, iters, warmup):
        self.device, self.iters, self.warmup = device, iters, warmup

    def __call__(self, fn):
        for _ in range(self.warmup):
            fn()
        if self.device == "cuda":
            torch.cuda.synchronize()
            times = []
            for _ in range(self.iters):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            return statistics.median(times)
        times = []
        for _ in range(self.iters):
            s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - s) * 1e3)
        return statistics.median(times)


def _fwdbwd(loss_fn, x, t):
    def run():
        x.grad = None
        loss_fn(x, t).backward()
    return run


def bench_case(N, C, dtype, device, timer, deadline, extras, log, compile_it=True):
    torch.manual_seed(0)
    x = torch.randn(N, C, device=device, dtype=dtype)
    t = torch.randint(0, C, (N,), device=device)
    nbytes = x.numel() * x.element_size()
    rows = []
    dst = torch.empty_like(x)
    copy_ms = timer(lambda: dst.copy_(x))
    del dst
    pass_ms = copy_ms / 2
    case = f"{N}x{C} {str(dtype).replace('torch.', '')}"

    def add(impl, mode, ms, note=""):
        passes = {"forward": 1, "forward+backward": 3, "fused": 2, "d2d copy": 2}[mode]
        rows.append(dict(case=case, impl=impl, mode=mode, ms=round(ms, 4), passes_ideal=passes,
                         x_pass=round(ms / pass_ms, 3), gbps=round(passes * nbytes / ms / 1e6, 1), note=note))
        log(f"{case:22s} {impl:9s} {mode:17s} {ms:9.3f} ms  {ms / pass_ms:6.2f} passes {note}")

    add("copy", "d2d copy", copy_ms, f"{2 * nbytes / copy_ms / 1e6:.0f} GB/s (read + write)")
    ce = smoothing_ext.cross_entropy
    with torch.no_grad():
        add("ours", "forward", timer(lambda: ce(x, t, label_smoothing=EPS)))
    xr = x.clone().requires_grad_(True)
    add("ours", "forward+backward", timer(_fwdbwd(lambda a, b: ce(a, b, label_smoothing=EPS), xr, t)))
    add("ours", "fused", timer(_fwdbwd(lambda a, b: ce(a, b, label_smoothing=EPS, grad_in_forward=True), xr, t)),
        "grad_in_forward=True")
    with torch.no_grad():
        add("eager", "forward", timer(lambda: F.cross_entropy(x, t, label_smoothing=EPS)))
    add("eager", "forward+backward", timer(_fwdbwd(lambda a, b: F.cross_entropy(a, b, label_smoothing=EPS), xr, t)))
    if not compile_it:
        rows.append(dict(case=case, impl="compiled", mode="forward+backward", error="skipped (dry run: first case only)"))
    elif time.monotonic() < deadline - 45:
        try:
            torch._dynamo.reset()
            cf = torch.compile(lambda a, b: F.cross_entropy(a, b, label_smoothing=EPS))
            s = time.perf_counter()
            _fwdbwd(cf, xr, t)()
            add("compiled", "forward+backward", timer(_fwdbwd(cf, xr, t)),
                f"compile {time.perf_counter() - s:.0f} s")
        except Exception as e:  # noqa: BLE001
            rows.append(dict(case=case, impl="compiled", mode="forward+backward", error=repr(e)[:300]))
    else:
        rows.append(dict(case=case, impl="compiled", mode="forward+backward", error="skipped: time budget"))
    for name, fn in extras.items():
        try:
            xl = x.clone().requires_grad_(True)
            add(name, "forward+backward" if name == "quack" else "fused", timer(_fwdbwd(fn, xl, t)),
                "label_smoothing=0" if name == "quack" else "overwrites the logits")
            del xl
        except Exception as e:  # noqa: BLE001
            rows.append(dict(case=case, impl=name, error=repr(e)[:300]))
    del xr, x
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows, pass_ms


def linear_case(N, H, V, dtype, device, timer, log):
    """The LM head + loss rows: time and peak memory of forward + backward (dX and dW)."""
    torch.manual_seed(0)
    x = torch.randn(N, H, device=device, dtype=dtype)
    W = (torch.randn(V, H, device=device, dtype=dtype) / H**0.5)
    t = torch.randint(0, V, (N,), device=device)
    case = f"{N}x{H}x{V} {str(dtype).replace('torch.', '')}"
    impls = [
        ("ours", 0.1, lambda a, w: smoothing_ext.linear_cross_entropy(a, w, t, label_smoothing=0.1)),
        ("ours", 0.0, lambda a, w: smoothing_ext.linear_cross_entropy(a, w, t)),
        ("linear + F.cross_entropy", 0.1, lambda a, w: F.cross_entropy(F.linear(a, w), t, label_smoothing=0.1)),
        ("linear + F.cross_entropy", 0.0, lambda a, w: F.cross_entropy(F.linear(a, w), t)),
    ]
    if hasattr(torch.nn, "LinearCrossEntropyOptions"):
        opts = torch.nn.LinearCrossEntropyOptions()
        impls.append(("F.linear_cross_entropy (chunked)", 0.0,
                      lambda a, w: F.linear_cross_entropy(a, w, t, options=opts)))
    rows = []
    xr, Wr = x.clone().requires_grad_(True), W.clone().requires_grad_(True)

    def step(fn):
        def run():
            xr.grad = Wr.grad = None
            fn(xr, Wr).backward()
        return run

    for impl, eps, fn in impls:
        try:
            run = step(fn)
            ms = timer(run)
            peak = None
            if device == "cuda":
                xr.grad = Wr.grad = None
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                run()
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            rows.append(dict(case=case, impl=impl, eps=eps, mode="linear forward+backward", ms=round(ms, 3),
                             peak_mib=None if peak is None else round(peak, 1)))
            log(f"{case:26s} {impl:34s} eps={eps:<4} {ms:9.3f} ms  peak {peak if peak is None else round(peak)} MiB")
        except Exception as e:  # noqa: BLE001
            rows.append(dict(case=case, impl=impl, eps=eps, mode="linear forward+backward", error=repr(e)[:300]))
    del xr, Wr, x, W
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def load_extras():
    extras, status = {}, {}
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy

        extras["liger"] = lambda a, b: liger_cross_entropy(a, b, label_smoothing=EPS)
        status["liger"] = "imported"
    except Exception as e:  # noqa: BLE001
        status["liger"] = f"not available ({type(e).__name__})"
    try:
        from quack.cross_entropy import cross_entropy as quack_ce

        extras["quack"] = lambda a, b: quack_ce(a, b).mean()
        status["quack"] = "imported"
    except Exception as e:  # noqa: BLE001
        status["quack"] = f"not available ({type(e).__name__})"
    return extras, status


def bars(rows, case, evaluate):
    def ms(impl, mode):
        for r in rows:
            if r.get("case") == case and r.get("impl") == impl and r.get("mode") == mode and "ms" in r:
                return r["ms"]
        return None

    copy, fwd, fb, fused = ms("copy", "d2d copy"), ms("ours", "forward"), ms("ours", "forward+backward"), \
        ms("ours", "fused")
    out = []
    if None in (copy, fwd, fb, fused):
        return [dict(bar="all", status="fail", detail=f"missing timings for {case}")]
    pass_ms = copy / 2
    items = [
        ("forward >= 85% of copy bandwidth", pass_ms / fwd, ">=", 0.85),
        ("forward+backward <= 1.1 x 3 passes", fb / (3 * pass_ms), "<=", 1.1),
        ("fused <= 0.75 x forward+backward", fused / fb, "<=", 0.75),
    ]
    for name, val, op, lim in items:
        ok = val >= lim if op == ">=" else val <= lim
        out.append(dict(bar=f"{case}: {name}", value=round(val, 3), limit=lim,
                        status=("pass" if ok else "fail") if evaluate else "not evaluated (dry run)"))
    return out


def _md_rows(rows, ncols, cells, third):
    """Markdown rows: case, impl, then cells(row) for a timed row; an error row gets its `third`
    field, dashes, and the error in the last column."""
    out = []
    for r in rows:
        if "ms" in r:
            c = [r["case"], r["impl"], *cells(r)]
        else:
            c = [r.get("case"), r.get("impl", ""), r.get(third, "")] + ["-"] * (ncols - 4) + [r["error"]]
        out.append("| " + " | ".join(str(x) for x in c) + " |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--note", default=None)
    ap.add_argument("--budget", type=float, default=170.0, help="seconds for everything here")
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    deadline = time.monotonic() + a.budget
    shapes = [(64, 1000), (32, 3000)] if a.tiny else [(8192, 128256), (8192, 32000)]
    timer = Timer(a.device, iters=3 if a.tiny else 20, warmup=1 if a.tiny else 5)
    extras, extra_status = load_extras()
    print("extras:", extra_status, flush=True)
    rows = []
    for (N, C) in shapes:
        for dtype in (torch.bfloat16, torch.float32):
            if time.monotonic() > deadline - 10:
                rows.append(dict(case=f"{N}x{C} {dtype}", error="skipped: time budget"))
                continue
            r, _ = bench_case(N, C, dtype, a.device, timer, deadline, extras, lambda m: print(m, flush=True),
                              compile_it=not a.tiny or not rows)
            rows += r
    linear_rows = []
    lin = (64, 32, 500) if a.tiny else (8192, 4096, 128256)
    if time.monotonic() < deadline - 30:
        linear_rows = linear_case(*lin, torch.bfloat16, a.device, Timer(a.device, iters=3 if a.tiny else 5,
                                                                         warmup=1 if a.tiny else 2),
                                  lambda m: print(m, flush=True))
    else:
        linear_rows = [dict(case=f"{lin[0]}x{lin[1]}x{lin[2]} bfloat16", error="skipped: time budget")]
    main_case = f"{shapes[0][0]}x{shapes[0][1]} bfloat16"
    evaluate = a.device == "cuda" and not a.tiny
    b = bars(rows, main_case, evaluate)
    md = ["| case | impl | mode | ms | passes (x one pass at copy bandwidth) | GB/s of ideal traffic | note |",
          "|---|---|---|---|---|---|---|"]
    md += _md_rows(rows, 7, lambda r: [r["mode"], f"{r['ms']:.3f}", f"{r['x_pass']:.2f}", r["gbps"], r["note"]],
                   "mode")
    md += ["", "LM head + loss (forward + backward, dX and dW):", "",
           "| case | impl | label_smoothing | ms | peak allocated MiB |", "|---|---|---|---|---|"]
    md += _md_rows(linear_rows, 5, lambda r: [r["eps"], f"{r['ms']:.3f}", "-" if r["peak_mib"] is None
                                              else r["peak_mib"]], "eps")
    md += ["", "| bar | value | limit | status |", "|---|---|---|---|"]
    md += [f"| {x['bar']} | {x.get('value', '-')} | {x.get('limit', '-')} | {x['status']} |" for x in b]
    if not evaluate:
        md += ["", "Dry run on the CPU: these timings are not GPU results and the bars were not evaluated."]
    text = "\n".join(md)
    print(text)
    dev_name = torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu"
    res = dict(device=a.device, gpu=dev_name, tiny=a.tiny, torch=torch.__version__, extras=extra_status, rows=rows,
               linear_rows=linear_rows, bars=b, md=text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if a.md:
        with open(a.md, "w") as f:
            f.write(text + "\n")
    failed = [x["bar"] for x in b if x["status"] == "fail"]
    if a.note:
        with open(a.note, "w") as f:
            f.write(("bars: " + ("all pass" if not failed else "FAIL " + "; ".join(failed))) if evaluate
                    else "dry run: timings on the CPU, bars not evaluated")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
