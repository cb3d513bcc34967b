"""The work folder OUT/.work/: per-video intermediate results written atomically, so a killed run resumes.

Layout:
  run.json                  content config and --part of the run that owns OUT
  run.lock                  flock'ed while a run is active
  videos/<key>.npz          phase 1: aligned faces, landmarks, patches, descriptors (no pickle)
  videos/<key>.json         phase 1: the video's record (kept or skipped, drop counts); written last = done
  swaps/<key>.npz           phase 2: swaps (N, K, S, S, 3) and swap_ok (N, K)
  donor_pool.npz            donor heads shared by all videos of the run
  plan.json                 which videos go into which shard
  records.jsonl             records of a finished run, folded from videos/*.json
<key> is a hash of the video id, so ids with any characters map to safe file names.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from sslfer_core.atomic_files import TEMP_PREFIX, atomic_path, write_bytes_atomic, write_json_atomic

WORK_DIR_NAME = ".work"


def video_key(video_id: str) -> str:
    return hashlib.sha1(video_id.encode("utf-8")).hexdigest()[:20]


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez through a temporary file: the npz appears complete or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object, so numpy does not append ".npz" to the temp name
            np.savez(handle, **arrays)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


class WorkDir:
    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.root = self.out / WORK_DIR_NAME
        self.videos = self.root / "videos"
        self.swaps = self.root / "swaps"
        self.run_file = self.root / "run.json"
        self.lock_file = self.root / "run.lock"
        self.pool_file = self.root / "donor_pool.npz"
        self.plan_file = self.root / "plan.json"
        self.records_file = self.root / "records.jsonl"

    def create(self) -> None:
        self.videos.mkdir(parents=True, exist_ok=True)
        self.swaps.mkdir(parents=True, exist_ok=True)

    def remove_stale_temporaries(self) -> int:
        """Delete temporaries of writes a killed run left behind (only our own TEMP_PREFIX files)."""
        removed = 0
        for folder in (self.out, self.root, self.videos, self.swaps):
            if folder.is_dir():
                for path in folder.glob(TEMP_PREFIX + "*"):
                    if path.is_file():
                        path.unlink(missing_ok=True)
                        removed += 1
        return removed

    # -- per-video files
    def frames_path(self, video_id: str) -> Path:
        return self.videos / f"{video_key(video_id)}.npz"

    def record_path(self, video_id: str) -> Path:
        return self.videos / f"{video_key(video_id)}.json"

    def swaps_path(self, video_id: str) -> Path:
        return self.swaps / f"{video_key(video_id)}.npz"

    def write_record(self, record: dict) -> None:
        write_bytes_atomic(self.record_path(record["video_id"]),
                           json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8"))

    def read_records(self) -> dict[str, dict]:
        """Records of every video finished in phase 1, from records.jsonl and videos/*.json."""
        records: dict[str, dict] = {}
        if self.records_file.is_file():
            for line in self.records_file.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    records[record["video_id"]] = record
        if self.videos.is_dir():
            for path in sorted(self.videos.glob("*.json")):
                if not path.name.startswith(TEMP_PREFIX):
                    record = json.loads(path.read_text(encoding="utf-8"))
                    records[record["video_id"]] = record
        return records

    def fold_records(self, records: dict[str, dict]) -> None:
        """Replace the per-video json files by one records.jsonl (keeps the work folder small)."""
        text = "".join(json.dumps(records[k], sort_keys=True, ensure_ascii=False) + "\n" for k in sorted(records))
        write_bytes_atomic(self.records_file, text.encode("utf-8"))
        for path in self.videos.glob("*.json"):
            path.unlink(missing_ok=True)

    def remove_video_arrays(self, video_id: str) -> None:
        self.frames_path(video_id).unlink(missing_ok=True)
        self.swaps_path(video_id).unlink(missing_ok=True)

    # -- run state
    def read_run(self) -> dict | None:
        return json.loads(self.run_file.read_text(encoding="utf-8")) if self.run_file.is_file() else None

    def write_run(self, run: dict) -> None:
        write_json_atomic(self.run_file, run)

    def read_plan(self) -> list[dict]:
        return json.loads(self.plan_file.read_text(encoding="utf-8"))["shards"] if self.plan_file.is_file() else []

    def write_plan(self, shards: list[dict]) -> None:
        write_json_atomic(self.plan_file, {"shards": shards})
