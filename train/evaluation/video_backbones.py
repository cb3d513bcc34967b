"""Clip encoders for dynamic FER: a ResNet frame-feature backbone (features averaged over the clip's frames)
and the LGI-Former video encoder (`mae:PRESET` random, or the `sslfer-train export` of a video MAE run). Both
expose `pooled(clip) -> (B, D)` on a normalised clip (B, 3, T, H, W), which is what the linear probe, the
fine-tuning head and the CA fusion use; the video encoder's is the mean of its representative tokens -> LayerNorm."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from sslfer_core.file_hash import file_sha256
from sslfer_core.finite import non_finite_names
from sslfer_core.gpu_augment import IMAGENET_MEAN, IMAGENET_STD
from sslfer_core.progress import Progress
from train.evaluation.backbones import (LoadedBackbone, export_of_run, load_backbone, resnet_from_export,
                                       state_dict_sha256)
from train.evaluation.video_clips import VideoClips
from train.weights_file import WeightsFileError, read_payload

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


def _one_line(text: str, limit: int = 200) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]


def _lgi_former():
    try:
        from sslfer_core import lgi_former
    except ImportError as error:
        raise click.ClickException(f"the video encoder (sslfer_core.lgi_former) is not available ({error})")
    return lgi_former


def read_weights_file(path: Path):
    """A weights file's payload, from safetensors or a torch file read with weights_only=True (tensors and
    plain containers only, never arbitrary pickled objects); train/weights_file.py."""
    try:
        return read_payload(path)
    except WeightsFileError as error:
        raise click.ClickException(f"--backbone {error}") from None


def check_finite(state: dict, where: str) -> None:
    """Refuse weights with NaN or infinite values: every score computed from them would be meaningless."""
    bad = non_finite_names(state.items())
    if bad:
        key, count = bad[0], int((~torch.isfinite(state[bad[0]])).sum())
        more = f" and {len(bad) - 1} more tensors" if len(bad) > 1 else ""
        raise click.ClickException(f"--backbone {where}: {count} non-finite values in {key!r}{more}; refusing to "
                                   "evaluate these weights")


def _video_backbone(encoder: nn.Module, config, name: str, sha256: str, source: str, arch: str) -> VideoBackbone:
    lgi_former = _lgi_former()

    def with_drop_path(rate: float) -> nn.Module:
        copy = lgi_former.LGIFormerEncoder(lgi_former.with_overrides(config, drop_path=rate))
        copy.load_state_dict(encoder.state_dict())
        return copy

    encoder.eval()
    return VideoBackbone(name, "video-encoder", encoder, config.dim, sha256, source, arch, config.frames,
                         config.img_size, with_drop_path)


def load_video_encoder(spec: str, frames: int | None = None) -> VideoBackbone:
    """`mae:PRESET`: a randomly initialised LGI-Former encoder of that preset (seed VIDEO_ENCODER_SEED), built for
    `frames` frames when given (as `sslfer-train mae --frames` builds it; the representative tokens depend on it)."""
    lgi_former = _lgi_former()
    try:
        config = lgi_former.preset(spec)
    except ValueError as error:
        raise click.ClickException(f"--backbone {VIDEO_ENCODER_PREFIX}{spec}: {error}")
    if frames is not None and frames != config.frames:
        try:
            config = lgi_former.with_overrides(config, frames=frames)
        except ValueError as error:
            raise click.ClickException(f"--frames {frames} does not fit the LGI-Former {spec} preset: {error}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(VIDEO_ENCODER_SEED)
        encoder = lgi_former.LGIFormerEncoder(config)
    return _video_backbone(encoder, config, f"random-lgi-{spec}", state_dict_sha256(encoder.state_dict()),
                           f"{VIDEO_ENCODER_PREFIX}{spec}", f"lgi-former-{spec}")


def is_encoder_export(payload) -> bool:
    from sslfer_core.lgi_export import EXPORT_FORMAT

    return isinstance(payload, dict) and payload.get("format") == EXPORT_FORMAT


def encoder_from_export(payload: dict, where: str) -> tuple[nn.Module, object, str]:
    """(encoder, its LGIFormerConfig, preset name) from an `sslfer-train export` payload of a video MAE run; one-line
    errors for a foreign or inconsistent payload and for non-finite weights."""
    lgi_former = _lgi_former()
    from sslfer_core.lgi_export import EncoderExportError, config_from_plain, load_encoder

    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise click.ClickException(f"--backbone {where}: its state_dict is not a plain dict of tensors")
    check_finite(state, where)
    try:
        encoder, meta = load_encoder(payload)
        config = config_from_plain(meta["model_config"])
    except (EncoderExportError, KeyError, TypeError, ValueError) as error:
        raise click.ClickException(f"--backbone {where}: {_one_line(error)}")
    name = str(meta.get("preset"))
    if name in lgi_former.PRESETS:  # the recorded preset and config must agree, apart from what a run may change
        expected = lgi_former.with_overrides(lgi_former.preset(name), frames=config.frames, drop_path=config.drop_path)
        if expected != config:
            differs = [f for f in ("img_size", "patch", "tubelet", "dim", "depth", "heads", "region", "mlp_ratio")
                       if getattr(expected, f) != getattr(config, f)]
            raise click.ClickException(f"--backbone {where}: the export says preset {name!r} but its config differs "
                                       f"in {', '.join(differs) or 'decoder fields'}")
    recorded = (meta.get("input_size"), meta.get("frames"))
    if recorded != (config.img_size, config.frames):
        raise click.ClickException(f"--backbone {where}: input size / frames {recorded} do not match its config "
                                   f"({config.img_size}, {config.frames})")
    norm = meta.get("normalisation") or {}
    if [float(v) for v in norm.get("mean", IMAGENET_MEAN)] != [float(v) for v in IMAGENET_MEAN] or \
            [float(v) for v in norm.get("std", IMAGENET_STD)] != [float(v) for v in IMAGENET_STD]:
        raise click.ClickException(f"--backbone {where}: trained on inputs normalised with {norm}; this evaluation "
                                   "normalises with the ImageNet statistics")
    return encoder, config, name


def load_exported_video_encoder(path: Path, payload: dict) -> VideoBackbone:
    encoder, config, name = encoder_from_export(payload, str(path))
    return _video_backbone(encoder, config, path.stem, file_sha256(path), str(path), f"lgi-former-{name}")


def load_video_run(run_dir: Path) -> VideoBackbone:
    """The newest checkpoint of a run folder, exported in memory by the run's own method: an LGI-Former
    encoder export becomes the video encoder, a ResNet backbone the frame-feature encoder."""
    path, state, exported = export_of_run(run_dir)
    if is_encoder_export(exported.payload):
        encoder, config, name = encoder_from_export(exported.payload, str(path))
        step = int(state.get("step", -1))
        return _video_backbone(encoder, config, f"{run_dir.name}@step{step}", file_sha256(path), str(path),
                               f"lgi-former-{name}")
    loaded = resnet_from_export(run_dir, path, state, exported)
    loaded.model.eval()
    return _frame_backbone(loaded)


def _frame_backbone(loaded: LoadedBackbone) -> VideoBackbone:
    encoder = FramePooledEncoder(loaded.model, loaded.feature_dim)
    return VideoBackbone(loaded.name, "resnet-frames", encoder, loaded.feature_dim, loaded.sha256, loaded.source,
                         loaded.arch)


def load_video_backbone(spec: str, arch: str, frames: int | None = None) -> VideoBackbone:
    """`mae:PRESET` (random LGI-Former), an `sslfer-train export` file of a video MAE run, any run folder (through
    its method's export), or any ResNet spec of `load_backbone` (an exported backbone, random[:N], imagenet)."""
    if spec.startswith(VIDEO_ENCODER_PREFIX):
        return load_video_encoder(spec[len(VIDEO_ENCODER_PREFIX):], frames)
    path = Path(spec)
    if path.is_file():
        reference = read_reference_file(path)
        if reference is not None and reference.kind != "ssl-fer":
            return load_reference_video_encoder(reference)
        payload = {} if reference is not None else read_weights_file(path)  # an SSL-FER file: load_backbone reads it
        if is_encoder_export(payload):
            return load_exported_video_encoder(path, payload)
        if isinstance(payload, dict) and "format" in payload and not torch.is_tensor(payload["format"]):
            raise click.ClickException(f"--backbone {path}: an export of format {payload['format']!r}, not a "
                                       "ResNet state_dict or an LGI-Former encoder export")
        if isinstance(payload, dict):
            check_finite(payload, str(path))
    elif path.is_dir():
        return load_video_run(path)
    return _frame_backbone(load_backbone(spec, arch))  # refuses non-finite weights itself


def read_reference_file(path: Path):
    """A published MAE-DFER(-CA) / SSL-FER checkpoint (train/reference_weights.py), or None for any other file."""
    from train.reference_weights import ReferenceWeightsError, read_reference

    try:
        return read_reference(path)
    except (ReferenceWeightsError, WeightsFileError) as error:
        raise click.ClickException(f"--backbone {error}") from None


def load_reference_video_encoder(reference) -> VideoBackbone:
    """The LGI-Former encoder of a published MAE-DFER(-CA) checkpoint; one line says what was found and mapped."""
    from train.reference_weights import VIDEO_KINDS, ReferenceWeightsError, build_encoder

    if reference.kind not in VIDEO_KINDS:
        raise click.ClickException(f"--backbone {reference.path}: an {reference.kind} checkpoint, not a video encoder")
    try:
        encoder, config, line = build_encoder(reference)
    except ReferenceWeightsError as error:
        raise click.ClickException(f"--backbone {error}") from None
    check_finite(encoder.state_dict(), str(reference.path))
    click.echo(f"{reference.found_line()}; {line}", err=True)
    return _video_backbone(encoder, config, reference.path.stem, file_sha256(reference.path), str(reference.path),
                           f"lgi-former-{reference.kind}")


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
