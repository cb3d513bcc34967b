"""Clip encoders for dynamic FER: a ResNet frame-feature backbone (features averaged over the clip's frames)
and the seam for the video encoder (LGI-Former, `mae:` specs). Both expose `pooled(clip) -> (B, D)` on a
normalised clip (B, 3, T, H, W), which is what the linear probe, the fine-tuning head and the CA fusion use."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import click
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sslfer_core.gpu_augment import IMAGENET_MEAN, IMAGENET_STD
from train.evaluation.backbones import load_backbone, state_dict_sha256
from sslfer_core.progress import Progress
from train.evaluation.video_clips import VideoClips

VIDEO_ENCODER_PREFIX = "mae:"
VIDEO_ENCODER_SEED = 0  # `mae:PRESET` is the same random network every time


class FramePooledEncoder(nn.Module):
    """A 2-D backbone (B, 3, H, W) -> (B, D) applied to every frame; the clip feature is the mean over frames."""

    def __init__(self, frame_model: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.frame_model = frame_model
        self.feature_dim = feature_dim

    def pooled(self, clip: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = clip.shape
        frames = clip.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        return self.frame_model(frames).view(b, t, -1).mean(dim=1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.pooled(clip)


@dataclass
class VideoBackbone:
    name: str
    kind: str  # "resnet-frames" or "video-encoder"
    encoder: nn.Module  # has pooled(clip)
    feature_dim: int
    sha256: str
    source: str
    arch: str
    frames: int | None = None  # the clip length and side a video encoder is built for (None: any)
    image_size: int | None = None
    with_drop_path: Callable[[float], nn.Module] | None = None  # a copy of the encoder with that stochastic depth

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "arch": self.arch, "sha256": self.sha256, "source": self.source,
                "feature_dim": self.feature_dim, "frames": self.frames, "image_size": self.image_size}

    def check_input(self, frames: int, image_size: int) -> None:
        if self.frames is not None and (frames, image_size) != (self.frames, self.image_size):
            raise click.ClickException(f"--backbone {self.source} takes {self.frames} frames of {self.image_size} px; "
                                       f"pass --frames {self.frames} --image-size {self.image_size}")


def load_video_encoder(spec: str) -> VideoBackbone:
    """`mae:PRESET`: a randomly initialised LGI-Former encoder of that preset (seed VIDEO_ENCODER_SEED).

    This is the seam for MAE-pretrained encoders: load their exported weights into the same module here.
    """
    try:
        from sslfer_core import lgi_former
    except ImportError as error:
        raise click.ClickException(f"--backbone {VIDEO_ENCODER_PREFIX}{spec}: the video encoder is not available "
                                   f"({error})")
    try:
        config = lgi_former.preset(spec)
    except ValueError as error:
        raise click.ClickException(f"--backbone {VIDEO_ENCODER_PREFIX}{spec}: {error} (pretrained encoders are not "
                                   "wired into `sslfer-eval dfer` yet)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(VIDEO_ENCODER_SEED)
        encoder = lgi_former.LGIFormerEncoder(config)

    def with_drop_path(rate: float) -> nn.Module:
        copy = lgi_former.LGIFormerEncoder(lgi_former.with_overrides(config, drop_path=rate))
        copy.load_state_dict(encoder.state_dict())
        return copy

    return VideoBackbone(f"random-lgi-{spec}", "video-encoder", encoder, config.dim,
                         state_dict_sha256(encoder.state_dict()), f"{VIDEO_ENCODER_PREFIX}{spec}", f"lgi-former-{spec}",
                         config.frames, config.img_size, with_drop_path)


def load_video_backbone(spec: str, arch: str) -> VideoBackbone:
    if spec.startswith(VIDEO_ENCODER_PREFIX):
        return load_video_encoder(spec[len(VIDEO_ENCODER_PREFIX):])
    loaded = load_backbone(spec, arch)
    encoder = FramePooledEncoder(loaded.model, loaded.feature_dim)
    return VideoBackbone(loaded.name, "resnet-frames", encoder, loaded.feature_dim, loaded.sha256, loaded.source,
                         loaded.arch)


def normalise_clips(clips_uint8: torch.Tensor) -> torch.Tensor:
    """(N, T, H, W, 3) uint8 -> (N, 3, T, H, W) float, ImageNet mean / std."""
    x = clips_uint8.permute(0, 4, 1, 2, 3).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1, 1)
    return (x - mean) / std


def _collate(batch):
    clips = torch.stack([item[0] for item in batch])
    ok = torch.tensor([item[1] for item in batch])
    labels = torch.tensor([item[2] for item in batch])
    positions = torch.tensor([item[3] for item in batch])
    return clips, ok, labels, positions


def clip_loader(dataset: VideoClips, batch_size: int, workers: int, shuffle: bool, seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, collate_fn=_collate,
                      generator=generator, persistent_workers=False)


@torch.no_grad()
def video_features(backbone: VideoBackbone, clips: VideoClips, device: torch.device, batch_size: int, workers: int,
                   bf16: bool = False, label: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """(N, D) per-video features = the mean over its evaluation clips of pooled(clip); (N,) ok flags."""
    encoder = backbone.encoder.to(device).eval()
    features = np.zeros((len(clips), backbone.feature_dim), dtype=np.float32)
    ok_all = np.zeros(len(clips), dtype=bool)
    progress = Progress(label, len(clips))
    for batch, ok, _, positions in clip_loader(clips, batch_size, workers, shuffle=False):
        n, k = batch.shape[:2]
        x = normalise_clips(batch.flatten(0, 1).to(device))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pooled = encoder.pooled(x)
        features[positions.numpy()] = pooled.float().view(n, k, -1).mean(dim=1).cpu().numpy()
        ok_all[positions.numpy()] = ok.numpy()
        progress.advance(n)
    progress.close()
    return features, ok_all
