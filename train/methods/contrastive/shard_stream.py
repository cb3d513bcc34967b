"""Streaming training batches out of shards: an IterableDataset whose DataLoader workers each execute
their own unit's epoch plan (train/methods/contrastive/epoch_plan.py).

Per worker: shard readers are created lazily inside the worker process; a video is read with one
contiguous slice per field when a batch first needs it and dropped when the plan releases it; JPEG faces
stay encoded in memory and only the frames a batch uses are decoded, straight into the batch array.
A batch is a dict of CPU tensors; images are uint8 (N, H, W, 3) with rows laid out view-major
[anchors, positives, (hardnegs, hardneg positives)], N = views * batch_size.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sslfer_core.shard_format import NUM_LANDMARKS, VERIFY_HINT, ShardFormatError, ShardReader, decode_jpeg_bgr
from train.methods.contrastive.epoch_plan import (
    ANCHOR, FALLBACK_KINDS, POSITIVE_VIEWS, BatchPlan, PlanConfig, assign_videos, plan_unit, steps_per_epoch,
    unit_batches,
)
from train.epoch_position import SharedEpochPosition
from train.shard_index import ShardIndex
from train.shard_set import ShardSetError


@dataclass
class _Video:
    face: np.ndarray  # raw (n,S,S,3) uint8, or (n,) encoded JPEG buffers
    landmarks: np.ndarray  # (n,68,2) float32
    swaps: np.ndarray | None  # raw (n,K,S,S,3) or (n,K) encoded
    swap_ok: np.ndarray | None  # (n,K) bool
    descriptor: np.ndarray | None  # (n,D) float16
    has_descriptor: np.ndarray | None  # (n,) bool


class ShardStream(SharedEpochPosition, IterableDataset):
    """Batches of one rank for one epoch at a time; call set_epoch() before each iteration."""

    def __init__(self, index: ShardIndex, config: PlanConfig, *, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, with_descriptors: bool = False):
        self.index = index
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.num_slots = max(1, num_workers)
        self.with_descriptors = with_descriptors and index.descriptor_dim > 0
        self._init_position()
        self.steps = steps_per_epoch(index.num_frames, world_size, config.batch_size)
        self._readers: dict[int, ShardReader] = {}
        self._readers_pid: int | None = None
        self._warned: set[int] = set()  # shards whose corrupt images this process has reported

    def __len__(self) -> int:
        return max(0, self.steps - self.skip)

    # -- the plan this process executes
    def _slot(self) -> int:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        # After skipping k batches the DataLoader asks worker 0 first, which must serve batch k.
        return (worker + self.skip) % self.num_slots

    def plans(self, slot: int):
        epoch = self.epoch
        units = self.world_size * self.num_slots
        owned = assign_videos(self.index, units, self.config.seed, epoch)
        unit = self.rank * self.num_slots + slot
        numbers = unit_batches(self.steps, self.num_slots, slot)
        return plan_unit(self.index, owned[unit], self.config, epoch, unit, numbers)

    def __iter__(self):
        cv2.setNumThreads(1)  # decoding is parallel across workers already
        cache: dict[int, _Video] = {}
        skip = self.skip
        try:
            for plan in self.plans(self._slot()):
                if plan.index >= skip:
                    yield self._materialise(plan, cache)
                for video in plan.release:
                    cache.pop(video, None)
        finally:
            cache.clear()

    # -- reading
    def _reader(self, shard: int) -> ShardReader:
        if self._readers_pid != os.getpid():  # never reuse readers made in another process
            self._readers, self._readers_pid = {}, os.getpid()
        reader = self._readers.get(shard)
        if reader is None:
            sha256 = self.index.sha256[shard] if self.index.sha256 else None
            reader = self._readers[shard] = ShardReader(self.index.paths[shard], sha256=sha256)
        return reader

    def close(self) -> None:
        if self._readers_pid == os.getpid():
            for reader in self._readers.values():
                reader.close()
        self._readers = {}

    def _load(self, video: int) -> _Video:
        # A shard that breaks while training (it passed the start-up checks) stops the run with one line
        # naming it; the DataLoader carries the ShardSetError's message to the main process.
        try:
            return self._read_video(video)
        except ShardFormatError as error:
            raise ShardSetError(str(error)) from None
        except OSError as error:
            path = self.index.paths[int(self.index.video_shard[video])]
            raise ShardSetError(f"{path}: cannot read ({error}); {VERIFY_HINT}") from None

    def _read_video(self, video: int) -> _Video:
        index = self.index
        reader = self._reader(int(index.video_shard[video]))
        start = int(index.video_first_row[video])
        rows = slice(start, start + int(index.video_frames[video]))
        swaps = swap_ok = descriptor = has = None
        if self.config.faceswap:
            swaps = reader.read_array("swaps", rows)
            swap_ok = reader.read_array("swap_ok", rows)
        if self.with_descriptors:
            descriptor = reader.read_array("descriptor", rows)
            has = reader.read_array("has_descriptor", rows)
        return _Video(reader.read_array("face", rows), reader.read_array("landmarks", rows), swaps, swap_ok,
                      descriptor, has)

    def _materialise(self, plan: BatchPlan, cache: dict[int, _Video]) -> dict[str, torch.Tensor]:
        cfg, index = self.config, self.index
        views, b = plan.rows.shape
        n = views * b
        size = index.image_size
        images_t = torch.empty((n, size, size, 3), dtype=torch.uint8)
        if get_worker_info() is not None:
            # Fill the shared-memory block the batch travels in, instead of copying into it afterwards.
            images_t.share_memory_()
        images = images_t.numpy()
        landmarks = np.empty((n, NUM_LANDMARKS, 2), np.float32)
        dim = index.descriptor_dim if self.with_descriptors else 0
        descriptors = np.zeros((n, dim), np.float32)
        has_descriptor = np.zeros(n, bool)
        row_valid = np.ones(n, bool)
        cutmix_target = np.full(n, -1, np.int64)
        fallbacks = dict(plan.fallbacks)
        first_use: dict[tuple, int] = {}  # decoded image -> first batch row holding it
        corrupt: set[tuple] = set()  # images that failed to decode
        bad_slots: set[int] = set()
        for slot in range(b):
            video = int(plan.video[slot])
            data = cache.get(video)
            if data is None:
                data = cache[video] = self._load(video)
            for view in range(views):
                r = view * b + slot
                frame = int(plan.rows[view, slot])
                source = ("face", frame)
                if view in POSITIVE_VIEWS and cfg.faceswap and plan.swap_u[view, slot] < cfg.swap_p:
                    usable = np.flatnonzero(data.swap_ok[frame])
                    if len(usable):
                        source = ("swap", frame, int(usable[int(plan.swap_pick[view, slot] * len(usable))]))
                    elif view == POSITIVE_VIEWS[0] or plan.hardneg_valid[slot]:
                        fallbacks["faceswap"] += 1
                key = (video,) + source
                if key in first_use:
                    images[r] = images[first_use[key]]
                else:
                    first_use[key] = r
                    stored = data.face[frame] if source[0] == "face" else data.swaps[frame, source[2]]
                    if not self._put_image(images, r, stored):
                        corrupt.add(key)
                        self._report_corrupt(video, frame)
                if key in corrupt:
                    bad_slots.add(slot)
                # A swap keeps the expression frame's inner face at (nearly) the same aligned place, so
                # the frame's own landmarks locate the masked regions (docs/training.md).
                landmarks[r] = data.landmarks[frame]
                if dim:
                    descriptors[r] = data.descriptor[frame]
                    has_descriptor[r] = data.has_descriptor[frame]
                if plan.cutmix_target[view, slot] >= 0:
                    cutmix_target[r] = ANCHOR * b + int(plan.cutmix_target[view, slot])
        if views == 4:
            masked = np.concatenate([np.zeros(2 * b, bool), ~plan.hardneg_valid, ~plan.hardneg_valid])
            row_valid &= ~masked
            has_descriptor &= ~masked
        if bad_slots:
            # Every view of a sample with a corrupt image leaves the loss (it is not trained on, and is
            # nobody's negative); its pixels are zeros.
            bad_slots |= {int(s) for s in np.flatnonzero(np.isin(plan.cutmix_target, list(bad_slots)).any(axis=0))}
            slots = np.array(sorted(bad_slots))
            for view in range(views):
                row_valid[view * b + slots] = False
                has_descriptor[view * b + slots] = False
            if len(bad_slots) == b:
                raise ShardSetError(f"every sample of batch {plan.index} holds a corrupt image; {VERIFY_HINT}")
        video_ids = np.tile(plan.video, views)
        return {
            "images": images_t,
            "landmarks": torch.from_numpy(landmarks),
            "descriptors": torch.from_numpy(descriptors),
            "has_descriptor": torch.from_numpy(has_descriptor),
            "video_ids": torch.from_numpy(video_ids),
            "row_valid": torch.from_numpy(row_valid),
            "cutmix_target": torch.from_numpy(cutmix_target),
            "fallbacks": torch.tensor([fallbacks[k] for k in FALLBACK_KINDS], dtype=torch.int64),
            "batch_index": torch.tensor(plan.index, dtype=torch.int64),
            "corrupt_images": torch.tensor(len(corrupt), dtype=torch.int64),
        }

    def _report_corrupt(self, video: int, frame: int) -> None:
        shard = int(self.index.video_shard[video])
        if shard not in self._warned:  # one line per shard and process; the batch counts every image
            self._warned.add(shard)
            print(f"warning: {self.index.paths[shard]}: corrupt image in video {self.index.video_name(video)!r} "
                  f"frame row {frame} skipped, not trained on; {VERIFY_HINT}", file=sys.stderr, flush=True)

    @staticmethod
    def _put_image(images: np.ndarray, row: int, stored: np.ndarray) -> bool:
        """Decode into images[row]; False (row zeroed) when the stored image is corrupt or mis-sized."""
        if stored.ndim == 3:  # raw codec
            images[row] = stored
            return True
        bgr = decode_jpeg_bgr(stored)
        if bgr is None or bgr.shape != images.shape[1:]:
            images[row] = 0
            return False
        cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=images[row])
        return True


def make_loader(stream: ShardStream, num_workers: int, pin_memory: bool) -> DataLoader:
    """One batch per item (batch_size=None); pin only when batches go to a CUDA device. Workers persist
    across epochs (iterate the same loader again after set_epoch) and keep their shard readers open."""
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers else None, persistent_workers=num_workers > 0)
