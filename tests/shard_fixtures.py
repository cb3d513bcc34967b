"""Synthetic shard content for tests: random but fully specified frames, so reads can be checked bit-exact."""
from __future__ import annotations

import numpy as np

from sslfer_core.shard_format import ImageCodec, ShardHeader, VideoFrames


def make_header(*, size=32, patch=16, swaps=1, descriptor_dim=8, codec="raw", fps=5.0, descriptor_kind=None,
                **kwargs) -> ShardHeader:
    codecs = {name: ImageCodec.parse(codec) for name in ("face", "eyes", "mouth", "swaps")}
    kind = descriptor_kind or ("landmark-geometry" if descriptor_dim else "none")
    return ShardHeader(
        image_size=size, patch_size=patch, swaps_per_frame=swaps, descriptor_kind=kind, descriptor_dim=descriptor_dim,
        codecs=codecs, prep_config={"fps": fps, "size": size}, dlib_model_sha256={"shape_predictor": "ab" * 32},
        **kwargs,
    )


def make_video(rng: np.random.Generator, header: ShardHeader, n: int, *, video_id="v0", identity="id0",
               fps=5.0, start=0.0) -> VideoFrames:
    s, p, k, d = header.image_size, header.patch_size, header.swaps_per_frame, header.descriptor_dim
    desc = rng.normal(size=(n, d)).astype(np.float32)
    desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-6)
    return VideoFrames(
        video_id=video_id, identity=identity, source_path=f"{identity}/{video_id}/00001.mp4", source_fps=25.0,
        faces=rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
        landmarks=rng.uniform(0, s, (n, 68, 2)).astype(np.float32),
        eyes=rng.integers(0, 256, (n, p, p, 3), dtype=np.uint8),
        mouth=rng.integers(0, 256, (n, p, p, 3), dtype=np.uint8),
        timestamps=start + np.arange(n) / fps,
        frame_index=np.arange(n) * int(25 / fps),
        det_score=rng.uniform(0, 2, n).astype(np.float32),
        swaps=rng.integers(0, 256, (n, k, s, s, 3), dtype=np.uint8) if k else None,
        swap_ok=rng.random((n, k)) > 0.1 if k else None,
        descriptors=desc if d else None,
        has_descriptor=np.ones(n, bool) if d else None,
    )
