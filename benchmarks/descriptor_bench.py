"""What both descriptor benchmarks share: a stand-in for torchvision's ResNet-18 ImageNet checkpoint (for
machines that cannot fetch it) and the neighbour agreement between two descriptor sets.

Speed does not depend on the weight values; anything measured about the features themselves (neighbour
agreement) is for these random weights.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_stand_in_weights(torch_home: Path) -> None:
    """Point TORCH_HOME at `torch_home` and save a seeded random ResNet-18 where the real checkpoint would be."""
    import torch
    import torchvision

    from sslfer_core.descriptors import resnet18_weights_path

    os.environ["TORCH_HOME"] = str(torch_home)
    path = resnet18_weights_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def neighbour_agreement(reference: np.ndarray, other: np.ndarray, k: int) -> float:
    """Mean overlap of the k nearest (cosine) neighbours of every row, reference vs other."""
    def top(rows):
        sims = rows @ rows.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]
    a, b = top(reference), top(other)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
