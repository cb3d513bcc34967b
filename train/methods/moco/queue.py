"""MoCo's objective and its queue of negative keys, as pure functions (He et al. 2020; Chen et al. 2020)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def moco_loss(queries: Tensor, keys: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE over one positive and the queue: mean over rows i of
    -log exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_j exp(q_i.n_j / t)), with q and k L2-normalised here and
    the queue's rows n_j stored normalised. The keys and the queue carry no gradient. fp32 throughout."""
    if queries.shape != keys.shape or queries.dim() != 2 or queue.dim() != 2 or queue.shape[1] != queries.shape[1]:
        raise ValueError(f"need queries and keys (B, D) and a queue (K, D), got {tuple(queries.shape)}, "
                         f"{tuple(keys.shape)}, {tuple(queue.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q = F.normalize(queries.float(), dim=1)
        k = F.normalize(keys.detach().float(), dim=1)
        positive = (q * k).sum(dim=1, keepdim=True)
        negative = q @ queue.detach().float().T
        logits = torch.cat([positive, negative], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@torch.no_grad()
def enqueue(queue: Tensor, pointer: Tensor, keys: Tensor) -> None:
    """Write `keys` (n, D) over the queue's n oldest rows, pointer..pointer+n-1 wrapping past the end, and
    advance the pointer (a 0-d int64 tensor, so nothing waits for the device) by n modulo the queue size."""
    size = queue.shape[0]
    if keys.shape[0] > size:
        raise ValueError(f"{keys.shape[0]} keys do not fit a queue of {size}")
    rows = (pointer + torch.arange(keys.shape[0], device=queue.device)) % size
    queue[rows] = keys.to(queue.dtype)
    pointer.copy_((pointer + keys.shape[0]) % size)
