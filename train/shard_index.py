"""What the sampler needs to know about a shard set, read once in the main process: per video its shard,
row range, timestamps and identity. Only numpy arrays are kept (every HDF5 file is closed again), so the
index is safe to hand to forked DataLoader workers, which open their own readers.

The index is built per shard with array operations and holds a few arrays per set, not objects per
video: at VoxCeleb2 scale (1.09 M videos) per-video Python objects cost more memory and start-up time
than the numbers they hold (docs/training.md, "At VoxCeleb2 scale")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from sslfer_core.shard_format import ShardHeader, ShardReader

# Called once per shard while the index is read: (shard number, path, header, the shard's timestamps in
# row order, row count of each of its videos). A method that needs something else per frame computes it
# here, so the index need not keep every timestamp (train/methods/mae/clip_plan.py CatalogueBuilder).
ShardHook = Callable[[int, Path, ShardHeader, np.ndarray, np.ndarray], None]


class Timestamps:
    """Every video's timestamps (seconds, sorted, float64 as stored) in one contiguous array: video v's
    are values[offsets[v]:offsets[v + 1]]. Indexing gives a view of that one array.

    float64 because a float32 relative time is not exact at the rates in use: 1/25 s (and 0.2 s at 5 fps)
    has no float32 value equal to the stored float64 one, so TimeAug's 1/|d| weights would move in the
    8th digit and a seeded epoch would not draw the same frames (tests/test_shard_index.py shows it)."""

    __slots__ = ("values", "offsets")

    def __init__(self, values: np.ndarray, offsets: np.ndarray):
        self.values, self.offsets = values, offsets

    @classmethod
    def of_videos(cls, values: np.ndarray, video_frames: np.ndarray) -> "Timestamps":
        """values: every video's timestamps one after another; video_frames: how many each video has."""
        offsets = np.zeros(len(video_frames) + 1, np.int64)
        np.cumsum(video_frames, out=offsets[1:])
        return cls(values, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, video: int) -> np.ndarray:
        return self.values[self.offsets[video]:self.offsets[video + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self[v] for v in range(len(self)))

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.offsets.nbytes


@dataclass
class ShardIndex:
    paths: list[Path]  # shard files, in manifest order
    headers: list[ShardHeader]
    video_shard: np.ndarray  # (V,) int: shard of each global video
    video_local: np.ndarray  # (V,) int: video row inside its shard
    video_first_row: np.ndarray  # (V,) int: first frame row inside the shard
    video_frames: np.ndarray  # (V,) int
    video_identity: np.ndarray  # (V,) int: global identity id (sorted identity names)
    video_names: np.ndarray  # (V,) bytes: utf-8 video ids (video_name(v) gives the str)
    identity_names: list[str]
    timestamps: Timestamps | None  # per global video; None when built with keep_timestamps=False
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

    def video_name(self, video: int) -> str:
        return self.video_names[video].decode("utf-8")

    def shard_frames(self) -> np.ndarray:
        return np.bincount(self.video_shard, weights=self.video_frames, minlength=len(self.paths)).astype(np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (headers and paths, a few kB per shard, not counted)."""
        arrays = (self.video_shard, self.video_local, self.video_first_row, self.video_frames, self.video_identity,
                  self.video_names)
        return sum(a.nbytes for a in arrays) + (self.timestamps.nbytes if self.timestamps is not None else 0)


def _check_one_size(headers: list[ShardHeader]) -> None:
    sizes = sorted({h.image_size for h in headers})
    if len(sizes) > 1:
        raise ValueError(f"shards hold faces of different sizes ({', '.join(map(str, sizes))} px); "
                         "train on one prepared set at a time")


def build_shard_index(paths: list[Path], *, keep_timestamps: bool = True,
                      on_shard: ShardHook | None = None) -> ShardIndex:
    """Read the video tables and timestamps of every shard. Raises ShardFormatError for unreadable files and
    ValueError when the shards disagree on the image size (their frames could not share a batch).
    keep_timestamps=False leaves index.timestamps None (a method that needs only what on_shard derives)."""
    headers, shard_ids, local, first, frames, identities, names, times = [], [], [], [], [], [], [], []
    for s, path in enumerate(paths):
        reader = ShardReader(path)  # reads metadata and closes the file again; checks that rows tile the shard
        headers.append(reader.header)
        table = reader.videos
        count = np.asarray(table.row_count, np.int64)
        shard_ids.append(np.full(len(count), s, np.int64))
        local.append(np.arange(len(count), dtype=np.int64))
        first.append(np.asarray(table.first_row, np.int64))
        frames.append(count)
        identities.append(np.asarray(table.identity, dtype=object))
        names.append(np.char.encode(np.asarray(table.video_id, dtype=str), "utf-8"))
        stamps = np.asarray(reader.timestamps, dtype=np.float64)
        if on_shard is not None:
            on_shard(s, Path(path), reader.header, stamps, count)
        if keep_timestamps:
            times.append(stamps)
    _check_one_size(headers)
    identity_names, identity = np.unique(np.concatenate(identities), return_inverse=True)
    video_frames = np.concatenate(frames)
    timestamps = None
    if keep_timestamps:
        timestamps = Timestamps.of_videos(np.concatenate(times), video_frames)
    return ShardIndex(
        paths=[Path(p) for p in paths], headers=headers,
        video_shard=np.concatenate(shard_ids), video_local=np.concatenate(local),
        video_first_row=np.concatenate(first), video_frames=video_frames,
        video_identity=identity.astype(np.int64).reshape(-1), video_names=np.concatenate(names),
        identity_names=[str(name) for name in identity_names], timestamps=timestamps,
    )


def merge_indexes(parts: list[ShardIndex]) -> ShardIndex:
    """The index of the parts' shards in order, as build_shard_index would read it in one go (the ranks of a
    machine each read a contiguous share of the shards: train/shard_set.py)."""
    _check_one_size([h for part in parts for h in part.headers])
    names = sorted({name for part in parts for name in part.identity_names})
    position = {name: i for i, name in enumerate(names)}
    shard_base = np.cumsum([0] + [len(part.paths) for part in parts])
    frames = np.concatenate([part.video_frames for part in parts])
    timestamps = None
    if all(part.timestamps is not None for part in parts):
        timestamps = Timestamps.of_videos(np.concatenate([part.timestamps.values for part in parts]), frames)
    return ShardIndex(
        paths=[p for part in parts for p in part.paths], headers=[h for part in parts for h in part.headers],
        video_shard=np.concatenate([part.video_shard + base for part, base in zip(parts, shard_base)]),
        video_local=np.concatenate([part.video_local for part in parts]),
        video_first_row=np.concatenate([part.video_first_row for part in parts]),
        video_frames=frames,
        video_identity=np.concatenate([
            np.asarray([position[n] for n in part.identity_names], np.int64)[part.video_identity]
            if len(part.video_identity) else np.zeros(0, np.int64) for part in parts]),
        video_names=np.concatenate([part.video_names for part in parts]),
        identity_names=names, timestamps=timestamps,
    )
