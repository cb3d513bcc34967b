"""Linear warm-up, then cosine decay to exactly 0 at the last step."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine:
    """Learning-rate factor for optimiser step `step` (0-based). A plain class rather than a lambda so the
    scheduler's state_dict (and with it a checkpoint) records it."""

    def __init__(self, warmup_steps: int, total_steps: int):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.warmup_steps = max(0, min(int(warmup_steps), int(total_steps) - 1))
        self.total_steps = int(total_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def default_warmup(total_steps: int) -> int:
    """5 % of the run, at most 1000 steps."""
    return min(1000, max(1, total_steps // 20))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps))
