"""Linear warm-up, then cosine decay to a floor: by default to exactly 0 one step after the last (the
contrastive schedule); with min_factor and end_at_last_step, to min_factor x the peak at the last step
itself (the video MAE schedule, so that the final weights are those of the annealed learning rate)."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine:
    """Learning-rate factor for optimiser step `step` (0-based). A plain class rather than a lambda so the
    scheduler's state_dict (and with it a checkpoint) records it."""

    def __init__(self, warmup_steps: int, total_steps: int, min_factor: float = 0.0, end_at_last_step: bool = False):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 <= min_factor <= 1.0:
            raise ValueError(f"min_factor must be in [0, 1], got {min_factor}")
        self.warmup_steps = max(0, min(int(warmup_steps), int(total_steps) - 1))
        self.total_steps = int(total_steps)
        self.min_factor = float(min_factor)
        self.end_at_last_step = bool(end_at_last_step)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        if self.end_at_last_step:
            decay_steps = max(1, decay_steps - 1)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        if not self.min_factor:
            return cosine
        return self.min_factor + (1.0 - self.min_factor) * cosine


def default_warmup(total_steps: int) -> int:
    """5 % of the run, at most 1000 steps."""
    return min(1000, max(1, total_steps // 20))


def make_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_factor: float = 0.0,
                   end_at_last_step: bool = False) -> LambdaLR:
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_factor, end_at_last_step))
