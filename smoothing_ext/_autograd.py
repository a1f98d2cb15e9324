"""Autograd, forward-mode AD and vmap for the cross-entropy ops (formulas: csrc/smoothing_ext.cpp).

Two paths compute the first-order gradient:

* fast (plain ``backward()``: grad mode off, no forward-mode AD, no torch.func transform): the
  compiled backward ops recompute p = exp(x - lse) from the saved logits and lse, so nothing of size
  N x C is saved besides the caller's logits themselves;
* differentiable (``create_graph=True``, dual tensors, torch.func): the same gradient written with
  torch ops, so that autograd (or functorch) can differentiate it again; it materialises a few N x C
  tensors, which only these uses pay for.

Eager calls go through ``torch.autograd.Function`` subclasses (separate ``setup_context``, ``backward``,
``jvp``, ``generate_vmap_rule``), which is what torch.func needs; ``torch.library.register_autograd``
cannot serve torch.func (it generates a Function without ``setup_context``), and dynamo cannot trace a
Function with a custom ``jvp``, so compiled code calls the ops directly and gets the
``register_autograd`` registrations below (same backward, same two paths).

vmap: batching rules for every op fold the vmapped dimension into the row dimension N (rows are
independent), one kernel launch whatever the batch size; a per-sample class weight is not a row
quantity, so that (rare) case loops over the batch.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

__all__: list[str] = []

_ops = torch.ops.smoothing_ext


def smoothing_coefficients(eps: float, C: int, off_target: bool) -> tuple[float, float]:
    """(on, off) of the smoothed target q_j = on [j == t] + off (see csrc/smoothing_ext.cpp)."""
    if not off_target:
        return 1.0 - eps, eps / C
    if C <= 1:
        return 1.0, 0.0
    off = eps / (C - 1)
    return 1.0 - eps - off, off


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_transformed(t: Optional[Tensor]) -> bool:
    """Whether `t` is wrapped by a torch.func transform (grad, vjp, jvp, vmap, ...)."""
    return t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t)


def has_tangent(t: Optional[Tensor]) -> bool:
    """Whether `t` is a forward-mode dual tensor at the current level."""
    return t is not None and fwAD._current_level >= 0 and fwAD.unpack_dual(t).tangent is not None


def needs_differentiable_backward(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Whether a backward must build its result from differentiable torch ops: its result will be
    differentiated again (create_graph=True, which torch.func's grad/vjp always use), or tangents
    flow through it (forward-over-reverse). The compiled backward ops have no derivative of their own
    that could follow the result in those cases."""
    return torch.is_grad_enabled() or fwAD._current_level >= 0 or any(is_transformed(t) for t in tensors)


def use_function(tensors: Sequence[Optional[Tensor]]) -> bool:
    """Eager calls that need forward AD or torch.func go through the autograd.Function; everything
    else (inference, a plain backward or double backward, torch.compile) calls the op directly, whose
    ``register_autograd`` registration has the same two backward paths and costs less per call
    (about 100 us less per forward + backward of a small batch, measured)."""
    if torch.compiler.is_compiling():
        return False
    return fwAD._current_level >= 0 or any(t is not None and is_transformed(t) for t in tensors)


def _class_dim(x: Tensor) -> int:
    return 0 if x.dim() == 1 else 1


def _class_view(w: Tensor, x: Tensor) -> Tensor:
    """A (C,) tensor shaped to broadcast along x's class dim."""
    shape = [1] * x.dim()
    shape[_class_dim(x)] = -1
    return w.view(shape)


def _sum_rows(v: Tensor, x: Tensor) -> Tensor:
    """Sum an x-shaped tensor over everything but the class dim: shape (C,)."""
    if x.dim() == 1:
        return v
    return v.sum([d for d in range(x.dim()) if d != 1])


def _capped(x: Tensor, softcap: Optional[float]) -> tuple[Tensor, Optional[Tensor]]:
    """Capped logits z = c tanh(x / c) and dz/dx = 1 - (z / c)^2 (None without a cap)."""
    if softcap is None:
        return x, None
    z = softcap * torch.tanh(x / softcap)
    return z, 1.0 - (z / softcap) ** 2


# ---- the first-order partial derivatives, in torch ops ---------------------------------------
# Row i, element j of an x-shaped tensor: dx = d loss_i / d x_ij, dlse = d lse_i / d x_ij = p_ij dz/dx,
# dy = d loss_i / d y_ij (probability targets), dw = d loss_i / d w_j. The backward contracts them
# with the upstream gradients, the jvp with the tangents. Written from differentiable ops of the
# inputs (lse recomputed), so they can be differentiated again to any order.


class _Partials:
    __slots__ = ("dx", "dlse", "dy", "dw")

    def __init__(self) -> None:
        self.dx: Optional[Tensor] = None
        self.dlse: Optional[Tensor] = None
        self.dy: Optional[Tensor] = None
        self.dw: Optional[Tensor] = None


def _index_partials(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    eps: float,
    off_target: bool,
    softcap: Optional[float],
    need_x: bool,
    need_lse: bool,
    need_w: bool,
    lse_given: Optional[Tensor] = None,
) -> _Partials:
    out = _Partials()
    acc = acc_dtype(input.dtype)
    cd = _class_dim(input)
    C = input.shape[cd]
    on, off = smoothing_coefficients(eps, C, off_target)
    valid = target.long() != ignore_index  # long: a uint8 target would wrap ignore_index (-100 -> 156)
    validc = valid.unsqueeze(cd)
    x = input.to(acc)
    if not need_lse:
        # Ignored rows may hold anything (all -inf logits): give them finite logits so that no NaN
        # reaches the gradient of the (masked) gradient.
        x = torch.where(validc, x, 0.0)
    z, dz = _capped(x, softcap)
    if lse_given is None:
        lse = torch.logsumexp(z, cd, keepdim=True)
    else:  # the backward op's own partials: lse is one of its inputs
        lse = lse_given.to(acc).unsqueeze(cd)
    p = torch.exp(z - lse)
    t = target.long()
    # never index with an ignored (or out-of-range) target
    t = torch.where(valid & (t >= 0) & (t < C), t, 0)
    # a comparison rather than one_hot, which inspects the values (not vmappable)
    classes = _class_view(torch.arange(C, device=input.device), input)
    onehot = (t.unsqueeze(cd) == classes).to(acc)
    zero = torch.zeros((), dtype=acc, device=input.device)
    if need_x:
        if weight is None:
            dxz = (on + off * C) * p - on * onehot - off
        else:
            w = weight.to(acc)
            w_t = (onehot * _class_view(w, input)).sum(cd, keepdim=True)
            dxz = (on * w_t + off * w.sum()) * p - on * w_t * onehot - off * _class_view(w, input)
        dxz = torch.where(validc, dxz, zero)
        out.dx = dxz if dz is None else dxz * dz
    if need_lse:
        out.dlse = p if dz is None else p * dz
    if need_w:
        q = on * onehot + off
        # 0 * inf (a -inf logit of a class with no target mass) is 0 here, as in the loss
        out.dw = torch.where(validc & (q != 0), q * (lse - z), zero)
    return out


def _prob_partials(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    eps: float,
    off_target: bool,
    softcap: Optional[float],
    need_x: bool,
    need_lse: bool,
    need_y: bool,
    need_w: bool,
    lse_given: Optional[Tensor] = None,
) -> _Partials:
    out = _Partials()
    acc = acc_dtype(input.dtype)
    cd = _class_dim(input)
    C = input.shape[cd]
    on, off = smoothing_coefficients(eps, C, off_target)
    z, dz = _capped(input.to(acc), softcap)
    if lse_given is None:
        lse = torch.logsumexp(z, cd, keepdim=True)
    else:
        lse = lse_given.to(acc).unsqueeze(cd)
    p = torch.exp(z - lse)
    q = on * target.to(acc) + off
    wv = None if weight is None else _class_view(weight.to(acc), input)
    if need_x:
        wq = q if wv is None else wv * q
        dxz = wq.sum(cd, keepdim=True) * p - wq
        out.dx = dxz if dz is None else dxz * dz
    if need_lse:
        out.dlse = p if dz is None else p * dz
    if need_y:
        out.dy = on * (lse - z) if wv is None else on * wv * (lse - z)
    if need_w:
        out.dw = q * (lse - z)
    return out


def _contract_backward(
    parts: _Partials,
    grad_loss: Optional[Tensor],
    grad_lse: Optional[Tensor],
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    need: tuple[bool, bool, bool],
) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Gradients of (input, target, weight) for the upstream gradients of (loss, lse)."""
    cd = _class_dim(input)
    acc = acc_dtype(input.dtype)
    gl = None if grad_loss is None else grad_loss.to(acc).unsqueeze(cd)
    gi = gt = gw = None
    if need[0]:
        terms = []
        if gl is not None:
            terms.append(gl * parts.dx)
        if grad_lse is not None:
            terms.append(grad_lse.to(acc).unsqueeze(cd) * parts.dlse)
        gi = (sum(terms[1:], terms[0]) if terms else torch.zeros_like(input, dtype=acc)).to(input.dtype)
    if need[1]:
        gt = (torch.zeros_like(parts.dy) if gl is None else gl * parts.dy).to(target.dtype)
    if need[2]:
        gw = _sum_rows(torch.zeros_like(parts.dw) if gl is None else gl * parts.dw, input).to(weight.dtype)
    return gi, gt, gw


# ---- index targets -----------------------------------------------------------------------------


def _index_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    input, target, weight, ignore_index, label_smoothing, off_target, softcap = inputs
    _, lse = output
    ctx.save_for_backward(input, target, weight, lse)
    ctx.ignore_index = ignore_index
    ctx.label_smoothing = label_smoothing
    ctx.off_target = off_target
    ctx.softcap = softcap


def _index_backward(ctx: Any, grad_loss: Optional[Tensor], grad_lse: Optional[Tensor]):
    input, target, weight, lse = ctx.saved_tensors
    need_x, _, need_w = ctx.needs_input_grad[:3]
    args = (ctx.ignore_index, ctx.label_smoothing, ctx.off_target, ctx.softcap)
    grad_input = grad_weight = None
    if not (need_x or need_w):
        return (None,) * 7
    if needs_differentiable_backward((input, weight, lse, grad_loss, grad_lse)):
        parts = _index_partials(input, target, weight, *args, need_x=need_x,
                                need_lse=need_x and grad_lse is not None, need_w=need_w)
        grad_input, _, grad_weight = _contract_backward(
            parts, grad_loss, grad_lse, input, target, weight, (need_x, False, need_w)
        )
        return grad_input, None, grad_weight, None, None, None, None
    if grad_loss is None:
        grad_loss = torch.zeros_like(lse)
    if need_x:
        grad_input = _ops._cross_entropy_backward(grad_loss, grad_lse, input, target, weight, lse, *args)
    if need_w:
        # d loss_i / d w_j = q_ij (lse_i - z_ij): rare (learned class weights), so torch ops
        parts = _index_partials(input, target, weight, *args, need_x=False, need_lse=False, need_w=True,
                                lse_given=lse)
        _, _, grad_weight = _contract_backward(parts, grad_loss, None, input, target, weight, (False, False, True))
    return grad_input, None, grad_weight, None, None, None, None


def _index_jvp(ctx: Any, input_t: Optional[Tensor], target_t: Any, weight_t: Optional[Tensor], *unused: Any):
    input, target, weight, _ = ctx.saved_tensors
    parts = _index_partials(
        input, target, weight, ctx.ignore_index, ctx.label_smoothing, ctx.off_target, ctx.softcap,
        need_x=input_t is not None, need_lse=True, need_w=weight_t is not None,
    )
    return _contract_jvp(parts, input, weight, input_t, None, weight_t)


def _contract_jvp(
    parts: _Partials,
    input: Tensor,
    weight: Optional[Tensor],
    input_t: Optional[Tensor],
    target_t: Optional[Tensor],
    weight_t: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """Tangents of (loss, lse): each partial contracted with its input's tangent over the class dim."""
    cd = _class_dim(input)
    acc = acc_dtype(input.dtype)
    loss_t: Optional[Tensor] = None
    lse_t: Optional[Tensor] = None
    if input_t is not None:
        xt = input_t.to(acc)
        loss_t = (parts.dx * xt).sum(cd)
        lse_t = (parts.dlse * xt).sum(cd)
    if target_t is not None:
        v = (parts.dy * target_t.to(acc)).sum(cd)
        loss_t = v if loss_t is None else loss_t + v
    if weight_t is not None:
        v = (parts.dw * _class_view(weight_t.to(acc), input)).sum(cd)
        loss_t = v if loss_t is None else loss_t + v
    shape = list(input.shape)
    del shape[cd]
    zeros = input.new_zeros(shape, dtype=acc)
    return (zeros if loss_t is None else loss_t), (zeros if lse_t is None else lse_t)


class CrossEntropyFunction(torch.autograd.Function):
    """cross_entropy_forward with every autograd mode (see the module docstring)."""

    # vmap of forward / backward / jvp: every op inside has a batching rule (below)
    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        ignore_index: int,
        label_smoothing: float,
        off_target: bool,
        softcap: Optional[float],
    ) -> tuple[Tensor, Tensor]:
        return _ops.cross_entropy_forward(input, target, weight, ignore_index, label_smoothing, off_target, softcap)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _index_setup_context(ctx, inputs, output)
        input, target, weight = inputs[:3]
        ctx.save_for_forward(input, target, weight, output[1])
        # an unused output (lse without z-loss) gets None, not an N-sized zero tensor
        ctx.set_materialize_grads(False)

    backward = staticmethod(_index_backward)  # type: ignore[assignment]
    jvp = staticmethod(_index_jvp)  # type: ignore[assignment]


# ---- probability targets -----------------------------------------------------------------------


def _prob_setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    input, target, weight, label_smoothing, off_target, softcap = inputs
    _, lse = output
    ctx.save_for_backward(input, target, weight, lse)
    ctx.label_smoothing = label_smoothing
    ctx.off_target = off_target
    ctx.softcap = softcap


def _prob_backward(ctx: Any, grad_loss: Optional[Tensor], grad_lse: Optional[Tensor]):
    input, target, weight, lse = ctx.saved_tensors
    need_x, need_y, need_w = ctx.needs_input_grad[:3]
    args = (ctx.label_smoothing, ctx.off_target, ctx.softcap)
    if not (need_x or need_y or need_w):
        return (None,) * 6
    if needs_differentiable_backward((input, target, weight, lse, grad_loss, grad_lse)):
        parts = _prob_partials(input, target, weight, *args, need_x=need_x,
                               need_lse=need_x and grad_lse is not None, need_y=need_y, need_w=need_w)
        gi, gt, gw = _contract_backward(parts, grad_loss, grad_lse, input, target, weight, (need_x, need_y, need_w))
        return gi, gt, gw, None, None, None
    if grad_loss is None:
        grad_loss = torch.zeros_like(lse)
    gi = gt = gw = None
    if need_x:
        gi = _ops._cross_entropy_prob_backward(grad_loss, grad_lse, input, target, weight, lse, *args)
    if need_y or need_w:
        # d loss / d y_j = -on w_j log p_j, d loss / d w_j = q_j (lse - z_j): rare (learned soft
        # targets or class weights), so torch ops
        parts = _prob_partials(input, target, weight, *args, need_x=False, need_lse=False, need_y=need_y,
                               need_w=need_w, lse_given=lse)
        _, gt, gw = _contract_backward(parts, grad_loss, None, input, target, weight, (False, need_y, need_w))
    return gi, gt, gw, None, None, None


def _prob_jvp(ctx: Any, input_t: Optional[Tensor], target_t: Optional[Tensor], weight_t: Optional[Tensor], *unused: Any):
    input, target, weight, _ = ctx.saved_tensors
    parts = _prob_partials(
        input, target, weight, ctx.label_smoothing, ctx.off_target, ctx.softcap,
        need_x=input_t is not None, need_lse=True, need_y=target_t is not None, need_w=weight_t is not None,
    )
    return _contract_jvp(parts, input, weight, input_t, target_t, weight_t)


class CrossEntropyProbFunction(torch.autograd.Function):
    """cross_entropy_prob_forward with every autograd mode (see the module docstring)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        label_smoothing: float,
        off_target: bool,
        softcap: Optional[float],
    ) -> tuple[Tensor, Tensor]:
        return _ops.cross_entropy_prob_forward(input, target, weight, label_smoothing, off_target, softcap)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _prob_setup_context(ctx, inputs, output)
        input, target, weight = inputs[:3]
        ctx.save_for_forward(input, target, weight, output[1])
        ctx.set_materialize_grads(False)

    backward = staticmethod(_prob_backward)  # type: ignore[assignment]
    jvp = staticmethod(_prob_jvp)  # type: ignore[assignment]


def index_forward(
    input: Tensor, target: Tensor, weight: Optional[Tensor], ignore_index: int, label_smoothing: float,
    off_target: bool, softcap: Optional[float],
) -> tuple[Tensor, Tensor]:
    """Per-row (loss, lse) for class-index targets, differentiable in every mode."""
    args = (input, target, weight, ignore_index, label_smoothing, off_target, softcap)
    if use_function((input, weight)):
        return CrossEntropyFunction.apply(*args)
    return _ops.cross_entropy_forward(*args)


def prob_forward(
    input: Tensor, target: Tensor, weight: Optional[Tensor], label_smoothing: float, off_target: bool,
    softcap: Optional[float],
) -> tuple[Tensor, Tensor]:
    """Per-row (loss, lse) for probability targets, differentiable in every mode."""
    args = (input, target, weight, label_smoothing, off_target, softcap)
    if use_function((input, target, weight)):
        return CrossEntropyProbFunction.apply(*args)
    return _ops.cross_entropy_prob_forward(*args)


torch.library.register_autograd(
    "smoothing_ext::cross_entropy_forward", _index_backward, setup_context=_index_setup_context
)
torch.library.register_autograd(
    "smoothing_ext::cross_entropy_prob_forward", _prob_backward, setup_context=_prob_setup_context
)


# ---- autograd of the backward ops (for their direct callers) -------------------------------------
# Their exact partial derivatives, lse being an input like any other (p = exp(z - lse)): the vjp of
# the same torch-op formula. Within this package they are only called where nothing differentiates
# their result (see needs_differentiable_backward).


def register_backward_op_autograd(
    name: str, formula: Callable[..., Tensor], tensor_args: Sequence[int]
) -> None:
    """Register, for the op `name`, the autograd of `formula` (a torch-op equivalent of the op) with
    respect to the tensor arguments at positions `tensor_args`."""

    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(*(inputs[i] for i in tensor_args))
        ctx.inputs = tuple(None if i in tensor_args else a for i, a in enumerate(inputs))

    def backward(ctx: Any, grad_out: Tensor):
        saved = ctx.saved_tensors
        needs = [ctx.needs_input_grad[i] for i in tensor_args]
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            # with create_graph the saved tensors are already part of the graph to extend; otherwise
            # differentiate fresh leaves
            ts = [
                t if (t is None or create_graph) else t.detach().requires_grad_(n)
                for t, n in zip(saved, needs)
            ]
            args = list(ctx.inputs)
            for i, t in zip(tensor_args, ts):
                args[i] = t
            wrt = [t for t, n in zip(ts, needs) if n]
            grads = torch.autograd.grad(
                formula(*args), wrt, grad_out, create_graph=create_graph, allow_unused=True
            ) if wrt else ()
        it = iter(grads)
        result: list[Optional[Tensor]] = [None] * len(ctx.inputs)
        for i, t, n in zip(tensor_args, ts, needs):
            if n:
                g = next(it)
                result[i] = torch.zeros_like(t) if g is None else g
        return tuple(result)

    torch.library.register_autograd(name, backward, setup_context=setup_context)


def _index_backward_formula(
    grad_loss: Tensor, grad_lse: Optional[Tensor], input: Tensor, target: Tensor, weight: Optional[Tensor],
    lse: Tensor, ignore_index: int, label_smoothing: float, off_target: bool = False,
    softcap: Optional[float] = None,
) -> Tensor:
    parts = _index_partials(input, target, weight, ignore_index, label_smoothing, off_target, softcap,
                            need_x=True, need_lse=grad_lse is not None, need_w=False, lse_given=lse)
    return _contract_backward(parts, grad_loss, grad_lse, input, target, weight, (True, False, False))[0]


def _prob_backward_formula(
    grad_loss: Tensor, grad_lse: Optional[Tensor], input: Tensor, target: Tensor, weight: Optional[Tensor],
    lse: Tensor, label_smoothing: float, off_target: bool = False, softcap: Optional[float] = None,
) -> Tensor:
    parts = _prob_partials(input, target, weight, label_smoothing, off_target, softcap, need_x=True,
                           need_lse=grad_lse is not None, need_y=False, need_w=False, lse_given=lse)
    return _contract_backward(parts, grad_loss, grad_lse, input, target, weight, (True, False, False))[0]


register_backward_op_autograd("smoothing_ext::_cross_entropy_backward", _index_backward_formula, (0, 1, 2, 4, 5))
register_backward_op_autograd("smoothing_ext::_cross_entropy_prob_backward", _prob_backward_formula, (0, 1, 2, 3, 4, 5))


# ---- vmap batching rules -----------------------------------------------------------------------


def batch_first(t: Optional[Tensor], bdim: Optional[int], B: int) -> Optional[Tensor]:
    """`t` with its vmapped dim first (expanded to B when it has none)."""
    if t is None:
        return None
    if bdim is None:
        return t.unsqueeze(0).expand(B, *t.shape)
    return t.movedim(bdim, 0)


def loop_over_batch(op: Callable, info: Any, in_dims: tuple, *args: Any) -> tuple[Any, Any]:
    """The op applied sample by sample, results stacked along dim 0."""
    outs = []
    for b in range(info.batch_size):
        sample = [a if d is None else a.select(d, b) for a, d in zip(args, in_dims)]
        outs.append(op(*sample))
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o) for o in zip(*outs)), tuple(0 for _ in outs[0])
    return torch.stack(outs), 0


def _fold_rows(
    op: Callable, info: Any, in_dims: tuple, args: tuple, x_pos: int, row_pos: Sequence[int],
    xshaped_pos: Sequence[int], weight_pos: int,
) -> tuple[Any, Any]:
    """Batching rule of a cross-entropy op: the vmapped dim becomes part of the row dim N.
    x_pos: the logits; row_pos: per-row tensors (target, grads, lse); xshaped_pos: tensors of the
    logits' shape (probability targets)."""
    if in_dims[weight_pos] is not None:
        return loop_over_batch(op, info, in_dims, *args)
    B = info.batch_size
    x = args[x_pos]
    logical_dim = x.dim() - (in_dims[x_pos] is not None)
    args = list(args)
    for i in (x_pos, *row_pos, *xshaped_pos):
        t = batch_first(args[i], in_dims[i], B)
        # (C,) logits: the batch is the row dim; (N, C, ...): B x N rows
        args[i] = t if (t is None or logical_dim == 1) else t.flatten(0, 1)
    logical_shape = list(x.shape)
    if in_dims[x_pos] is not None:
        del logical_shape[in_dims[x_pos]]
    N = logical_shape[0]
    out = op(*args)

    def unfold(o: Tensor) -> Tensor:
        return o if logical_dim == 1 else o.unflatten(0, (B, N))

    if isinstance(out, tuple):
        return tuple(unfold(o) for o in out), tuple(0 for _ in out)
    return unfold(out), 0


@torch.library.register_vmap("smoothing_ext::cross_entropy_forward")
def _index_forward_vmap(info: Any, in_dims: tuple, *args: Any) -> tuple[Any, Any]:
    return _fold_rows(_ops.cross_entropy_forward, info, in_dims, args, 0, (1,), (), 2)


@torch.library.register_vmap("smoothing_ext::cross_entropy_prob_forward")
def _prob_forward_vmap(info: Any, in_dims: tuple, *args: Any) -> tuple[Any, Any]:
    return _fold_rows(_ops.cross_entropy_prob_forward, info, in_dims, args, 0, (), (1,), 2)


@torch.library.register_vmap("smoothing_ext::_cross_entropy_backward")
def _index_backward_vmap(info: Any, in_dims: tuple, *args: Any) -> tuple[Any, Any]:
    return _fold_rows(_ops._cross_entropy_backward, info, in_dims, args, 2, (0, 1, 3, 5), (), 4)


@torch.library.register_vmap("smoothing_ext::_cross_entropy_prob_backward")
def _prob_backward_vmap(info: Any, in_dims: tuple, *args: Any) -> tuple[Any, Any]:
    return _fold_rows(_ops._cross_entropy_prob_backward, info, in_dims, args, 2, (0, 1, 5), (3,), 4)
