"""Fine-tuning for dynamic FER (the reference recipe where it applies to the encoder at hand).

Training clips: `frames` frames from a random temporal window; RandAugment (torchvision, n 4, m 7), random-resized
crop (scale 0.08-1, ratio 3/4-4/3) and horizontal flip, random erasing (p 0.25, per-pixel noise on the
normalised clip): each drawn once per clip and applied to all its frames alike (the noise differs per pixel); then batch mixup 0.8 / cutmix 1.0 with label smoothing 0.1. With `--ca` the motion
input is taken from the augmented clip before mixing and mixed alike (sslfer_core.ca_branch.mix_with_motion).
AdamW (betas 0.9, 0.999, weight decay 0.05 except biases, norms and tokens), linear warm-up then cosine to
min_lr, bf16 autocast on CUDA. Layer decay 0.75 and drop path 0.1 apply to the video encoder (an encoder with
`blocks`); a ResNet frame backbone has neither.
Each epoch is scored on validation (UAR over start and end clips, softmax averaged per video); the best epoch's
weights predict the test split once.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from sslfer_core import metrics
from sslfer_core.ca_branch import FUSIONS, CAConfig, MixConfig, MotionFusionClassifier, mix_batch, mix_with_motion
from sslfer_core.progress import Progress
from train.evaluation.splits import SplitPlan
from train.evaluation.video_backbones import VideoBackbone, clip_loader, normalise_clips
from train.evaluation.video_clips import ClipSampling, VideoClips


ERASE_AREA = (0.02, 1 / 3)
ERASE_ASPECT = 0.3
ERASE_ATTEMPTS = 10


@dataclass
class DferFinetuneConfig:
    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-3  # base rate for a batch of 256, scaled linearly as the reference
    min_learning_rate: float = 1e-6
    warmup_epochs: int = 5
    weight_decay: float = 0.05
    mixup: float = MixConfig.mixup_alpha  # the reference's batch mixing
    cutmix: float = MixConfig.cutmix_alpha
    label_smoothing: float = MixConfig.label_smoothing
    randaugment_ops: int = 4
    randaugment_magnitude: int = 7
    erase_prob: float = 0.25
    crop_scale: tuple[float, float] = (0.08, 1.0)
    layer_decay: float = 0.75  # for encoders with `blocks` (the video encoder); 1 = off
    drop_path: float = 0.1  # for encoders that can be rebuilt with stochastic depth (the video encoder)
    augment: bool = True
    ca: str | None = None  # None, "add", "cat" or "add-pos"
    motion: str = "mean-minus-first"
    workers: int = 0
    eval_batch_size: int = 8
    # The reference's start for a video encoder: a fresh final LayerNorm (its fc_norm; the pretrained one is
    # discarded) and a head drawn truncated-normal(0.02) x 0.001 with a zero bias. False keeps the encoder's
    # norm and PyTorch's default Linear initialisation.
    reference_start: bool = True


HEAD_INIT_STD = 0.02  # the reference's fine-tuning head: truncated normal (timm's bounds, +-2 absolute) ...
HEAD_INIT_SCALE = 0.001  # ... times its --init_scale


class PlainClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.pooled(clip))


def build_classifier(backbone: VideoBackbone, num_classes: int, config: DferFinetuneConfig, image_size: int,
                     frames: int) -> nn.Module:
    if backbone.with_drop_path is not None and config.drop_path > 0:
        encoder = backbone.with_drop_path(config.drop_path)
    else:
        encoder = copy.deepcopy(backbone.encoder)
    if config.ca is None:
        net = PlainClassifier(encoder, backbone.feature_dim, num_classes)
    elif config.ca not in FUSIONS:
        raise ValueError(f"unknown --ca {config.ca!r}; use one of {', '.join(FUSIONS)}")
    else:
        ca_config = CAConfig(img_size=image_size, frames=frames, motion=config.motion, out_dim=backbone.feature_dim)
        net = MotionFusionClassifier(encoder, backbone.feature_dim, num_classes, config.ca, ca_config)
    if config.reference_start and backbone.kind == "video-encoder":
        reference_start(net)
    return net


@torch.no_grad()
def reference_start(net: nn.Module) -> None:
    """The reference's fine-tuning start (DferFinetuneConfig.reference_start) on a classifier with `encoder.norm`
    and `head`."""
    nn.init.ones_(net.encoder.norm.weight)
    nn.init.zeros_(net.encoder.norm.bias)
    nn.init.trunc_normal_(net.head.weight, std=HEAD_INIT_STD, a=-2.0, b=2.0)
    net.head.weight.mul_(HEAD_INIT_SCALE)
    nn.init.zeros_(net.head.bias)


class ClipAugment:
    """uint8 clip (T, H, W, 3) -> uint8 (T, 3, S, S); every random choice is made once per clip.
    `erase` works on the normalised float clip (B, 3, T, S, S): one box per clip, per-pixel normal noise."""

    def __init__(self, size: int, config: DferFinetuneConfig) -> None:
        self.transform = v2.Compose([
            v2.RandAugment(num_ops=config.randaugment_ops, magnitude=config.randaugment_magnitude),
            v2.RandomResizedCrop(size, scale=config.crop_scale, ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandomHorizontalFlip(),
        ])
        self.erase_prob = config.erase_prob

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return self.transform(clip.permute(0, 3, 1, 2))  # a (T, 3, H, W) tensor shares one draw over T

    def erase(self, x: torch.Tensor) -> torch.Tensor:
        """With probability erase_prob per clip, one box (area 2-33 %, aspect 0.3-3.3, timm's ranges) shared by all
        frames, filled with fresh N(0, 1) noise for every pixel of every frame (the reference's 'pixel' mode)."""
        side_h, side_w = x.shape[-2:]
        out = x.clone()
        for clip in out:
            if torch.rand(()) >= self.erase_prob:
                continue
            for _ in range(ERASE_ATTEMPTS):
                area = side_h * side_w * float(torch.empty(()).uniform_(*ERASE_AREA))
                aspect = math.exp(float(torch.empty(()).uniform_(math.log(ERASE_ASPECT), -math.log(ERASE_ASPECT))))
                h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
                if 0 < h < side_h and 0 < w < side_w:
                    top = int(torch.randint(0, side_h - h + 1, ()))
                    left = int(torch.randint(0, side_w - w + 1, ()))
                    clip[..., top:top + h, left:left + w] = torch.randn_like(clip[..., top:top + h, left:left + w])
                    break
        return out


def parameter_groups(net: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups: learning-rate scale layer_decay ** (depth + 1 - layer), layer 0 = the encoder's
    `patch_embed`, block i = layer i + 1, everything else (the representative tokens, final norm, CA branch,
    head) = depth + 1, as the reference's layer ids (its region tokens fall in the top layer); no weight decay
    for biases, norms, other 1-D parameters and the encoder's `no_decay_parameters()` (tokens). An encoder
    without `blocks` (a ResNet) is one layer: every scale is 1."""
    encoder = net.encoder
    blocks = list(getattr(encoder, "blocks", []))
    depth = len(blocks)
    block_of = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
    no_decay = {id(p) for p in getattr(encoder, "no_decay_parameters", lambda: [])()}
    embedding = getattr(encoder, "patch_embed", None)
    first = {id(p) for p in embedding.parameters()} if isinstance(embedding, nn.Module) and depth else set()
    layer_of = {id(p): block_of.get(id(p), 0 if id(p) in first else depth + 1) for p in encoder.parameters()}
    groups: dict[tuple[int, bool], dict] = {}
    for p in net.parameters():
        if not p.requires_grad:
            continue
        layer = layer_of.get(id(p), depth + 1)
        decay = p.ndim > 1 and id(p) not in no_decay
        group = groups.setdefault((layer, decay), {"params": [], "weight_decay": weight_decay if decay else 0.0,
                                                   "lr_scale": layer_decay ** (depth + 1 - layer)})
        group["params"].append(p)
    return [groups[key] for key in sorted(groups)]


def learning_rate_at(step: int, total: int, warmup: int, base: float, minimum: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return minimum + 0.5 * (base - minimum) * (1 + math.cos(math.pi * progress))


class DferFinetuner:
    def __init__(self, backbone: VideoBackbone, records, labels: np.ndarray, class_names: list[str],
                 sampling: ClipSampling, image_size: int, config: DferFinetuneConfig, device: torch.device,
                 bf16: bool = False, align=None) -> None:
        self.backbone, self.records, self.labels = backbone, records, labels
        self.class_names, self.sampling, self.size = class_names, sampling, image_size
        self.config, self.device, self.bf16, self.align = config, device, bf16, align
        self.unreadable: set[int] = set()
        self.train_seconds = 0.0
        self.train_clips = 0

    def _clips(self, indices: np.ndarray, train: bool, seed: int) -> VideoClips:
        return VideoClips([self.records[i] for i in indices], self.labels[indices], self.size, self.sampling,
                          train=train, seed=seed, align=self.align)

    def _forward(self, net: nn.Module, clip: torch.Tensor, motion=None, first=None) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if isinstance(net, MotionFusionClassifier):
                return net(clip, motion, first).float()
            return net(clip).float()

    @torch.no_grad()
    def predict(self, net: nn.Module, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(kept dataset indices, predicted class): softmax averaged over each video's evaluation clips."""
        net.eval()
        kept, predicted = [], []
        for batch, ok, _, positions in clip_loader(self._clips(indices, False, 0), self.config.eval_batch_size,
                                                   self.config.workers, shuffle=False):
            n, k = batch.shape[:2]
            x = normalise_clips(batch.flatten(0, 1).to(self.device))
            probabilities = self._forward(net, x).softmax(dim=1).view(n, k, -1).mean(dim=1).cpu()
            rows = indices[positions.numpy()]
            self.unreadable.update(int(i) for i in rows[~ok.numpy()])
            kept.append(rows[ok.numpy()])
            predicted.append(probabilities[ok].argmax(dim=1).numpy())
        return (np.concatenate(kept) if kept else indices[:0]), (np.concatenate(predicted) if predicted else indices[:0])

    def fit(self, plan: SplitPlan) -> dict:
        import time

        config, device = self.config, self.device
        train, val, test = (plan.indices[s] for s in ("train", "val", "test"))
        torch.manual_seed(plan.seed)
        rng = np.random.default_rng(plan.seed)
        net = build_classifier(self.backbone, len(self.class_names), config, self.size, self.sampling.frames).to(device)
        learning_rate = config.learning_rate * config.batch_size / 256
        optimiser = torch.optim.AdamW(parameter_groups(net, config.weight_decay, config.layer_decay),
                                      lr=learning_rate, betas=(0.9, 0.999))
        clips = self._clips(train, True, plan.seed)
        loader = clip_loader(clips, config.batch_size, config.workers, shuffle=True, seed=plan.seed)
        steps_per_epoch = max(1, len(loader))
        total, warmup = config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch
        augment = ClipAugment(self.size, config) if config.augment else None
        mixing = MixConfig(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.label_smoothing)
        best = {"score": -math.inf, "epoch": 0, "state": None}
        history, step = [], 0
        for epoch in range(1, config.epochs + 1):
            net.train()
            clips.set_epoch(epoch)
            losses = []
            progress = Progress(f"{plan.name} epoch {epoch}/{config.epochs}", len(train))
            started = time.perf_counter()
            for batch, ok, labels, positions in loader:
                self.unreadable.update(int(i) for i in train[positions.numpy()][~ok.numpy()])
                batch, labels = batch[ok][:, 0], labels[ok]
                if len(batch) < 2:  # mixing pairs a clip with another; a lone clip is skipped
                    continue
                if augment is not None:
                    frames = torch.stack([augment(clip) for clip in batch])  # (B, T, 3, S, S)
                    batch = frames.permute(0, 1, 3, 4, 2)
                x = normalise_clips(batch.to(device))
                if augment is not None:
                    x = augment.erase(x)
                labels = labels.to(device)
                if isinstance(net, MotionFusionClassifier):
                    x, motion, first, targets, _ = mix_with_motion(x, labels, len(self.class_names), rng, mixing,
                                                                   config.motion, first_frame=config.ca == "add-pos")
                    logits = self._forward(net, x, motion, first)
                else:
                    (x,), targets, _ = mix_batch([x], labels, len(self.class_names), rng, mixing)
                    logits = self._forward(net, x)
                loss = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
                rate = learning_rate_at(step, total, warmup, learning_rate, config.min_learning_rate)
                for group in optimiser.param_groups:
                    group["lr"] = rate * group["lr_scale"]
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
                step += 1
                self.train_clips += len(batch)
                progress.advance(len(batch))
            self.train_seconds += time.perf_counter() - started
            progress.close()
            kept, predicted = self.predict(net, val)
            score = (metrics.dfer_report(self.labels[kept], predicted, self.class_names)["uar"]
                     if len(kept) else -math.inf)
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None, "val_uar": score})
            if score > best["score"] or best["state"] is None:
                best = {"score": score, "epoch": epoch,
                        "state": {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}}
        net.load_state_dict(best["state"])
        val_kept, val_predicted = self.predict(net, val)
        test_kept, test_predicted = self.predict(net, test)  # the only look at the test split
        return {"selected": {"epoch": best["epoch"], "val_uar": best["score"]}, "history": history,
                "val": (val_kept, val_predicted), "test": (test_kept, test_predicted),
                "parameters": sum(p.numel() for p in net.parameters())}
