"""Shards for the clip tests: videos at a known fps whose raw faces carry their identity in pixel (0, 0):
(video tag, frame position % 256, frame position // 256), so every clip frame can be traced back."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from shard_fixtures import make_header, make_video
from sslfer_core.shard_format import write_shard

# (frames, dropped source frame or None) per video; shard 0 holds videos 0-2, shard 1 the rest.
# With 16 frames at stride 4 (span 61 rows): 70 -> starts 0..9; 61 -> start 0; 60 -> too short;
# 131 source frames minus frame 20 -> starts 20..69; 30 -> too short; 66 minus frame 30 -> every window
# crosses the gap.
CLIP_VIDEOS = ((70, None), (61, None), (60, None), (131, 20), (30, None), (66, 30))
CLIP_VALID_STARTS = {0: range(0, 10), 1: range(0, 1), 3: range(20, 70)}
SHORT_VIDEOS, GAPPY_VIDEOS = (2, 4), (5,)


def make_clip_shards(root: Path, *, fps: float = 25.0, codec: str = "raw", size: int = 24, videos=CLIP_VIDEOS,
                     per_shard: int = 3, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    header = dataclasses.replace(make_header(size=size, patch=8, swaps=0, descriptor_dim=0, codec=codec),
                                 prep_config={"fps": fps, "size": size})
    root.mkdir(parents=True, exist_ok=True)
    shards: list[list] = []
    for tag, (frames, dropped) in enumerate(videos):
        video = make_video(rng, header, frames, video_id=f"v{tag}", identity=f"id{tag % 2}", fps=fps)
        if dropped is not None:
            keep = np.arange(frames) != dropped
            for name in ("faces", "landmarks", "eyes", "mouth", "timestamps", "frame_index", "det_score"):
                setattr(video, name, getattr(video, name)[keep])
        n = len(video)
        video.faces[:, 0, 0] = np.stack([np.full(n, tag), np.arange(n) % 256, np.arange(n) // 256], axis=1)
        if tag % per_shard == 0:
            shards.append([])
        shards[-1].append(video)
    return [write_shard(root / f"clips-{s:05d}.h5", header, batch) for s, batch in enumerate(shards)]


def pixel_identity(frame: np.ndarray) -> tuple[int, int]:
    """(video tag, frame position inside the video) written by make_clip_shards."""
    tag, low, high = (int(v) for v in frame[0, 0])
    return tag, low + 256 * high
