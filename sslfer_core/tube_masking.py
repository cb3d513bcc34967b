"""Tube window masking for video MAE pretraining (MAE-DFER's "part_window" mask).

Each temporal slice's (h, w) token grid is cut into windows of the LGI-Former region's spatial size
(cfg.region[1:], 5 x 10 tokens in the full preset: two windows per 10 x 10 slice). Each window gets exactly
int(ratio * window) masked tokens (45 of 50 at 90 %), and the same spatial mask repeats over every
temporal slice of the clip. Because windows and regions share their spatial size and the mask is
constant over time, every region then holds the same number of visible tokens (5 per window x region t
slices = 10 in the full preset), which is what lets the encoder regroup the visible tokens by region;
check_mask_regions checks that coupling.

The mask is drawn on the given device from the given torch.Generator (never numpy's or torch's global
RNG), so a resumed run that restores the generator redraws the same masks.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sslfer_core.lgi_former import LGIFormerConfig, check_visible_regions

DEFAULT_MASK_RATIO = 0.9


def window_shape(cfg: LGIFormerConfig) -> tuple[int, int]:
    """(h, w) of one mask window in tokens: the region's spatial size."""
    return (cfg.region[1], cfg.region[2])


def masked_per_window(cfg: LGIFormerConfig, ratio: float) -> int:
    """Masked tokens per window: int(ratio * window tokens), truncated as the reference's mask generator does
    (37 of 50 at 0.75, 45 at 0.9); at least one token is masked (the loss is a mean over masked tokens)."""
    if not (0.0 <= ratio < 1.0):
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    wh, ww = window_shape(cfg)
    size = wh * ww
    masked = int(ratio * size)  # below size for every ratio < 1: one token at least stays visible
    if masked == 0:
        raise ValueError(f"mask ratio {ratio} masks no token of a {wh} x {ww} window, so there is nothing to "
                         f"reconstruct; give at least {1 / size:.3g}")
    return masked


def tube_window_mask(batch: int, cfg: LGIFormerConfig, ratio: float = DEFAULT_MASK_RATIO, *,
                     generator: torch.Generator, device: torch.device | str | None = None) -> Tensor:
    """(batch, num_tokens) bool, True = masked, in the tokens' raster order (t, h, w).

    One uniform draw of shape (batch, windows per slice, window tokens) from generator; each window masks
    its int(ratio * window) tokens of largest draw. The generator must live on `device`."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    device = torch.device(device) if device is not None else generator.device
    t, h, w = cfg.grid
    wh, ww = window_shape(cfg)
    nh, nw = h // wh, w // ww
    size = wh * ww
    masked = masked_per_window(cfg, ratio)
    noise = torch.rand((batch, nh * nw, size), generator=generator, device=device)
    rank = noise.argsort(dim=-1).argsort(dim=-1)  # rank of each token's draw inside its window
    window_mask = rank >= size - masked  # (B, windows, window tokens)
    # (B, nh, nw, wh, ww) -> (B, nh, wh, nw, ww) = (B, h, w) in raster order, then repeat over time.
    spatial = window_mask.reshape(batch, nh, nw, wh, ww).permute(0, 1, 3, 2, 4).reshape(batch, h * w)
    return spatial[:, None, :].expand(batch, t, h * w).reshape(batch, t * h * w)


def check_mask_regions(mask: Tensor, cfg: LGIFormerConfig) -> int:
    """Visible tokens per region for mask (B, N) bool, True = masked. Raises ValueError unless the visible
    tokens can regroup into the config's regions with the same count in each (and the same count in every
    sample, since the encoder batches them)."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
    return check_visible_regions(~mask, cfg)


__all__ = ["DEFAULT_MASK_RATIO", "window_shape", "masked_per_window", "tube_window_mask", "check_mask_regions"]
