"""Small workload for compute-sanitizer (memcheck, racecheck, synccheck) that launches every kernel
family once per dtype, compared with the CPU op:

  index forward / backward   8 lanes/row, warp/row, block/row, split rows + combine, K-dim (strided)
  probability targets        forward, backward (the A reduction + the elementwise pass)
  fused                      out of place and in place (cross_entropy_fused_), z-loss, grad_scale, split rows
  softcap, off-target        the CAP = true instances of every family above
  _scale_grad_rows_          rows and strided, factors of 1 skipped
  BCE with logits            forward, backward, sum (+ weight, pos_weight, misaligned input)
  out-of-range targets       NaN rows, no error; CUDA-graph capture of forward + backward

Run by scripts/gpu_verify.sh under each tool (memcheck with PYTORCH_NO_CUDA_MEMORY_CACHING=1, so that
an out-of-bounds access inside a cached block is seen); exits non-zero on a mismatch.
`--device cpu` (the dry run) runs the same calls with the CPU op on both sides.
"""

from __future__ import annotations

import argparse
import sys

import torch

import smoothing_ext  # noqa: F401

ops = torch.ops.smoothing_ext

# group8, warp, block, split rows, K-dim
SHAPES = [(37, 33), (16, 1000), (8, 5000), (3, 40000), (4, 7, 3, 5)]
VARIANTS = [(0.1, False, None), (0.2, True, 5.0)]  # (label_smoothing, off_target, softcap)


def misaligned(x, off=1):
    buf = torch.empty(x.numel() + off, dtype=x.dtype, device=x.device)
    buf[off:].copy_(x.reshape(-1))
    return buf[off:].view(x.shape)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    a = ap.parse_args(argv)
    dev = a.device
    if dev == "cuda":
        assert torch.cuda.is_available(), "no CUDA device"
    torch.manual_seed(0)
    fails = 0
    launched = 0

    def cmp(what, got, want, tol):
        nonlocal fails
        try:
            torch.testing.assert_close(got.cpu().double(), want.double(), equal_nan=True, **tol)
        except AssertionError as e:
            fails += 1
            print(f"FAIL {what}: {str(e).splitlines()[:3]}")

    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        tol = dict(rtol=2e-2, atol=2e-3) if dtype in (torch.float16, torch.bfloat16) else dict(rtol=1e-4, atol=1e-5)
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for shape in SHAPES:
            N, C = shape[0], shape[1]
            x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
            t = torch.randint(0, C, (N, *shape[2:]))
            t.view(-1)[::5] = -100
            w = torch.rand(C, dtype=torch.float64) + 0.5
            y = torch.softmax(torch.randn(shape, dtype=torch.float64), 1).to(dtype)
            g = torch.rand(t.shape, dtype=acc) + 0.5
            gl = torch.randn(t.shape, dtype=acc)
            xd, td, wd, yd, gd, gld = (v.to(dev) for v in (x, t, w, y, g, gl))
            for eps, offt, cap in VARIANTS:
                tag = f"{dtype} {shape} eps={eps} off_target={offt} softcap={cap}"
                wr, wdd = (w, wd) if cap is None else (None, None)
                # index targets
                ref = ops.cross_entropy_forward(x, t, wr, -100, eps, offt, cap)
                got = ops.cross_entropy_forward(xd, td, wdd, -100, eps, offt, cap)
                rg = ops._cross_entropy_backward(g, gl, x, t, wr, ref[1], -100, eps, offt, cap)
                gg = ops._cross_entropy_backward(gd, gld, xd, td, wdd, ref[1].to(dev), -100, eps, offt, cap)
                for what, u, v in (("loss", got[0], ref[0]), ("lse", got[1], ref[1]), ("grad", gg, rg)):
                    cmp(f"index {what} {tag}", u, v, tol)
                # probability targets
                ref = ops.cross_entropy_prob_forward(x, y, wr, eps, offt, cap)
                got = ops.cross_entropy_prob_forward(xd, yd, wdd, eps, offt, cap)
                rg = ops._cross_entropy_prob_backward(g, gl, x, y, wr, ref[1], eps, offt, cap)
                gg = ops._cross_entropy_prob_backward(gd, gld, xd, yd, wdd, ref[1].to(dev), eps, offt, cap)
                for what, u, v in (("loss", got[0], ref[0]), ("lse", got[1], ref[1]), ("grad", gg, rg)):
                    cmp(f"prob {what} {tag}", u, v, tol)
                # fused, out of place and in place (z-loss, device grad_scale)
                gs = torch.tensor(0.37, dtype=acc)
                rl, rs, rgr = ops.cross_entropy_fused(x, t, wr, -100, eps, offt, cap, 1e-4, gs)
                fl, fs, fgr = ops.cross_entropy_fused(xd, td, wdd, -100, eps, offt, cap, 1e-4, gs.to(dev))
                xi = xd.clone()
                il, is_ = ops.cross_entropy_fused_(xi, td, wdd, -100, eps, offt, cap, 1e-4, gs.to(dev))
                for what, u, v in (("loss", fl, rl), ("lse", fs, rs), ("grad", fgr, rgr), ("inplace loss", il, rl),
                                   ("inplace grad", xi, rgr)):
                    cmp(f"fused {what} {tag}", u, v, tol)
                # _scale_grad_rows_ (factor 1 rows skipped)
                sc = g.clone()
                sc.view(-1)[::3] = 1.0
                r2 = rgr.clone()
                ops._scale_grad_rows_(r2, sc)
                d2 = fgr.clone()
                ops._scale_grad_rows_(d2, sc.to(dev))
                cmp(f"scale_grad_rows {tag}", d2, r2, tol)
                launched += 11
            # BCE with logits (weight per row, pos_weight per class, misaligned input)
            yb = torch.rand(shape, dtype=torch.float64).to(dtype)
            pw = (torch.rand((C,) + (1,) * (len(shape) - 2), dtype=torch.float64) + 0.5).to(dtype)
            wb = (torch.rand((N,) + (1,) * (len(shape) - 1), dtype=torch.float64) + 0.5).to(dtype)
            gb = torch.rand(shape, dtype=torch.float64).to(dtype)
            xm = misaligned(xd)
            for xin in (xd, xm):
                args_d = (yb.to(dev), wb.to(dev), pw.to(dev), 0.1)
                args_r = (yb, wb, pw, 0.1)
                cmp(f"bce forward {dtype} {shape}", ops.binary_cross_entropy_with_logits_forward(xin, *args_d),
                    ops.binary_cross_entropy_with_logits_forward(x, *args_r), tol)
                cmp(f"bce sum {dtype} {shape}", ops.binary_cross_entropy_with_logits_sum(xin, *args_d),
                    ops.binary_cross_entropy_with_logits_sum(x, *args_r), dict(rtol=tol["rtol"], atol=1e-3))
                cmp(f"bce backward {dtype} {shape}",
                    ops._binary_cross_entropy_with_logits_backward(gb.to(dev), xin, *args_d),
                    ops._binary_cross_entropy_with_logits_backward(gb, x, *args_r), tol)
                launched += 3
    # out-of-range target: NaN for that row, no exception, no sticky CUDA error
    if dev == "cuda":
        x = torch.randn(4, 100, device=dev)
        t = torch.tensor([1, 100, -3, 5], device=dev)
        for cap in (None, 5.0):
            loss, lse = ops.cross_entropy_forward(x, t, None, -100, 0.0, False, cap)
            fl, _, fg = ops.cross_entropy_fused(x, t, None, -100, 0.1, False, cap, 0.0, None)
            torch.cuda.synchronize()
            if not (torch.isnan(loss[1:3]).all() and torch.isfinite(loss[[0, 3]]).all() and torch.isnan(fl[1:3]).all()
                    and torch.isnan(fg[1:3]).all()):
                fails += 1
                print("FAIL out-of-range target: expected NaN at rows 1, 2:", loss, fl)
        # CUDA graph capture of forward + backward (would fail on a host synchronisation)
        x = torch.randn(64, 3000, device=dev)
        t = torch.randint(0, 3000, (64,), device=dev)
        g = torch.ones(64, device=dev)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                loss, lse = ops.cross_entropy_forward(x, t, None, -100, 0.1)
                ops._cross_entropy_backward(g, None, x, t, None, lse, -100, 0.1)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss, lse = ops.cross_entropy_forward(x, t, None, -100, 0.1)
            grad = ops._cross_entropy_backward(g, None, x, t, None, lse, -100, 0.1)
        graph.replay()
        torch.cuda.synchronize()
        ref = ops.cross_entropy_forward(x.cpu(), t.cpu(), None, -100, 0.1)[0]
        if not torch.allclose(loss.cpu(), ref, rtol=1e-4, atol=1e-5):
            fails += 1
            print("FAIL graph replay loss mismatch")
    print(f"gpu_sanitizer_case: {launched} op calls on {dev}, {fails} failures")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
