"""LGI-Former (MAE-DFER, Sun et al., ACM MM 2023): a video transformer whose attention is local inside
spatio-temporal regions and global only among one representative token per region.

Tokens: a Conv3d with kernel = stride = (tubelet, patch, patch) cuts a (C, T, H, W) clip into a
(T/tubelet, H/patch, W/patch) grid, flattened in raster order (t, h, w). A fixed 1-D sin-cos table over
that order gives positions. The grid is cut into regions of cfg.region = (t, h, w) tokens; each region
has one learnable representative token. Each block runs four pre-LN residual steps with their own weights:
  1. self-attention inside each region over [representative, region tokens];
  2. self-attention among the representative tokens of a clip;
  3. cross-attention from every local token (queries) to the representative tokens (keys/values),
     with separate LayerNorms for queries and keys/values;
  4. an MLP on every token.
The classifier pools the mean of the representative tokens, then LayerNorm, then Linear.

With a mask (the MAE case) only the visible tokens enter: they regroup by region, which needs the same
number of visible tokens in every region (sslfer_core.tube_masking draws such masks and checks it).
docs/video-mae.md describes the presets, their parameter counts and FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-6
INIT_STD = 0.02  # truncated-normal std of the representative tokens, the mask token and the classifier head


@dataclass(frozen=True)
class LGIFormerConfig:
    frames: int = 16
    img_size: int = 160
    tubelet: int = 2
    patch: int = 16
    in_chans: int = 3
    dim: int = 512
    depth: int = 16
    heads: int = 8
    mlp_ratio: float = 4.0
    region: tuple[int, int, int] = (2, 5, 10)  # (t, h, w) in tokens
    dec_dim: int = 384
    dec_depth: int = 4
    dec_heads: int = 6
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        for name in ("frames", "img_size", "tubelet", "patch", "in_chans", "dim", "depth", "heads",
                     "dec_dim", "dec_depth", "dec_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LGIFormerConfig.{name} must be a positive int, got {value!r}")
        if self.tubelet < 2:
            raise ValueError(f"LGIFormerConfig.tubelet must be >= 2 (the motion target is a frame difference "
                             f"inside a tubelet), got {self.tubelet}")
        if self.frames % self.tubelet:
            raise ValueError(f"frames ({self.frames}) must be a multiple of tubelet ({self.tubelet})")
        if self.img_size % self.patch:
            raise ValueError(f"img_size ({self.img_size}) must be a multiple of patch ({self.patch})")
        if self.dim % self.heads or self.dec_dim % self.dec_heads:
            raise ValueError(f"dim/heads ({self.dim}/{self.heads}) and dec_dim/dec_heads "
                             f"({self.dec_dim}/{self.dec_heads}) must divide evenly")
        if not (self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not (0.0 <= self.drop_path < 1.0):
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path}")
        region = tuple(self.region)
        if len(region) != 3 or any(not isinstance(r, int) or r < 1 for r in region):
            raise ValueError(f"region must be three positive ints (t, h, w), got {self.region!r}")
        object.__setattr__(self, "region", region)
        if any(g % r for g, r in zip(self.grid, region)):
            raise ValueError(f"region {region} must tile the token grid {self.grid} exactly")

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (t, h, w)."""
        side = self.img_size // self.patch
        return (self.frames // self.tubelet, side, side)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def region_grid(self) -> tuple[int, int, int]:
        """Number of regions along (t, h, w)."""
        return tuple(g // r for g, r in zip(self.grid, self.region))

    @property
    def num_regions(self) -> int:
        nt, nh, nw = self.region_grid
        return nt * nh * nw

    @property
    def region_tokens(self) -> int:
        t, h, w = self.region
        return t * h * w

    @property
    def frame_patch_dim(self) -> int:
        """Values of one frame of one tubelet: in_chans * patch * patch (768 in the full preset)."""
        return self.in_chans * self.patch * self.patch

    @property
    def patch_dim(self) -> int:
        """Values of one tubelet: in_chans * tubelet * patch * patch (1536 in the full preset)."""
        return self.tubelet * self.frame_patch_dim

    @property
    def appearance_dim(self) -> int:
        return self.frame_patch_dim

    @property
    def motion_dim(self) -> int:
        return (self.tubelet - 1) * self.frame_patch_dim

    @property
    def pred_dim(self) -> int:
        """Decoder outputs per masked token: appearance then motion (= patch_dim)."""
        return self.appearance_dim + self.motion_dim


PRESETS: dict[str, LGIFormerConfig] = {
    # The reference (MAE-DFER): 16 x 160^2 clips, 800 tokens, 8 regions of 100.
    "full": LGIFormerConfig(),
    # Same token geometry as "full" (8 x 10 x 10 grid, 8 regions, 5 x 10 mask windows) from 16 x 80^2 clips
    # with 8 px patches, so masking and regrouping run exactly as in the full model; small widths so a step
    # takes well under a second on a 2-core CPU.
    "tiny": LGIFormerConfig(img_size=80, patch=8, dim=96, depth=4, heads=4, dec_dim=128, dec_depth=2, dec_heads=4),
}


def preset(name: str) -> LGIFormerConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown LGI-Former preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def with_overrides(cfg: LGIFormerConfig, **changes) -> LGIFormerConfig:
    """A copy of cfg with some fields changed (validated like a new config)."""
    return replace(cfg, **changes)


# ----------------------------------------------------------------------------------------------- positions
def sincos_table(num_positions: int, dim: int) -> Tensor:
    """(num_positions, dim) table: entry (p, j) = sin(p / 10000^(2*(j//2)/dim)) for even j, cos for odd j
    (the Transformer's table with interleaved sin/cos, as the reference)."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angle = position / torch.pow(10000.0, exponent)[None, :]
    table = torch.empty_like(angle)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


# ------------------------------------------------------------------------------------------------- regions
def region_of_token(cfg: LGIFormerConfig, device=None) -> Tensor:
    """(num_tokens,) int64: the region index of each token in raster order; regions are numbered in raster
    order over the region grid."""
    t, h, w = cfg.grid
    rt, rh, rw = cfg.region
    nt, nh, nw = cfg.region_grid
    it = torch.arange(t, device=device) // rt
    ih = torch.arange(h, device=device) // rh
    iw = torch.arange(w, device=device) // rw
    return ((it[:, None, None] * nh + ih[None, :, None]) * nw + iw[None, None, :]).reshape(-1)


def region_order(cfg: LGIFormerConfig, visible: Tensor | None = None, device=None,
                 per_region: int | None = None) -> Tensor:
    """Token indices that lay the (visible) tokens out region by region, raster order inside each region.

    Without visible: (num_tokens,) with order[r * region_tokens + j] = raster index of region r's j-th token.
    With visible (B, N) bool: (B, N_vis) raster indices; check_visible_regions must hold first (it returns
    per_region; without it the count is read from visible, a host sync)."""
    region = region_of_token(cfg, device=device if visible is None else visible.device)
    n = cfg.num_tokens
    raster = torch.arange(n, device=region.device)
    key = region * n + raster  # sorts by region, then raster position
    if visible is None:
        return torch.argsort(key)
    per_sample = int(visible[0].sum()) if per_region is None else per_region * cfg.num_regions
    key = torch.where(visible, key[None, :], key[None, :] + cfg.num_regions * n)  # hidden tokens sort last
    return torch.argsort(key, dim=1)[:, :per_sample]


def check_visible_regions(visible: Tensor, cfg: LGIFormerConfig) -> int:
    """Visible tokens per region; raises ValueError unless every region of every sample has the same
    number (at least one)."""
    if visible.dtype != torch.bool or visible.dim() != 2 or visible.shape[1] != cfg.num_tokens:
        raise ValueError(f"visible must be a bool tensor (B, {cfg.num_tokens}), got "
                         f"{visible.dtype} {tuple(visible.shape)}")
    region = region_of_token(cfg, device=visible.device)
    counts = torch.zeros(visible.shape[0], cfg.num_regions, dtype=torch.long, device=visible.device)
    counts.index_add_(1, region, visible.long())
    low, high = torch.stack([counts.min(), counts.max()]).tolist()  # one host sync
    if low < 1 or low != high:
        raise ValueError(f"the visible tokens must fall equally into the {cfg.num_regions} regions of {cfg.region} "
                         f"tokens (at least one each); per-region counts range {low}..{high} — draw the mask "
                         f"with sslfer_core.tube_masking.tube_window_mask")
    return low


def partition_regions(tokens: Tensor, cfg: LGIFormerConfig, visible: Tensor | None = None,
                      per_region: int | None = None) -> tuple[Tensor, Tensor]:
    """All tokens (B, N, D) in raster order -> (grouped (B, R, L, D), order (B, R*L)).

    grouped holds each region's tokens (only the visible ones when visible (B, N) is given) in raster
    order; order holds their raster indices in that layout, for merge_regions. per_region is
    check_visible_regions' result (read from visible otherwise). Indices are gathered, not selected by a
    boolean mask, so nothing here waits for the device."""
    b, n, d = tokens.shape
    if n != cfg.num_tokens:
        raise ValueError(f"tokens must be (B, {cfg.num_tokens}, D), got {tuple(tokens.shape)}")
    if visible is None:
        order = region_order(cfg, device=tokens.device)[None, :].expand(b, -1)
    else:
        order = region_order(cfg, visible, per_region=per_region)
    grouped = torch.gather(tokens, 1, order[..., None].expand(-1, -1, d))
    return grouped.reshape(b, cfg.num_regions, -1, d), order


def merge_regions(grouped: Tensor, order: Tensor) -> Tensor:
    """(B, R, L, D) and partition_regions' order -> (B, R*L, D) in raster order of the tokens grouped:
    all N tokens, or the visible ones in the order tokens[visible] has."""
    b, r, l, d = grouped.shape
    # order gives each slot's raster index; sorting the slots by it restores raster order.
    back = torch.argsort(order, dim=1)
    return torch.gather(grouped.reshape(b, r * l, d), 1, back[..., None].expand(-1, -1, d))


# -------------------------------------------------------------------------------------------------- layers
class DropPath(nn.Module):
    """Stochastic depth: zeroes a residual branch per sample (dim 0) with probability p during training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def keep(self, shape: tuple[int, ...], like: Tensor) -> Tensor | None:
        """A scaled keep mask of `shape` (one draw per entry) to multiply branches with; None when nothing drops."""
        if self.p == 0.0 or not self.training:
            return None
        keep = torch.empty(shape, device=like.device, dtype=like.dtype)
        return keep.bernoulli_(1.0 - self.p) / (1.0 - self.p)

    def forward(self, x: Tensor) -> Tensor:
        keep = self.keep((x.shape[0],) + (1,) * (x.dim() - 1), x)
        return x if keep is None else x * keep


class Attention(nn.Module):
    """Multi-head attention with biases on queries and values only (none on keys, whose bias would cancel
    in the softmax). forward(x) is self-attention; forward(x, context) attends from x to context."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        *lead, n, d = x.shape
        m = context.shape[-2]
        kv_bias = torch.cat([torch.zeros_like(self.v_bias), self.v_bias])
        q = F.linear(x, self.q.weight, self.q_bias).reshape(-1, n, self.heads, d // self.heads).transpose(1, 2)
        kv = F.linear(context, self.kv.weight, kv_bias).reshape(-1, m, 2, self.heads, d // self.heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(*lead, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LGIBlock(nn.Module):
    """One LGI-Former block on representative tokens rep (B, R, D) and local tokens loc (B, R, L, D).
    Stochastic depth draws as the reference: steps 1 and 4 once per (clip, region), shared by the region's
    representative and local tokens; steps 2 and 3 once per clip."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.local_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.local_attn = Attention(dim, heads)
        self.global_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.global_attn = Attention(dim, heads)
        self.cross_norm_q = nn.LayerNorm(dim, eps=LN_EPS)
        self.cross_norm_kv = nn.LayerNorm(dim, eps=LN_EPS)
        self.cross_attn = Attention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, rep: Tensor, loc: Tensor, need_local: bool = True) -> tuple[Tensor, Tensor]:
        """need_local=False skips steps 3 and 4 for the local tokens (returned as they are after step 1):
        the last block of a classifier, whose local tokens nothing reads."""
        b, r, l, d = loc.shape
        # 1. local: self-attention inside each region over [representative, region tokens].
        x = torch.cat([rep[:, :, None], loc], dim=2).reshape(b * r, l + 1, d)
        x = (x + self.drop_path(self.local_attn(self.local_norm(x)))).reshape(b, r, l + 1, d)
        rep, loc = x[:, :, 0], x[:, :, 1:]
        # 2. global: self-attention among the representative tokens.
        rep = rep + self.drop_path(self.global_attn(self.global_norm(rep)))
        if not need_local:
            update = self.mlp(self.mlp_norm(rep))
            keep = self.drop_path.keep((b, r, 1), rep)  # the per-(clip, region) draw of step 4
            return rep + (update if keep is None else update * keep), loc
        # 3. local-global: every local token queries the representative tokens.
        flat = loc.reshape(b, r * l, d)
        flat = flat + self.drop_path(self.cross_attn(self.cross_norm_q(flat), self.cross_norm_kv(rep)))
        # 4. MLP on every token; one stochastic-depth draw per (clip, region) for its representative and local
        # tokens together.
        keep = self.drop_path.keep((b, r, 1), rep)
        rep_update = self.mlp(self.mlp_norm(rep))
        loc_update = self.mlp(self.mlp_norm(flat)).reshape(b, r, l, d)
        if keep is not None:
            rep_update, loc_update = rep_update * keep, loc_update * keep[:, :, None]
        return rep + rep_update, flat.reshape(b, r, l, d) + loc_update


def init_linear_xavier(module: nn.Module) -> None:
    """Xavier-uniform Linear weights, zero biases, unit LayerNorms (the MAE pretraining initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------------- encoder
class LGIFormerEncoder(nn.Module):
    """Clip (B, C, T, H, W), ImageNet-normalised -> representative and local tokens.

    `norm` is the encoder's one final LayerNorm: pretraining (sslfer_core.mae) applies it to the local
    tokens it sends to the decoder, `pooled` applies it to the mean of the representative tokens."""

    def __init__(self, cfg: LGIFormerConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = nn.Conv3d(cfg.in_chans, cfg.dim, kernel_size=(cfg.tubelet, cfg.patch, cfg.patch),
                                     stride=(cfg.tubelet, cfg.patch, cfg.patch))
        self.register_buffer("pos_embed", sincos_table(cfg.num_tokens, cfg.dim), persistent=False)
        self.rep_tokens = nn.Parameter(torch.empty(cfg.num_regions, cfg.dim))
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear decay rule
        self.blocks = nn.ModuleList(LGIBlock(cfg.dim, cfg.heads, cfg.mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        init_linear_xavier(self.blocks)
        nn.init.trunc_normal_(self.rep_tokens, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters that are 2-D or more but are embeddings, not weights (kept out of weight decay)."""
        return [self.rep_tokens]

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, T, H, W) -> (B, N, dim) tokens in raster order, positions added."""
        cfg = self.cfg
        expected = (cfg.in_chans, cfg.frames, cfg.img_size, cfg.img_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"clip must be (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        # No cast of the table: under autocast the sum promotes to fp32, so the residual stream stays fp32.
        return tokens + self.pos_embed

    def forward_features(self, x: Tensor, visible: Tensor | None = None,
                         need_local: bool = True) -> tuple[Tensor, Tensor]:
        """-> (rep (B, R, dim), local (B, N_vis, dim)), before the final norm. The local tokens come back in
        raster order of the visible tokens, i.e. the order tokens[visible] has (all N without visible).
        need_local=False skips the last block's work on local tokens (see LGIBlock.forward); the local tokens
        returned are then not the encoder's output."""
        cfg = self.cfg
        tokens = self.embed(x)
        b = tokens.shape[0]
        per_region = None
        if visible is not None:
            if visible.shape != (b, cfg.num_tokens):
                raise ValueError(f"visible must be ({b}, {cfg.num_tokens}), got {tuple(visible.shape)}")
            per_region = check_visible_regions(visible, cfg)  # the one host sync of a masked forward
        loc, order = partition_regions(tokens, cfg, visible, per_region)
        rep = self.rep_tokens.expand(b, -1, -1)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            rep, loc = block(rep, loc, need_local=need_local or i < last)
        return rep, merge_regions(loc, order)

    def forward(self, x: Tensor, visible: Tensor | None = None) -> Tensor:
        """-> (B, R + N_vis, dim): representative tokens first, then local tokens (see forward_features)."""
        rep, loc = self.forward_features(x, visible)
        return torch.cat([rep, loc], dim=1)

    def pooled(self, x: Tensor) -> Tensor:
        """(B, dim): mean of the representative tokens -> final LayerNorm (the clip feature for heads)."""
        rep, _ = self.forward_features(x, need_local=False)
        return self.norm(rep.mean(dim=1))


class LGIFormerClassifier(nn.Module):
    """Encoder -> pooled (mean of representative tokens, LayerNorm) -> Linear. The last block's
    cross-attention and its two norms get no gradient here (only the representative tokens are read): DDP
    needs find_unused_parameters=True, or those parameters frozen."""

    def __init__(self, cfg: LGIFormerConfig, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg
        self.encoder = LGIFormerEncoder(cfg)
        self.head = nn.Linear(cfg.dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder.pooled(x))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "LGIFormerConfig", "PRESETS", "preset", "with_overrides", "sincos_table", "region_of_token", "region_order",
    "check_visible_regions", "partition_regions", "merge_regions", "Attention", "Mlp", "LGIBlock", "DropPath",
    "LGIFormerEncoder", "LGIFormerClassifier", "count_parameters", "init_linear_xavier", "LN_EPS", "INIT_STD",
]
