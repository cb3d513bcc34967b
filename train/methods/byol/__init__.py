"""BYOL (Grill et al., NeurIPS 2020), the baseline of the contrastive paper's table: an online ResNet +
projector + predictor regresses the projection of a target ResNet + projector on the other view; the
target is an exponential moving average of the online weights, never trained by gradient.

Views, data and the TimeAug / FaceSwap / CutMix positives are the contrastive method's (its ShardStream
and view augmentation); HardNeg and MaskFN act on negatives, which BYOL has none of, and are refused.
Each view passes through both networks as a batch of its own, in training mode (batch statistics), as in
the reference implementations; the target's BatchNorm running statistics are its own and never used.
docs/method.md ("BYOL and MoCo-v2") has the formulas.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import click
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslfer_core.models import ProjectionHead, build_backbone
from train.methods import config_option, register
from train.methods.byol.loss import byol_loss
from train.methods.contrastive import (Contrastive, ContrastiveConfig, options_without_negatives,
                                         refuse_negative_strategies)
from train.methods.momentum import cosine_momentum, ema_update, frozen_copy

UNUSED_OPTIONS = ("temperature", "maskfn_mode", "maskfn_k", "maskfn_lambda")


@dataclass
class BYOLConfig(ContrastiveConfig):
    proj_dim: int = 256
    proj_hidden: int = 4096
    pred_hidden: int = 4096
    tau_base: float = 0.996  # the target's EMA momentum at the first step; it rises to 1 on a cosine

    method: ClassVar[str] = "byol"

    def __post_init__(self):
        super().__post_init__()
        refuse_negative_strategies(self, "--{flag} acts on negatives and BYOL has none (each view regresses the "
                                         "other view's target); drop --{flag} or use `sslfer-train contrastive` or "
                                         "`moco`")
        if not 0 <= self.tau_base < 1:
            raise ValueError(f"--tau-base must be in [0, 1), got {self.tau_base}")

    @property
    def ablation(self) -> str:
        return "+".join(["BYOL", *self.strategies])


class BYOLModel(nn.Module):
    """Online backbone -> projector -> predictor and its target twin (backbone -> projector). forward() takes
    both views, (2B, 3, H, W) view-major, and returns online predictions and target projections, (2B, D)."""

    def __init__(self, arch: str, proj_hidden: int, proj_dim: int, pred_hidden: int):
        super().__init__()
        self.backbone = build_backbone(arch)
        self.projector = ProjectionHead(self.backbone.feature_dim, proj_hidden, proj_dim)
        self.predictor = ProjectionHead(proj_dim, pred_hidden, proj_dim)
        self.target_backbone = frozen_copy(self.backbone)
        self.target_projector = frozen_copy(self.projector)

    def forward(self, views: Tensor) -> tuple[Tensor, Tensor]:
        predictions, targets = [], []
        for x in views.chunk(2):  # one BatchNorm batch per view
            predictions.append(self.predictor(self.projector(self.backbone(x))))
            with torch.no_grad():
                targets.append(self.target_projector(self.target_backbone(x)))
        return torch.cat(predictions), torch.cat(targets)

    def update_target(self, momentum: float) -> None:
        ema_update(self.target_backbone, self.backbone, momentum)
        ema_update(self.target_projector, self.projector, momentum)


@register
class BYOL(Contrastive):
    name = "byol"
    config_class = BYOLConfig
    help = "BYOL baseline (online network regresses an EMA target; TimeAug, FaceSwap, CutMix positives)."

    @classmethod
    def cli_options(cls) -> list[click.Option]:
        options = options_without_negatives(super().cli_options(), UNUSED_OPTIONS,
                                            "Refused: acts on negatives, which BYOL has none of.")
        return options + [
            config_option(BYOLConfig, "tau_base", type=click.FloatRange(0, 1, max_open=True),
                          help="Target EMA momentum at the first step; it rises to 1 at the last on a half cosine."),
        ]

    def __init__(self, cfg: BYOLConfig, ctx):
        super().__init__(cfg, ctx)
        self.momentum = cfg.tau_base  # of the newest target update, for the log

    @classmethod
    def build_network(cls, setting: Callable[[str], Any]) -> nn.Module:
        return BYOLModel(setting("arch"), int(setting("proj_hidden")), int(setting("proj_dim")),
                         int(setting("pred_hidden")))

    def step(self, net: nn.Module, batch: dict[str, Tensor], generator: torch.Generator):
        x = self.objective.views(batch, generator)
        with torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            predictions, targets = net(x)
        return byol_loss(predictions, targets), {"predictions": predictions.detach(), "targets": targets}

    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.momentum = cosine_momentum(self.cfg.tau_base, step - 1, total_steps)
        model.update_target(self.momentum)

    @property
    def batch_description(self) -> str:
        return f"{self.cfg.batch_size} samples x 2 views per step"

    def log_record(self, outputs: dict[str, Tensor], counters: dict[str, int]) -> dict:
        p = F.normalize(outputs["predictions"].float(), dim=1)
        first, second = F.normalize(outputs["targets"].float(), dim=1).chunk(2)
        return {"pos_cos": float((p * torch.cat([second, first])).sum(dim=1).mean()), "tau": self.momentum,
                "fallbacks": dict(counters)}
