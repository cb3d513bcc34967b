"""Streaming batches of video clips out of shards for masked-autoencoder pretraining: an IterableDataset
whose DataLoader workers each execute their share of the epoch's clip plan (train/methods/mae/clip_plan.py).

A batch is {"clips": uint8 (B, T, H, W, 3), "video": int64 (B,), "start": int64 (B,), "batch_index": int64}:
`start` is each clip's first frame position inside its video. Frames are read only through
ShardReader.read_images, one call per clip over the clip's strided row range, so whatever image codec the
shard uses is decoded by the reader. Shard readers are created lazily inside each worker process, at most
MAX_OPEN_SHARDS at a time (least recently used closed first), since one HDF5 handle per shard and worker
holds a chunk cache per dataset read.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sslfer_core.shard_format import ShardReader
from train.methods.mae.clip_plan import (
    ClipCatalogue, ClipConfig, EpochClipPlan, build_catalogue, clip_steps, plan_epoch_clips, worker_batches,
)
from train.epoch_position import SharedEpochPosition
from train.shard_index import ShardIndex

MAX_OPEN_SHARDS = 64
IMAGE_FIELD = "face"
PREFETCH_BATCHES = 2  # per worker: a full-size batch (32 x 16 x 160^2 x 3) is 39 MB of shared memory


class ClipStream(SharedEpochPosition, IterableDataset):
    """Clip batches of one rank for one epoch at a time; call set_epoch() before each iteration."""

    def __init__(self, index: ShardIndex, cfg: ClipConfig, *, seed: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, max_open_shards: int = MAX_OPEN_SHARDS,
                 catalogue: ClipCatalogue | None = None):
        """catalogue: the one already built for (index, cfg) (train/methods/mae/__init__.py builds it while
        the index is read); otherwise it is built here."""
        self.index = index
        self.cfg = cfg
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_slots = max(1, int(num_workers))
        self.max_open_shards = max(1, int(max_open_shards))
        # Raises ClipConfigError (fps, span, batch) here, in the main process, before any worker starts.
        self.catalogue: ClipCatalogue = catalogue if catalogue is not None else build_catalogue(index, cfg)
        self.steps = clip_steps(self.catalogue, cfg, self.batch_size, self.world_size)
        self._init_position()
        self._readers: OrderedDict[int, ShardReader] = OrderedDict()
        self._readers_pid: int | None = None

    @property
    def skipped_short(self) -> int:
        """Videos shorter than the clip span, never used."""
        return self.catalogue.skipped_short

    @property
    def skipped_timing(self) -> int:
        """Videos long enough whose rows never keep the stride in time over a whole clip, never used."""
        return self.catalogue.skipped_timing

    def __len__(self) -> int:
        return max(0, self.steps - self.skip)

    def plan(self, epoch: int | None = None) -> EpochClipPlan:
        return plan_epoch_clips(self.index, self.cfg, self.seed, self.epoch if epoch is None else epoch,
                                self.batch_size, self.rank, self.world_size, catalogue=self.catalogue)

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None:
            cv2.setNumThreads(1)  # decoding is parallel across workers already
        plan = self.plan()
        for number in worker_batches(plan.steps, self.num_slots, worker, self.skip):
            yield self._materialise(plan, number)

    # -- reading
    def _reader(self, shard: int) -> ShardReader:
        if self._readers_pid != os.getpid():  # never reuse readers made in another process
            self._readers, self._readers_pid = OrderedDict(), os.getpid()
        reader = self._readers.get(shard)
        if reader is None:
            while len(self._readers) >= self.max_open_shards:
                self._readers.popitem(last=False)[1].close()
            reader = self._readers[shard] = ShardReader(self.index.paths[shard])
        else:
            self._readers.move_to_end(shard)
        return reader

    def close(self) -> None:
        if self._readers_pid == os.getpid():
            for reader in self._readers.values():
                reader.close()
        self._readers = OrderedDict()

    def read_clip(self, video: int, start: int) -> np.ndarray:
        """(T, H, W, 3) uint8 frames of one clip: a single read over its strided rows."""
        first = int(self.index.video_first_row[video]) + int(start)
        stride = self.catalogue.stride
        rows = slice(first, first + (self.cfg.frames - 1) * stride + 1, stride)
        return self._reader(int(self.index.video_shard[video])).read_images(IMAGE_FIELD, rows)

    def _materialise(self, plan: EpochClipPlan, number: int) -> dict[str, torch.Tensor]:
        size = self.index.image_size
        clips_t = torch.empty((self.batch_size, self.cfg.frames, size, size, 3), dtype=torch.uint8)
        if get_worker_info() is not None:
            # Fill the shared-memory block the batch travels in, instead of copying into it afterwards.
            clips_t.share_memory_()
        clips = clips_t.numpy()
        for slot in range(self.batch_size):
            frames = self.read_clip(int(plan.video[number, slot]), int(plan.start[number, slot]))
            if frames.shape != clips.shape[1:]:
                raise ValueError(f"shard returned clip frames of shape {frames.shape}, expected {clips.shape[1:]}")
            clips[slot] = frames
        return {
            "clips": clips_t,
            "video": torch.from_numpy(plan.video[number].copy()),
            "start": torch.from_numpy(plan.start[number].copy()),
            "batch_index": torch.tensor(number, dtype=torch.int64),
        }


def make_clip_loader(stream: ClipStream, num_workers: int, pin_memory: bool) -> DataLoader:
    """One batch per item (batch_size=None); pin only when batches go to a CUDA device. Sets the stream's
    worker count (the plan's batch-to-worker split must match the loader's). Workers persist across epochs
    (iterate the same loader again after set_epoch) and keep their shard readers open."""
    stream.num_slots = max(1, int(num_workers))
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=PREFETCH_BATCHES if num_workers else None,
                      persistent_workers=num_workers > 0)
