"""MaskFN: find likely false negatives in a batch by the cosine similarity of cached eye+mouth
descriptors, then either promote them to weighted positives or drop them from the denominator.

Definitions (and what each mode does to the loss) are in docs/method.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("positive", "mask")
DEFAULT_LAMBDA = 0.8  # weight of a promoted false negative in "positive" mode (--maskfn-lambda)


def candidate_mask(has_descriptor: Tensor, group_ids: Tensor, positive_index: Tensor) -> Tensor:
    """(N, N) True where column k may be selected for row i: both have descriptors, different videos
    (which also rules out k == i) and k is not already one of row i's positives."""
    n = has_descriptor.shape[0]
    has = has_descriptor.to(torch.bool)
    allowed = has[:, None] & has[None, :] & (group_ids[:, None] != group_ids[None, :])
    allowed = allowed & ~torch.eye(n, dtype=torch.bool, device=allowed.device)
    # Scatter into one spare column so -1 padding needs no special case.
    padded_index = torch.where(positive_index >= 0, positive_index, torch.full_like(positive_index, n))
    is_positive = torch.zeros(n, n + 1, dtype=torch.bool, device=allowed.device)
    is_positive.scatter_(1, padded_index, True)
    return allowed & ~is_positive[:, :n]


def select_false_negatives(
    descriptors: Tensor,
    has_descriptor: Tensor,
    group_ids: Tensor,
    positive_index: Tensor,
    k: int = 1,
) -> Tensor:
    """(N, k) columns of each row's k most cosine-similar allowed candidates (see candidate_mask),
    best first; -1 where fewer than k candidates exist (always for a row without descriptor)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = descriptors.shape[0]
    inputs = {"has_descriptor": has_descriptor, "group_ids": group_ids, "positive_index": positive_index}
    for name, t in inputs.items():
        if t.shape[0] != n:
            raise ValueError(f"{name} has {t.shape[0]} rows, descriptors have {n}")
    device = descriptors.device
    has = has_descriptor.to(device=device, dtype=torch.bool)
    allowed = candidate_mask(has, group_ids.to(device), positive_index.to(device=device, dtype=torch.long))
    with torch.no_grad():
        # Rows without a descriptor may hold NaN garbage: zero them before the product.
        d = torch.where(has[:, None], descriptors.float(), torch.zeros((), device=device))
        d = F.normalize(d, dim=1)
        similarity = (d @ d.T).masked_fill(~allowed, float("-inf"))
        take = min(k, n)
        values, columns = similarity.topk(take, dim=1)
        selected = torch.where(torch.isfinite(values), columns, torch.full_like(columns, -1))
    if take < k:
        selected = torch.cat([selected, selected.new_full((n, k - take), -1)], dim=1)
    return selected


def apply_false_negatives(
    positive_index: Tensor,
    positive_weight: Tensor | None,
    selected: Tensor,
    mode: str = "positive",
    lam: float = DEFAULT_LAMBDA,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fold the selected columns into the loss inputs; returns (positive_index, positive_weight,
    exclude_from_denominator). "positive": appended as positives of weight lam, nothing excluded.
    "mask": positives unchanged, selected columns excluded from the row's denominator."""
    if mode not in MODES:
        raise ValueError(f"unknown MaskFN mode {mode!r}; use one of {', '.join(MODES)}")
    n = positive_index.shape[0]
    if selected.shape[0] != n:
        raise ValueError(f"selected has {selected.shape[0]} rows, positive_index has {n}")
    device = positive_index.device
    selected = selected.to(device=device, dtype=torch.long)
    valid = positive_index >= 0
    weight = valid.float() if positive_weight is None else positive_weight.to(device).float() * valid
    exclude = torch.zeros(n, n + 1, dtype=torch.bool, device=device)
    if mode == "positive":
        if lam <= 0:
            raise ValueError(f"lam must be > 0 in 'positive' mode, got {lam}")
        new_weight = torch.where(selected >= 0, torch.full(selected.shape, float(lam), device=device),
                                 torch.zeros(selected.shape, device=device))
        return torch.cat([positive_index, selected], dim=1), torch.cat([weight, new_weight], dim=1), exclude[:, :n]
    exclude.scatter_(1, torch.where(selected >= 0, selected, torch.full_like(selected, n)), True)
    return positive_index, weight, exclude[:, :n]
