"""Implementations the benchmark compares against (benchmark-only; never used by the library).

Each entry maps (x, t, w, eps) -> scalar mean loss, or is None when not available here.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor, Optional[Tensor], float], Tensor]


def _as_rows(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(N, C, d...) -> (N * d..., C) for the formulations written for 2-D logits."""
    if x.dim() > 2:
        C = x.shape[1]
        return x.movedim(1, -1).reshape(-1, C), t.reshape(-1)
    return x, t


def ours(x: Tensor, t: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    import smoothing_ext

    return smoothing_ext.cross_entropy(x, t, weight=w, label_smoothing=eps)


def torch_eager(x: Tensor, t: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    return F.cross_entropy(x, t, weight=w, label_smoothing=eps)


def seed_onehot(x: Tensor, t: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    """The one-hot formulation (seed 000): scatter (1 - eps) into a zero N x C matrix, add eps / C,
    then -(q * log_softmax(x)).sum(1).mean()."""
    x, t = _as_rows(x, t)
    C = x.shape[1]
    q = torch.zeros(x.shape, dtype=x.dtype, device=x.device)
    q.scatter_add_(1, t.view(-1, 1), torch.full((t.numel(), 1), 1.0 - eps, dtype=x.dtype, device=x.device))
    q += eps / C
    return -(q * torch.log_softmax(x, dim=1)).sum(1).mean()


def seed_nll(x: Tensor, t: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    """The (1 - eps) * nll + eps * mean(-log p) formulation (seed 002)."""
    x, t = _as_rows(x, t)
    C = x.shape[-1]
    log_pred = torch.log_softmax(x, dim=-1)
    smooth = (-log_pred.sum(dim=-1)).mean()
    return smooth * eps / C + (1 - eps) * F.nll_loss(log_pred, t)


def _liger() -> Optional[LossFn]:
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy  # type: ignore
    except Exception:
        return None

    def f(x, t, w, eps):
        x, t = _as_rows(x, t)
        return liger_cross_entropy(x, t, weight=w, label_smoothing=eps)

    return f


def _apex() -> Optional[LossFn]:
    try:
        from apex.contrib.xentropy import SoftmaxCrossEntropyLoss  # type: ignore
    except Exception:
        return None

    def f(x, t, w, eps):
        if w is not None:
            raise NotImplementedError("apex xentropy has no class weights")
        x, t = _as_rows(x, t)
        return SoftmaxCrossEntropyLoss.apply(x, t, eps, 0, x.dtype == torch.half).mean()

    return f


def _flash_attn() -> Optional[LossFn]:
    try:
        from flash_attn.ops.triton.cross_entropy import cross_entropy_loss  # type: ignore
    except Exception:
        return None

    def f(x, t, w, eps):
        if w is not None:
            raise NotImplementedError("flash-attn cross entropy has no class weights")
        x, t = _as_rows(x, t)
        loss, _ = cross_entropy_loss(x, t, label_smoothing=eps)
        return loss.mean()

    return f


def available(device: str) -> dict[str, LossFn]:
    """Implementations importable here, by name (the CUDA-only ones only for device 'cuda')."""
    impls: dict[str, LossFn] = {
        "smoothing_ext": ours,
        "torch": torch_eager,
        "seed_onehot": seed_onehot,
        "seed_nll": seed_nll,
    }
    if device == "cuda":
        for name, make in (("liger", _liger), ("apex", _apex), ("flash_attn", _flash_attn)):
            fn = make()
            if fn is not None:
                impls[name] = fn
    return impls


# ---------------------------------------------------------------------------------------------
# features beyond F.cross_entropy: each with smoothing_ext's implementation(s) and the plain
# PyTorch formula (timed eagerly and under torch.compile), and a float64 reference for the error
# ---------------------------------------------------------------------------------------------


class _Alias(torch.autograd.Function):
    """Identity that makes its input a non-leaf without copying it: the in-place fused mode
    refuses leaf logits (in training they are the output of the model's last layer)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.detach()

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        return g


def ours_fused(x: Tensor, t: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    import smoothing_ext

    return smoothing_ext.cross_entropy(x, t, weight=w, label_smoothing=eps, grad_in_forward=True)


def ours_fused_inplace(x: Tensor, t: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    """Overwrites x with the gradient when a gradient is needed (the benchmark gives it its own copy)."""
    import smoothing_ext

    h = _Alias.apply(x) if x.requires_grad else x
    return smoothing_ext.cross_entropy(h, t, weight=w, label_smoothing=eps, grad_in_forward=True,
                                       inplace_backward=True)


def ours_off_target(x: Tensor, t: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    import smoothing_ext

    return smoothing_ext.cross_entropy(x, t, weight=w, label_smoothing=eps, smoothing_mode="off_target")


def torch_off_target(x: Tensor, t: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    """fairseq's formulation: (1 - eps) nll + eps / (C - 1) * sum over the other classes of -log p."""
    x, t = _as_rows(x, t)
    C = x.shape[1]
    logp = torch.log_softmax(x.float(), dim=1)
    nll = -logp.gather(1, t.view(-1, 1)).squeeze(1)
    others = -logp.sum(1) - nll
    return ((1 - eps) * nll + eps / (C - 1) * others).mean()


Z_LOSS, SOFTCAP = 1e-4, 30.0


def ours_zloss_softcap(x: Tensor, t: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    import smoothing_ext

    return smoothing_ext.cross_entropy(x, t, weight=w, label_smoothing=eps, z_loss=Z_LOSS, softcap=SOFTCAP)


def torch_zloss_softcap(x: Tensor, t: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    """Gemma-2 style capping then PaLM's z-loss, as written in plain PyTorch."""
    xc = SOFTCAP * torch.tanh(x.float() / SOFTCAP)
    return F.cross_entropy(xc, t, weight=w, label_smoothing=eps) + Z_LOSS * (torch.logsumexp(xc, 1) ** 2).mean()


def ours_bce(x: Tensor, y: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    import smoothing_ext

    return smoothing_ext.binary_cross_entropy_with_logits(x, y, weight=w, label_smoothing=eps)


def torch_bce(x: Tensor, y: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(x, y * (1 - eps) + eps / 2, weight=w)


def reference_bce(x: Tensor, y: Tensor, w: Optional[Tensor], eps: float) -> Tensor:
    ys = y.double() * (1 - eps) + eps / 2
    return F.binary_cross_entropy_with_logits(x.double(), ys, weight=None if w is None else w.double())


FEATURE_IMPLS: dict[str, dict[str, LossFn]] = {
    "fused": {"smoothing_ext": ours, "smoothing_ext[fused]": ours_fused,
              "smoothing_ext[fused,inplace]": ours_fused_inplace, "torch": torch_eager},
    "off_target": {"smoothing_ext": ours_off_target, "torch": torch_off_target},
    "zloss+softcap": {"smoothing_ext": ours_zloss_softcap, "torch": torch_zloss_softcap},
    "bce": {"smoothing_ext": ours_bce, "torch": torch_bce},
}
FEATURE_REFERENCE_KWARGS: dict[str, dict] = {
    "fused": {},
    "off_target": {"smoothing_mode": "off_target"},
    "zloss+softcap": {"z_loss": Z_LOSS, "softcap": SOFTCAP},
}
