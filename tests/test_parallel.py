"""Vocabulary-parallel cross entropy (smoothing_ext/parallel.py) on 1, 2 and 4 ranks with gloo on the CPU.

Each world size is ONE spawned group of processes (loopback only, bounded in time, cleaned up) that
runs every case and writes, per rank, which cases passed; the tests below then read those results,
one test per (world, case). The oracle is the unsharded op on the concatenated logits, in float64,
evaluated on the same (already rounded) logits. Every rank checks the loss and the gradient of its
own shard; a case passes when it passes on all ranks.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import torch

import smoothing_ext
from smoothing_ext import parallel

ROOT = Path(__file__).resolve().parents[1]
SPAWN_TIMEOUT_S = 240  # per group of processes; the whole file takes ~1 minute here

TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-10),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}
_DTYPES = {"f64": torch.float64, "f32": torch.float32, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------------------------
# Cases: explicit shards, each run on 2 and 4 ranks.

def _case(name: str, **kw: Any) -> dict:
    base = dict(name=name, dtype="f64", N=7, V=13, eps=0.0, mode="uniform", reduction="mean", weight=None,
                prob=False, z=0.0, softcap=None, ignore_frac=0.0, ignore_index=-100, part="even",
                targets="random", scale=3.0, tdtype="int64", return_z=False, prob_grad=False,
                num_classes=None, confident=False)
    base.update(kw)
    return base


CASES = [
    _case("plain_mean"),
    _case("smooth_mean", eps=0.1),
    _case("off_target_sum_uneven", eps=0.1, mode="off_target", reduction="sum", part="uneven"),
    _case("weight_local_ignore_uneven", eps=0.3, weight="local", ignore_frac=0.3, part="uneven"),
    _case("weight_full_none_empty_rank", eps=0.2, weight="full", reduction="none", ignore_frac=0.3, part="empty"),
    _case("eps1_uniform_weight", eps=1.0, weight="local"),
    _case("eps1_off_target_none", eps=1.0, mode="off_target", reduction="none"),
    _case("zloss_return", eps=0.1, z=1e-2, return_z=True, weight="full"),
    _case("zloss_none_ignore", eps=0.1, z=3e-2, reduction="none", ignore_frac=0.4, part="uneven"),
    _case("softcap", eps=0.1, softcap=5.0, scale=10.0),
    _case("everything", eps=0.15, mode="off_target", weight="full", z=1e-2, softcap=4.0, ignore_frac=0.3,
          part="uneven", reduction="none", scale=8.0),
    _case("prob_mean", prob=True),
    _case("prob_smooth_weight_sum_uneven", prob=True, eps=0.2, weight="local", reduction="sum", part="uneven"),
    _case("prob_off_target_all_empty_rank", prob=True, eps=0.2, mode="off_target", weight="full",
          reduction="none", part="empty", softcap=4.0, z=1e-2, scale=6.0),
    _case("prob_target_grad", prob=True, eps=0.1, weight="local", prob_grad=True, reduction="none"),
    _case("targets_on_one_rank", eps=0.1, weight="local", targets="last_rank", part="uneven"),
    _case("all_ignored_mean_nan", eps=0.1, weight="local", ignore_frac=1.0),
    _case("all_ignored_sum", eps=0.1, ignore_frac=1.0, reduction="sum"),
    _case("ignore_index_is_a_class", eps=0.1, ignore_index=3, ignore_frac=0.4, weight="full"),
    _case("int32_targets", eps=0.1, tdtype="int32", part="uneven"),
    _case("uint8_targets", eps=0.1, tdtype="uint8", weight="local"),
    _case("uint8_targets_above_127", eps=0.1, tdtype="uint8", targets="high", N=6, V=200, z=1e-2, part="uneven"),
    _case("num_classes_given", eps=0.1, weight="full", num_classes=13, part="uneven"),
    _case("confident_target", eps=0.1, confident=True, weight="local", reduction="none"),
    _case("empty_batch_sum", N=0, eps=0.1, reduction="sum"),
    _case("f32_smooth_weight", dtype="f32", eps=0.1, weight="local", ignore_frac=0.2, part="uneven"),
    _case("bf16_smooth_weight_uneven", dtype="bf16", eps=0.1, weight="local", part="uneven", N=16, V=40),
    _case("bf16_off_target_z_ignore_empty", dtype="bf16", eps=0.2, mode="off_target", z=1e-2, ignore_frac=0.3,
          part="empty", reduction="none", N=16, V=40),
    _case("bf16_prob_softcap", dtype="bf16", prob=True, eps=0.1, softcap=6.0, scale=8.0, N=16, V=40),
    _case("bf16_confident", dtype="bf16", eps=0.1, confident=True, reduction="none", N=16, V=40),
]
# Checks that are not loss/gradient comparisons of one case (names of the worker's other results).
EXTRA = {
    2: ["megatron_7464_tp1_vs_tp2", "one_collective_per_forward", "no_host_sync", "dtensor_2d", "dtensor_3d",
        "dtensor_uneven", "dtensor_prob_weight", "dtensor_vs_explicit", "maybe_parallel", "errors",
        "double_backward_raises", "forward_ad_raises", "bad_target_nan", "wrong_num_classes_nan"],
    4: ["one_collective_per_forward", "dtensor_2d", "dtensor_3d", "dtensor_uneven", "dtensor_vs_explicit",
        "dtensor_2d_mesh", "bad_target_nan"],
}


def _widths(V: int, world: int, part: str) -> list[int]:
    """Class counts per rank: torch.chunk-like, uneven, or with an empty rank (not the last)."""
    if part == "even":
        c = -(-V // world)
        return [max(0, min(c, V - r * c)) for r in range(world)]
    if part == "uneven":
        w = {2: [3, V - 3], 4: [1, 5, 2, V - 8]}[world]
    elif part == "empty":
        w = {1: [V], 2: [0, V], 4: [4, 0, 6, V - 10]}[world]
    else:
        raise ValueError(part)
    assert sum(w) == V and min(w) >= 0, w
    return w


# ----------------------------------------------------------------------------------------------
# Worker side (runs in each spawned rank).

class _CollectiveCounter:
    """Counts the torch.distributed collectives called while active (outermost calls only: one
    public function may call another), with the shape of each one's first tensor argument."""

    NAMES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast", "reduce",
             "reduce_scatter_tensor", "reduce_scatter", "all_to_all_single", "all_to_all", "gather", "scatter",
             "barrier", "send", "recv", "isend", "irecv", "all_gather_object", "broadcast_object_list")

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self._depth = threading.local()
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> "_CollectiveCounter":
        import torch.distributed as dist
        import torch.distributed.distributed_c10d as c10d

        for mod in (dist, c10d):
            for name in self.NAMES:
                fn = getattr(mod, name, None)
                if fn is not None:
                    self._saved.append((mod, name, fn))
                    setattr(mod, name, self._wrap(name, fn))
        return self

    def _wrap(self, name: str, fn: Callable) -> Callable:
        def counted(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "d", 0)
            if depth == 0:
                shape = next((tuple(a.shape) for a in args[1:2] if isinstance(a, torch.Tensor)), ())
                self.calls.append((name, shape))
            self._depth.d = depth + 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth.d = depth
        return counted

    def __exit__(self, *exc: Any) -> None:
        for mod, name, fn in reversed(self._saved):
            setattr(mod, name, fn)


def _data(case: dict, seed: int):
    """Global inputs, the same on every rank: logits (already rounded to the case's dtype), target,
    weight (float64), upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    dtype = _DTYPES[case["dtype"]]
    N, V = case["N"], case["V"]
    x = case["scale"] * torch.randn(N, V, generator=g, dtype=torch.float64)
    if case["prob"]:
        t = torch.softmax(2 * torch.randn(N, V, generator=g, dtype=torch.float64), 1)
    else:
        if case["targets"] == "last_rank":
            w = _widths(V, case["world"], case["part"])
            lo = sum(w[:-1])
            t = torch.randint(lo, V, (N,), generator=g)
        elif case["targets"] == "high":  # large uint8 values, among them 156 (what -100 wraps to)
            t = torch.randint(150, V, (N,), generator=g)
            t[::2] = 156
        else:
            t = torch.randint(0, V, (N,), generator=g)
        if case["confident"]:
            x[torch.arange(N), t] += 40.0
        if case["ignore_frac"] > 0:
            mask = torch.rand(N, generator=g) < case["ignore_frac"]
            t = torch.where(mask, torch.full_like(t, case["ignore_index"]), t)
        t = t.to(getattr(torch, case["tdtype"]))
    weight = None if case["weight"] is None else 0.2 + 2 * torch.rand(V, generator=g, dtype=torch.float64)
    # upstream gradient: O(1) per row, so that the absolute tolerances of bf16 mean something
    if case["reduction"] == "none":
        up = torch.randn(N, generator=g, dtype=torch.float64)
    else:
        up = torch.tensor(1.3 * (max(N, 1) if case["reduction"] == "mean" else 1.0), dtype=torch.float64)
    return x.to(dtype), t, weight, up


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str, scale: float = 1.0) -> None:
    tol = TOL[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol["rtol"] * scale,
                               atol=tol["atol"] * scale, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _oracle(case: dict, x: torch.Tensor, t: torch.Tensor, weight: Optional[torch.Tensor], up: torch.Tensor):
    """Loss (and z term) and gradients of the unsharded op in float64 on the same logits."""
    xr = x.double().requires_grad_()
    # int64 class indices for the oracle: the unsharded op's mean denominator and z-loss mask compare
    # a uint8 target with ignore_index=-100 as uint8 (156), so it would miscount targets >= 156
    tr = t.double().requires_grad_(case["prob_grad"]) if case["prob"] else t.long()
    out = smoothing_ext.cross_entropy(
        xr, tr, weight, ignore_index=case["ignore_index"], reduction=case["reduction"],
        label_smoothing=case["eps"], smoothing_mode=case["mode"], z_loss=case["z"], softcap=case["softcap"],
        return_z_loss=True,
    )
    loss, z = out
    if x.shape[0] > 0:
        (loss * up).sum().backward()
    gx = xr.grad if xr.grad is not None else torch.zeros_like(xr)
    gt = tr.grad if case["prob"] and case["prob_grad"] else None
    return loss.detach(), z.detach(), gx, gt


def _run_explicit(case: dict, rank: int, world: int, group: Any, x: torch.Tensor, t: torch.Tensor,
                  weight: Optional[torch.Tensor], up: torch.Tensor, widths: list[int]):
    """This rank's loss and shard gradients through vocab_parallel_cross_entropy."""
    start = sum(widths[:rank])
    Vr = widths[rank]
    xl = x[:, start:start + Vr].clone().requires_grad_()
    if case["prob"]:
        tl = t[:, start:start + Vr].clone().to(x.dtype if x.dtype == torch.float64 else torch.float32)
        tl.requires_grad_(case["prob_grad"])
    else:
        tl = t
    w = None
    if weight is not None:
        w = weight.to(x.dtype if x.dtype == torch.float64 else torch.float32)
        if case["weight"] == "local":
            w = w[start:start + Vr].clone()
    out = parallel.vocab_parallel_cross_entropy(
        xl, tl, w, case["ignore_index"], case["reduction"], case["eps"], process_group=group,
        class_start=start, num_classes=case["num_classes"], smoothing_mode=case["mode"], z_loss=case["z"],
        return_z_loss=case["return_z"], softcap=case["softcap"],
    )
    loss, z = out if case["return_z"] else (out, None)
    if x.shape[0] > 0:
        (loss * up.to(loss.dtype)).sum().backward()
    gx = xl.grad if xl.grad is not None else torch.zeros_like(xl)
    gt = tl.grad if case["prob"] and case["prob_grad"] else None
    return loss.detach(), z, gx, gt, start, Vr


def _check_case(case: dict, rank: int, world: int, group: Any) -> None:
    case = dict(case, world=world)
    x, t, weight, up = _data(case, seed=zlib.crc32(case["name"].encode()) % 10_000)
    dtype = x.dtype
    widths = _widths(case["V"], world, case["part"])
    loss, z, gx, gt, start, Vr = _run_explicit(case, rank, world, group, x, t, weight, up, widths)
    ref_loss, ref_z, ref_gx, ref_gt = _oracle(case, x, t, weight, up)
    assert loss.dtype == dtype, (loss.dtype, dtype)
    assert loss.shape == ref_loss.shape, (loss.shape, ref_loss.shape)
    scale = 2.0 if case["confident"] else 1.0
    _close(loss, ref_loss, dtype, "loss", scale)
    if z is not None:
        _close(z, ref_z, dtype, "z-loss term")
    _close(gx, ref_gx[:, start:start + Vr], dtype, "input gradient", scale)
    assert gx.dtype == dtype and gx.shape == (case["N"], Vr)
    if gt is not None:
        _close(gt, ref_gt[:, start:start + Vr], dtype, "target gradient")
    if case["name"] == "all_ignored_mean_nan":
        assert torch.isnan(loss), loss
        assert (gx == 0).all()


def _megatron_7464(rank: int, world: int, group: Any, solo: Any) -> None:
    """Megatron issue #7464: TP1 and TP2 gave different smoothed losses at V=8. Here TP2 equals TP1
    equals the unsharded op; the local-shard smoothing those implementations use does not."""
    torch.manual_seed(7464)
    N, V, eps = 5, 8, 0.1
    x = 2 * torch.randn(N, V, dtype=torch.float64)
    t = torch.randint(0, V, (N,))
    ref = smoothing_ext.cross_entropy(x, t, label_smoothing=eps, smoothing_mode="off_target")
    tp2 = parallel.vocab_parallel_cross_entropy(
        x[:, 4 * rank:4 * rank + 4], t, label_smoothing=eps, smoothing_mode="off_target", process_group=group,
        class_start=4 * rank)
    _close(tp2, ref, torch.float64, "TP2 vs unsharded")
    if rank == 0:
        tp1 = parallel.vocab_parallel_cross_entropy(
            x, t, label_smoothing=eps, smoothing_mode="off_target", process_group=solo, class_start=0)
        _close(tp1, ref, torch.float64, "TP1 vs unsharded")
        _close(tp2, tp1, torch.float64, "TP2 vs TP1")
    # The local-shard smoothing (each rank spreading eps over its own V/2 classes) is measurably off:
    # the case discriminates.
    lse = torch.logsumexp(x, 1)
    local = torch.zeros(N, dtype=torch.float64)
    for r in range(2):
        xs = x[:, 4 * r:4 * r + 4]
        local += (eps / (4 - 1)) * (4 * lse - xs.sum(1)) / 2
    owner_x_t = x[torch.arange(N), t]
    wrong = ((1 - eps - eps / (V - 1)) * (lse - owner_x_t) + local).mean()
    assert (wrong - ref).abs() > 1e-3, (wrong, ref)


def _one_collective(rank: int, world: int, group: Any) -> None:
    """Exactly one collective per forward, of (N + 1) x k per-row scalars; none in the backward;
    also through the DTensor path."""
    N, V = 6, 10
    torch.manual_seed(1)
    x = torch.randn(N, V, dtype=torch.float64)
    t = torch.randint(0, V, (N,))
    w = _widths(V, world, "uneven")
    s = sum(w[:rank])
    for prob, k in ((False, 5), (True, 4)):
        xl = x[:, s:s + w[rank]].clone().requires_grad_()
        tgt = torch.softmax(x, 1)[:, s:s + w[rank]] if prob else t
        with _CollectiveCounter() as fwd:
            loss = parallel.vocab_parallel_cross_entropy(
                xl, tgt, label_smoothing=0.1, z_loss=1e-3, softcap=5.0, process_group=group, class_start=s)
        with _CollectiveCounter() as bwd:
            loss.backward()
        assert len(fwd.calls) == 1, fwd.calls
        assert fwd.calls[0][1] == (N + 1, k), fwd.calls
        assert bwd.calls == [], bwd.calls
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    xd = distribute_tensor(x, mesh, [Shard(1)]).requires_grad_()
    with _CollectiveCounter() as fwd:
        loss = parallel.dtensor_cross_entropy(xd, t, label_smoothing=0.1)
    with _CollectiveCounter() as bwd:
        loss.backward()
    assert len(fwd.calls) == 1 and bwd.calls == [], (fwd.calls, bwd.calls)


def _no_host_sync(rank: int, world: int, group: Any) -> None:
    """No host synchronisation in the forward and the backward (what CUDA graphs and overlap need):
    no op that copies a device value to the host (``.item()``, ``bool(tensor)``, boolean masking)
    is dispatched, seen with a dispatch mode on the CPU (the same ops would sync on a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    syncs = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select",
             "aten::is_nonzero", "aten::equal", "aten::allclose", "aten::unique", "aten::_unique2"}

    class Spy(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
            self.seen.append(func._schema.name)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(2)
    N, V = 5, 8
    x = torch.randn(N, V)
    t = torch.tensor([1, -100, 6, 7, 0])
    w = torch.rand(V) + 0.5
    s = 4 * rank
    for prob in (False, True):
        xl = x[:, s:s + 4].clone().requires_grad_()
        tgt = torch.softmax(x, 1)[:, s:s + 4] if prob else t
        with Spy() as spy:
            loss, z = parallel.vocab_parallel_cross_entropy(
                xl, tgt, w, label_smoothing=0.1, smoothing_mode="off_target", z_loss=1e-2, return_z_loss=True,
                softcap=5.0, process_group=group, class_start=s, num_classes=V)
            loss.backward()
        assert xl.grad is not None
        assert "smoothing_ext::cross_entropy_forward" in spy.seen, spy.seen  # the spy does see the ops
        bad = [name for name in spy.seen if name in syncs]
        assert not bad, f"host synchronisations: {bad}"


def _dtensor_checks(rank: int, world: int, group: Any, results: dict) -> None:
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (world,))

    def check(name: str, fn: Callable[[], None]) -> None:
        _record(results, name, fn)

    def compare(shape: tuple, V: int, cdim: int, prob: bool = False, weight_kind: Optional[str] = None,
                **kw: Any) -> None:
        g = torch.Generator().manual_seed(zlib.crc32(repr(shape).encode()) % 1000 + V)
        full = 3 * torch.randn(*shape, generator=g, dtype=torch.float64)
        row_shape = shape[:cdim] + shape[cdim + 1:]
        if prob:
            t = torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64), cdim)
        else:
            t = torch.randint(0, V, row_shape, generator=g)
            t[(0,) * len(row_shape)] = -100
        weight = 0.5 + torch.rand(V, generator=g, dtype=torch.float64)
        xd = distribute_tensor(full, mesh, [Shard(cdim)]).requires_grad_()
        if weight_kind == "sharded":
            wd = distribute_tensor(weight, mesh, [Shard(0)])
        elif weight_kind == "replicated":
            wd = distribute_tensor(weight, mesh, [Replicate()])
        else:
            wd = weight
        td = distribute_tensor(t, mesh, [Shard(cdim)]) if prob else t
        loss = parallel.dtensor_cross_entropy(xd, td, wd, label_smoothing=0.1, **kw)
        up = torch.randn(loss.shape, generator=g, dtype=torch.float64)
        (loss * up).sum().backward()
        # oracle: the unsharded op on (rows, V)
        xr = full.detach().movedim(cdim, -1).reshape(-1, V).requires_grad_()
        tr = t.movedim(cdim, -1).reshape(-1, V) if prob else t.reshape(-1)
        ref = smoothing_ext.cross_entropy(xr, tr, weight, label_smoothing=0.1, **kw)
        if kw.get("reduction") == "none":
            ref = ref.reshape(row_shape)
        (ref * up).sum().backward()
        _close(loss, ref.detach(), torch.float64, "DTensor loss")
        assert not isinstance(loss, DTensor)
        assert isinstance(xd.grad, DTensor), type(xd.grad)
        assert tuple(xd.grad.placements) == (Shard(cdim),), xd.grad.placements
        ref_grad = xr.grad.reshape(*[s for i, s in enumerate(shape) if i != cdim], V).movedim(-1, cdim)
        _close(xd.grad.full_tensor(), ref_grad, torch.float64, "DTensor gradient")

    check("dtensor_2d", lambda: compare((6, 12), 12, 1, reduction="none", z_loss=1e-2))
    check("dtensor_3d", lambda: compare((2, 3, 11), 11, 2, reduction="mean", smoothing_mode="off_target"))
    # V=5 over 4 ranks: torch's chunking gives 2, 2, 1, 0 classes (a rank with none)
    check("dtensor_uneven", lambda: compare((5, 5), 5, 1, weight_kind="replicated", softcap=3.0))
    if world == 2:
        check("dtensor_prob_weight", lambda: compare((4, 9), 9, 1, prob=True, weight_kind="sharded", reduction="sum"))

    def vs_explicit() -> None:
        torch.manual_seed(3)
        V = 10
        x = torch.randn(6, V, dtype=torch.float64)
        t = torch.randint(0, V, (6,))
        xd = distribute_tensor(x, mesh, [Shard(1)]).requires_grad_()
        a = parallel.dtensor_cross_entropy(xd, t, label_smoothing=0.2, reduction="none")
        a.sum().backward()
        local = xd.to_local()
        # the explicit path on the same shard (torch's chunking: class_start = rank * ceil(V / world))
        start = min(V, rank * -(-V // world))
        xl = local.detach().clone().requires_grad_()
        b = parallel.vocab_parallel_cross_entropy(xl, t, label_smoothing=0.2, reduction="none",
                                                  process_group=group, class_start=start)
        b.sum().backward()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(xd.grad.to_local(), xl.grad, rtol=0, atol=0)

    check("dtensor_vs_explicit", vs_explicit)

    def two_dim_mesh() -> None:
        # data-parallel x tensor-parallel: classes sharded over "tp", replicated over "dp"
        mesh2 = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
        torch.manual_seed(4)
        V = 9
        x = torch.randn(5, V, dtype=torch.float64)
        t = torch.randint(0, V, (5,))
        w = 0.5 + torch.rand(V, dtype=torch.float64)
        xd = distribute_tensor(x, mesh2, [Replicate(), Shard(1)]).requires_grad_()
        loss = parallel.dtensor_cross_entropy(xd, t, w, label_smoothing=0.1, z_loss=1e-2)
        loss.backward()
        xr = x.clone().requires_grad_()
        ref = smoothing_ext.cross_entropy(xr, t, w, label_smoothing=0.1, z_loss=1e-2)
        ref.backward()
        _close(loss, ref.detach(), torch.float64, "2-D mesh loss")
        assert tuple(xd.grad.placements) == (Replicate(), Shard(1)), xd.grad.placements
        _close(xd.grad.full_tensor(), xr.grad, torch.float64, "2-D mesh gradient")

    if world == 4:
        check("dtensor_2d_mesh", two_dim_mesh)


def _maybe_parallel(rank: int, world: int, group: Any) -> None:
    torch.manual_seed(5)
    x = torch.randn(4, 6, dtype=torch.float64)
    t = torch.randint(0, 6, (4,))
    assert parallel.maybe_parallel(x, t, label_smoothing=0.1, process_group=None) is None
    s = 3 * rank
    out = parallel.maybe_parallel(x[:, s:s + 3], t, label_smoothing=0.1, size_average=False,
                                  process_group=group, class_start=s)
    ref = smoothing_ext.cross_entropy(x, t, label_smoothing=0.1, reduction="sum")
    _close(out, ref, torch.float64, "maybe_parallel (legacy size_average=False -> sum)")
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    xd = distribute_tensor(x, init_device_mesh("cpu", (world,)), [Shard(1)])
    _close(parallel.maybe_parallel(xd, t, label_smoothing=0.1), smoothing_ext.cross_entropy(x, t, label_smoothing=0.1),
           torch.float64, "maybe_parallel (DTensor)")
    # the public entry points dispatch there themselves: the one-line switch
    ref = smoothing_ext.cross_entropy(x, t, label_smoothing=0.1)
    _close(smoothing_ext.cross_entropy(xd, t, label_smoothing=0.1), ref, torch.float64, "cross_entropy(DTensor)")
    _close(smoothing_ext.CrossEntropyLoss(label_smoothing=0.1)(xd, t), ref, torch.float64, "module(DTensor)")
    _close(smoothing_ext.cross_entropy(x[:, s:s + 3], t, label_smoothing=0.1, process_group=group, class_start=s),
           ref, torch.float64, "cross_entropy(process_group=)")
    crit = smoothing_ext.CrossEntropyLoss(label_smoothing=0.1, process_group=group, class_start=s)
    _close(crit(x[:, s:s + 3], t), ref, torch.float64, "module(process_group=)")


def _errors(rank: int, world: int, group: Any) -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 6, (4,))
    kw = dict(process_group=group, class_start=3 * rank)
    with pytest.raises(NotImplementedError, match="grad_in_forward"):
        parallel.vocab_parallel_cross_entropy(x, t, grad_in_forward=True, **kw)
    with pytest.raises(NotImplementedError, match="grad_in_forward"):
        parallel.maybe_parallel(x, t, grad_in_forward=True, inplace_backward=True, **kw)
    with pytest.raises(ValueError, match=r"\(N, V_r\)"):
        parallel.vocab_parallel_cross_entropy(x[0], t, **kw)
    with pytest.raises(ValueError, match="shape"):
        parallel.vocab_parallel_cross_entropy(x, t[:3], **kw)
    with pytest.raises(ValueError, match="does not cover"):
        parallel.vocab_parallel_cross_entropy(x, t, torch.ones(4, dtype=torch.float64), process_group=group,
                                              class_start=3)
    with pytest.raises(NotImplementedError, match="detach"):
        parallel.vocab_parallel_cross_entropy(x, t, torch.ones(3, dtype=torch.float64, requires_grad=True), **kw)
    with pytest.raises(ValueError, match="class_start"):
        parallel.maybe_parallel(x, t, process_group=group)
    with pytest.raises(ValueError, match="label_smoothing"):
        parallel.vocab_parallel_cross_entropy(x, t, label_smoothing=1.5, **kw)
    with pytest.raises(ValueError, match="ignore_index"):
        parallel.vocab_parallel_cross_entropy(x, torch.rand(4, 3, dtype=torch.float64), ignore_index=0, **kw)
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    xd = distribute_tensor(torch.randn(4, 6, dtype=torch.float64), init_device_mesh("cpu", (world,)), [Shard(0)])
    with pytest.raises(NotImplementedError, match="class dim"):
        parallel.dtensor_cross_entropy(xd, t)


def _double_backward(rank: int, world: int, group: Any) -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 6, (4,))
    loss = parallel.vocab_parallel_cross_entropy(x, t, label_smoothing=0.1, process_group=group,
                                                 class_start=3 * rank)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def _forward_ad(rank: int, world: int, group: Any) -> None:
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.randint(0, 6, (4,))
    with fwAD.dual_level():
        xd = fwAD.make_dual(x, torch.ones_like(x))
        with pytest.raises(RuntimeError, match="forward-mode AD"):
            parallel.vocab_parallel_cross_entropy(xd, t, process_group=group, class_start=3 * rank)


def _bad_target_nan(rank: int, world: int, group: Any) -> None:
    """A non-ignored target outside [0, V) is owned by no rank: NaN for its row (and the mean), the
    other rows exact."""
    torch.manual_seed(9)
    V = 4 * world
    x = torch.randn(3, V, dtype=torch.float64)
    t = torch.tensor([1, V, 2])
    out = parallel.vocab_parallel_cross_entropy(x[:, 4 * rank:4 * rank + 4], t, label_smoothing=0.1,
                                                reduction="none", process_group=group, class_start=4 * rank)
    assert torch.isnan(out[1]) and not torch.isnan(out[[0, 2]]).any(), out
    ref = smoothing_ext.cross_entropy(x[[0, 2]], t[[0, 2]], label_smoothing=0.1, reduction="none")
    _close(out[[0, 2]], ref, torch.float64, "rows with valid targets")
    mean = parallel.vocab_parallel_cross_entropy(x[:, 4 * rank:4 * rank + 4], t, process_group=group,
                                                 class_start=4 * rank)
    assert torch.isnan(mean)


def _wrong_num_classes(rank: int, world: int, group: Any) -> None:
    x = torch.randn(3, 3, dtype=torch.float64)
    t = torch.tensor([0, 4, 5])
    out = parallel.vocab_parallel_cross_entropy(x, t, label_smoothing=0.1, process_group=group,
                                                class_start=3 * rank, num_classes=7)
    assert torch.isnan(out), out


def _record(results: dict, name: str, fn: Callable[[], None]) -> None:
    try:
        fn()
        results[name] = None
    except BaseException:  # noqa: BLE001  (reported to the parent, which fails that test)
        results[name] = traceback.format_exc(limit=6)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=90))
    results: dict[str, Optional[str]] = {}
    try:
        group = dist.group.WORLD
        for case in CASES:
            _record(results, case["name"], lambda case=case: _check_case(case, rank, world, group))
        solo = dist.new_group([0]) if world == 2 else None  # collective: every rank creates it
        extra: dict[str, Callable[[], None]] = {
            "megatron_7464_tp1_vs_tp2": lambda: _megatron_7464(rank, world, group, solo),
            "one_collective_per_forward": lambda: _one_collective(rank, world, group),
            "no_host_sync": lambda: _no_host_sync(rank, world, group),
            "maybe_parallel": lambda: _maybe_parallel(rank, world, group),
            "errors": lambda: _errors(rank, world, group),
            "double_backward_raises": lambda: _double_backward(rank, world, group),
            "forward_ad_raises": lambda: _forward_ad(rank, world, group),
            "bad_target_nan": lambda: _bad_target_nan(rank, world, group),
            "wrong_num_classes_nan": lambda: _wrong_num_classes(rank, world, group),
        }
        for name in EXTRA[world]:
            if name in extra:
                _record(results, name, extra[name])
        _dtensor_checks(rank, world, group, results)
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world: int, fn: Callable, args: tuple, timeout_s: float) -> None:
    """Spawn `world` processes running fn(rank, *args); kill them all on timeout (then fail)."""
    import torch.multiprocessing as mp

    env = {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the children, before they import torch
    try:
        ctx = mp.start_processes(fn, args=args, nprocs=world, join=False, start_method="spawn")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world} ranks did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join(5)


_RESULTS: dict[int, dict[str, list[Optional[str]]]] = {}


def _results(world: int, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Optional[str]]]:
    if world not in _RESULTS:
        out = tmp_path_factory.mktemp(f"parallel{world}")
        run_ranks(world, _worker, (world, _free_port(), str(out)), SPAWN_TIMEOUT_S)
        per_rank = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
        _RESULTS[world] = {name: [res.get(name, "not run") for res in per_rank] for name in per_rank[0]}
    return _RESULTS[world]


_IDS = [(w, c["name"]) for w in (2, 4) for c in CASES] + [(w, n) for w in (2, 4) for n in EXTRA[w]]


# the 4-rank run (one spawn of 4 processes for all its cases) is in the slow set; 2 ranks stay fast
@pytest.mark.parametrize("world,name", [pytest.param(w, n, id=f"world{w}-{n}", marks=[pytest.mark.slow] if w == 4 else [])
                                        for w, n in _IDS])
def test_parallel_matches_unsharded(world: int, name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    results = _results(world, tmp_path_factory)
    assert name in results, f"{name} was not run by the {world} ranks (got {sorted(results)})"
    failures = [f"rank {r}:\n{err}" for r, err in enumerate(results[name]) if err is not None]
    assert not failures, "\n".join(failures)


def test_maybe_parallel_is_none_for_plain_calls() -> None:
    x, t = torch.randn(3, 5), torch.randint(0, 5, (3,))
    assert parallel.maybe_parallel(x, t, label_smoothing=0.1, reduction="sum") is None
    assert parallel.maybe_parallel(x, t, process_group=None) is None
    with pytest.raises(ValueError, match="process_group"):
        parallel.maybe_parallel(x, t, class_start=0)


@pytest.mark.slow
def test_example_tensor_parallel_loss(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "tensor_parallel_loss.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "OK: sharded and unsharded losses and gradients agree" in proc.stdout, proc.stdout
