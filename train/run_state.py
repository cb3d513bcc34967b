"""What a checkpoint captures of a training run, and how it is written and restored."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from train.checkpoints import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from train.epoch_plan import FALLBACK_KINDS


@dataclass
class RunState:
    """Model, optimiser and scheduler plus the position of the run. `batch_in_epoch` is the next batch to
    train on; `fallbacks` are running totals over all ranks, in FALLBACK_KINDS order."""

    model: torch.nn.Module  # unwrapped (no DDP / compile): its state_dict keys are backbone.* / projector.*
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    seed: int
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    fallbacks: np.ndarray = field(default_factory=lambda: np.zeros(len(FALLBACK_KINDS), np.int64))

    def advance(self, steps_per_epoch: int) -> bool:
        """Count one finished step; True when it ended an epoch."""
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            return True
        return False

    def save(self, run_dir: Path, config: dict, code_version: str, keep: int) -> Path:
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": rng_states(), "config": config,
            "step": self.step, "epoch": self.epoch, "code_version": code_version,
            "sampler": {"seed": self.seed, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                        "fallbacks": self.fallbacks.tolist()},
        }
        return save_checkpoint(run_dir, self.step, state, keep)

    def restore(self, path: Path) -> None:
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state["rng"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["sampler"]["batch_in_epoch"])
        self.fallbacks = np.asarray(state["sampler"]["fallbacks"], np.int64)

    def fallback_counts(self) -> dict[str, int]:
        return dict(zip(FALLBACK_KINDS, self.fallbacks.tolist()))
