"""From a gathered (global) batch to the loss inputs: who is whose positive, which rows are masked out, and
MaskFN's false negatives.

Row layout: ranks are concatenated, and each rank's rows are view-major: [anchors, positives] or
[anchors, positives, hardnegs, hardneg positives], B samples per view. Pairs are (anchor, positive) and
(hardneg, hardneg positive); everything else is a negative.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sslfer_core.false_negatives import DEFAULT_LAMBDA, MODES, apply_false_negatives, select_false_negatives


@dataclass(frozen=True)
class MaskFNConfig:
    mode: str = MODES[0]
    k: int = 1
    lam: float = DEFAULT_LAMBDA


@dataclass
class LossInputs:
    positive_index: Tensor  # (N, P)
    positive_weight: Tensor | None  # (N, P)
    exclude: Tensor | None  # (N, N) bool
    row_valid: Tensor | None  # (N,) bool
    false_negatives: int = 0  # MaskFN selections made


def pair_positive_index(batch_size: int, num_views: int, world_size: int = 1, device=None) -> Tensor:
    """(N, 1): each row's partner view of the same sample (views 0<->1 and 2<->3) on the same rank."""
    if num_views not in (2, 4):
        raise ValueError(f"num_views must be 2 or 4, got {num_views}")
    local = num_views * batch_size
    row = torch.arange(world_size * local, device=device)
    rank, within = row // local, row % local
    view, sample = within // batch_size, within % batch_size
    partner = rank * local + (view ^ 1) * batch_size + sample
    return partner[:, None]


def build_loss_inputs(video_ids: Tensor, row_valid: Tensor, descriptors: Tensor, has_descriptor: Tensor,
                      batch_size: int, num_views: int, world_size: int = 1,
                      maskfn: MaskFNConfig | None = None) -> LossInputs:
    """Loss inputs for N = world_size * num_views * batch_size gathered rows. Rows with row_valid False
    (HardNeg fallbacks) neither contribute nor serve as anyone's negative; MaskFN groups rows by global
    video id, so other views and HardNegs of the same video are never taken for false negatives."""
    device = video_ids.device
    positive_index = pair_positive_index(batch_size, num_views, world_size, device)
    n = positive_index.shape[0]
    if video_ids.shape[0] != n:
        raise ValueError(f"{video_ids.shape[0]} rows but the layout has {n}")
    valid = row_valid.to(device=device, dtype=torch.bool)
    all_valid = bool(valid.all())
    exclude = None if all_valid else (~valid)[None, :].expand(n, n).clone()
    weight = None
    selected_count = 0
    if maskfn is not None:
        has = has_descriptor.to(device=device, dtype=torch.bool) & valid
        selected = select_false_negatives(descriptors, has, video_ids, positive_index, k=maskfn.k)
        selected_count = int((selected >= 0).sum())
        positive_index, weight, masked = apply_false_negatives(positive_index, None, selected, maskfn.mode,
                                                                maskfn.lam)
        if maskfn.mode == "mask":
            exclude = masked if exclude is None else exclude | masked
    return LossInputs(positive_index, weight, exclude, None if all_valid else valid, selected_count)


@torch.no_grad()
def similarity_stats(embeddings: Tensor, partner: Tensor, row_valid: Tensor | None) -> tuple[float, float]:
    """Mean cosine similarity of valid (row, partner) pairs and of all other valid pairs (negatives)."""
    z = F.normalize(embeddings.detach().float(), dim=1)
    n = z.shape[0]
    valid = torch.ones(n, dtype=torch.bool, device=z.device) if row_valid is None else row_valid.to(z.device)
    sim = z @ z.T
    partner = partner.view(-1).to(z.device)
    positive = sim[torch.arange(n, device=z.device), partner][valid]
    negative_mask = valid[:, None] & valid[None, :] & ~torch.eye(n, dtype=torch.bool, device=z.device)
    negative_mask[torch.arange(n, device=z.device), partner] = False
    negatives = sim[negative_mask]
    return (float(positive.mean()) if positive.numel() else float("nan"),
            float(negatives.mean()) if negatives.numel() else float("nan"))
