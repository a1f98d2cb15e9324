"""Vocabulary-parallel label-smoothed cross entropy over ``torch.distributed`` (and DTensor).

When the output layer is sharded over tensor-parallel ranks, rank r holds the logits of classes
``[v_r, v_r + V_r)`` of the global vocabulary V, for every row. The loss of a row needs its global
log-sum-exp, and, with label smoothing, the GLOBAL number of classes V, weight sum W and
``sum_j w_j x_j`` (using the local shard's, as Megatron and TransformerEngine do, gives a loss that
changes with the tensor-parallel degree). Scheme (formulas: csrc/smoothing_ext.cpp):

forward, on every rank, from its shard only (one pass of the compiled forward kernel; two for
probability targets):
    lse_r = log sum_{j in r} exp(x_j)           S_r = sum_{j in r} w_j (lse_r - x_j)
    x_t, w_t and an "owner" flag where t is in the shard (a gather of N elements)
    probability targets y: also P_r = sum_{j in r} w_j y_j (lse_r - x_j), Y_r = sum_{j in r} w_j y_j
  packed into ONE (N + 1) x k tensor (the extra row holds the per-rank W_r and V_r) and all-gathered:
  a single collective. Then every rank combines, in the same fixed rank order (bit-identical results
  on all ranks):
    lse = logsumexp_r lse_r,  W = sum_r W_r,  V = sum_r V_r,
    sum_j w_j (lse - x_j) = sum_r [W_r (lse - lse_r) + S_r]      (every term >= 0: no cancellation)
    loss = on w_t (lse - x_t) + off sum_j w_j (lse - x_j)
backward: no communication. Each rank computes the gradient of its own shard from the global lse
  and the row scalars, grad_j = g (A p_j - on w_t [j = t] - off w_j) + g_lse p_j,
  A = on w_t + off W (probability targets: grad_j = (g A + g_lse) p_j - g w_j q_j, A = sum_j w_j q_j
  over all ranks), with the compiled backward kernels (see ``_VocabParallelCrossEntropy.backward``).

Entry points: :func:`vocab_parallel_cross_entropy` (explicit shards, Megatron style),
:func:`dtensor_cross_entropy` (logits that are a DTensor sharded on the class dim, e.g. the output of
an LM head under ``ColwiseParallel(use_local_output=False)``), and :func:`maybe_parallel`, the single
dispatch hook of ``smoothing_ext.cross_entropy`` (None when the call is not a parallel one).
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Optional, Union

import torch
from torch import Tensor

from ._autograd import acc_dtype

__all__ = ["vocab_parallel_cross_entropy", "dtensor_cross_entropy", "maybe_parallel"]

_REDUCTIONS = ("none", "mean", "sum")
_SMOOTHING_MODES = ("uniform", "off_target")
_INDEX_DTYPES = (torch.int64, torch.int32, torch.uint8)

# Columns of the packed per-row partials (index targets / probability targets).
# lse_r and S_r come first in both, so that the combination shares their indices.
_I_LSE, _I_S, _I_XT, _I_WT, _I_OWN = range(5)
_P_LSE, _P_S, _P_P, _P_Y = range(4)


def _all_gather(out: Tensor, inp: Tensor, group: Any) -> None:
    """The one collective of the forward: ``out`` = the ranks' ``inp`` concatenated along dim 0.

    Looked up on ``torch.distributed`` at call time (so that tests can count it);
    ``all_gather_single`` is the current name, ``all_gather_into_tensor`` the one older torch has.
    """
    import torch.distributed as dist

    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


def _coefficients(eps: float, V: Tensor, off_target: bool) -> tuple[Tensor, Tensor]:
    """(on, off) of q_j = on [j == t] + off for the GLOBAL class count V (a device tensor: known only
    after the collective when shards are uneven; no host sync)."""
    one = torch.ones((), dtype=V.dtype, device=V.device)
    if not off_target:
        return one * (1.0 - eps), eps / V
    # C == 1: nothing to smooth (on = 1, off = 0), as in the unsharded op
    many = V > 1
    off = torch.where(many, eps / torch.clamp(V - 1, min=1), torch.zeros_like(V))
    on = torch.where(many, 1.0 - eps - off, one)
    return on, off


def _capped(x: Tensor, softcap: Optional[float]) -> Tensor:
    return x if softcap is None else softcap * torch.tanh(x / softcap)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-row loss and global lse of one rank's (N, V_r) shard; one all-gather in the forward, none
    in the backward. Outputs (acc dtype): loss rows (0 for ignored rows), lse, and the "mean"
    denominator (sum of w_t over the non-ignored rows; non-differentiable)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        ignore_index: int,
        label_smoothing: float,
        off_target: bool,
        softcap: Optional[float],
        class_start: int,
        num_classes: Optional[int],
        group: Any,
        world: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        ops = torch.ops.smoothing_ext
        acc = acc_dtype(input.dtype)
        dev = input.device
        N, Vr = input.shape
        prob = target.is_floating_point()
        zero_rows = torch.zeros(N, dtype=acc, device=dev)
        W_r = weight.sum(dtype=acc) if weight is not None else torch.full((), float(Vr), dtype=acc, device=dev)
        V_r = torch.full((), float(Vr), dtype=acc, device=dev)

        # Local partials. One forward-kernel pass gives both lse_r and S_r: with label_smoothing=1
        # (uniform: on = 0, off = 1/V_r) its loss is (1/V_r) sum_j w_j (lse_r - x_j), whatever the
        # (valid) target, so class 0 stands for every row and ignoring is done globally below. S_r is a
        # sum of non-negative terms, and combining it as W_r (lse - lse_r) + S_r never subtracts two
        # large numbers (a mat-vec for sum_j w_j x_j, to be subtracted from W lse, would).
        if Vr > 0:
            zeros_t = torch.zeros(N, dtype=torch.int64, device=dev)
            loss1, lse_r = ops.cross_entropy_forward(input, zeros_t, weight, -1, 1.0, False, softcap)
            S_r = loss1 * Vr
        else:  # a rank without classes: exp-sum 0 (lse_r = -inf), no weights; it takes part all the same
            lse_r = torch.full((N,), -math.inf, dtype=acc, device=dev)
            S_r = zero_rows
        if prob:
            if Vr > 0:
                P_r, _ = ops.cross_entropy_prob_forward(input, target, weight, 0.0, False, softcap)
                y = target.to(acc)
                Y_r = y @ weight.to(acc) if weight is not None else y.sum(1)
            else:
                P_r = Y_r = zero_rows
            cols = [lse_r, S_r, P_r, Y_r]
            valid = None
            owned = None
        else:
            t = target.long()
            valid = t != ignore_index
            owned = valid & (t >= class_start) & (t < class_start + Vr)
            if Vr > 0:
                tl = torch.where(owned, t - class_start, torch.zeros_like(t))
                x_t = _capped(input.gather(1, tl[:, None]).squeeze(1).to(acc), softcap)
                w_t = weight.to(acc)[tl] if weight is not None else torch.ones(N, dtype=acc, device=dev)
                x_t = torch.where(owned, x_t, zero_rows)
                w_t = torch.where(owned, w_t, zero_rows)
            else:
                x_t = w_t = zero_rows
            cols = [lse_r, S_r, x_t, w_t, owned.to(acc)]
        k = len(cols)
        extra = torch.zeros(1, k, dtype=acc, device=dev)
        extra[0, 0] = W_r
        extra[0, 1] = V_r
        packed = torch.cat([torch.stack(cols, 1), extra], 0).contiguous()

        gathered = torch.empty(world * (N + 1), k, dtype=acc, device=dev)
        _all_gather(gathered, packed, group)
        G = gathered.view(world, N + 1, k)
        rows, W_all, V_all = G[:, :N], G[:, N, 0], G[:, N, 1]

        lse_all = rows[..., _I_LSE]
        lse = torch.logsumexp(lse_all, 0)
        has = (V_all > 0)[:, None]
        delta = lse[None, :] - lse_all  # inf on ranks without classes: masked by `has`
        W = W_all.sum()
        V = V_all.sum()
        on, off = _coefficients(label_smoothing, V, off_target)
        # sum over all classes of w_j (lse - x_j), the smoothing term's sum
        smooth = torch.where(has, W_all[:, None] * delta + rows[..., _I_S], 0.0).sum(0)
        if num_classes is not None:
            # a wrong num_classes (or shards that do not tile it) makes the loss NaN: checked on the
            # device, without a host sync
            smooth = torch.where(V == float(num_classes), smooth, math.nan)

        if prob:
            Y = rows[..., _P_Y].sum(0)
            true = torch.where(has, rows[..., _P_Y] * delta + rows[..., _P_P], 0.0).sum(0)
            loss = on * true + off * smooth
            A = on * Y + off * W
            denom = torch.full((), float(N), dtype=acc, device=dev)
            ctx.save_for_backward(input, target, weight, lse, A, on, off, Y_r, W_r)
        else:
            x_t_g = rows[..., _I_XT].sum(0)
            w_t_g = rows[..., _I_WT].sum(0)
            n_own = rows[..., _I_OWN].sum(0)
            # a non-ignored target that no rank owns (outside [0, V)) gives NaN, as on CUDA (raising
            # would need a host sync)
            found = n_own == 1
            loss = on * w_t_g * (lse - x_t_g) + off * smooth
            loss = torch.where(valid, torch.where(found, loss, math.nan), 0.0)
            denom = torch.where(valid, torch.where(found, w_t_g, math.nan), 0.0).sum()
            ctx.save_for_backward(input, target, weight, lse, x_t_g, w_t_g, on, off, W, W_r, valid, owned)
        ctx.prob = prob
        ctx.softcap = softcap
        ctx.class_start = class_start
        ctx.mark_non_differentiable(denom)
        return loss, lse, denom

    @staticmethod
    def backward(ctx: Any, grad_loss: Optional[Tensor], grad_lse: Optional[Tensor], _unused: Any):  # type: ignore[override]
        ops = torch.ops.smoothing_ext
        create_graph = torch.is_grad_enabled()
        saved = ctx.saved_tensors
        input, target, weight, lse = saved[:4]
        N, Vr = input.shape
        acc = lse.dtype
        softcap = ctx.softcap
        g = grad_loss.to(acc) if grad_loss is not None else torch.zeros_like(lse)
        gz = grad_lse.to(acc) if grad_lse is not None else torch.zeros_like(lse)
        grad_input = grad_target = None
        if ctx.prob:
            A, on, off, Y_r, W_r = saved[4:]
            if ctx.needs_input_grad[0] and Vr > 0:
                # The prob kernel computes (g A_r + g_lse') p_j - g w_j q_j with the LOCAL
                # A_r = sum_{j in r} w_j q_j; adding g (A - A_r) to g_lse makes that the global
                # (g A + g_lse) p_j - g w_j q_j. q is passed in the accumulation dtype (no rounding).
                q = on * target.to(acc) + off
                A_r = on * Y_r + off * W_r
                grad_input = ops._cross_entropy_prob_backward(
                    g, g * (A - A_r) + gz, input, q, weight, lse, 0.0, False, softcap
                )
            elif ctx.needs_input_grad[0]:
                grad_input = torch.zeros_like(input)
            if ctx.needs_input_grad[1]:
                # d loss_i / d y_j = on w_j (lse_i - x_j), x capped
                x = _capped(input.to(acc), softcap)
                wv = weight.to(acc) if weight is not None else torch.ones(Vr, dtype=acc, device=input.device)
                grad_target = ((g * on)[:, None] * wv * (lse[:, None] - x)).to(target.dtype)
        else:
            x_t, w_t, on, off, W, W_r, valid, owned = saved[4:]
            if ctx.needs_input_grad[0] and Vr > 0:
                g = torch.where(valid, g, 0.0)
                gz = torch.where(valid, gz, 0.0)
                # The index kernel with label_smoothing=1 (on = 0, off = 1/V_r, local W_r) and class 0
                # for every row computes g' (W_r p_j - w_j) / V_r + g_lse' p_j. With g' = g off V_r and
                # g_lse' = g (on w_t + off (W - W_r)) + g_lse that is g (A p_j - off w_j) + g_lse p_j,
                # the global gradient everywhere except at the target class, which the owner overwrites
                # below (N elements). One read and one write of the shard, as unsharded.
                zeros_t = torch.zeros(N, dtype=torch.int64, device=input.device)
                grad_input = ops._cross_entropy_backward(
                    g * off * Vr, g * (on * w_t + off * (W - W_r)) + gz, input, zeros_t, weight, lse,
                    -1, 1.0, False, softcap,
                )
                # Target entry, in the accumulation dtype before rounding, with p_t - 1 = expm1(x_t - lse)
                # (forming p_t and subtracting 1 cancels when p_t -> 1); x_t is the capped logit.
                d = x_t - lse
                p_t = torch.exp(d)
                v = g * (on * w_t * torch.expm1(d) + off * (W * p_t - w_t)) + gz * p_t
                if softcap is not None:
                    v = v * (1.0 - (x_t / softcap) ** 2)
                t = target.long()
                tl = torch.where(owned, t - ctx.class_start, torch.zeros_like(t))[:, None]
                # rows this rank does not own write back what is there (a scatter without a host sync)
                new = torch.where(owned[:, None], v[:, None].to(grad_input.dtype), grad_input.gather(1, tl))
                grad_input.scatter_(1, tl, new)
            elif ctx.needs_input_grad[0]:
                grad_input = torch.zeros_like(input)
        if create_graph:
            # As @once_differentiable, with a message saying why: the first-order gradient is returned,
            # and differentiating it again raises at that moment (never a silently wrong zero).
            err = torch._C._functions.DelayedError(
                b"smoothing_ext vocab-parallel cross entropy: double backward (create_graph=True, "
                b"Hessian-vector products, gradient penalties) is not supported; the backward computes "
                b"the gradient of each shard with the compiled kernels, which have no derivative",
                1,
            )
            if grad_input is not None:
                grad_input = err(grad_input.detach().requires_grad_())
            if grad_target is not None:
                grad_target = err(grad_target.detach().requires_grad_())
        return grad_input, grad_target, None, None, None, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, *tangents: Any) -> Any:
        raise RuntimeError(
            "smoothing_ext vocab-parallel cross entropy: forward-mode AD (dual tensors, torch.func.jvp, "
            "jacfwd) is not supported; use reverse mode (loss.backward())"
        )


def _check_scalar_args(
    reduction: str,
    label_smoothing: float,
    ignore_index: int,
    smoothing_mode: str,
    z_loss: float,
    softcap: Optional[float],
) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{reduction} is not a valid value for reduction; smoothing_ext: reduction must be one of "
            f"{_REDUCTIONS}, got {reduction!r}"
        )
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real) or not (
        0.0 <= float(label_smoothing) <= 1.0
    ):
        raise ValueError(f"smoothing_ext: label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"smoothing_ext: ignore_index must be an int, got {type(ignore_index).__name__}")
    if smoothing_mode not in _SMOOTHING_MODES:
        raise ValueError(f"smoothing_ext: smoothing_mode must be one of {_SMOOTHING_MODES}, got {smoothing_mode!r}")
    if not (0.0 <= float(z_loss) < math.inf):
        raise ValueError(f"smoothing_ext: z_loss must be a finite number >= 0, got {z_loss}")
    if softcap is not None and not (0.0 < float(softcap) < math.inf):
        raise ValueError(f"smoothing_ext: softcap must be None or a finite number > 0, got {softcap}")


def _local_weight(weight: Optional[Tensor], Vr: int, class_start: int, num_classes: Optional[int]) -> Optional[Tensor]:
    """This rank's slice of the class weights. The rule is the length: ``V_r`` means the slice is
    given, anything else is the full ``(V,)`` vector (sliced here); the two agree when ``V_r == V``."""
    if weight is None:
        return None
    if weight.dim() != 1 or not weight.is_floating_point():
        raise ValueError(
            "smoothing_ext vocab-parallel: weight must be a 1-D floating-point tensor, either this rank's "
            f"slice (V_r,) = ({Vr},) or the full (V,) vector; got {weight.dtype} of shape {tuple(weight.shape)}"
        )
    n = weight.shape[0]
    if n == Vr:
        return weight
    if num_classes is not None and n != num_classes:
        raise ValueError(
            f"smoothing_ext vocab-parallel: weight has {n} entries, neither this rank's V_r = {Vr} classes "
            f"nor num_classes = {num_classes}"
        )
    if class_start + Vr > n:
        raise ValueError(
            f"smoothing_ext vocab-parallel: a full weight vector of {n} classes does not cover this rank's "
            f"classes [{class_start}, {class_start + Vr}); pass the slice (V_r,) or the full (V,) vector"
        )
    return weight.narrow(0, class_start, Vr)


def vocab_parallel_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    process_group: Any,
    class_start: int,
    num_classes: Optional[int] = None,
    smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    softcap: Optional[float] = None,
    grad_in_forward: bool = False,
    inplace_backward: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    r"""Cross entropy of logits whose classes are split over the ranks of ``process_group``.

    Every rank passes its own shard and gets the same result: that of
    :func:`smoothing_ext.cross_entropy` on the logits concatenated over the ranks along the class
    dim, for every option (weight, ignore_index, both smoothing modes, probability targets, z-loss,
    softcap, the three reductions). One all-gather of ``(N + 1) x 5`` numbers (4 for probability
    targets) in the forward, no communication in the backward, no host synchronisation.

    Args:
        input: this rank's logits, shape ``(N, V_r)``: classes ``[class_start, class_start + V_r)`` of
            the global vocabulary. Shards may be uneven; ``V_r`` may be 0.
        target: the global class indices ``(N,)`` (int64/int32/uint8), the same on every rank, or class
            probabilities sharded like the logits ``(N, V_r)`` (floating point).
        weight: class weights: this rank's slice ``(V_r,)`` or the full ``(V,)`` vector; which one is
            decided by the length (``V_r`` means the slice; when ``V_r == V`` they coincide).
        ignore_index, reduction, label_smoothing, smoothing_mode, z_loss, return_z_loss, softcap: as in
            :func:`smoothing_ext.cross_entropy`. Smoothing uses the GLOBAL class count and weight sum.
        process_group: the tensor-parallel group (``torch.distributed.group.WORLD`` for all ranks).
        class_start: the global index of this rank's first class.
        num_classes: the global V, if known: checked on the device against the sum of the shard widths
            (a mismatch gives NaN, no host sync); by default that sum is V.
        grad_in_forward, inplace_backward: not supported with a process group (NotImplementedError).

    The upstream gradient must be the same on every rank (it is, for a loss computed by every rank
    and back-propagated everywhere); each rank then gets the exact gradient of its own shard. The
    ``weight`` is not differentiated (pass it detached). Double backward and forward-mode AD raise.
    A non-ignored target outside ``[0, V)`` gives a NaN loss (no rank owns it; raising would need a
    host synchronisation).

    Returns:
        The loss (input dtype; float32 under autocast), shape ``()`` or ``(N,)`` for ``"none"``;
        ``(loss, z_loss_term)`` with ``return_z_loss=True``. Identical on every rank.
    """
    import torch.distributed as dist

    if grad_in_forward or inplace_backward:
        raise NotImplementedError(
            "smoothing_ext: grad_in_forward=True (and inplace_backward=True) is not implemented for the "
            "vocab-parallel loss (a process_group or a DTensor); the default mode computes the same "
            "gradient with one read and one write of each shard in the backward"
        )
    if process_group is None:
        raise ValueError("smoothing_ext.vocab_parallel_cross_entropy: process_group is required")
    _check_scalar_args(reduction, label_smoothing, ignore_index, smoothing_mode, z_loss, softcap)
    if not isinstance(input, Tensor) or input.dim() != 2 or not input.is_floating_point():
        raise ValueError(
            "smoothing_ext vocab-parallel: input must be this rank's floating-point (N, V_r) logits; got "
            + (f"{input.dtype} of shape {tuple(input.shape)}" if isinstance(input, Tensor) else type(input).__name__)
            + " (flatten (B, T, V_r) to (B*T, V_r))"
        )
    if isinstance(class_start, bool) or not isinstance(class_start, numbers.Integral) or class_start < 0:
        raise ValueError(f"smoothing_ext vocab-parallel: class_start must be an int >= 0, got {class_start!r}")
    N, Vr = input.shape
    if target.is_floating_point():
        if tuple(target.shape) != (N, Vr):
            raise ValueError(
                "smoothing_ext vocab-parallel: a floating-point target holds class probabilities, sharded "
                f"like the logits: shape {(N, Vr)}, got {tuple(target.shape)}"
            )
        if ignore_index >= 0:
            raise ValueError(
                "ignore_index is not supported for floating point target; smoothing_ext vocab-parallel: leave "
                "it negative (the default -100) with probability targets"
            )
    else:
        if tuple(target.shape) != (N,):
            raise ValueError(
                f"smoothing_ext vocab-parallel: class-index target must have shape ({N},) (global class "
                f"indices, the same on every rank), got {tuple(target.shape)}"
            )
        if target.dtype not in _INDEX_DTYPES:
            raise TypeError(
                f"smoothing_ext vocab-parallel: class-index target must be int64, int32 or uint8, got {target.dtype}"
            )
    for name, t in (("target", target), ("weight", weight)):
        if t is not None and t.device != input.device:
            raise RuntimeError(f"smoothing_ext vocab-parallel: {name} is on {t.device} but input is on {input.device}")
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise NotImplementedError(
            "smoothing_ext vocab-parallel: the class weights are not differentiated; pass weight.detach()"
        )
    w = _local_weight(weight, Vr, int(class_start), num_classes)
    if w is not None:
        w = w.detach()
    off_target = smoothing_mode == "off_target"
    label_smoothing = float(label_smoothing)
    z_loss = float(z_loss)
    softcap = None if softcap is None else float(softcap)
    world = dist.get_world_size(process_group)

    loss, lse, denom = _VocabParallelCrossEntropy.apply(
        input, target, w, int(ignore_index), label_smoothing, off_target, softcap, int(class_start),
        num_classes, process_group, world,
    )
    # int64 before comparing: a uint8 target compared with -100 would wrap it to 156
    valid = None if target.is_floating_point() else target.long() != ignore_index
    z = None
    if z_loss != 0.0:
        z = z_loss * lse * lse
        if valid is not None:
            z = torch.where(valid, z, 0.0)
    rows = loss if z is None else loss + z
    try:
        autocast = torch.is_autocast_enabled(input.device.type)
    except TypeError:  # torch < 2.4
        autocast = torch.is_autocast_enabled()
    out_dtype = torch.float32 if autocast else input.dtype

    def reduce(r: Tensor) -> Tensor:
        if reduction == "none":
            return r
        if reduction == "sum":
            return r.sum()
        return r.sum() / denom  # 0 / 0 = nan when every row is ignored, as in PyTorch

    out = reduce(rows).to(out_dtype)
    if not return_z_loss:
        return out
    z_out = torch.zeros_like(out) if z is None else reduce(z.detach()).to(out_dtype)
    return out, z_out


def _is_dtensor(x: Any) -> bool:
    # A DTensor can exist only once torch.distributed.tensor has been imported: checking sys.modules
    # keeps the non-parallel call path free of that (slow) import.
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(x, mod.DTensor)


def _class_dim_of(input: Any) -> tuple[Optional[int], Any]:
    """(tensor dim sharded over one mesh dim, that mesh dim) of a DTensor; (None, None) when every
    placement is Replicate. Raises for layouts the vocab-parallel loss does not cover."""
    from torch.distributed.tensor import Replicate, Shard

    cdim = mdim = None
    for i, p in enumerate(input.placements):
        if isinstance(p, Replicate):
            continue
        if isinstance(p, Shard) and cdim is None:
            cdim, mdim = p.dim % input.dim(), i
            continue
        raise NotImplementedError(
            "smoothing_ext: DTensor logits must be sharded on one dim (the class dim) over one mesh dim and "
            f"replicated over the others; got placements {tuple(input.placements)}"
        )
    return cdim, mdim


def _replicated_local(t: Optional[Tensor], name: str) -> Optional[Tensor]:
    from torch.distributed.tensor import Replicate

    if t is None or not _is_dtensor(t):
        return t
    if not all(isinstance(p, Replicate) for p in t.placements):
        raise NotImplementedError(
            f"smoothing_ext: a DTensor {name} must be replicated (or pass a plain tensor); got placements "
            f"{tuple(t.placements)}"
        )
    return t.to_local()


def dtensor_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    softcap: Optional[float] = None,
    grad_in_forward: bool = False,
    inplace_backward: bool = False,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    r"""Cross entropy of DTensor logits sharded on the class dim.

    ``input`` is a DTensor whose class dim is sharded (``Shard(1)`` of ``(N, V)``, or the last dim of
    ``(B, T, V)``, which is then read as ``(B*T, V)``: the class dim is the sharded one) over one mesh
    dim and replicated over any others, as an LM head under
    ``ColwiseParallel(use_local_output=False)`` produces. ``target``: the class indices, the input's
    shape without the class dim, replicated (a plain tensor, or a replicated DTensor), or probabilities
    of the input's shape (a DTensor placed like the input, or the full plain tensor). ``weight``: the full
    ``(V,)`` vector (plain or replicated DTensor) or this rank's slice. Other arguments as
    :func:`smoothing_ext.cross_entropy`.

    Returns the loss of the unsharded computation as a plain tensor, identical on every rank; the
    gradient flows back to ``input`` as a DTensor with its placements. A DTensor whose placements are
    all ``Replicate`` is computed locally with the unsharded op (class dim 1, as in PyTorch).
    """
    cdim, mdim = _class_dim_of(input)
    mesh = input.device_mesh
    if cdim is None:
        from .functional import cross_entropy

        return cross_entropy(
            input.to_local(), _replicated_local(target, "target"), _replicated_local(weight, "weight"),
            ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
            smoothing_mode=smoothing_mode, z_loss=z_loss, return_z_loss=return_z_loss, softcap=softcap,
            grad_in_forward=grad_in_forward, inplace_backward=inplace_backward,
        )
    if cdim == 0:
        raise NotImplementedError(
            "smoothing_ext: DTensor logits sharded on dim 0 (the rows) are not vocab-parallel; shard the "
            f"class dim (Shard(1) of (N, V), or Shard(-1) of (B, T, V)); got placements {tuple(input.placements)}"
        )
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    V = input.shape[cdim]
    _, offset = compute_local_shape_and_global_offset(input.shape, mesh, input.placements)
    class_start = int(offset[cdim])
    local = input.to_local()  # differentiable: its gradient comes back as a DTensor, same placements
    Vr = local.shape[cdim]
    row_shape = tuple(input.shape[:cdim]) + tuple(input.shape[cdim + 1:])
    n_rows = math.prod(row_shape)  # explicit: reshape(-1, 0) is ambiguous on a rank without classes
    x = local.movedim(cdim, -1).reshape(n_rows, Vr)  # a view when the class dim is the last one

    if target.is_floating_point():
        if tuple(target.shape) != tuple(input.shape):
            raise ValueError(
                "smoothing_ext: a floating-point target holds class probabilities and must have the input's "
                f"shape {tuple(input.shape)}, got {tuple(target.shape)}"
            )
        if _is_dtensor(target):
            if tuple(target.placements) != tuple(input.placements):
                raise NotImplementedError(
                    "smoothing_ext: a DTensor probability target must be placed like the logits "
                    f"({tuple(input.placements)}), got {tuple(target.placements)}"
                )
            y = target.to_local()
        else:
            y = target.narrow(cdim, class_start, Vr)
        t = y.movedim(cdim, -1).reshape(n_rows, Vr)
    else:
        t_full = _replicated_local(target, "target")
        if tuple(t_full.shape) != row_shape:
            raise ValueError(
                f"smoothing_ext: class-index target must have shape {list(row_shape)} (the logits {list(input.shape)} "
                f"without their sharded class dim {cdim}), got {list(t_full.shape)}"
            )
        t = t_full.reshape(-1)
    if weight is not None and _is_dtensor(weight):
        from torch.distributed.tensor import Replicate, Shard

        if all(isinstance(p, Replicate) for p in weight.placements):
            weight = weight.to_local()
        elif weight.placements[mdim] == Shard(0) and tuple(weight.placements) == tuple(
            Shard(0) if i == mdim else p for i, p in enumerate(input.placements)
        ):
            weight = weight.to_local()  # this rank's slice
        else:
            raise NotImplementedError(
                "smoothing_ext: a DTensor weight must be replicated or sharded like the class dim; got "
                f"placements {tuple(weight.placements)}"
            )
    out = vocab_parallel_cross_entropy(
        x, t, weight, ignore_index, reduction, label_smoothing,
        process_group=mesh.get_group(mdim), class_start=class_start, num_classes=V,
        smoothing_mode=smoothing_mode, z_loss=z_loss, return_z_loss=return_z_loss, softcap=softcap,
        grad_in_forward=grad_in_forward, inplace_backward=inplace_backward,
    )
    if reduction != "none":
        return out
    if return_z_loss:
        return out[0].reshape(row_shape), out[1].reshape(row_shape)
    return out.reshape(row_shape)


def maybe_parallel(input: Any, target: Any, **kwargs: Any) -> Optional[Union[Tensor, tuple[Tensor, Tensor]]]:
    """The vocab-parallel loss if this is a parallel call, else None (for ``cross_entropy``'s dispatch).

    A call is parallel when ``input`` is a DTensor (:func:`dtensor_cross_entropy`) or when
    ``process_group`` is given and not None (:func:`vocab_parallel_cross_entropy`, which then also
    needs ``class_start``). ``kwargs`` are ``cross_entropy``'s keyword arguments (``weight``,
    ``ignore_index``, ``reduction``, ``label_smoothing``, the deprecated ``size_average``/``reduce``,
    ``smoothing_mode``, ``z_loss``, ``return_z_loss``, ``softcap``, ``grad_in_forward``,
    ``inplace_backward``) plus ``process_group``, ``class_start`` and ``num_classes``. Cheap when the
    call is not parallel: no import of torch.distributed happens then.
    """
    group = kwargs.pop("process_group", None)
    dtensor = _is_dtensor(input)
    if not dtensor and group is None:
        if kwargs.get("class_start") is not None or kwargs.get("num_classes") is not None:
            raise ValueError("smoothing_ext.cross_entropy: class_start / num_classes need process_group=")
        return None
    size_average, reduce = kwargs.pop("size_average", None), kwargs.pop("reduce", None)
    if size_average is not None or reduce is not None:
        from torch.nn import _reduction as _Reduction

        kwargs["reduction"] = _Reduction.legacy_get_string(size_average, reduce)
    if dtensor:
        if group is not None or kwargs.pop("class_start", None) is not None:
            raise ValueError(
                "smoothing_ext.cross_entropy: a DTensor input carries its own mesh and placement; do not pass "
                "process_group / class_start with it"
            )
        kwargs.pop("num_classes", None)
        return dtensor_cross_entropy(input, target, **kwargs)
    if kwargs.get("class_start") is None:
        raise ValueError(
            "smoothing_ext.cross_entropy: process_group= needs class_start= (the global index of this rank's "
            "first class)"
        )
    return vocab_parallel_cross_entropy(input, target, process_group=group, **kwargs)
