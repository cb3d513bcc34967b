"""Video masked autoencoder with an LGI-Former encoder (MAE-DFER's pretraining model), its targets and
optimiser parameter groups.

Model: the encoder sees only the visible tokens (mask from sslfer_core.tube_masking, True = masked) and
returns them after its final LayerNorm; a bias-free Linear maps them to the decoder width; mask tokens
fill the masked positions; a fixed sin-cos table gives the decoder positions; a plain pre-LN transformer
decodes all tokens and a Linear predicts, for the masked tokens only, cfg.pred_dim values per token:
appearance (cfg.appearance_dim) followed by motion (cfg.motion_dim).

Targets (mae_targets), per tubelet of cfg.tubelet x patch x patch pixels of the un-normalised clip:
each colour channel is standardised by that tubelet's own mean and unbiased std over all its
tubelet * patch * patch pixels (both frames together, +1e-6 on the std), as the reference does. The
appearance target is the tubelet's first frame so standardised; the motion target is each later frame
minus the first, both standardised with the same statistics. Values are laid out (frame, row, column,
channel), channel fastest, in both targets and predictions.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from sslfer_core.gpu_augment import IMAGENET_MEAN, IMAGENET_STD
from sslfer_core.lgi_former import (INIT_STD, LN_EPS, Attention, DropPath, LGIFormerConfig, LGIFormerEncoder,
                                    Mlp, init_linear_xavier, sincos_table)

TARGET_STD_EPS = 1e-6  # added to the tubelet's std before dividing, as the reference


class Block(nn.Module):
    """Pre-LN transformer block (attention with q/v biases, then MLP), used by the decoder."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


# ------------------------------------------------------------------------------------------- patch layout
def patchify(clip: Tensor, cfg: LGIFormerConfig) -> Tensor:
    """(B, C, T, H, W) -> (B, N, tubelet, patch, patch, C): tokens in raster order (t, h, w)."""
    b, c, t, h, w = clip.shape
    gt, gh, gw = cfg.grid
    if (c, t, h, w) != (cfg.in_chans, cfg.frames, cfg.img_size, cfg.img_size):
        raise ValueError(f"clip must be (B, {cfg.in_chans}, {cfg.frames}, {cfg.img_size}, {cfg.img_size}), "
                         f"got {tuple(clip.shape)}")
    p, q = cfg.patch, cfg.tubelet
    x = clip.reshape(b, c, gt, q, gh, p, gw, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, gt, gh, gw, q, p, p, c
    return x.reshape(b, gt * gh * gw, q, p, p, c)


def unpatchify_frames(values: Tensor, cfg: LGIFormerConfig) -> Tensor:
    """(B, N, k * patch * patch * C) -> (B, C, grid_t * k, H, W): the inverse of patchify for k frames per
    token (k = 1 for an appearance map, k = tubelet for a whole clip)."""
    b, n, d = values.shape
    gt, gh, gw = cfg.grid
    p, c = cfg.patch, cfg.in_chans
    if n != cfg.num_tokens or d % (p * p * c):
        raise ValueError(f"values must be (B, {cfg.num_tokens}, k*{p * p * c}), got {tuple(values.shape)}")
    k = d // (p * p * c)
    x = values.reshape(b, gt, gh, gw, k, p, p, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(b, c, gt * k, gh * p, gw * p)


def unnormalise(x: Tensor) -> Tensor:
    """ImageNet-normalised clip (B, C, T, H, W) -> clip in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, -1, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, -1, 1, 1, 1)
    return x * std + mean


def tubelet_stats(clip_01: Tensor, cfg: LGIFormerConfig) -> tuple[Tensor, Tensor]:
    """Per-tubelet, per-channel mean and (unbiased std + TARGET_STD_EPS), each (B, N, C), in fp32."""
    tubes = patchify(clip_01.float(), cfg).flatten(2, 4)  # (B, N, tubelet*p*p, C)
    return tubes.mean(dim=2), tubes.var(dim=2, unbiased=True).sqrt() + TARGET_STD_EPS


@torch.no_grad()
def mae_targets(clip_01: Tensor, cfg: LGIFormerConfig) -> tuple[Tensor, Tensor]:
    """clip_01 (B, C, T, H, W) in [0, 1] -> (appearance (B, N, appearance_dim), motion (B, N, motion_dim)),
    fp32, computed without autocast (see the module docstring for the definition)."""
    with torch.autocast(device_type=clip_01.device.type, enabled=False):
        tubes = patchify(clip_01.float(), cfg)  # (B, N, q, p, p, C)
        mean, std = tubelet_stats(clip_01, cfg)
        normed = (tubes - mean[:, :, None, None, None]) / std[:, :, None, None, None]
        appearance = normed[:, :, 0].flatten(2)
        motion = (normed[:, :, 1:] - normed[:, :, :1]).flatten(2)
    return appearance, motion


def split_prediction(pred: Tensor, cfg: LGIFormerConfig) -> tuple[Tensor, Tensor]:
    """(..., pred_dim) -> (appearance (..., appearance_dim), motion (..., motion_dim))."""
    if pred.shape[-1] != cfg.pred_dim:
        raise ValueError(f"prediction's last dim must be {cfg.pred_dim}, got {pred.shape[-1]}")
    return pred[..., :cfg.appearance_dim], pred[..., cfg.appearance_dim:]


# ------------------------------------------------------------------------------------------------- model
class MAEModel(nn.Module):
    def __init__(self, cfg: LGIFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = LGIFormerEncoder(cfg)
        self.encoder_to_decoder = nn.Linear(cfg.dim, cfg.dec_dim, bias=False)
        self.mask_token = nn.Parameter(torch.empty(1, 1, cfg.dec_dim))
        self.register_buffer("decoder_pos_embed", sincos_table(cfg.num_tokens, cfg.dec_dim), persistent=False)
        rates = [cfg.drop_path * i / max(cfg.dec_depth - 1, 1) for i in range(cfg.dec_depth)]
        self.decoder_blocks = nn.ModuleList(Block(cfg.dec_dim, cfg.dec_heads, cfg.mlp_ratio, r) for r in rates)
        self.decoder_norm = nn.LayerNorm(cfg.dec_dim, eps=LN_EPS)
        self.decoder_pred = nn.Linear(cfg.dec_dim, cfg.pred_dim)
        init_linear_xavier(self.encoder_to_decoder)
        init_linear_xavier(self.decoder_blocks)
        init_linear_xavier(self.decoder_pred)
        nn.init.trunc_normal_(self.mask_token, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [self.mask_token]

    def patchify(self, clip: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, N, patch_dim), values (frame, row, column, channel)."""
        return patchify(clip, self.cfg).flatten(2)

    def forward_encoder(self, x: Tensor, mask: Tensor) -> Tensor:
        """Normalised clip and mask (B, N) True = masked -> visible tokens (B, N_vis, dim) after the encoder's
        final LayerNorm, in the raster order of the visible tokens."""
        _, local = self.encoder.forward_features(x, visible=~mask)
        return self.encoder.norm(local)

    def forward_decoder(self, latent: Tensor, mask: Tensor) -> Tensor:
        """latent (B, N_vis, dim) from forward_encoder -> predictions (B, N_masked, pred_dim) for the masked
        tokens, in their raster order (the order target[mask] has). mask must be the one forward_encoder
        saw (it checked that every sample has N_vis visible tokens)."""
        b, n_vis, _ = latent.shape
        # Visible raster indices first, then masked ones, each ascending (a stable sort of the mask); an
        # index gather instead of boolean selection needs no host sync.
        order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
        pos = self.decoder_pos_embed  # fp32 under autocast: the stream stays fp32
        visible = self.encoder_to_decoder(latent) + pos[order[:, :n_vis]]
        x = torch.cat([visible, self.mask_token + pos[order[:, n_vis:]]], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x[:, n_vis:]))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Normalised clip (B, C, T, H, W), mask (B, N) bool True = masked -> (B, N_masked, pred_dim):
        appearance then motion values of each masked token (split_prediction separates them)."""
        if mask.dtype != torch.bool or mask.shape != (x.shape[0], self.cfg.num_tokens):
            raise ValueError(f"mask must be bool ({x.shape[0]}, {self.cfg.num_tokens}), got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        return self.forward_decoder(self.forward_encoder(x, mask), mask)


# ---------------------------------------------------------------------------------------------- optimiser
def no_decay_ids(model: nn.Module) -> set[int]:
    """ids of the parameters kept out of weight decay: every parameter with at most one dimension (biases,
    LayerNorm weights, q/v biases) and the embeddings that modules list in no_decay_parameters()
    (representative tokens, mask token). Found by object identity, so wrappers (DDP's `module.`, compile's
    `_orig_mod.`) and any name prefix change nothing."""
    ids = {id(p) for p in model.parameters() if p.dim() <= 1}
    for module in model.modules():
        listed = getattr(module, "no_decay_parameters", None)
        if callable(listed):
            ids.update(id(p) for p in listed())
    return ids


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: [{"params": decayed, "weight_decay": weight_decay},
    {"params": not decayed, "weight_decay": 0.0}]; frozen parameters are left out."""
    skip = no_decay_ids(model)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in skip else decay).append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]


__all__ = ["MAEModel", "Block", "patchify", "unpatchify_frames", "unnormalise", "tubelet_stats", "mae_targets",
           "split_prediction", "param_groups", "no_decay_ids", "TARGET_STD_EPS"]
