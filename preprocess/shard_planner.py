"""Group whole videos into shards of about a target size, in video-id order; names for shard files."""
from __future__ import annotations

import re


def shard_prefix(part: tuple[int, int] | None) -> str:
    return f"part{part[0]}of{part[1]}-shard-" if part else "shard-"


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}{index:05d}.h5"


def _next_index(existing: list[dict], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.h5$")
    indices = [int(m.group(1)) for s in existing if (m := pattern.match(s["file"]))]
    return max(indices, default=-1) + 1


def plan_shards(existing: list[dict], videos: list[tuple[str, int]], *, target_bytes: int, prefix: str) -> list[dict]:
    """New shard entries {"file", "video_ids"} for `videos` [(video_id, estimated bytes)], appended after `existing`.

    Videos already named in `existing` are left where they are; a video is never split, so a video larger
    than the target gets a shard of its own.
    """
    assigned = {v for shard in existing for v in shard["video_ids"]}
    index = _next_index(existing, prefix)
    plans: list[dict] = []
    current: list[str] = []
    current_bytes = 0
    for video_id, size in sorted(videos):
        if video_id in assigned:
            continue
        if current and current_bytes + size > target_bytes:
            plans.append({"file": shard_name(prefix, index), "video_ids": current})
            index += 1
            current, current_bytes = [], 0
        current.append(video_id)
        current_bytes += size
    if current:
        plans.append({"file": shard_name(prefix, index), "video_ids": current})
    return plans
