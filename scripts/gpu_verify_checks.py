"""GPU-only checks of scripts/gpu_verify.sh, each recorded as pass / fail / n/a in a JSON file:

  ops        every op (cross entropy forward/backward, probability targets, fused, fused in place,
             _scale_grad_rows_, BCE forward/backward/sum) and dtype against the CPU op, on every kernel
             path (8 lanes/row, warp/row, block/row, split rows, K-dim), on contiguous and misaligned
             views (data pointer one element past a 16-byte boundary), with weights, ignored rows,
             smoothing, off-target, softcap, z-loss, grad_scale, grad_lse
  inplace    cross_entropy_fused_ == cross_entropy_fused, bit for bit
  rerun      every op twice: bit-identical results
  large      one input of more than 2^31 elements (16800 x 128256 bf16): forward, backward and fused
             equal the same rows computed in chunks, bit for bit, and the first/last rows match the CPU op
  nosync     the public API (every mode, forward and backward) and every op under
             torch.cuda.set_sync_debug_mode("error")
  graphs     every op captured in a CUDA graph and replayed: equal to the eager results
  oob        out-of-range targets in a subprocess: NaN (loss rows, weighted mean, gradient), no
             device-side assert, the process keeps working

  python scripts/gpu_verify_checks.py [--device cuda|cpu] [--tiny] [--json OUT] [--note FILE]

--device cpu (the dry run) runs the same code with the CPU op as the device op; the GPU-only parts are
n/a there. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

import torch

import smoothing_ext

ops = torch.ops.smoothing_ext
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


class Results:
    def __init__(self):
        self.items = []

    def add(self, name, ok, detail=""):
        self.items.append(dict(name=name, status="pass" if ok else "fail", detail=str(detail)[:500]))
        if not ok:
            print(f"FAIL {name}: {detail}", flush=True)

    def na(self, name, why):
        self.items.append(dict(name=name, status="n/a", detail=why))

    def run(self, name, fn):
        """fn() returns None (pass) or raises AssertionError / any exception (fail)."""
        try:
            fn()
            self.add(name, True)
        except Exception as e:  # noqa: BLE001
            self.add(name, False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def tol(dtype):
    if dtype in (torch.float16, torch.bfloat16):
        return dict(rtol=2e-2, atol=2e-3)
    if dtype == torch.float64:
        return dict(rtol=1e-9, atol=1e-10)
    return dict(rtol=1e-4, atol=1e-5)


def bits(t):
    t = t.detach().contiguous().reshape(-1)
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def same_bits(a, b):
    return a.shape == b.shape and torch.equal(bits(a), bits(b))


def misaligned(x, off=1):
    """Contiguous copy of x whose data pointer is `off` elements past the allocation (16-byte aligned)."""
    buf = torch.empty(x.numel() + off, dtype=x.dtype, device=x.device)
    buf[off:].copy_(x.reshape(-1))
    return buf[off:].view(x.shape)


def same_alignment_copy(x):
    off = (x.data_ptr() % 16) // x.element_size()
    return misaligned(x, off) if off else x.clone()


def close(got, want, t, what):
    torch.testing.assert_close(got.detach().cpu().double(), want.detach().cpu().double(), equal_nan=True, **t,
                               msg=lambda m: f"{what}: {m.splitlines()[0] if m else ''}")


# --------------------------------------------------------------------------------------------------
# cases: (name, shape) covering each kernel path; variants of the arguments
# --------------------------------------------------------------------------------------------------
SHAPES = [("group8", (37, 33)), ("warp", (64, 1000)), ("odd", (9, 1023)), ("block", (16, 5000)),
          ("split", (3, 40000)), ("kdim", (4, 7, 3, 5))]
TINY_SHAPES = [("group8", (5, 33)), ("warp", (4, 100)), ("kdim", (2, 5, 3))]
VARIANTS = [
    dict(name="w-eps", weight=True, eps=0.1, off_target=False, softcap=None),
    dict(name="offt-cap", weight=False, eps=0.2, off_target=True, softcap=5.0),
]


def make(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    N, C = shape[0], shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    t = torch.randint(0, C, (N, *shape[2:]), generator=g)
    t.view(-1)[::5] = -100
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    y = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    gl = torch.rand(t.shape, generator=g, dtype=torch.float64).to(acc) + 0.5
    glse = torch.randn(t.shape, generator=g, dtype=torch.float64).to(acc)
    return x, t, w, y, gl, glse


def op_calls(x, t, w, y, gl, glse, v):
    """Every op on these inputs: {name: callable(dev_tensors) -> tuple of outputs}."""
    eps, offt, cap = v["eps"], v["off_target"], v["softcap"]

    def fwd(d):
        return ops.cross_entropy_forward(d["x"], d["t"], d["w"], -100, eps, offt, cap)

    def bwd(d):
        lse = ops.cross_entropy_forward(d["x"], d["t"], d["w"], -100, eps, offt, cap)[1]
        return (ops._cross_entropy_backward(d["gl"], d["glse"], d["x"], d["t"], d["w"], lse, -100, eps, offt, cap),)

    def pfwd(d):
        return ops.cross_entropy_prob_forward(d["x"], d["y"], d["w"], eps, offt, cap)

    def pbwd(d):
        lse = ops.cross_entropy_prob_forward(d["x"], d["y"], d["w"], eps, offt, cap)[1]
        return (ops._cross_entropy_prob_backward(d["gl"], d["glse"], d["x"], d["y"], d["w"], lse, eps, offt, cap),)

    def fused(d):  # the grad_scale lives on the device (no copy inside a graph capture)
        return ops.cross_entropy_fused(d["x"], d["t"], d["w"], -100, eps, offt, cap, 1e-4, d["gs"])

    def scale(d):
        grad = ops.cross_entropy_fused(d["x"], d["t"], d["w"], -100, eps, offt, cap, 0.0, None)[2]
        sc = d["gl"].clone()
        sc.view(-1)[::3] = 1.0  # rows with factor 1 are skipped (must stay bit-identical)
        ops._scale_grad_rows_(grad, sc)
        return (grad,)

    def bce_f(d):
        return (ops.binary_cross_entropy_with_logits_forward(d["x"], d["yb"], d["wb"], d["pw"], eps),)

    def bce_s(d):
        return (ops.binary_cross_entropy_with_logits_sum(d["x"], d["yb"], d["wb"], d["pw"], eps),)

    def bce_b(d):
        return (ops._binary_cross_entropy_with_logits_backward(d["gb"], d["x"], d["yb"], d["wb"], d["pw"], eps),)

    return dict(forward=fwd, backward=bwd, prob_forward=pfwd, prob_backward=pbwd, fused=fused, scale_rows=scale,
                bce_forward=bce_f, bce_sum=bce_s, bce_backward=bce_b)


def inputs_on(x, t, w, y, gl, glse, v, device, misalign):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    wd = w.to(acc) if v["weight"] else None
    C = x.shape[1]
    g = torch.Generator().manual_seed(7)
    yb = torch.rand(x.shape, generator=g, dtype=torch.float64).to(x.dtype)
    pw = torch.rand((C,) + (1,) * (x.dim() - 2), generator=g, dtype=torch.float64).to(x.dtype) + 0.5
    wb = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), generator=g, dtype=torch.float64).to(x.dtype) + 0.5
    gb = torch.rand(x.shape, generator=g, dtype=torch.float64).to(x.dtype)
    d = dict(x=x, t=t, w=wd, y=y, gl=gl, glse=glse, yb=yb, pw=pw, wb=wb, gb=gb, gs=torch.tensor(0.37, dtype=acc))
    out = {}
    for k, val in d.items():
        if val is None:
            out[k] = None
            continue
        val = val.to(device)
        if misalign and k in ("x", "y", "yb", "gb"):
            val = misaligned(val)
        out[k] = val
    return out


def check_ops(R, device, tiny):
    shapes = TINY_SHAPES if tiny else SHAPES
    dtypes = [torch.float32, torch.bfloat16] if tiny else DTYPES
    for di, dtype in enumerate(dtypes):
        for si, (sname, shape) in enumerate(shapes):
            for vi, v in enumerate(VARIANTS):
                x, t, w, y, gl, glse = make(shape, dtype, 100 * di + 10 * si + vi)
                calls = op_calls(x, t, w, y, gl, glse, v)
                ref_in = inputs_on(x, t, w, y, gl, glse, v, "cpu", False)
                refs = {}
                for op, fn in calls.items():
                    try:
                        refs[op] = fn(ref_in)
                    except Exception as e:  # noqa: BLE001
                        refs[op] = e
                for mis in (False, True):
                    if mis and vi == 1:
                        continue  # misaligned views once per shape and dtype
                    d = inputs_on(x, t, w, y, gl, glse, v, device, mis)
                    tag = f"{dtype}".replace("torch.", "") + f"/{sname}{tuple(shape)}/{v['name']}" + \
                        ("/misaligned" if mis else "")
                    for op, fn in calls.items():
                        ref = refs[op]
                        if isinstance(ref, Exception):
                            R.add(f"ops/{op}/{tag}", False, f"CPU reference raised {ref!r}")
                            continue

                        def one(fn=fn, ref=ref, op=op):
                            got = fn(d)
                            for i, (a, b) in enumerate(zip(got, ref)):
                                close(a, b, tol(dtype), f"output {i}")
                            again = fn(d)  # run to run: bit-identical
                            for i, (a, b) in enumerate(zip(got, again)):
                                assert same_bits(a, b), f"rerun output {i} differs"
                        R.run(f"ops/{op}/{tag}", one)

                    def inplace():
                        acc = torch.float64 if dtype == torch.float64 else torch.float32
                        gs = torch.tensor(0.37, dtype=acc, device=device)
                        args = (d["t"], d["w"], -100, v["eps"], v["off_target"], v["softcap"], 1e-4, gs)
                        loss, lse, grad = ops.cross_entropy_fused(d["x"], *args)
                        xi = same_alignment_copy(d["x"])
                        iloss, ilse = ops.cross_entropy_fused_(xi, *args)
                        assert same_bits(iloss, loss) and same_bits(ilse, lse), "loss/lse differ"
                        assert same_bits(xi, grad), "in-place gradient differs from the out-of-place one"
                    R.run(f"inplace/{tag}", inplace)


def check_large(R, device, tiny):
    if device != "cuda" or tiny:
        R.na("large/>2^31 elements", "GPU only (needs ~13 GB of device memory)")
        return
    N, C = 16800, 128256
    assert N * C > 2**31
    torch.manual_seed(0)
    x = torch.randn(N, C, device=device, dtype=torch.bfloat16)
    t = torch.randint(0, C, (N,), device=device)
    t[::7] = -100
    chunks = 4
    rows = N // chunks

    def forward():
        loss, lse = ops.cross_entropy_forward(x, t, None, -100, 0.1)
        for k in range(chunks):
            sl = slice(k * rows, (k + 1) * rows)
            cl, cs = ops.cross_entropy_forward(x[sl], t[sl], None, -100, 0.1)
            assert same_bits(loss[sl], cl) and same_bits(lse[sl], cs), f"chunk {k} differs"
        idx = torch.tensor([0, 1, N - 2, N - 1])
        rl, _ = ops.cross_entropy_forward(x[idx].cpu(), t[idx].cpu(), None, -100, 0.1)
        close(loss[idx], rl, tol(torch.bfloat16), "first/last rows vs CPU")

    def backward():
        loss, lse = ops.cross_entropy_forward(x, t, None, -100, 0.1)
        g = torch.ones(N, device=device)
        grad = ops._cross_entropy_backward(g, None, x, t, None, lse, -100, 0.1)
        for k in range(chunks):
            sl = slice(k * rows, (k + 1) * rows)
            cg = ops._cross_entropy_backward(g[sl], None, x[sl], t[sl], None, lse[sl], -100, 0.1)
            assert same_bits(grad[sl], cg), f"chunk {k} differs"
            del cg
        idx = torch.tensor([0, 1, N - 2, N - 1])
        rg = ops._cross_entropy_backward(g[idx].cpu(), None, x[idx].cpu(), t[idx].cpu(), None, lse[idx].cpu(), -100,
                                         0.1)
        close(grad[idx], rg, tol(torch.bfloat16), "first/last rows vs CPU")

    def fused():
        loss, lse, grad = ops.cross_entropy_fused(x, t, None, -100, 0.1, False, None, 0.0, None)
        for k in range(chunks):
            sl = slice(k * rows, (k + 1) * rows)
            cl, cs, cg = ops.cross_entropy_fused(x[sl], t[sl], None, -100, 0.1, False, None, 0.0, None)
            assert same_bits(loss[sl], cl) and same_bits(grad[sl], cg), f"chunk {k} differs"
            del cg

    for name, fn in (("forward", forward), ("backward", backward), ("fused", fused)):
        R.run(f"large/{name} {N}x{C} bf16", fn)
        torch.cuda.empty_cache()
    del x


def public_calls(device, dtype=torch.float32):
    """Public-API calls, forward + backward: [(name, fn)]; fn() runs one training-step-like call."""
    g = torch.Generator().manual_seed(3)
    N, C = 64, 3000
    x0 = torch.randn(N, C, generator=g).to(device=device, dtype=dtype)
    t = torch.randint(0, C, (N,), generator=g).to(device)
    t[::9] = -100
    w = (torch.rand(C, generator=g) + 0.5).to(device)
    y = torch.softmax(torch.randn(N, C, generator=g), 1).to(device=device, dtype=dtype)
    xk = torch.randn(8, 50, 6, generator=g).to(device=device, dtype=dtype)
    tk = torch.randint(0, 50, (8, 6), generator=g).to(device)
    yb = torch.rand(N, C, generator=g).to(device=device, dtype=dtype)
    ce = smoothing_ext.cross_entropy

    def step(f, inp, inplace=False):
        def run():
            xx = inp.clone().requires_grad_(True)
            src = xx * 1 if inplace else xx  # inplace_backward overwrites its input: not a leaf
            out = f(src)
            if isinstance(out, tuple):
                out = out[0]
            out.sum().backward() if out.dim() else out.backward()
            return out.detach(), xx.grad
        return run

    return [
        ("mean", step(lambda a: ce(a, t, label_smoothing=0.1), x0)),
        ("weighted-mean", step(lambda a: ce(a, t, weight=w, label_smoothing=0.1), x0)),
        ("sum-none", step(lambda a: ce(a, t, reduction="none", label_smoothing=0.1), x0)),
        ("prob-targets", step(lambda a: ce(a, y, label_smoothing=0.1), x0)),
        ("softcap-zloss", step(lambda a: ce(a, t, label_smoothing=0.1, softcap=30.0, z_loss=1e-4,
                                            return_z_loss=True), x0)),
        ("off-target", step(lambda a: ce(a, t, label_smoothing=0.1, smoothing_mode="off_target"), x0)),
        ("kdim", step(lambda a: ce(a, tk, label_smoothing=0.1), xk)),
        ("grad-in-forward", step(lambda a: ce(a, t, weight=w, label_smoothing=0.1, grad_in_forward=True), x0)),
        ("inplace-backward", step(lambda a: ce(a, t, label_smoothing=0.1, grad_in_forward=True,
                                               inplace_backward=True), x0, inplace=True)),
        ("bce-mean", step(lambda a: smoothing_ext.binary_cross_entropy_with_logits(a, yb, label_smoothing=0.1), x0)),
        ("bce-sum", step(lambda a: smoothing_ext.binary_cross_entropy_with_logits(a, yb, reduction="sum",
                                                                                  label_smoothing=0.1), x0)),
    ]


def check_public_vs_cpu(R, device):
    cpu = dict(public_calls("cpu"))
    for name, fn in public_calls(device):
        def one(fn=fn, name=name):
            out, grad = fn()
            rout, rgrad = cpu[name]()
            close(out, rout, tol(torch.float32), "loss")
            close(grad, rgrad, tol(torch.float32), "grad")
        R.run(f"public/{name}", one)


def check_nosync(R, device):
    if device != "cuda":
        R.na("nosync", "GPU only")
        return
    calls = public_calls(device)
    for _, fn in calls:  # warm-up (lazy initialisation may synchronise once)
        fn()
    torch.cuda.synchronize()
    for name, fn in calls:
        def one(fn=fn):
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        R.run(f"nosync/{name}", one)
    x, t, w, y, gl, glse = make((16, 5000), torch.bfloat16, 5)
    v = VARIANTS[0]
    d = inputs_on(x, t, w, y, gl, glse, v, device, False)
    for op, fn in op_calls(x, t, w, y, gl, glse, v).items():
        fn(d)
        torch.cuda.synchronize()

        def one(fn=fn):
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn(d)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        R.run(f"nosync/op/{op}", one)


def check_graphs(R, device):
    if device != "cuda":
        R.na("graphs", "GPU only")
        return
    for shape in ((64, 3000), (3, 40000), (4, 7, 3, 5)):
        x, t, w, y, gl, glse = make(shape, torch.float32, 11)
        v = VARIANTS[0]
        d = inputs_on(x, t, w, y, gl, glse, v, device, False)
        for op, fn in op_calls(x, t, w, y, gl, glse, v).items():
            def one(fn=fn):
                eager = [o.clone() for o in fn(d)]
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(2):
                        fn(d)
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outs = fn(d)
                graph.replay()
                torch.cuda.synchronize()
                for i, (a, b) in enumerate(zip(outs, eager)):
                    assert same_bits(a, b), f"graph replay output {i} differs from eager"
            R.run(f"graphs/{op}/{tuple(shape)}", one)


OOB_CHILD = textwrap.dedent("""
    import json, sys, torch, smoothing_ext
    dev = sys.argv[1]
    ops = torch.ops.smoothing_ext
    res = {}
    x = torch.randn(8, 100, device=dev)
    t = torch.tensor([1, 100 + 3, -1, 5, -100, 7, 8, 9], device=dev)
    w = (torch.rand(100) + 0.5).to(dev)
    def run(name, f):
        try:
            res[name] = f()
        except Exception as e:
            res[name] = "raised " + type(e).__name__
    if dev == "cuda":
        def rows():
            l = smoothing_ext.cross_entropy(x, t, reduction="none", label_smoothing=0.1).cpu()
            return bool(torch.isnan(l[[1, 2]]).all() and torch.isfinite(l[[0, 3, 5, 6, 7]]).all() and l[4] == 0)
        def wmean():
            return bool(torch.isnan(smoothing_ext.cross_entropy(x, t, weight=w, label_smoothing=0.1)).item())
        def fused():
            xx = x.clone().requires_grad_(True)
            l = smoothing_ext.cross_entropy(xx, t, weight=w, label_smoothing=0.1, grad_in_forward=True)
            l.backward()
            return bool(torch.isnan(l).item() and torch.isnan(xx.grad[[1, 2]]).all().item())
        def grad_rows():
            xx = x.clone().requires_grad_(True)
            smoothing_ext.cross_entropy(xx, t, reduction="none", label_smoothing=0.1).sum().backward()
            return bool(torch.isnan(xx.grad[[1, 2]]).all() and torch.isfinite(xx.grad[[0, 3, 5]]).all())
        for n, f in (("rows", rows), ("weighted_mean", wmean), ("fused", fused), ("grad_rows", grad_rows)):
            run(n, f)
        torch.cuda.synchronize()
        ok = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8], device=dev)
        res["after"] = bool(torch.isfinite(smoothing_ext.cross_entropy(x, ok, weight=w)).item())
    else:
        # the CPU op raises IndexError; the mean denominator alone is NaN (no wrap of -1)
        run("rows", lambda: smoothing_ext.cross_entropy(x, t, reduction="none"))
        from smoothing_ext.functional import _mean_denominator
        res["denominator"] = bool(torch.isnan(_mean_denominator(t, w, -100, torch.float32)).item())
    print("OOB_RESULT " + json.dumps(res))
""")


def check_oob(R, device):
    try:
        r = subprocess.run([sys.executable, "-c", OOB_CHILD, device], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        R.add("oob/subprocess", False, "timed out")
        return
    out = r.stdout + r.stderr
    line = [ln for ln in out.splitlines() if ln.startswith("OOB_RESULT ")]
    assert_free = "device-side assert" not in out and "CUDA error" not in out
    R.add("oob/subprocess exit 0, no device assert", r.returncode == 0 and assert_free, out[-600:])
    if not line:
        R.add("oob/result", False, out[-600:])
        return
    res = json.loads(line[0][len("OOB_RESULT "):])
    if device == "cuda":
        for k in ("rows", "weighted_mean", "fused", "grad_rows", "after"):
            R.add(f"oob/{k}", res.get(k) is True, res.get(k))
    else:
        R.add("oob/cpu raises IndexError", res.get("rows") == "raised IndexError", res.get("rows"))
        R.add("oob/denominator NaN", res.get("denominator") is True, res.get("denominator"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--tiny", action="store_true", help="small shapes, two dtypes (the dry run)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--note", default=None)
    a = ap.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    t0 = time.perf_counter()
    R = Results()
    sections = [("ops", lambda: check_ops(R, a.device, a.tiny)),
                ("public", lambda: check_public_vs_cpu(R, a.device)),
                ("nosync", lambda: check_nosync(R, a.device)),
                ("graphs", lambda: check_graphs(R, a.device)),
                ("oob", lambda: check_oob(R, a.device)),
                ("large", lambda: check_large(R, a.device, a.tiny))]
    timings = {}
    for name, fn in sections:
        s = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (a crash of a section is a failure, the others still run)
            R.add(f"{name}/section", False, f"{type(e).__name__}: {e}")
        timings[name] = round(time.perf_counter() - s, 1)
        print(f"[checks] {name}: {timings[name]} s", flush=True)
    n = {k: sum(i["status"] == k for i in R.items) for k in ("pass", "fail", "n/a")}
    summary = f"{n['pass']} passed, {n['fail']} failed, {n['n/a']} n/a ({a.device}{', tiny' if a.tiny else ''})"
    print("gpu_verify_checks: " + summary)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(device=a.device, tiny=a.tiny, summary=summary, seconds=round(time.perf_counter() - t0, 1),
                           sections=timings, results=R.items,
                           torch=torch.__version__,
                           gpu=torch.cuda.get_device_name(0) if a.device == "cuda" else None), f, indent=1)
    if a.note:
        with open(a.note, "w") as f:
            f.write(summary)
    return 1 if n["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
