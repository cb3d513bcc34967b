"""The donor pool: a deterministic set of aligned heads (faces + landmarks) per identity, built after phase 1.

For each identity, its kept frames are listed in (video id, frame) order and `per_identity` of them are
taken evenly spaced. The pool depends only on the phase-1 results of the run's inputs, so a killed and
resumed run builds the same pool; a --part run builds it from its own part only. Identities already in a
saved pool keep their entries when a later run adds inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from preprocess.work_files import load_npz, save_npz
from sslfer_core.shard_format import NUM_LANDMARKS


@dataclass
class DonorPool:
    faces: np.ndarray  # (M, S, S, 3) uint8
    landmarks: np.ndarray  # (M, 68, 2) float32, crop coordinates
    identity: np.ndarray  # (M,) str, sorted
    video_id: np.ndarray  # (M,) str
    row: np.ndarray  # (M,) int32, row within its video's kept frames

    def __len__(self) -> int:
        return len(self.identity)

    def identities(self) -> list[str]:
        return sorted(set(self.identity.tolist()))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"faces": self.faces, "landmarks": self.landmarks, "identity": self.identity.astype(str),
                "video_id": self.video_id.astype(str), "row": self.row}

    @classmethod
    def empty(cls, size: int) -> "DonorPool":
        return cls(np.zeros((0, size, size, 3), np.uint8), np.zeros((0, NUM_LANDMARKS, 2), np.float32),
                   np.zeros(0, dtype="<U1"), np.zeros(0, dtype="<U1"), np.zeros(0, np.int32))


def save_pool(path: Path, pool: DonorPool) -> None:
    save_npz(path, pool.to_arrays())


def load_pool(path: Path) -> DonorPool:
    data = load_npz(path)
    return DonorPool(data["faces"], data["landmarks"], data["identity"], data["video_id"], data["row"])


def evenly_spaced(total: int, count: int) -> list[int]:
    count = min(count, total)
    return [int((j + 0.5) * total / count) for j in range(count)]


def build_pool(kept: list[dict], load_frames: Callable[[str], dict], per_identity: int, size: int,
               existing: DonorPool | None = None) -> DonorPool:
    """`kept`: records of kept videos (video_id, identity, frames_kept); `load_frames(video_id)` returns
    its phase-1 arrays. Identities present in `existing` are not re-drawn."""
    existing = existing if existing is not None else DonorPool.empty(size)
    known = set(existing.identity.tolist())
    by_identity: dict[str, list[dict]] = {}
    for record in sorted(kept, key=lambda r: r["video_id"]):
        if record["identity"] not in known and record["frames_kept"] > 0:
            by_identity.setdefault(record["identity"], []).append(record)
    picks: list[tuple[str, str, int]] = []
    for identity, records in sorted(by_identity.items()):
        positions = [(r["video_id"], row) for r in records for row in range(r["frames_kept"])]
        picks.extend((identity, *positions[i]) for i in evenly_spaced(len(positions), per_identity))
    faces, landmarks = [existing.faces], [existing.landmarks]
    loaded_id, loaded = None, None
    for _identity, video_id, row in picks:
        if video_id != loaded_id:
            loaded_id, loaded = video_id, load_frames(video_id)
        faces.append(loaded["faces"][row:row + 1])
        landmarks.append(loaded["landmarks"][row:row + 1])
    identity = np.array(existing.identity.tolist() + [p[0] for p in picks], dtype=str)
    video_id = np.array(existing.video_id.tolist() + [p[1] for p in picks], dtype=str)
    row = np.array(existing.row.tolist() + [p[2] for p in picks], dtype=np.int32)
    order = np.lexsort((row, video_id, identity))  # by identity, then video, then row
    return DonorPool(np.concatenate(faces)[order], np.concatenate(landmarks).astype(np.float32)[order],
                     identity[order], video_id[order], row[order])
