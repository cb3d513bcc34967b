"""MoCo-v2 (Chen et al. 2020, after He et al. 2020), the other baseline of the contrastive paper's table: a
query encoder (ResNet + 2-layer MLP head) is trained to pick its key, the other view through a momentum
key encoder, out of a queue of earlier keys at temperature 0.2.

Views, data and the TimeAug / FaceSwap / CutMix positives are the contrastive method's. HardNeg and MaskFN
act on in-batch negatives and are refused: MoCo's negatives are the queue's earlier keys. Keys are
gathered over the ranks before they enter the queue. Against BatchNorm leaking which key is the positive,
each rank runs its queries in --bn-groups BatchNorm groups and its keys in as many groups of a random
order (shuffling BN within the rank, docs/method.md says why); the queue and its pointer are buffers of
the model, so checkpoints and resume carry them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import click
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from sslfer_core.models import build_backbone
from train.distributed import gather
from train.methods import config_option, register
from train.methods.contrastive import (Contrastive, ContrastiveConfig, options_without_negatives,
                                         refuse_negative_strategies)
from train.methods.moco.queue import enqueue, moco_loss
from train.methods.momentum import ema_update, frozen_copy
from train.shard_index import ShardIndex
from train.shard_set import ShardSetError

UNUSED_OPTIONS = ("maskfn_mode", "maskfn_k", "maskfn_lambda")
QUEUE_BUFFERS = ("queue", "queue_ptr")  # identical on every rank: DDP need not broadcast them


class MoCoSetupError(ValueError):
    """The batch does not split into the BatchNorm groups; one line for the user."""


@dataclass
class MoCoConfig(ContrastiveConfig):
    temperature: float = 0.2
    queue_size: int = 65536
    momentum: float = 0.999
    bn_groups: int = 4  # BatchNorm groups per rank; keys are shuffled across them

    method: ClassVar[str] = "moco"

    def __post_init__(self):
        super().__post_init__()
        refuse_negative_strategies(self, "--{flag} acts on in-batch negatives and MoCo's negatives are its "
                                         "queue of earlier keys; drop --{flag} or use `sslfer-train contrastive`")
        if self.queue_size < self.batch_size:
            raise ValueError(f"--queue-size {self.queue_size} is less than one batch of {self.batch_size} keys")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.bn_groups < 1:
            raise ValueError(f"--bn-groups must be >= 1, got {self.bn_groups}")

    @property
    def ablation(self) -> str:
        return "+".join(["MoCo-v2", *self.strategies])


class MoCoModel(nn.Module):
    """Query backbone -> head, its momentum twin for keys, and the queue (K, D) of normalised keys with its
    write pointer. forward(views, key_order) takes both views (2B, 3, H, W) view-major and returns
    normalised queries from view 1 and keys from view 2, (B, D) each, keys in sample order."""

    def __init__(self, arch: str, proj_dim: int, queue_size: int, bn_groups: int):
        super().__init__()
        self.backbone = build_backbone(arch)
        width = self.backbone.feature_dim
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim))
        self.key_backbone = frozen_copy(self.backbone)
        self.key_head = frozen_copy(self.head)
        self.bn_groups = bn_groups
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, views: Tensor, key_order: Tensor) -> tuple[Tensor, Tensor]:
        queries, keys = views.chunk(2)
        q = torch.cat([self.head(self.backbone(x)) for x in queries.chunk(self.bn_groups)])
        with torch.no_grad():
            shuffled = keys[key_order]
            k = torch.cat([self.key_head(self.key_backbone(x)) for x in shuffled.chunk(self.bn_groups)])
            k = k[torch.argsort(key_order)]  # back to sample order
        return F.normalize(q, dim=1), F.normalize(k, dim=1)

    def update_keys(self, momentum: float) -> None:
        ema_update(self.key_backbone, self.backbone, momentum)
        ema_update(self.key_head, self.head, momentum)


@register
class MoCo(Contrastive):
    name = "moco"
    config_class = MoCoConfig
    help = "MoCo-v2 baseline (momentum key encoder, queue of negative keys; TimeAug, FaceSwap, CutMix positives)."
    user_errors = (MoCoSetupError,)

    @classmethod
    def cli_options(cls) -> list[click.Option]:
        options = options_without_negatives(super().cli_options(), UNUSED_OPTIONS,
                                            "Refused: acts on in-batch negatives; MoCo's negatives are its queue.")
        return options + [
            config_option(MoCoConfig, "queue_size", type=click.IntRange(min=1),
                          help="Negative keys kept; at most the frames in the shards."),
            config_option(MoCoConfig, "momentum", type=click.FloatRange(0, 1, max_open=True),
                          help="Key encoder EMA momentum."),
            config_option(MoCoConfig, "bn_groups", type=click.IntRange(min=1),
                          help="BatchNorm groups per rank; keys pass in a shuffled order (shuffling BN)."),
        ]

    def __init__(self, cfg: MoCoConfig, ctx):
        super().__init__(cfg, ctx)
        per_rank = cfg.batch_size // ctx.world_size
        if per_rank % cfg.bn_groups or per_rank // cfg.bn_groups < 2:
            raise MoCoSetupError(f"--bn-groups {cfg.bn_groups} does not split the {per_rank} samples per rank into "
                                 "equal groups of 2 or more; change --bn-groups or --batch-size")

    def check_shards(self, index: ShardIndex, shards: Path) -> None:
        super().check_shards(index, shards)
        if self.cfg.queue_size > index.num_frames:
            raise ShardSetError(f"--queue-size {self.cfg.queue_size} is more than the {index.num_frames} frames in "
                                f"{shards}: the queue would hold several keys of one frame; give at most "
                                f"{index.num_frames}")

    @classmethod
    def build_network(cls, setting: Callable[[str], Any]) -> nn.Module:
        return MoCoModel(setting("arch"), int(setting("proj_dim")), int(setting("queue_size")),
                         int(setting("bn_groups")))

    def build_model(self) -> nn.Module:
        self.model = super().build_model()
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, list(QUEUE_BUFFERS))
        return self.model

    def step(self, net: nn.Module, batch: dict[str, Tensor], generator: torch.Generator):
        x = self.objective.views(batch, generator)
        key_order = torch.randperm(x.shape[0] // 2, generator=generator, device=x.device)
        return self.contrast(net, x, key_order)

    def contrast(self, net: nn.Module, x: Tensor, key_order: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The step after augmentation: loss of the views `x` (2B rows, view-major) with keys passed in
        `key_order`, and this step's keys of every rank enqueued."""
        with torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            q, k = net(x, key_order)
        # The loss keeps the queue for its backward pass, so the enqueue below writes the live buffer only.
        loss = moco_loss(q, k, self.model.queue.clone(), self.cfg.temperature)
        enqueue(self.model.queue, self.model.queue_ptr, gather(k.float(), self.ctx))
        return loss, {"queries": q.detach(), "keys": k}

    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        model.update_keys(self.cfg.momentum)

    @property
    def batch_description(self) -> str:
        return f"{self.cfg.batch_size} samples x 2 views per step, {self.cfg.queue_size} queued keys"

    def log_record(self, outputs: dict[str, Tensor], counters: dict[str, int]) -> dict:
        q, k = outputs["queries"].float(), outputs["keys"].float()
        return {"pos_cos": float((q * k).sum(dim=1).mean()), "neg_cos": float((q @ self.model.queue.T).mean()),
                "fallbacks": dict(counters)}
