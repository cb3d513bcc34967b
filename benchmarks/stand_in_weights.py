"""A stand-in for torchvision's ResNet-18 ImageNet checkpoint, for benchmarks on machines that cannot fetch it.

Speed does not depend on the weight values; anything measured about the features themselves (neighbour
agreement) is for these random weights.
"""
from __future__ import annotations

import os
from pathlib import Path


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
