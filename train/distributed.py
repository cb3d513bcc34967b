"""Process-group set-up from torchrun's environment, device choice, and gathers across ranks.

Every rank computes the same global loss from gathered embeddings; gather_with_grad sums the gradients
of all ranks in backward, and DDP's averaging then gives exactly the single-process gradient
(docs/training.md, "Distributed").
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from sslfer_core.cpu_cores import available_cores


def cores_per_local_rank() -> int:
    """This process's share of the cores when torchrun starts LOCAL_WORLD_SIZE ranks on the machine."""
    return max(1, available_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    local_world_size: int = 1  # ranks on this machine (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(choice: str, local_rank: int = 0) -> torch.device:
    """'auto' takes CUDA when present. Raises ValueError when CUDA is asked for but absent."""
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {choice!r}; use auto, cpu or cuda")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init_distributed(device_choice: str) -> DistContext:
    """Join the process group when torchrun set WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_choice, local_rank)
    if world <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(dist.get_world_size())))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device,
                       local_world_size=max(1, local_world))


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """Concatenate equal-shaped tensors of all ranks along dim 0; backward returns this rank's slice of
    the gradient summed over ranks (each rank differentiates its own copy of the global loss)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather_with_grad(tensor: Tensor, ctx: DistContext) -> Tensor:
    return _GatherWithGrad.apply(tensor) if ctx.distributed else tensor


@torch.no_grad()
def gather(tensor: Tensor, ctx: DistContext) -> Tensor:
    if not ctx.distributed:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def gather_ints(values: list[int], ctx: DistContext) -> list[list[int]]:
    """Every rank's `values` (the same length on all ranks), in rank order. The tensors travel on
    ctx.device: nccl gathers device tensors, gloo CPU ones."""
    if not ctx.distributed:
        return [list(values)]
    tensor = torch.tensor(values, dtype=torch.int64, device=ctx.device)
    parts = [torch.empty_like(tensor) for _ in range(ctx.world_size)]
    dist.all_gather(parts, tensor)
    return [part.cpu().tolist() for part in parts]


@torch.no_grad()
def sum_across(tensor: Tensor, ctx: DistContext) -> Tensor:
    if ctx.distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
