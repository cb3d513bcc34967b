"""What the sampler needs to know about a shard set, read once in the main process: per video its shard,
row range, timestamps and identity. Only numpy arrays are kept (every HDF5 file is closed again), so the
index is safe to hand to forked DataLoader workers, which open their own readers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslfer_core.shard_format import ShardHeader, ShardReader


@dataclass
class ShardIndex:
    paths: list[Path]  # shard files, in manifest order
    headers: list[ShardHeader]
    video_shard: np.ndarray  # (V,) int: shard of each global video
    video_local: np.ndarray  # (V,) int: video row inside its shard
    video_first_row: np.ndarray  # (V,) int: first frame row inside the shard
    video_frames: np.ndarray  # (V,) int
    video_identity: np.ndarray  # (V,) int: global identity id (sorted identity names)
    video_names: list[str]
    identity_names: list[str]
    timestamps: list[np.ndarray]  # per global video, seconds, sorted
    sha256: list[str] | None = None  # per shard, from the manifest: readers check the bytes they open

    @property
    def num_videos(self) -> int:
        return len(self.video_frames)

    @property
    def num_frames(self) -> int:
        return int(self.video_frames.sum())

    @property
    def image_size(self) -> int:
        return self.headers[0].image_size

    @property
    def swaps_per_frame(self) -> int:
        return min(h.swaps_per_frame for h in self.headers)

    @property
    def descriptor_dim(self) -> int:
        return min(h.descriptor_dim for h in self.headers)

    def shard_frames(self) -> np.ndarray:
        return np.bincount(self.video_shard, weights=self.video_frames, minlength=len(self.paths)).astype(np.int64)


def build_shard_index(paths: list[Path]) -> ShardIndex:
    """Read the video tables and timestamps of every shard. Raises ShardFormatError for unreadable files and
    ValueError when the shards disagree on the image size (their frames could not share a batch)."""
    headers, shard_ids, local, first, frames, identities, names, times = [], [], [], [], [], [], [], []
    for s, path in enumerate(paths):
        reader = ShardReader(path)  # reads metadata and closes the file again
        headers.append(reader.header)
        table = reader.videos
        for v in range(len(table)):
            rows = reader.video_rows(v)
            shard_ids.append(s)
            local.append(v)
            first.append(rows.start)
            frames.append(rows.stop - rows.start)
            identities.append(str(table.identity[v]))
            names.append(str(table.video_id[v]))
            times.append(np.asarray(reader.timestamps[rows], dtype=np.float64))
    sizes = sorted({h.image_size for h in headers})
    if len(sizes) > 1:
        raise ValueError(f"shards hold faces of different sizes ({', '.join(map(str, sizes))} px); "
                         "train on one prepared set at a time")
    identity_names = sorted(set(identities))
    lookup = {name: i for i, name in enumerate(identity_names)}
    return ShardIndex(
        paths=[Path(p) for p in paths], headers=headers,
        video_shard=np.asarray(shard_ids, np.int64), video_local=np.asarray(local, np.int64),
        video_first_row=np.asarray(first, np.int64), video_frames=np.asarray(frames, np.int64),
        video_identity=np.asarray([lookup[i] for i in identities], np.int64),
        video_names=names, identity_names=identity_names, timestamps=times,
    )
