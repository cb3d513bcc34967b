"""Estimate what a run will write (shards and peak work files) from the inputs' durations, before it starts."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from preprocess.prep_config import PrepConfig
from preprocess.sources import VideoSource
from preprocess.video_decode import probe_duration
from sslfer_core.byte_sizes import human_bytes

MAX_PROBES = 200  # durations of at most this many inputs are read; the rest is extrapolated
# JPEG bytes per pixel-channel of aligned faces by quality, measured on voxceleb_mini crops (q75 0.057,
# q90 0.091, q95 0.128); ends extrapolated. Plus ~350 bytes of headers per image.
JPEG_RATIO = ((1, 0.02), (50, 0.035), (75, 0.057), (90, 0.091), (95, 0.128), (100, 0.30))
JPEG_HEADER_BYTES = 350
HDF5_VLEN_OVERHEAD = 16
# h264 bytes per pixel-channel of aligned 160 px faces at 25 fps by CRF, streams of 32 frames (measured
# on voxceleb_mini by benchmarks/bench_video_codec.py, docs/preprocessing.md "Video profile").
H264_RATIO = ((0, 0.30), (18, 0.0079), (23, 0.0043), (28, 0.0025), (51, 0.0005))
SAFETY_FACTOR = 1.1


def image_bytes(side: int, codec_name: str, quality: int) -> float:
    pixels = side * side * 3
    if side <= 0:
        return 0.0  # an absent field (patch_size 0)
    if codec_name == "raw":
        return float(pixels)
    if codec_name == "h264":
        crfs, ratios = zip(*H264_RATIO)
        return pixels * float(np.interp(quality, crfs, ratios))
    qualities, ratios = zip(*JPEG_RATIO)
    return JPEG_HEADER_BYTES + HDF5_VLEN_OVERHEAD + pixels * float(np.interp(quality, qualities, ratios))


def shard_bytes_per_frame(config: PrepConfig) -> float:
    codec = config.image_codec()
    face = image_bytes(config.size, codec.name, codec.quality)
    patch = image_bytes(config.patch_size, codec.name, codec.quality)
    scalars = 68 * 2 * 4 + 2 * config.descriptor_dim + 8 + 4 + 4 + 4 + config.swaps + 1
    return face * (1 + config.swaps) + 2 * patch + scalars


def work_bytes_per_frame(config: PrepConfig) -> float:
    """Raw arrays in .work/ (phase 1 and 2) for a frame until its shard is written."""
    s2, p2 = config.size ** 2 * 3, config.patch_size ** 2 * 3
    return s2 * (1 + config.swaps) + 2 * p2 + 68 * 2 * 4 + 4 * config.descriptor_dim + 24 + config.swaps


@dataclass
class SpaceEstimate:
    inputs: int
    probed: int
    seconds: float  # estimated total duration of all inputs
    frames: float  # estimated sampled frames
    shard_bytes: float
    work_bytes: float  # peak, before shards replace work files
    free_bytes: int

    @property
    def needed_bytes(self) -> float:
        return SAFETY_FACTOR * (self.shard_bytes + self.work_bytes)

    @property
    def fits(self) -> bool:
        return self.free_bytes >= self.needed_bytes

    def describe(self) -> str:
        return (f"{human_bytes(self.shard_bytes)} of shards + up to {human_bytes(self.work_bytes)} of temporary "
                f"work files for ~{self.frames:.0f} frames of {self.inputs} clips ({self.seconds / 60:.1f} min of "
                f"video); {human_bytes(self.free_bytes)} free")


def estimate_space(sources: list[VideoSource], config: PrepConfig, out: str | Path) -> SpaceEstimate:
    count = len(sources)
    step = max(1, count // MAX_PROBES)
    probes = sources[::step][:MAX_PROBES]
    seconds = frames = 0.0
    for source in probes:
        duration, fps = probe_duration(source)
        seconds += duration
        frames += duration * min(config.fps, fps) if fps > 0 else 0.0
    scale = count / len(probes) if probes else 0.0
    frames *= scale
    return SpaceEstimate(
        inputs=count, probed=len(probes), seconds=seconds * scale, frames=frames,
        shard_bytes=frames * shard_bytes_per_frame(config), work_bytes=frames * work_bytes_per_frame(config),
        free_bytes=shutil.disk_usage(_existing_parent(Path(out))).free,
    )


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
