"""Tensor-parallel LM head + vocabulary-parallel label-smoothed cross entropy, on the CPU.

A tiny language model (embedding, MLP, output layer over V classes) whose output layer is sharded over
the ranks with DTensor's ``ColwiseParallel(use_local_output=False)``: each rank computes the logits of
its V / world classes only, and gets them as a DTensor sharded on the class dim, which
``smoothing_ext.parallel.dtensor_cross_entropy`` takes as it is (one all-gather of per-row scalars in
the forward, no communication in the backward). An unsharded copy of the same model trains next to it
with ``smoothing_ext.cross_entropy``; the losses are printed side by side and the gradients compared.

    python examples/tensor_parallel_loss.py              # spawns 2 processes (gloo, loopback)
    torchrun --nproc-per-node 2 examples/tensor_parallel_loss.py
"""

from __future__ import annotations

import argparse
import copy
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.tensor import DTensor, init_device_mesh
from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

import smoothing_ext
from smoothing_ext.parallel import dtensor_cross_entropy

VOCAB, HIDDEN, BATCH, SEQ = 50, 16, 4, 6  # 50 classes over 2 ranks: 25 each (over 4: 13, 13, 13, 11)
EPS = 0.1


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.mlp = nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.GELU())
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.embed(tokens)))  # (B, T, V)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full (unsharded) gradients by parameter name."""
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        out[name] = g.full_tensor() if isinstance(g, DTensor) else g
    return out


def run(rank: int, world: int, steps: int = 3) -> bool:
    torch.manual_seed(0)  # the same model and data on every rank
    mesh = init_device_mesh("cpu", (world,))
    reference = TinyLM()
    model = copy.deepcopy(reference)
    # The output layer's weight (V, H) is split by rows: rank r computes classes [v_r, v_r + V_r).
    # use_local_output=False keeps the logits a DTensor (Shard(-1)) so that the loss knows the layout.
    parallelize_module(model, mesh, {"head": ColwiseParallel(use_local_output=False)})
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.5)
    ok = True
    for step in range(steps):
        tokens = torch.randint(0, VOCAB, (BATCH, SEQ))
        targets = torch.roll(tokens, -1, 1)
        targets[:, -1] = -100  # no next token: ignored

        logits = model(tokens)  # DTensor (B, T, V), Shard(2)
        loss = dtensor_cross_entropy(logits, targets, label_smoothing=EPS)
        # unsharded: flatten (B, T, V) to (B*T, V) (the class dim is the last one here)
        ref_logits = reference(tokens)
        ref_loss = smoothing_ext.cross_entropy(ref_logits.flatten(0, 1), targets.flatten(), label_smoothing=EPS)

        opt.zero_grad()
        ref_opt.zero_grad()
        loss.backward()
        ref_loss.backward()
        grads, ref_grads = _grads(model), _grads(reference)
        same_grads = all(torch.allclose(grads[k], ref_grads[k], rtol=1e-4, atol=1e-6) for k in ref_grads)
        same_loss = torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
        ok &= same_grads and same_loss
        if rank == 0:
            print(f"step {step}: tensor-parallel loss {loss.item():.6f}   unsharded loss {ref_loss.item():.6f}   "
                  f"gradients {'agree' if same_grads else 'DIFFER'}   (head shard on rank 0: "
                  f"{model.head.weight.to_local().shape[0]} of {VOCAB} classes)")
        opt.step()
        ref_opt.step()
    return ok


def _spawned(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        ok = run(rank, world)
        flag = torch.tensor([int(ok)])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if not bool(flag):
            raise SystemExit(f"rank {rank}: sharded and unsharded results differ")
        if rank == 0:
            print("OK: sharded and unsharded losses and gradients agree")
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=int, default=2, help="number of processes to spawn (default 2)")
    args = parser.parse_args()
    if "RANK" in os.environ:  # launched by torchrun: one process per rank already
        _spawned(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["MASTER_PORT"]))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_spawned, args=(args.world, port), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
