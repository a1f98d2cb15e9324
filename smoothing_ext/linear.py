"""The LM head fused with the loss: ``cross_entropy(input @ linear_weight.T + linear_bias, target)``
without ever holding the N x V logits.

Rows are processed in chunks: per chunk one GEMM for its logits (ATen: MKL/oneDNN on the CPU,
cuBLAS on CUDA) into one reused chunk buffer, our fused kernel for the loss and the logits'
gradient written over that buffer (``cross_entropy_fused_``), then the two GEMMs of the backward,
``dX_c = dz_c W`` and ``dW += dz_c^T X_c`` (``db += sum dz_c``), with dW and db accumulated in
float32 (float64 for float64). At most one chunk of logits exists at any time.

Two backward strategies, chosen automatically:
- gradient-in-forward (``"mean"``/``"sum"`` of class-index targets): dX, dW, db are computed in the
  forward for a unit upstream gradient and kept (N x H + V x H, not N x V); the backward scales them
  in place by the upstream scalar and hands them over. 3 GEMMs per chunk in all. A second backward
  (``retain_graph=True``) recomputes, as below.
- recompute-in-backward (``reduction="none"`` with an arbitrary upstream gradient per row, and
  probability targets): the forward keeps only the inputs and N lse values; the backward recomputes
  each chunk's logits (4 GEMMs per chunk in all).
Second-order derivatives, forward-mode AD and torch.func transforms raise.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from .functional import _autocast_enabled, _mean_denominator, _z_rows
from ._autograd import smoothing_coefficients  # noqa: F401  (documents the coefficients used)

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss", "DEFAULT_CHUNK_BYTES"]

_NAME = "smoothing_ext.linear_cross_entropy"
_REDUCTIONS = ("none", "mean", "sum")
_INDEX_DTYPES = (torch.int64, torch.int32, torch.uint8)

#: Memory budget of the one logits chunk (bytes) when ``chunk_size`` is not given: the chunk has
#: ``DEFAULT_CHUNK_BYTES // (V * element size)`` rows (a multiple of ``_ROW_ALIGN``, at least that).
#: Larger chunks run the GEMMs nearer their full-batch rate (float32 on the CPU: 128-row chunks were
#: 10-15% slower than 256-row ones, for 15 MiB less); ``chunk_size`` trades the other way.
DEFAULT_CHUNK_BYTES = 32 << 20
# GEMMs never run on fewer rows than this: BLAS libraries take other code paths for tiny M (seen
# with float32 sgemm for M < 8), which would make a row's logits depend on its chunk.
_ROW_ALIGN = 16
# dW += dz_c^T X_c for reduced-precision chunks goes through a float32 accumulator in vocabulary
# blocks of this many rows (the block's product is the only temporary).
_VOCAB_BLOCK = 4096
_ADD_SLICE = 1024


def _skip_mask(x: Tensor, target: Tensor, ignore_index: int, prob: bool, rows: int) -> Optional[list[bool]]:
    """Per chunk: True where every row of it is ignored (its loss and gradients are zeros, so its
    three GEMMs are skipped: padded batches). Only where reading that back costs nothing: CPU
    tensors outside torch.compile (on CUDA it would be a host synchronisation). None otherwise."""
    if prob or x.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    N = x.shape[0]
    if N == 0:
        return None
    valid = target.reshape(N, -1).long() != ignore_index  # .long(): a uint8 target must not wrap -100
    n_chunks = -(-N // rows)
    pad = n_chunks * rows - N
    per_row = valid.any(1)
    if pad:
        per_row = torch.cat([per_row, per_row.new_zeros(pad)])
    return (~per_row.view(n_chunks, rows).any(1)).tolist()


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_rows(N: int, V: int, elem: int, chunk_size: Optional[int]) -> int:
    if chunk_size is not None:
        rows = int(chunk_size)
        if rows <= 0:
            raise ValueError(f"{_NAME}: chunk_size must be a positive number of rows, got {chunk_size}")
    else:
        rows = max(_ROW_ALIGN, (DEFAULT_CHUNK_BYTES // max(1, V * elem)) // _ROW_ALIGN * _ROW_ALIGN)
    return max(1, min(rows, max(N, 1)))


class _Chunker:
    """Logits of row chunks into one reused buffer; tiny chunks are padded to _ROW_ALIGN rows."""

    def __init__(self, x: Tensor, W: Tensor, b: Optional[Tensor], rows: int, D: int = 1) -> None:
        # W: (V * D, H) (a K-dim weight flattened); the logits of a chunk are viewed as (c, V, D)
        self.x, self.W, self.b = x, W, b
        self.rows, self.D = rows, D
        self.buf = torch.empty(max(rows, _ROW_ALIGN), W.shape[0], dtype=x.dtype, device=x.device)
        self.pad: Optional[Tensor] = None

    def ranges(self):
        N = self.x.shape[0]
        for r0 in range(0, N, self.rows):
            yield r0, min(N, r0 + self.rows)

    def xc(self, r0: int, r1: int) -> Tensor:
        """The chunk's input rows, at least _ROW_ALIGN of them (zero padding at the end)."""
        c = r1 - r0
        if c >= _ROW_ALIGN:
            return self.x[r0:r1]
        if self.pad is None:
            self.pad = torch.zeros(_ROW_ALIGN, self.x.shape[1], dtype=self.x.dtype, device=self.x.device)
        self.pad[:c].copy_(self.x[r0:r1])
        self.pad[c:].zero_()
        return self.pad

    def logits(self, r0: int, r1: int) -> tuple[Tensor, Tensor]:
        """(logits of rows [r0, r1) in the buffer, (c, V) or (c, V, D); the GEMM's input rows)."""
        xc = self.xc(r0, r1)
        out = self.buf[: xc.shape[0]]
        if self.b is None:
            torch.mm(xc, self.W.t(), out=out)
        else:
            torch.addmm(self.b, xc, self.W.t(), out=out)
        z = out[: r1 - r0]
        return (z if self.D == 1 else z.view(r1 - r0, -1, self.D)), xc


def _accumulate_grads(dz: Tensor, xc: Tensor, c: int, W: Tensor, dX: Optional[Tensor], r0: int,
                      dW: Optional[Tensor], db: Optional[Tensor]) -> None:
    """dX[r0:r0+c] = dz W, dW += dz^T X_c, db += sum_rows dz (dz: the chunk's logits gradient)."""
    dz = dz.reshape(dz.shape[0], -1)
    if dX is not None:
        if c >= _ROW_ALIGN:
            torch.mm(dz, W, out=dX[r0:r0 + c])
        else:  # same GEMM shape as for full chunks (see _ROW_ALIGN); the pad rows of dz are not read
            full = torch.zeros(_ROW_ALIGN, dz.shape[1], dtype=dz.dtype, device=dz.device)
            full[:c].copy_(dz)
            dX[r0:r0 + c].copy_(torch.mm(full, W)[:c])
    xr = xc[:c]
    if dW is not None:
        if dW.dtype == dz.dtype:
            dW.addmm_(dz.t(), xr)
        else:
            # reduced-precision GEMM (fast: native bf16/fp16 units), summed over chunks in float32 so
            # that the accumulated gradient does not lose precision as the chunks add up
            V = dz.shape[1]
            for v0 in range(0, V, _VOCAB_BLOCK):
                v1 = min(V, v0 + _VOCAB_BLOCK)
                part = torch.mm(dz[:, v0:v1].t(), xr)
                # added in slices: the CPU's mixed-dtype add_ converts through a temporary, which then
                # stays in cache (measured: about 2x faster than one add_ of the whole block)
                for s0 in range(0, v1 - v0, _ADD_SLICE):
                    dW[v0 + s0:min(v1, v0 + s0 + _ADD_SLICE)].add_(part[s0:s0 + _ADD_SLICE])
    if db is not None:
        db += dz.sum(0, dtype=db.dtype)


def _grads_in_forward(ch: _Chunker, x: Tensor, W: Tensor, target: Tensor, weight: Optional[Tensor],
                      ignore_index: int, eps: float, off_target: bool, softcap: Optional[float], z_loss: float,
                      scale: Optional[Tensor], need: tuple, loss: Optional[Tensor], lse: Optional[Tensor]):
    """dX, dW, db of the reduced loss for a unit upstream gradient (class indices), chunk by chunk;
    the loss rows and lse are stored when given."""
    acc = _acc_dtype(x.dtype)
    dX = torch.empty_like(x) if need[0] else None
    dW = torch.zeros(W.shape, dtype=_acc_dtype(W.dtype), device=W.device) if need[1] else None
    db = torch.zeros(W.shape[0], dtype=acc, device=x.device) if need[2] else None
    skip = _skip_mask(x, target, ignore_index, False, ch.rows)
    for i, (r0, r1) in enumerate(ch.ranges()):
        if skip is not None and skip[i]:
            if loss is not None:
                loss[r0:r1] = 0
                lse[r0:r1] = 0  # read only through z-loss terms, which are masked for ignored rows
            if dX is not None:
                dX[r0:r1] = 0
            continue
        z, xc = ch.logits(r0, r1)
        l, s = torch.ops.smoothing_ext.cross_entropy_fused_(z, target[r0:r1], weight, ignore_index, eps, off_target,
                                                            softcap, z_loss, scale)
        if loss is not None:
            loss[r0:r1] = l
            lse[r0:r1] = s
        _accumulate_grads(z, xc, r1 - r0, W, dX, r0, dW, db)
    return dX, dW, db


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        W: Tensor,
        b: Optional[Tensor],
        target: Tensor,
        weight: Optional[Tensor],
        ignore_index: int,
        label_smoothing: float,
        off_target: bool,
        softcap: Optional[float],
        z_loss: float,
        reduction: str,
        rows: int,
        need_grad: bool,
        D: int,
    ):
        ops = torch.ops.smoothing_ext
        N = x.shape[0]
        acc = _acc_dtype(x.dtype)
        prob = target.is_floating_point()
        ch = _Chunker(x, W, b, rows, D)
        rest = () if D == 1 else (D,)
        loss = torch.empty((N,) + rest, dtype=acc, device=x.device)
        lse = torch.empty((N,) + rest, dtype=acc, device=x.device)
        valid = None if prob else target.long() != ignore_index
        denom = None
        if reduction == "mean" and not prob:
            denom = _mean_denominator(target, weight, ignore_index, acc)
        in_forward = need_grad and not prob and reduction != "none"
        ctx.in_forward = in_forward
        ctx.grads = None
        ctx.denom = denom
        ctx.need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2],
                    prob and ctx.needs_input_grad[3])
        if in_forward:
            # gradient of the reduced loss for a unit upstream gradient, accumulated chunk by chunk
            scale = None if denom is None else (1.0 / denom).reshape(())
            dX, dW, db = _grads_in_forward(ch, x, W, target, weight, ignore_index, label_smoothing, off_target,
                                           softcap, z_loss, scale, ctx.need, loss, lse)
            # Kept outside save_for_backward: the first backward scales them in place and hands
            # them over (no second N x H / V x H allocation); a second backward (retain_graph=True)
            # recomputes from the saved inputs instead.
            ctx.grads = (dX, dW, db)
            ctx.save_for_backward(x, W, b, target, weight, lse)
        else:
            skip = _skip_mask(x, target, ignore_index, prob, rows)
            for i, (r0, r1) in enumerate(ch.ranges()):
                if skip is not None and skip[i]:
                    loss[r0:r1] = 0
                    lse[r0:r1] = 0
                    continue
                z, _ = ch.logits(r0, r1)
                if prob:
                    l, s = ops.cross_entropy_prob_forward(z, target[r0:r1], weight, label_smoothing, off_target, softcap)
                else:
                    l, s = ops.cross_entropy_forward(z, target[r0:r1], weight, ignore_index, label_smoothing,
                                                     off_target, softcap)
                loss[r0:r1] = l
                lse[r0:r1] = s
            if need_grad:
                ctx.save_for_backward(x, W, b, target, weight, lse)
        del ch
        ctx.args = (ignore_index, label_smoothing, off_target, softcap, z_loss, reduction, rows, prob, D)
        ctx.w_dtype = W.dtype
        ctx.b_dtype = None if b is None else b.dtype
        z = _z_rows(lse, z_loss, valid) if z_loss != 0.0 else None
        rows_loss = loss if z is None else loss + z
        out = _reduce(rows_loss, reduction, denom)
        z_out = _reduce(z, reduction, denom) if z is not None else torch.zeros_like(out)
        ctx.mark_non_differentiable(z_out)
        return out, z_out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_z: Any):  # type: ignore[override]
        if torch.is_grad_enabled():
            # create_graph=True: the gradients below are not differentiable; raising here, rather
            # than returning constants, keeps a gradient penalty or HVP from being silently wrong
            raise RuntimeError(
                f"{_NAME}: second derivatives (backward with create_graph=True, hessian) are not supported; use "
                "smoothing_ext.cross_entropy on explicit logits for that"
            )
        nothing = (None,) * 10  # the non-tensor arguments (and target, where it has no gradient)
        if ctx.in_forward:
            if ctx.grads is not None:
                dX, dW, db = ctx.grads
                ctx.grads = None
            else:  # a second backward: the same computation again (bit-identical results)
                x, W, b, target, weight, lse = ctx.saved_tensors
                ignore_index, eps, off_target, softcap, z_loss, _, rows, _, D = ctx.args
                scale = None if ctx.denom is None else (1.0 / ctx.denom).reshape(())
                dX, dW, db = _grads_in_forward(_Chunker(x, W, b, rows, D), x, W, target, weight, ignore_index, eps,
                                               off_target, softcap, z_loss, scale, ctx.need, None, None)
            g = grad_out.reshape(())
            gx = None if dX is None else dX.mul_(g.to(dX.dtype))
            gw = None if dW is None else dW.mul_(g.to(dW.dtype)).to(ctx.w_dtype)
            gb = None if db is None else db.mul_(g.to(db.dtype)).to(ctx.b_dtype)
            return (gx, gw, gb, None) + nothing
        x, W, b, target, weight, lse = ctx.saved_tensors
        ignore_index, eps, off_target, softcap, z_loss, reduction, rows, prob, D = ctx.args
        ops = torch.ops.smoothing_ext
        N = x.shape[0]
        acc = lse.dtype
        if reduction == "none":
            g_rows = grad_out.to(acc).reshape(lse.shape)
        else:
            g = grad_out.to(acc).reshape(())
            if reduction == "mean":
                g = g / lse.numel()  # probability targets: mean over the elements
            g_rows = g.expand(lse.shape)
        need = ctx.need
        dX = torch.empty_like(x) if need[0] else None
        dW = torch.zeros(W.shape, dtype=_acc_dtype(W.dtype), device=W.device) if need[1] else None
        db = torch.zeros(W.shape[0], dtype=acc, device=x.device) if need[2] else None
        dY = torch.empty_like(target) if need[3] else None
        on = smoothing_coefficients(eps, W.shape[0] // D, off_target)[0]
        ch = _Chunker(x, W, b, rows, D)
        skip = _skip_mask(x, target, ignore_index, prob, rows)
        for i, (r0, r1) in enumerate(ch.ranges()):
            if skip is not None and skip[i]:
                if dX is not None:
                    dX[r0:r1] = 0
                continue
            z, xc = ch.logits(r0, r1)
            gc = g_rows[r0:r1]
            if prob:
                lc = lse[r0:r1]
                if dY is not None:
                    # d loss / d y_j = on w_j (lse - z_j), from the chunk's logits before they are replaced
                    cls = 1
                    zc = z.to(acc) if softcap is None else softcap * torch.tanh(z.to(acc) / softcap)
                    gy = (lc.unsqueeze(cls) - zc) * (on * gc).unsqueeze(cls)
                    if weight is not None:
                        gy = gy * weight.to(acc).view([-1] + [1] * (z.dim() - 2))
                    dY[r0:r1] = gy
                gl = None if z_loss == 0.0 else gc * (2.0 * z_loss) * lc
                dz = ops._cross_entropy_prob_backward(gc.contiguous(), gl, z, target[r0:r1], weight, lc, eps,
                                                      off_target, softcap)
            else:
                # the gradient of loss_i + z lse_i^2 over the chunk buffer (no second buffer), then
                # each row times its upstream gradient
                ops.cross_entropy_fused_(z, target[r0:r1], weight, ignore_index, eps, off_target, softcap, z_loss, None)
                ops._scale_grad_rows_(z, gc.contiguous())
                dz = z
            _accumulate_grads(dz, xc, r1 - r0, W, dX, r0, dW, db)
        gw = None if dW is None else dW.to(W.dtype)
        gb = None if db is None else db.to(b.dtype)
        return (dX, gw, gb, dY) + nothing


def _reduce(rows: Tensor, reduction: str, denom: Optional[Tensor]) -> Tensor:
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    if denom is None:
        n = rows.numel()
        return total / n if n > 0 else total / 0.0
    return total / denom


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Optional[Tensor] = None,
    weight: Optional[Tensor] = None,
    reduction: str = "mean",
    ignore_index: Optional[int] = None,
    label_smoothing: float = 0.0,
    options: Any = None,
    smoothing_mode: str = "uniform",
    z_loss: float = 0.0,
    return_z_loss: bool = False,
    softcap: Optional[float] = None,
    chunk_size: Optional[int] = None,
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    r"""Label-smoothed cross entropy of a linear layer's output, without the N x V logits.

    Exactly ``smoothing_ext.cross_entropy(input @ linear_weight.T + linear_bias, target, ...)``
    (and :func:`torch.nn.functional.linear_cross_entropy`'s signature: same positional and keyword
    names, so it is a drop-in there too), computed chunk by chunk over the rows: at most one chunk
    of ``chunk_size x V`` logits exists at a time, written over by its own gradient.

    Args:
        input: ``(N, H)`` or ``(H,)``; also ``(B, ..., H)`` with a ``(B, ...)`` target, the
            language-model layout (rows are the leading dims flattened, classes are the vocabulary).
        linear_weight: ``(V, H)``, or ``(V, d1, ..., dk, H)`` (K-dimensional loss, torch's layout:
            logits ``(N, V, d1, ..., dk)``; needs an ``(N, H)`` input).
        target: class indices of shape ``input.shape[:-1] + (d1, ..., dk)`` (int64, int32 or uint8),
            or class probabilities of shape ``input.shape[:-1] + (V, d1, ..., dk)`` (differentiable).
        linear_bias: optional, ``linear_weight.shape[:-1]``.
        weight, label_smoothing, smoothing_mode, z_loss, return_z_loss, softcap: as in
            :func:`smoothing_ext.cross_entropy`.
        reduction: ``"none"`` | ``"mean"`` | ``"sum"``.
        ignore_index: class index whose rows contribute nothing; ``None`` means -100 (torch's
            mapping).
        options: accepted for torch's signature; a ``LinearCrossEntropyOptions`` with
            ``batch_chunk_size`` set gives the chunk size, its other fields do not apply here.
        chunk_size: rows per chunk; default: from a budget of :data:`DEFAULT_CHUNK_BYTES` (32 MiB)
            of logits, rounded down to a multiple of 16 rows.

    Under :func:`torch.autocast` the three GEMMs run in the autocast dtype (bfloat16 on the CPU),
    the loss is accumulated in float32 from the low-precision logits, and ``linear_weight``'s
    gradient is summed over the chunks in float32. The backward strategy (gradient computed in the
    forward for ``"mean"``/``"sum"`` of class indices, recomputed in the backward otherwise) is
    described in the module docstring; one backward per forward is not a limit (``retain_graph``
    works), second derivatives are not supported (they raise).
    """
    if not isinstance(input, Tensor) or not isinstance(linear_weight, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"{_NAME}: input, linear_weight and target must be Tensors")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{_NAME}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not (0.0 <= float(label_smoothing) <= 1.0):
        raise ValueError(f"{_NAME}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if smoothing_mode not in ("uniform", "off_target"):
        raise ValueError(f"{_NAME}: smoothing_mode must be 'uniform' or 'off_target', got {smoothing_mode!r}")
    if not (0.0 <= float(z_loss) < math.inf):
        raise ValueError(f"{_NAME}: z_loss must be a finite number >= 0, got {z_loss}")
    if softcap is not None and not (0.0 < float(softcap) < math.inf):
        raise ValueError(f"{_NAME}: softcap must be None or a finite number > 0, got {softcap}")
    if not input.is_floating_point() or input.dim() == 0:
        raise ValueError(f"{_NAME}: input must be a floating tensor of shape (H,), (N, H) or (B, ..., H), got "
                         f"{input.dtype} of shape {tuple(input.shape)}")
    if linear_weight.dim() < 2:
        raise ValueError(f"{_NAME}: linear_weight must have shape (V, H) or (V, d1, ..., dk, H), got "
                         f"{tuple(linear_weight.shape)}")
    V, H = linear_weight.shape[0], linear_weight.shape[-1]
    out_features = tuple(linear_weight.shape[1:-1])
    D = math.prod(out_features)
    if input.shape[-1] != H:
        raise RuntimeError(f"{_NAME}: input's last dim {input.shape[-1]} (shape {tuple(input.shape)}) must equal "
                           f"linear_weight's in_features {H} (shape {tuple(linear_weight.shape)})")
    if out_features and input.dim() != 2:
        raise ValueError(f"{_NAME}: a K-dimensional linear_weight {tuple(linear_weight.shape)} needs a batched "
                         f"input (N, {H}), got {tuple(input.shape)}")
    if linear_bias is not None and tuple(linear_bias.shape) != tuple(linear_weight.shape[:-1]):
        raise RuntimeError(f"{_NAME}: linear_bias must have shape {tuple(linear_weight.shape[:-1])}, got "
                           f"{tuple(linear_bias.shape)}")
    for name, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias), ("target", target),
                    ("weight", weight)):
        if t is not None and t.device != input.device:
            raise RuntimeError(f"{_NAME}: {name} is on {t.device} but input is on {input.device}")
    lead = tuple(input.shape[:-1])
    prob = target.is_floating_point()
    if prob:
        want = lead + (V,) + out_features
        if tuple(target.shape) != want:
            hint = ""
            if tuple(target.shape) == lead + out_features:
                hint = " (it has the shape of class indices: for class labels use target.long())"
            raise ValueError(f"{_NAME}: a floating target holds class probabilities and must have shape {want}, "
                             f"got {tuple(target.shape)}{hint}")
    else:
        if target.dtype not in _INDEX_DTYPES:
            raise TypeError(f"{_NAME}: class-index target must be int64, int32 or uint8 (float class labels: "
                            f"use target.long()), got {target.dtype}")
        if tuple(target.shape) != lead + out_features:
            raise ValueError(f"{_NAME}: target must have shape {lead + out_features} (input {tuple(input.shape)} "
                             f"without its last dim{', then the out_features' if out_features else ''}), got "
                             f"{tuple(target.shape)}")
    if weight is not None:
        if tuple(weight.shape) != (V,):
            raise RuntimeError(f"{_NAME}: weight must have shape ({V},), got {tuple(weight.shape)}")
        if weight.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(f"{_NAME}: the loss is not differentiable with respect to weight here; pass "
                               "weight.detach()")
    if ignore_index is None:
        ignore_index = -100
    if prob and int(ignore_index) >= 0:
        raise ValueError(f"{_NAME}: ignore_index={ignore_index} is not supported with probability targets")
    if chunk_size is None and options is not None and getattr(options, "batch_chunk_size", None) is not None:
        chunk_size = options.batch_chunk_size

    device_type = input.device.type
    out_dtype = input.dtype
    x, W, b = input, linear_weight, linear_bias
    if _autocast_enabled(device_type):
        # what autocast gives torch's linear: the GEMMs in the autocast dtype; the loss in float32
        ac = torch.get_autocast_dtype(device_type)
        x, W = x.to(ac), W.to(ac)
        b = None if b is None else b.to(ac)
        out_dtype = torch.float32
    elif W.dtype != x.dtype or (b is not None and b.dtype != x.dtype):
        raise RuntimeError(f"{_NAME}: input ({x.dtype}), linear_weight ({W.dtype}) and linear_bias must have the "
                           "same dtype (as for torch.nn.functional.linear)")
    x2 = x.reshape(-1, H)
    if not x2.is_contiguous():
        x2 = x2.contiguous()
    W2 = W.reshape(V * D, H)
    W2 = W2 if W2.is_contiguous() else W2.contiguous()
    b2 = None if b is None else b.reshape(V * D)
    rest = () if D == 1 else (V, D)
    t2 = target.reshape((-1,) + ((V,) if D == 1 else (V, D))) if prob else target.reshape((-1,) + rest[1:])
    if prob:
        t2 = t2.contiguous()
    N = x2.shape[0]
    rows = _chunk_rows(N, V * D, x2.element_size(), chunk_size)
    need_grad = torch.is_grad_enabled() and (x2.requires_grad or W2.requires_grad or
                                             (b2 is not None and b2.requires_grad) or
                                             (prob and t2.requires_grad))
    w_acc = None if weight is None else weight.detach()
    with torch.autocast(device_type, enabled=False):
        out, z_out = _LinearCrossEntropy.apply(
            x2, W2, b2, t2, w_acc, int(ignore_index), float(label_smoothing), smoothing_mode == "off_target",
            None if softcap is None else float(softcap), float(z_loss), reduction, rows, need_grad, D,
        )
    if reduction == "none":
        out = out.reshape(lead + out_features)
        z_out = z_out.reshape(lead + out_features)
    out = out.to(out_dtype)
    return (out, z_out.to(out_dtype)) if return_z_loss else out


class LinearCrossEntropyLoss(nn.Module):
    """A linear layer (``in_features -> num_classes``) fused with the label-smoothed cross entropy:
    ``forward(input, target)`` is :func:`linear_cross_entropy` with this module's ``weight`` and
    ``bias`` (torch's :class:`torch.nn.LinearCrossEntropyLoss` layout: ``self.weight`` is the linear
    weight ``(num_classes, in_features)``; the class weights are ``class_weight``)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        bias: bool = False,
        device: Any = None,
        dtype: Optional[torch.dtype] = None,
        reduction: str = "mean",
        weight: Optional[Tensor] = None,
        ignore_index: Optional[int] = None,
        label_smoothing: float = 0.0,
        smoothing_mode: str = "uniform",
        z_loss: float = 0.0,
        return_z_loss: bool = False,
        softcap: Optional[float] = None,
        chunk_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        lin = nn.Linear(in_features, num_classes, bias=bias, device=device, dtype=dtype)
        self.in_features, self.num_classes = in_features, num_classes
        self.weight = lin.weight
        self.bias = lin.bias
        self.register_buffer("class_weight", weight)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.smoothing_mode = smoothing_mode
        self.z_loss = float(z_loss)
        self.return_z_loss = bool(return_z_loss)
        self.softcap = softcap
        self.chunk_size = chunk_size

    def forward(self, input: Tensor, target: Tensor) -> Union[Tensor, tuple[Tensor, Tensor]]:
        return linear_cross_entropy(
            input, self.weight, target, linear_bias=self.bias, weight=self.class_weight, reduction=self.reduction,
            ignore_index=self.ignore_index, label_smoothing=self.label_smoothing, smoothing_mode=self.smoothing_mode,
            z_loss=self.z_loss, return_z_loss=self.return_z_loss, softcap=self.softcap, chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        s = (f"in_features={self.in_features}, num_classes={self.num_classes}, bias={self.bias is not None}, "
             f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}")
        if self.smoothing_mode != "uniform":
            s += f", smoothing_mode={self.smoothing_mode!r}"
        if self.z_loss:
            s += f", z_loss={self.z_loss}"
        if self.softcap is not None:
            s += f", softcap={self.softcap}"
        return s
