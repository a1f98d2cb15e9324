"""Swap ``nn.CrossEntropyLoss`` for ``smoothing_ext.CrossEntropyLoss`` in an existing training loop.

The change is one line (the criterion). Everything else stays: bfloat16 autocast (AMP on the CPU;
use ``device_type="cuda"`` on a GPU), ``torch.compile(fullgraph=True)`` of the forward + loss, the
optimizer. smoothing_ext takes the bfloat16 logits directly and returns a float32 loss, as
``nn.CrossEntropyLoss`` does under autocast (which upcasts the logits to float32 first).

This script trains two copies of the same model from the same initialization on the same batches,
one per criterion, and prints both losses side by side; it exits with status 1 if they disagree
beyond bfloat16 tolerance.

    python examples/swap_in_training_loop.py              # ~20-40 s on a 2-core CPU: torch.compile
    python examples/swap_in_training_loop.py --no-compile # a few seconds
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from torch import nn

import smoothing_ext


def make_model(n_in: int, n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(), nn.Linear(128, n_classes))


def make_train_step(model: nn.Module, criterion: nn.Module, compile: bool):
    """The existing training step: forward under bf16 autocast, loss, backward, update."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            logits = model(x)  # bfloat16 under autocast
            return criterion(logits, y)  # float32 loss either way

    if compile:
        forward_loss = torch.compile(forward_loss, fullgraph=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = forward_loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--no-compile", action="store_true", help="run eagerly (skip torch.compile)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    n_in = 64
    # A learnable synthetic task: labels from a fixed random linear teacher.
    teacher = torch.randn(n_in, args.classes)
    batches = []
    for _ in range(args.steps):
        x = torch.randn(args.batch_size, n_in)
        batches.append((x, (x @ teacher).argmax(dim=1)))

    model_ref = make_model(n_in, args.classes)
    model_ext = copy.deepcopy(model_ref)  # same initial weights

    # Before:
    criterion_ref = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    # After (the only change in the training code):
    criterion_ext = smoothing_ext.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    compile = not args.no_compile
    step_ref = make_train_step(model_ref, criterion_ref, compile)
    step_ext = make_train_step(model_ext, criterion_ext, compile)

    print(f"torch {torch.__version__}, smoothing_ext {smoothing_ext.__version__}; bf16 autocast on CPU, "
          f"torch.compile={'on (fullgraph)' if compile else 'off'}, batch {args.batch_size} x {args.classes} "
          f"classes, label_smoothing={args.label_smoothing}")
    print(f"{'step':>4}  {'nn.CrossEntropyLoss':>20}  {'smoothing_ext':>14}  {'|diff|':>9}")
    t_start = time.perf_counter()
    worst = 0.0
    for i, (x, y) in enumerate(batches):
        loss_ref = step_ref(x, y)
        loss_ext = step_ext(x, y)
        assert loss_ref.dtype == loss_ext.dtype == torch.float32, (loss_ref.dtype, loss_ext.dtype)
        diff = abs(loss_ref.item() - loss_ext.item())
        # The two runs only differ by bf16 rounding in their gradients, so the losses must stay within
        # bfloat16 tolerance of each other (relative 1e-2).
        worst = max(worst, diff / max(abs(loss_ref.item()), 1e-6))
        print(f"{i:>4}  {loss_ref.item():>20.5f}  {loss_ext.item():>14.5f}  {diff:>9.2e}")

    # Same model, same batch: both criteria on identical bf16 logits.
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = model_ext(batches[0][0])
        a = criterion_ref(logits, batches[0][1]).item()
        b = criterion_ext(logits, batches[0][1]).item()
    print(f"same logits ({logits.dtype}): nn.CrossEntropyLoss {a:.6f}  smoothing_ext {b:.6f}  |diff| {abs(a - b):.2e}")
    worst = max(worst, abs(a - b) / max(abs(a), 1e-6))

    if worst > 1e-2:
        print(f"FAIL: losses disagree (max relative difference {worst:.2e} > 1e-2)")
        return 1
    print(f"OK: losses agree (max relative difference {worst:.2e}); {args.steps} steps x 2 models in "
          f"{time.perf_counter() - t_start:.1f}s{' (mostly compilation)' if compile else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
