"""BYOL's objective as a pure function (Grill et al. 2020, eq. 2 and its symmetrised sum)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def byol_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    """Mean over the B samples of (2 - 2 cos(p_1, z_2)) + (2 - 2 cos(p_2, z_1)): each view's online
    prediction regresses the other view's target projection. Rows are view-major, (2B, D): view 1's B
    samples, then view 2's. The targets carry no gradient. Computed in fp32 whatever the input dtype."""
    if predictions.shape != targets.shape or predictions.dim() != 2 or predictions.shape[0] % 2:
        raise ValueError(f"need two (2B, D) tensors of one shape, got {tuple(predictions.shape)} and "
                         f"{tuple(targets.shape)}")
    with torch.autocast(device_type=predictions.device.type, enabled=False):
        p = F.normalize(predictions.float(), dim=1)
        z = F.normalize(targets.detach().float(), dim=1)
        first, second = z.chunk(2)
        cosine = (p * torch.cat([second, first])).sum(dim=1)  # (2B,): each row against the other view
        return (2 - 2 * cosine).view(2, -1).sum(dim=0).mean()
