"""Finding tensors with NaN or infinite values (diverged training, damaged weight files)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


def non_finite_names(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity, in the given order.

    One host-device sync in the common case: a tensor whose sum is finite holds neither (NaN and infinities
    survive a sum), and a sum is one pass without the boolean copy of isfinite(); only tensors whose sum
    is not finite, which a huge finite tensor can also give, are checked element by element."""
    named = [(name, t.detach()) for name, t in named if isinstance(t, Tensor) and t.is_floating_point()]
    if not named:
        return []
    sums = torch.stack([t.sum().float() for _, t in named])
    suspects = (~torch.isfinite(sums)).nonzero().flatten().tolist()
    return [named[i][0] for i in suspects if not bool(torch.isfinite(named[i][1]).all())]


def describe_non_finite(names: list[str], total: int) -> str:
    """'3 of 122 tensors hold NaN or infinite values (first: backbone.conv1.weight)'."""
    return f"{len(names)} of {total} tensors hold NaN or infinite values (first: {names[0]})"


def count_floating(tensors: Iterable) -> int:
    return sum(1 for t in tensors if isinstance(t, Tensor) and t.is_floating_point())
