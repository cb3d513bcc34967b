"""What the training loop hands a method's step: the batch on the device and the step's generator."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def step_generator(seed: int, rank: int, step: int, device: torch.device) -> torch.Generator:
    """Augmentation randomness of one step on one rank: a pure function of (seed, rank, step), so a resumed
    run draws exactly what an uninterrupted one would."""
    words = np.random.SeedSequence([int(seed), int(rank), int(step), 0xC3]).generate_state(2)
    generator = torch.Generator(device=device)
    generator.manual_seed((int(words[0]) << 31) ^ int(words[1]))
    return generator


def batch_to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
