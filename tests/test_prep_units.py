"""Pieces of sslfer-prep that need no video: drop logs, shard planning, donor pool and choice, space estimate."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from preprocess import failures as why
from preprocess.donor_pool import DonorPool, build_pool, evenly_spaced, load_pool, save_pool
from preprocess.prep_config import PrepConfig, config_differences
from preprocess.shard_planner import plan_shards, shard_prefix
from preprocess.space_estimate import shard_bytes_per_frame, work_bytes_per_frame
from preprocess.swap_pass import DonorIndex
from sslfer_core.progress import PhaseProgress


def test_drop_log_merges_adjacent_samples_with_the_same_reason():
    log = why.DropLog()
    for sample, frame, reason in [(0, 0, "no_face"), (1, 5, "no_face"), (2, 10, "ambiguous"), (4, 20, "no_face")]:
        log.add(sample, frame, reason)
    assert log.ranges == [
        {"first": 0, "last": 5, "count": 2, "reason": "no_face"},
        {"first": 10, "last": 10, "count": 1, "reason": "ambiguous"},
        {"first": 20, "last": 20, "count": 1, "reason": "no_face"},
    ]
    assert log.total == 4 and log.dominant() == "no_face"


def test_failure_lines_keep_skipped_and_lossy_videos_only():
    records = [
        {"video_id": "b", "skipped": True, "reason": "unreadable", "path": "b.mp4"},
        {"video_id": "a", "skipped": False, "dropped": {"no_face": 3}, "path": "a.mp4"},
        {"video_id": "c", "skipped": False, "path": "c.mp4", "swaps_failed": 0},
        {"video_id": "d", "skipped": False, "path": "d.mp4", "swaps_failed": 2},
    ]
    lines = why.failure_lines(records)
    assert [(r["video_id"], r["reason"]) for r in lines] == [("a", "dropped_frames"), ("b", "unreadable"),
                                                             ("d", "failed_swaps")]


def test_plan_keeps_videos_whole_and_appends_after_existing_shards():
    videos = [("v3", 40), ("v1", 60), ("v2", 50), ("big", 500)]
    plan = plan_shards([], videos, target_bytes=100, prefix=shard_prefix(None))
    assert plan == [{"file": "shard-00000.h5", "video_ids": ["big"]},
                    {"file": "shard-00001.h5", "video_ids": ["v1"]},
                    {"file": "shard-00002.h5", "video_ids": ["v2", "v3"]}]
    more = plan_shards(plan, videos + [("v4", 10)], target_bytes=100, prefix="shard-")
    assert more == [{"file": "shard-00003.h5", "video_ids": ["v4"]}]
    assert shard_prefix((1, 4)) == "part1of4-shard-"


def _pool(identities: list[str], per: int = 3, size: int = 8) -> DonorPool:
    names = np.array([i for i in identities for _ in range(per)])
    count = len(names)
    faces = np.arange(count, dtype=np.uint8)[:, None, None, None] * np.ones((1, size, size, 3), np.uint8)
    return DonorPool(faces, np.zeros((count, 68, 2), np.float32), names, np.array([f"{n}/v" for n in names]),
                     np.tile(np.arange(per, dtype=np.int32), len(identities)))


def test_donor_choice_is_reproducible_never_own_identity_and_spreads():
    index = DonorIndex(_pool(["a", "b", "c", "d"]))
    picks = [index.choose(7, "b/v/1", frame, k, 0, "b") for frame in range(300) for k in range(2)]
    assert picks == [index.choose(7, "b/v/1", frame, k, 0, "b") for frame in range(300) for k in range(2)]
    identities = Counter(index.pool.identity[p] for p in picks)
    assert "b" not in identities and set(identities) == {"a", "c", "d"}
    assert min(identities.values()) > 150  # roughly uniform over the 3 others (600 picks)
    assert len(set(picks)) == 9  # every entry of the other identities gets used
    assert picks != [index.choose(8, "b/v/1", frame, k, 0, "b") for frame in range(300) for k in range(2)]


def test_donor_choice_without_other_identities_is_none():
    assert DonorIndex(_pool(["a"])).choose(0, "a/v/1", 0, 0, 0, "a") is None
    assert DonorIndex(_pool(["a"])).choose(0, "z/v/1", 0, 0, 0, "z") is not None


def test_pool_is_evenly_spaced_per_identity_and_extension_keeps_old_entries(tmp_path):
    assert evenly_spaced(10, 4) == [1, 3, 6, 8] and evenly_spaced(2, 8) == [0, 1]
    frames = {vid: {"faces": np.full((n, 4, 4, 3), i, np.uint8), "landmarks": np.full((n, 68, 2), i, np.float32)}
              for i, (vid, n) in enumerate([("p/a", 6), ("p/b", 4), ("q/a", 3)])}
    kept = [{"video_id": v, "identity": v[0], "frames_kept": n} for v, n in (("p/a", 6), ("p/b", 4), ("q/a", 3))]
    loads = []
    pool = build_pool(kept, lambda v: loads.append(v) or frames[v], per_identity=4, size=4)
    assert pool.identity.tolist() == ["p"] * 4 + ["q"] * 3
    assert list(zip(pool.video_id.tolist(), pool.row.tolist()))[:4] == [("p/a", 1), ("p/a", 3), ("p/b", 0), ("p/b", 2)]
    assert pool.faces[2, 0, 0, 0] == 1  # pixels come from the named video
    save_pool(tmp_path / "pool.npz", pool)
    again = load_pool(tmp_path / "pool.npz")
    assert np.array_equal(again.faces, pool.faces) and again.identity.tolist() == pool.identity.tolist()
    loads.clear()
    grown = build_pool(kept + [{"video_id": "r/a", "identity": "r", "frames_kept": 2}],
                       lambda v: loads.append(v) or {**frames, "r/a": frames["q/a"]}[v], 4, 4, existing=again)
    assert loads == ["r/a"]  # known identities are not re-drawn
    assert grown.identity.tolist() == ["p"] * 4 + ["q"] * 3 + ["r"] * 2


def test_space_estimate_per_frame_bytes():
    raw = PrepConfig(source="videos", codec="raw", swaps=2, descriptor_dim=84)
    assert shard_bytes_per_frame(raw) == pytest.approx(128 * 128 * 3 * 3 + 2 * 64 * 64 * 3 + 544 + 168 + 20 + 2 + 1)
    jpeg = PrepConfig(source="videos", codec="jpeg:90", swaps=2, descriptor_dim=84)
    assert shard_bytes_per_frame(jpeg) < 0.2 * shard_bytes_per_frame(raw)
    assert work_bytes_per_frame(jpeg) > 5 * shard_bytes_per_frame(jpeg)


def test_config_differences_name_the_changed_keys():
    a = PrepConfig(source="voxceleb").content_key()
    b = PrepConfig(source="voxceleb", fps=10.0, swaps=2).content_key()
    assert config_differences(a, b) == ["fps: 5.0 -> 10.0", "swaps: 1 -> 2"]
    assert "model_dir" not in PrepConfig(source="voxceleb", model_dir="/x").prep_config()


def test_progress_line_draws_only_when_enabled():
    import io

    stream = io.StringIO()
    bar = PhaseProgress("1/3 faces", 4, stream=stream, enabled=True)
    bar.advance(frames=30, skips=1)
    bar.advance(3, frames=90)
    bar.close()
    last = stream.getvalue().split("\r")[-1]
    assert "1/3 faces" in last and "4/4" in last and "videos/s" in last and "skipped 1" in last
    assert "frames/s" in last and last.endswith("\n")
    quiet = io.StringIO()
    bar = PhaseProgress("x", 2, stream=quiet)  # StringIO is not a TTY
    bar.advance(2, frames=5)
    bar.close()
    assert quiet.getvalue() == ""
