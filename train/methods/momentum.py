"""Momentum (EMA) copies of a network, for the methods that keep one: BYOL's target network and MoCo's key
encoder. Only parameters follow the trained network; a copy's BatchNorm buffers are its own, updated by its
own forward passes in training mode."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters are never trained by gradient (requires_grad False)."""
    twin = copy.deepcopy(module)
    for param in twin.parameters():
        param.requires_grad_(False)
    return twin


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter (same order)."""
    targets, onlines = list(target.parameters()), list(online.parameters())
    if len(targets) != len(onlines):
        raise ValueError(f"{len(targets)} target parameters but {len(onlines)} online ones")
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, onlines, alpha=1.0 - momentum)


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule: base at step 0, rising to 1 at total_steps along a half cosine,
    1 - (1 - base) * (cos(pi * step / total_steps) + 1) / 2."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / max(1, total_steps)) + 1.0) / 2.0
