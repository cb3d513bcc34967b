"""Batched per-clip augmentation for video masked-autoencoder pretraining: one crop (and flip) per clip,
identical for every frame of it, resized to the input size, then ImageNet normalisation. Runs on the
device of the clips, with no per-clip Python loop; random draws come from the caller's generator.

The crop follows the reference's multi-scale crop (VideoMAE / MAE-DFER pretraining, docs/video-data.md):
- candidate sides are int(min(H, W) * s) for each scale s, each snapped to the output size when less than
  SNAP_PX from it (and kept inside the frame);
- a (width, height) pair is drawn uniformly among the pairs whose scale indices differ by at most
  max_distort (so aspect ratios stay near square);
- the offset is drawn uniformly among fixed positions on a quarter grid of the slack (5 positions, or 13
  with more_fix_crop), or uniformly over all positions when fix_crop is off;
- the crop is resampled to size x size with a triangle (bilinear) filter widened by the shrink factor
  when shrinking, the same filter as PIL's BILINEAR resize the reference uses (and torch's
  interpolate(mode="bilinear", antialias=True)).
The reference flips nothing during pretraining; flip_p defaults to 0.
The resampling is separable, so it is two batched matrix products with per-clip weight matrices whose
rows are zero outside the crop: a flip is the width matrix with its rows reversed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sslfer_core.gpu_augment import IMAGENET_MEAN, IMAGENET_STD

REFERENCE_SCALES = (1.0, 0.875, 0.75, 0.66)
SNAP_PX = 3  # a candidate side less than this many pixels from the output size becomes the output size


@dataclass(frozen=True)
class ClipAugmentConfig:
    size: int = 160
    scales: tuple = REFERENCE_SCALES
    max_distort: int = 1
    fix_crop: bool = True
    more_fix_crop: bool = True
    flip_p: float = 0.0

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if not self.scales or not all(0 < s <= 1 for s in self.scales):
            raise ValueError(f"scales must be fractions in (0, 1], got {self.scales}")
        if self.max_distort < 0:
            raise ValueError(f"max_distort must be >= 0, got {self.max_distort}")
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be a probability, got {self.flip_p}")


def crop_pairs(cfg: ClipAugmentConfig, height: int, width: int) -> list[tuple[int, int]]:
    """Candidate (crop_w, crop_h) pairs for a height x width frame."""
    base = min(height, width)
    sides = [int(base * s) for s in cfg.scales]
    snapped = [cfg.size if abs(side - cfg.size) < SNAP_PX else side for side in sides]
    # Snapping to the output size must not make a crop larger than the frame.
    crop_h = [min(side, height) for side in snapped]
    crop_w = [min(side, width) for side in snapped]
    return [(w, h) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w) if abs(i - j) <= cfg.max_distort]


def fixed_offsets(cfg: ClipAugmentConfig, height: int, width: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """(x, y) positions of the fixed-offset crop: corners and centre, plus edge centres and quarter points."""
    ws, hs = (width - crop_w) // 4, (height - crop_h) // 4
    grid = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2)]
    if cfg.more_fix_crop:
        grid += [(0, 2), (4, 2), (2, 4), (2, 0), (1, 1), (3, 1), (1, 3), (3, 3)]
    return [(i * ws, j * hs) for i, j in grid]


def sample_clip_params(batch: int, height: int, width: int, cfg: ClipAugmentConfig, *,
                       generator: torch.Generator | None = None, device=None) -> dict[str, Tensor]:
    """Crop box (x, y, w, h) and flip of each clip, int64 / bool tensors on `device`. Draws are made on
    the generator's device: pair index, offset choice, flip, in that order."""
    draw_device = generator.device if generator is not None else torch.device(device or "cpu")
    pairs = crop_pairs(cfg, height, width)
    pair_t = torch.tensor(pairs, dtype=torch.int64, device=draw_device)  # (P, 2)
    pick = torch.randint(0, len(pairs), (batch,), generator=generator, device=draw_device)
    u = torch.rand(batch, generator=generator, device=draw_device, dtype=torch.float64)
    flip = torch.rand(batch, generator=generator, device=draw_device) < cfg.flip_p
    w, h = pair_t[pick, 0], pair_t[pick, 1]
    if cfg.fix_crop:
        table = torch.tensor([fixed_offsets(cfg, height, width, pw, ph) for pw, ph in pairs], dtype=torch.int64,
                             device=draw_device)  # (P, K, 2)
        k = torch.clamp((u * table.shape[1]).long(), max=table.shape[1] - 1)
        x, y = table[pick, k, 0], table[pick, k, 1]
    else:
        # One uniform draw picks the offset among all (W - w + 1) x (H - h + 1) positions.
        nx, ny = width - w + 1, height - h + 1
        cell = torch.minimum((u * (nx * ny)).long(), nx * ny - 1)
        x, y = cell % nx, cell // nx
    params = {"x": x, "y": y, "w": w, "h": h, "flip": flip}
    return {key: value.to(device) if device is not None else value for key, value in params.items()}


def resample_weights(offset: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """(N, out_size, in_size) float64 weights resampling input span [offset, offset + length) to out_size
    samples: a triangle filter of radius max(length / out_size, 1) input pixels around each output
    pixel's centre, truncated to the span and normalised (PIL's BILINEAR; torch's antialiased bilinear)."""
    offset = offset.to(torch.float64)[:, None, None]
    length = length.to(torch.float64)[:, None, None]
    scale = length / out_size
    support = torch.clamp(scale, min=1.0)
    centre = (torch.arange(out_size, dtype=torch.float64, device=offset.device)[None, :, None] + 0.5) * scale
    pixel = torch.arange(in_size, dtype=torch.float64, device=offset.device)[None, None, :] - offset + 0.5
    weight = torch.clamp(1.0 - (pixel - centre).abs() / support, min=0.0)
    weight = torch.where((pixel > 0) & (pixel < length), weight, torch.zeros_like(weight))
    return weight / weight.sum(dim=2, keepdim=True)


def apply_clip_params(clips_uint8: Tensor, params: dict[str, Tensor], cfg: ClipAugmentConfig) -> tuple[Tensor, Tensor]:
    """The deterministic part (tests set params by hand): returns (normalised, clip in [0, 1]), both float32
    (B, 3, T, size, size) on the clips' device."""
    if clips_uint8.dim() != 5 or clips_uint8.shape[-1] != 3 or clips_uint8.dtype != torch.uint8:
        raise ValueError(f"clips must be (B, T, H, W, 3) uint8, got {tuple(clips_uint8.shape)} {clips_uint8.dtype}")
    device = clips_uint8.device
    _, _, height, width, _ = clips_uint8.shape
    s = cfg.size
    wy = resample_weights(params["y"].to(device), params["h"].to(device), height, s).float()  # (B, S, H)
    wx = resample_weights(params["x"].to(device), params["w"].to(device), width, s)
    wx = torch.where(params["flip"].to(device)[:, None, None], wx.flip(1), wx).float()  # (B, S, W)
    # Out of autocast: the pixels (and the MAE targets made from them) stay float32.
    with torch.autocast(device_type=device.type, enabled=False):
        x = clips_uint8.permute(0, 1, 4, 2, 3).float()  # (B, T, 3, H, W), 0..255
        x = torch.matmul(wy[:, None, None], x)  # (B, T, 3, S, W)
        x = torch.matmul(x, wx.transpose(1, 2)[:, None, None])  # (B, T, 3, S, S)
        clip01 = x.div_(255.0).clamp_(0.0, 1.0).permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, S, S)
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1, 1)
        normalised = (clip01 - mean) / std
    return normalised, clip01


def augment_clips(clips_uint8: Tensor, cfg: ClipAugmentConfig = ClipAugmentConfig(),
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """clips (B, T, H, W, 3) uint8 on any device -> (x_normalised, clips_01), float32 (B, 3, T, size, size);
    every frame of a clip gets its clip's crop and flip."""
    if clips_uint8.dim() != 5:
        raise ValueError(f"clips must be (B, T, H, W, 3) uint8, got {tuple(clips_uint8.shape)}")
    batch, _, height, width, _ = clips_uint8.shape
    params = sample_clip_params(batch, height, width, cfg, generator=generator, device=clips_uint8.device)
    return apply_clip_params(clips_uint8, params, cfg)
