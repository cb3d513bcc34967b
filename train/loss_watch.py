"""Step losses held on the device until they are read.

Reading a CUDA tensor on the host waits for every kernel queued before it. Read each step, the loss stops the
host from fetching and queueing the next batch while the GPU still runs this step's backward pass; so on a
GPU the losses are read in a batch at the trainer's sync points (log, checkpoint, epoch end). On the CPU a
read costs nothing, so each loss is checked before its update is applied."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def settles_each_step(device: torch.device) -> bool:
    return device.type != "cuda"


@dataclass
class NonFiniteLoss(Exception):
    step: int  # 1-based, as logged
    epoch: int
    value: float


class LossWatch:
    def __init__(self) -> None:
        self._pending: list[tuple[int, int, Tensor]] = []

    def add(self, step: int, epoch: int, loss: Tensor) -> None:
        self._pending.append((step, epoch, loss.detach()))

    def settle(self) -> list[float]:
        """The pending losses as floats, oldest first (one host-device sync); raises NonFiniteLoss for the
        first one that is not finite."""
        if not self._pending:
            return []
        values = torch.stack([loss.float() for _, _, loss in self._pending]).tolist()
        pending, self._pending = self._pending, []
        for (step, epoch, _), value in zip(pending, values):
            if not math.isfinite(value):
                raise NonFiniteLoss(step, epoch, value)
        return values
