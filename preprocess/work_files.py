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
import zipfile
from pathlib import Path

import numpy as np

from sslfer_core.atomic_files import TEMP_PREFIX, atomic_path, write_bytes_atomic, write_json_atomic

WORK_DIR_NAME = ".work"


def _parse_record(text: str) -> dict | None:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    ok = isinstance(record, dict) and isinstance(record.get("video_id"), str) and "skipped" in record
    return record if ok else None


def _record_id(line: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("video_id") if isinstance(record, dict) else None


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


def npz_problem(path: Path) -> str | None:
    """Why a work file cannot be a complete npz, or None. Checks the zip directory and that every member
    lies inside the file (a truncated or cut file fails this) without reading the arrays."""
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if not members:
        return "holds no arrays"
    for info in members:
        if info.header_offset + len(info.filename) + 30 + info.compress_size > size:
            return f"member {info.filename} runs past the end of the file (truncated)"
    return None


class DamagedWorkFile(Exception):
    """A run-level work file (run.json, plan.json) cannot be read; the message says how to recover."""


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedWorkFile(f"{path} is damaged ({exc}); rerun with --force to start this output again") from None


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
        self.damage_notes: list[str] = []  # damaged records read_records() dropped (their clips are redone)

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
        """Records of every video finished in phase 1, from records.jsonl and videos/*.json. A record
        that does not parse is dropped (a per-video file is deleted) with a note in damage_notes, so
        that phase 1 redoes its clip."""
        records: dict[str, dict] = {}
        if self.records_file.is_file():
            lines = self.records_file.read_text(encoding="utf-8", errors="replace").splitlines()
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    record = _parse_record(line)
                    if record is None:
                        self._note(f"{self.records_file.relative_to(self.out)} line {number}")
                    else:
                        records[record["video_id"]] = record
        if self.videos.is_dir():
            for path in sorted(self.videos.glob("*.json")):
                if not path.name.startswith(TEMP_PREFIX):
                    record = _parse_record(path.read_text(encoding="utf-8", errors="replace"))
                    if record is None:
                        path.unlink(missing_ok=True)
                        self._note(str(path.relative_to(self.out)))
                    else:
                        records[record["video_id"]] = record
        return records

    def _note(self, where: str) -> None:
        note = f"note: damaged work record {where} dropped; its clip is redone"
        if note not in self.damage_notes:
            self.damage_notes.append(note)

    def fold_records(self, records: dict[str, dict]) -> None:
        """Replace the per-video json files by one records.jsonl (keeps the work folder small)."""
        text = "".join(json.dumps(records[k], sort_keys=True, ensure_ascii=False) + "\n" for k in sorted(records))
        write_bytes_atomic(self.records_file, text.encode("utf-8"))
        for path in self.videos.glob("*.json"):
            path.unlink(missing_ok=True)

    def discard_damaged(self, records: dict[str, dict], written: set[str]) -> list[str]:
        """Delete damaged work files of kept clips (npz_problem) and return one note per clip. A clip
        whose shard is not written yet (`written`: ids in finished shards) is forgotten, so phase 1 redoes
        it alone; a damaged swap file alone is redone by phase 2. Done before any phase reads them."""
        notes = []
        for video_id, record in sorted(records.items()):
            if record.get("skipped"):
                continue
            frames, swaps = self.frames_path(video_id), self.swaps_path(video_id)
            bad_frames = npz_problem(frames) if frames.is_file() else None
            bad_swaps = npz_problem(swaps) if swaps.is_file() else None
            if bad_frames is None and bad_swaps is None:
                continue
            name = frames.relative_to(self.out) if bad_frames else swaps.relative_to(self.out)
            if video_id in written:
                self.remove_video_arrays(video_id)
                notes.append(f"note: {name} of {video_id} is damaged ({bad_frames or bad_swaps}); removed "
                             "(its shard is already written)")
            elif bad_frames:
                self.remove_video_arrays(video_id)
                self.forget_record(video_id)
                notes.append(f"note: {name} of {video_id} is damaged ({bad_frames}); redoing that clip")
            else:
                swaps.unlink(missing_ok=True)
                notes.append(f"note: {name} of {video_id} is damaged ({bad_swaps}); redoing its swaps")
        return notes

    def forget_record(self, video_id: str) -> None:
        """Phase 1 counts the clip as not done: its record leaves videos/*.json and records.jsonl."""
        self.record_path(video_id).unlink(missing_ok=True)
        if self.records_file.is_file():
            lines = self.records_file.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and _record_id(line) != video_id]
            if len(kept) != len([line for line in lines if line.strip()]):
                write_bytes_atomic(self.records_file, "".join(line + "\n" for line in kept).encode("utf-8"))

    def remove_video_arrays(self, video_id: str) -> None:
        self.frames_path(video_id).unlink(missing_ok=True)
        self.swaps_path(video_id).unlink(missing_ok=True)

    # -- run state
    def read_run(self) -> dict | None:
        return _read_json(self.run_file) if self.run_file.is_file() else None

    def write_run(self, run: dict) -> None:
        write_json_atomic(self.run_file, run)

    def read_plan(self) -> list[dict]:
        if not self.plan_file.is_file():
            return []
        plan = _read_json(self.plan_file)
        shards = plan.get("shards") if isinstance(plan, dict) else None
        if not isinstance(shards, list) or not all(isinstance(e, dict) and isinstance(e.get("file"), str)
                                                   and isinstance(e.get("video_ids"), list) for e in shards):
            raise DamagedWorkFile(f"{self.plan_file} is damaged (not a shard plan); rerun with --force to start "
                                  "this output again")
        return shards

    def write_plan(self, shards: list[dict]) -> None:
        write_json_atomic(self.plan_file, {"shards": shards})
