"""What a checkpoint captures of a training run, and how it is written and restored."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sslfer_core.state_fit import state_dict_misfit
from train.checkpoints import CheckpointReadError, load_checkpoint, restore_rng_states, rng_states, save_checkpoint


@dataclass
class RunState:
    """Model, optimiser and scheduler plus the position of the run. `batch_in_epoch` is the next batch to
    train on; `counters` are the method's running totals over all ranks (Method.counter_names, in order)."""

    model: torch.nn.Module  # unwrapped (no DDP / compile): its state_dict keys are the method model's own
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    seed: int
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def advance(self, steps_per_epoch: int) -> bool:
        """Count one finished step; True when it ended an epoch."""
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            return True
        return False

    def add_counts(self, values: list[int]) -> None:
        """Add one sync point's totals, given in counter order."""
        for name, value in zip(self.counters, values):
            self.counters[name] += int(value)

    def save(self, run_dir: Path, config: dict, code_version: str, keep: int) -> Path:
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "rng": rng_states(), "config": config,
            "step": self.step, "epoch": self.epoch, "code_version": code_version,
            "sampler": {"seed": self.seed, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                        "counters": dict(self.counters)},
        }
        return save_checkpoint(run_dir, self.step, state, keep)

    def restore(self, path: Path, state: dict | None = None) -> None:
        """Continue from the checkpoint at `path` (its content `state` when already read)."""
        state = load_checkpoint(path) if state is None else state
        misfit = state_dict_misfit(self.model.state_dict(), state["model"])
        if misfit:
            raise CheckpointReadError(f"{path}: its weights do not fit the run's model: {misfit}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            restore_rng_states(state["rng"])
            self.step, self.epoch = int(state["step"]), int(state["epoch"])
            sampler = state["sampler"]
            self.batch_in_epoch = int(sampler["batch_in_epoch"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as error:
            text = str(error).strip().splitlines()
            raise CheckpointReadError(f"{path}: cannot resume from it ({type(error).__name__}: "
                                      f"{text[0][:200] if text else ''})") from None
        saved = sampler.get("counters")
        if saved is None:  # checkpoints from before named counters: the contrastive fallbacks, in order
            saved = dict(zip(self.counters, sampler.get("fallbacks", [])))
        # A counter the checkpoint does not know (added to the method since) starts at 0.
        self.counters = {name: int(saved.get(name, 0)) for name in self.counters}
