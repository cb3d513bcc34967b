"""MAE-DFER-CA's motion branch ("CA", continuous attention, adapted from MMNet), its fusion with a clip
encoder, and batch mixup/cutmix that mixes the motion inputs exactly as it mixes the clip.

Layout (reference input 16 x 160 x 160, so the last map is 10 x 10):

  motion map (B, 3, H, W)   mean over frames minus the first frame (`motion_map`, the reference code's input);
                            or "frame-diff": each frame minus the first, stacked on channels (B, 3(T-1), H, W)
  stem     Conv 3->180 k3 s2 (no bias) + BN + ReLU, then Conv 180->128 k3 (no bias) + BN + ReLU
  4 CA blocks (128 s1, 128 s2, 256 s2, 512 s2): conv3x3(stride) -> BN -> ReLU -> conv1x1 -> BN, plus the shortcut
           (identity, or conv1x1(stride) + BN when the shape changes), ReLU; spatial attention
           sigmoid(BN(conv1x1 over [channel mean; channel max])), times the previous block's attention max-pooled
           (k3 s2 p1) to this block's size, multiplies the block output
  512 x 10 x 10 -> flatten -> Linear(51,200 -> D) + ReLU      (D = the encoder's feature width, 512 in the reference)

The reference also builds a Linear(100,352 -> 7) in its CA network that no forward pass uses; it is not built here.
`add-pos` adds a 2-layer ViT over the first frame resized to the last map's size (patch 1, dim 512, 4 heads,
MLP ratio 2, learnable positions) to the last CA map before flattening; the reference's ViT also carries a class
token, a 512->5 head and a 512->1 mask layer that its forward pass never uses, also not built here.

Fusion with the encoder's pooled, normalised clip feature f (B, D) and the motion feature m (B, D):
`add`: head(f + m); `cat`: head([f; m]) with a 2D -> C head; `add-pos`: as add, with the position branch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MOTION_INPUTS = ("mean-minus-first", "frame-diff")
FUSIONS = ("add", "cat", "add-pos")
CA_STAGES = ((128, 1), (128, 2), (256, 2), (512, 2))  # (width, stride) of the four CA blocks
STEM_WIDTH = 180
STEM_OUT = 128
STEM_STRIDE = 2
TOTAL_STRIDE = STEM_STRIDE * math.prod(stride for _, stride in CA_STAGES)  # 16: 160 px -> 10 x 10
POS_DEPTH, POS_HEADS, POS_MLP_RATIO, POS_DIM = 2, 4, 2.0, 512
POS_NORM_EPS = 1e-6


def motion_map(clip: torch.Tensor, mode: str = "mean-minus-first") -> torch.Tensor:
    """clip (B, C, T, H, W) -> motion input: (B, C, H, W) mean over T minus frame 0, or (B, C(T-1), H, W) frame
    differences x_t - x_0 for t = 1..T-1 stacked on channels."""
    if clip.ndim != 5:
        raise ValueError(f"expected a clip batch (B, C, T, H, W), got shape {tuple(clip.shape)}")
    if mode == "mean-minus-first":
        return clip.mean(dim=2) - clip[:, :, 0]
    if mode == "frame-diff":
        return (clip[:, :, 1:] - clip[:, :, :1]).flatten(1, 2)
    raise ValueError(f"unknown motion input {mode!r}; use one of {', '.join(MOTION_INPUTS)}")


def motion_channels(mode: str, in_chans: int, frames: int) -> int:
    if mode == "mean-minus-first":
        return in_chans
    if mode == "frame-diff":
        return in_chans * (frames - 1)
    raise ValueError(f"unknown motion input {mode!r}; use one of {', '.join(MOTION_INPUTS)}")


@dataclass(frozen=True)
class CAConfig:
    img_size: int = 160
    frames: int = 16
    in_chans: int = 3
    motion: str = "mean-minus-first"
    out_dim: int = 512  # the motion feature's width; must equal the encoder feature for add / add-pos

    @property
    def grid(self) -> int:
        return self.img_size // TOTAL_STRIDE

    def check(self) -> None:
        if self.img_size % TOTAL_STRIDE:
            raise ValueError(f"the CA branch needs an input size divisible by {TOTAL_STRIDE}, got {self.img_size}")
        motion_channels(self.motion, self.in_chans, self.frames)


class CABlock(nn.Module):
    def __init__(self, in_width: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.shortcut = nn.Identity()
        if stride != 1 or in_width != width:
            self.shortcut = nn.Sequential(nn.Conv2d(in_width, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
        self.attention = nn.Sequential(nn.Conv2d(2, 1, 1, bias=False), nn.BatchNorm2d(1), nn.Sigmoid())
        self.stride = stride

    def forward(self, x: torch.Tensor, previous: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out = F.relu(out + self.shortcut(x))
        pooled = torch.cat([out.mean(dim=1, keepdim=True), out.amax(dim=1, keepdim=True)], dim=1)
        attention = self.attention(pooled)
        if previous is not None:
            if previous.shape[-2:] != attention.shape[-2:]:
                previous = F.max_pool2d(previous, kernel_size=3, stride=self.stride, padding=1)
            attention = attention * previous
        return out * attention, attention


class CAMotionBranch(nn.Module):
    """motion input (B, Cm, H, W) [+ positions (B, 512, g, g)] -> motion feature (B, out_dim)."""

    def __init__(self, config: CAConfig = CAConfig()) -> None:
        super().__init__()
        config.check()
        self.config = config
        channels = motion_channels(config.motion, config.in_chans, config.frames)
        self.stem = nn.Sequential(
            nn.Conv2d(channels, STEM_WIDTH, 3, stride=STEM_STRIDE, padding=1, bias=False),
            nn.BatchNorm2d(STEM_WIDTH), nn.ReLU(inplace=True),
            nn.Conv2d(STEM_WIDTH, STEM_OUT, 3, padding=1, bias=False), nn.BatchNorm2d(STEM_OUT), nn.ReLU(inplace=True))
        blocks, width = [], STEM_OUT
        for out_width, stride in CA_STAGES:
            blocks.append(CABlock(width, out_width, stride))
            width = out_width
        self.blocks = nn.ModuleList(blocks)
        self.map_width = width
        self.fc = nn.Linear(width * config.grid * config.grid, config.out_dim)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, motion: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        x = self.stem(motion)
        attention = None
        for block in self.blocks:
            x, attention = block(x, attention)
        if positions is not None:
            x = x + positions
        return F.relu(self.fc(x.flatten(1)))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=POS_NORM_EPS)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=POS_NORM_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PositionBranch(nn.Module):
    """`add-pos`: first frame (B, C, H, W) -> resized to g x g -> 1x1 patches -> 2-layer ViT -> (B, 512, g, g)."""

    def __init__(self, config: CAConfig = CAConfig()) -> None:
        super().__init__()
        config.check()
        self.grid = config.grid
        self.patch_embed = nn.Conv2d(config.in_chans, POS_DIM, 1)
        self.positions = nn.Parameter(torch.zeros(1, self.grid * self.grid, POS_DIM))
        self.blocks = nn.ModuleList(_Block(POS_DIM, POS_HEADS, POS_MLP_RATIO) for _ in range(POS_DEPTH))
        self.norm = nn.LayerNorm(POS_DIM, eps=POS_NORM_EPS)
        nn.init.trunc_normal_(self.positions, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, first_frame: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(first_frame, size=(self.grid, self.grid), mode="bilinear", align_corners=False,
                              antialias=True)
        tokens = self.patch_embed(small).flatten(2).transpose(1, 2) + self.positions
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return tokens.transpose(1, 2).reshape(len(tokens), POS_DIM, self.grid, self.grid)


def encoder_features(encoder: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """The encoder's pooled clip feature: `encoder.pooled(x)` when it has one (the video encoder), else `encoder(x)`."""
    pooled = getattr(encoder, "pooled", None)
    return pooled(clip) if callable(pooled) else encoder(clip)


class MotionFusionClassifier(nn.Module):
    """Any clip encoder with a (B, D) pooled feature + the CA branch + a linear head.

    forward(clip, motion=None, first_frame=None): in training pass the motion inputs computed from the clip
    before mixing (`mix_with_motion`); without them they are computed from `clip` (evaluation: nothing is mixed).
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int, fusion: str = "add",
                 config: CAConfig | None = None) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; use one of {', '.join(FUSIONS)}")
        config = config or CAConfig(out_dim=feature_dim)
        if fusion != "cat" and config.out_dim != feature_dim:
            raise ValueError(f"fusion {fusion!r} adds features: the CA width {config.out_dim} must equal the "
                             f"encoder's {feature_dim}")
        self.encoder = encoder
        self.fusion = fusion
        self.config = config
        self.ca = CAMotionBranch(config)
        self.positions = PositionBranch(config) if fusion == "add-pos" else None
        self.head = nn.Linear(feature_dim + config.out_dim if fusion == "cat" else feature_dim, num_classes)

    def forward(self, clip: torch.Tensor, motion: torch.Tensor | None = None,
                first_frame: torch.Tensor | None = None) -> torch.Tensor:
        if motion is None:
            motion = motion_map(clip, self.config.motion)
        positions = None
        if self.positions is not None:
            positions = self.positions(clip[:, :, 0] if first_frame is None else first_frame)
        moved = self.ca(motion, positions)
        feature = encoder_features(self.encoder, clip)
        fused = torch.cat([feature, moved], dim=1) if self.fusion == "cat" else feature + moved
        return self.head(fused)


# ---- mixup / cutmix (batch mode, as the reference: one lambda and one box per batch, partner = reversed batch) ----

@dataclass(frozen=True)
class MixConfig:
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0  # chance that a batch is mixed at all
    switch_prob: float = 0.5  # chance of cutmix rather than mixup when both are on
    label_smoothing: float = 0.1


@dataclass(frozen=True)
class MixDraw:
    lam: float  # weight of the batch itself (area-corrected for cutmix)
    box: tuple[int, int, int, int] | None  # (y0, y1, x0, x1) pasted from the partner; None = mixup or no mixing
    mixed: bool


def draw_mix(height: int, width: int, config: MixConfig, rng: np.random.Generator) -> MixDraw:
    """One batch's mixing parameters, drawn from `rng`."""
    use_mixup, use_cutmix = config.mixup_alpha > 0, config.cutmix_alpha > 0
    if not (use_mixup or use_cutmix) or rng.random() >= config.prob:
        return MixDraw(1.0, None, False)
    cutmix = use_cutmix and (not use_mixup or rng.random() < config.switch_prob)
    if not cutmix:
        return MixDraw(float(rng.beta(config.mixup_alpha, config.mixup_alpha)), None, True)
    lam = float(rng.beta(config.cutmix_alpha, config.cutmix_alpha))
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)  # the area actually pasted
    return MixDraw(lam, (y0, y1, x0, x1), True)


def apply_mix(x: torch.Tensor, draw: MixDraw) -> torch.Tensor:
    """Mix a batch (B, ..., H, W) with its reversed self; the box covers the last two axes of every frame."""
    if not draw.mixed:
        return x
    partner = x.flip(0)
    if draw.box is None:
        return x * draw.lam + partner * (1.0 - draw.lam)
    y0, y1, x0, x1 = draw.box
    out = x.clone()
    out[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
    return out


def soft_targets(labels: torch.Tensor, num_classes: int, draw: MixDraw, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    one_hot = torch.full((len(labels), num_classes), off, device=labels.device)
    one_hot.scatter_(1, labels.view(-1, 1), 1.0 - smoothing + off)
    return one_hot * draw.lam + one_hot.flip(0) * (1.0 - draw.lam)


def mix_batch(tensors: Sequence[torch.Tensor], labels: torch.Tensor, num_classes: int, rng: np.random.Generator,
              config: MixConfig = MixConfig()) -> tuple[list[torch.Tensor], torch.Tensor, MixDraw]:
    """The same lambda, box and partner for every tensor (all share the batch axis and the last two axes)."""
    sizes = {tuple(t.shape[-2:]) for t in tensors}
    if len(sizes) != 1 or len({len(t) for t in tensors} | {len(labels)}) != 1:
        raise ValueError("mixed tensors need the same batch size and the same (H, W)")
    height, width = sizes.pop()
    draw = draw_mix(height, width, config, rng)
    return [apply_mix(t, draw) for t in tensors], soft_targets(labels, num_classes, draw, config.label_smoothing), draw


def mix_with_motion(clip: torch.Tensor, labels: torch.Tensor, num_classes: int, rng: np.random.Generator,
                    config: MixConfig = MixConfig(), motion: str | Callable[[torch.Tensor], torch.Tensor] = "mean-minus-first",
                    first_frame: bool = False):
    """Motion input (and first frame for add-pos) from the clean clip, then one mixing applied to all of them.

    Returns (mixed_clip, mixed_motion, mixed_first_frame or None, soft_targets, draw).
    """
    motion_fn = motion if callable(motion) else (lambda c: motion_map(c, motion))
    tensors = [clip, motion_fn(clip)] + ([clip[:, :, 0]] if first_frame else [])
    mixed, targets, draw = mix_batch(tensors, labels, num_classes, rng, config)
    return mixed[0], mixed[1], (mixed[2] if first_frame else None), targets, draw
