"""What a run left out: per-frame drop logs for kept videos and skip records for whole videos.

failures.jsonl holds one JSON object per line, sorted by video id:
- a skipped video: {"video_id", "path", "identity", "skipped": true, "reason", "detail", "frames_sampled",
  "frames_kept", "dropped": {reason: count}, "ranges": [...]}
- a kept video that lost frames or swaps: the same keys with "skipped": false and reason "dropped_frames"
  (or "failed_swaps" when only swaps failed); "swaps_failed" counts frames x K swaps left empty.
- a kept video whose frame times were assumed (its container states an unusable frame rate, or frames
  lack presentation times): "fps_note" says what was assumed; reason "assumed_frame_times" when nothing
  else is recorded for it. Any record may carry "fps_note".
"ranges" lists runs of consecutive dropped samples: {"first": frame, "last": frame, "count": n, "reason": r}.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_manifest.manifest import FAILURES_NAME
from sslfer_core.atomic_files import write_bytes_atomic


# Video-level reasons.
UNREADABLE = "unreadable"
NO_FACE = "no_face"
SMALL_FACE = "small_face"
AMBIGUOUS = "ambiguous"  # several faces of similar size
TOO_FEW_FRAMES = "too_few_frames"
PROCESSING_ERROR = "processing_error"
# Frame-level reasons (besides NO_FACE, SMALL_FACE, AMBIGUOUS).
UNREADABLE_FRAME = "unreadable_frame"
BAD_LANDMARKS = "bad_landmarks"
# Record kinds of kept videos.
DROPPED_FRAMES = "dropped_frames"
FAILED_SWAPS = "failed_swaps"
ASSUMED_FRAME_TIMES = "assumed_frame_times"

FACE_REASONS = (NO_FACE, SMALL_FACE, AMBIGUOUS)


@dataclass
class DropLog:
    """Per-sample drop reasons of one clip, merged into runs of consecutive samples."""

    counts: Counter = field(default_factory=Counter)
    ranges: list[dict] = field(default_factory=list)
    _last_sample: int = -2

    def add(self, sample: int, frame: int, reason: str) -> None:
        """`sample` is the running sample number (to detect adjacency); `frame` the source frame number."""
        self.counts[reason] += 1
        last = self.ranges[-1] if self.ranges else None
        if last is not None and last["reason"] == reason and self._last_sample == sample - 1:
            last["last"] = frame
            last["count"] += 1
        else:
            self.ranges.append({"first": frame, "last": frame, "count": 1, "reason": reason})
        self._last_sample = sample

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def dominant(self) -> str | None:
        # Ties resolve in a fixed order so the reason does not depend on dict order.
        if not self.counts:
            return None
        return max(sorted(self.counts), key=lambda r: self.counts[r])


def failure_lines(records: list[dict]) -> list[dict]:
    """The failures.jsonl records among per-video records: skipped videos and kept videos that lost something."""
    lines = []
    for record in sorted(records, key=lambda r: r["video_id"]):
        if record.get("skipped"):
            lines.append(_public(record))
        elif record.get("dropped") or record.get("swaps_failed") or record.get("fps_note"):
            reason = (DROPPED_FRAMES if record.get("dropped") else FAILED_SWAPS if record.get("swaps_failed")
                      else ASSUMED_FRAME_TIMES)
            lines.append({**_public(record), "reason": reason})
    return lines


def _public(record: dict) -> dict:
    keys = ("video_id", "path", "identity", "skipped", "reason", "detail", "frames_sampled", "frames_kept",
            "dropped", "ranges", "swaps_failed", "fps_note")
    return {k: record[k] for k in keys if k in record}


def write_failures(out: str | os.PathLike, records: list[dict]) -> int:
    """Write OUT/failures.jsonl atomically; returns the number of skipped videos."""
    lines = failure_lines(records)
    text = "".join(json.dumps(line, sort_keys=True, ensure_ascii=False) + "\n" for line in lines)
    write_bytes_atomic(Path(out) / FAILURES_NAME, text.encode("utf-8"))
    return sum(1 for line in lines if line.get("skipped"))


def read_failures(out: str | os.PathLike) -> list[dict]:
    """Records of OUT/failures.jsonl; a line that is not a JSON object with a video id (a damaged file) is
    left out, so the clip it described counts as not done and is tried again."""
    path = Path(out) / FAILURES_NAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("video_id"), str):
            records.append(record)
    return records
