"""Clip plan: the stride resolves against the shards' fps (or is refused naming the prep option), every
clip is `frames` rows at the stride inside one gap-free stretch of one video, short videos are skipped and
counted, epochs redraw from (seed, epoch), and ranks split every global batch disjointly."""
from collections import Counter

import numpy as np
import pytest

from clip_fixtures import CLIP_VALID_STARTS, GAPPY_VIDEOS, SHORT_VIDEOS, make_clip_shards
from train.methods.mae.clip_plan import (
    ClipConfig, ClipConfigError, build_catalogue, clip_stride_frames, plan_epoch_clips, shard_fps, valid_starts,
    worker_batches,
)
from train.shard_index import build_shard_index


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_shard_index(make_clip_shards(tmp_path_factory.mktemp("clipplan")))


def test_stride_in_frames_or_seconds_resolves_against_the_shard_fps():
    assert ClipConfig().span_seconds == pytest.approx(2.56)  # 16 frames x 4 / 25 fps, the reference
    assert clip_stride_frames(25.0, ClipConfig()) == 4
    assert clip_stride_frames(50.0, ClipConfig()) == 8
    assert clip_stride_frames(12.5, ClipConfig()) == 2
    assert clip_stride_frames(6.25, ClipConfig()) == 1
    assert clip_stride_frames(5.0, ClipConfig(stride_frames=None, stride_seconds=0.2)) == 1
    assert clip_stride_frames(25.0, ClipConfig(stride_frames=None, stride_seconds=0.2)) == 5
    assert clip_stride_frames(30.0, ClipConfig(stride_frames=2, frame_rate=30.0)) == 2


@pytest.mark.parametrize("fps, cfg, multiple, example", [
    (5.0, ClipConfig(), "6.25", "--fps 25"),
    (24.0, ClipConfig(), "6.25", "--fps 25"),
    (5.0, ClipConfig(stride_frames=None, stride_seconds=0.3), "3.33333", "--fps 6.66667"),
])
def test_a_stride_the_fps_cannot_give_is_refused_naming_the_prep_option(fps, cfg, multiple, example):
    with pytest.raises(ClipConfigError) as info:
        clip_stride_frames(fps, cfg)
    message = str(info.value)
    assert "\n" not in message
    assert "`sslfer-prep --fps F`" in message and f"multiple of {multiple}" in message and example in message
    assert f"prepared at {fps:g} fps" in message


def test_shards_without_or_with_mixed_fps_are_refused(tmp_path):
    a = make_clip_shards(tmp_path / "a", fps=25.0)
    b = make_clip_shards(tmp_path / "b", fps=12.5)
    assert shard_fps(build_shard_index(a)) == 25.0
    with pytest.raises(ClipConfigError, match=r"different frame rates \(12.5, 25 fps\).*sslfer-prep --fps"):
        shard_fps(build_shard_index(a + b))
    index = build_shard_index(a)
    index.headers[0].prep_config.pop("fps")
    with pytest.raises(ClipConfigError, match="states no prep fps.*sslfer-prep --fps 25"):
        shard_fps(index)


def test_invalid_configs_are_one_line_errors():
    for kwargs in ({"frames": 0}, {"stride_frames": 0}, {"stride_frames": None},
                   {"stride_seconds": 0.1}, {"stride_frames": None, "stride_seconds": -1.0}, {"clips_per_video": 0}):
        with pytest.raises(ClipConfigError):
            ClipConfig(**kwargs)


def _loop_valid_starts(ts, frames, stride, fps, tolerance=0.5):
    """Reference: start i is valid when every clip frame exists and each step lasts stride/fps +- tolerance periods."""
    out = []
    for i in range(len(ts)):
        rows = [i + k * stride for k in range(frames)]
        if rows[-1] >= len(ts):
            out.append(False)
            continue
        out.append(all(abs(ts[b] - ts[a] - stride / fps) <= tolerance / fps for a, b in zip(rows, rows[1:])))
    return np.array(out)


def test_valid_starts_match_a_loop_over_every_window():
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(1, 90))
        source = np.sort(rng.choice(n + 10, size=n, replace=False))  # dropped source frames
        ts = source / 25.0 + rng.uniform(-0.004, 0.004, n) * (trial % 2)  # timestamp noise < half a period
        frames, stride = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        np.testing.assert_array_equal(valid_starts(ts, frames, stride, 25.0),
                                      _loop_valid_starts(ts, frames, stride, 25.0))
        np.testing.assert_array_equal(valid_starts(ts, frames, stride, 25.0, 0.8),
                                      _loop_valid_starts(ts, frames, stride, 25.0, 0.8))


def test_unevenly_kept_frames_pass_only_a_looser_timing_tolerance():
    # 30 fps video kept at 25 fps: the first source frame of every 1/25 s interval, so rows are 1 or 2
    # source frames apart and 4 rows last 4/30 or 5/30 s instead of 0.16 s (0.67 or 0.17 row periods off).
    source = np.arange(300)
    kept = source[np.r_[True, np.floor(source[1:] * 25 / 30) != np.floor(source[:-1] * 25 / 30)]]
    ts = kept / 30.0
    assert not valid_starts(ts, 16, 4, 25.0).any()
    loose = valid_starts(ts, 16, 4, 25.0, tolerance=0.7)
    assert loose[: len(ts) - 60].all() and not loose[len(ts) - 60:].any()  # the last 60 cannot fit 61 rows
    with pytest.raises(ClipConfigError, match="timing_tolerance"):
        ClipConfig(timing_tolerance=1.0)


def test_catalogue_keeps_gap_free_windows_and_counts_skipped_videos(index):
    cat = build_catalogue(index, ClipConfig())
    assert (cat.stride, cat.span_rows, cat.fps) == (4, 61, 25.0)
    assert cat.usable.tolist() == sorted(CLIP_VALID_STARTS)
    assert cat.skipped_short == len(SHORT_VIDEOS) and cat.skipped_timing == len(GAPPY_VIDEOS)
    for video, starts in CLIP_VALID_STARTS.items():
        runs = [range(s, s + n) for v, s, n in zip(cat.run_video, cat.run_start, cat.run_length) if v == video]
        assert runs == [starts]


def test_every_planned_clip_is_contiguous_at_the_stride_in_rows_and_time(index):
    cfg = ClipConfig(clips_per_video=20)
    seen = {video: set() for video in CLIP_VALID_STARTS}
    for epoch in range(5):
        plan = plan_epoch_clips(index, cfg, seed=1, epoch=epoch, batch_size=4)
        assert plan.skipped_short == 2 and plan.skipped_timing == 1
        for b in range(plan.steps):
            rows = plan.rows(b)
            for video, clip in zip(plan.video[b], rows):
                ts = index.timestamps[video][clip]
                assert clip[0] in CLIP_VALID_STARTS[video]
                assert np.array_equal(np.diff(clip), np.full(15, 4))
                np.testing.assert_allclose(np.diff(ts), 4 / 25.0, atol=1e-9)  # no dropped frame inside
                seen[int(video)].add(int(clip[0]))
    # Starts are drawn over every valid position (uniformly; 100 draws over <= 50 starts hit them all).
    assert {v: sorted(s) for v, s in seen.items() if v != 3} == {0: list(range(10)), 1: [0]}
    assert len(seen[3]) > 40 and seen[3] <= set(range(20, 70))


def test_epochs_redraw_and_the_same_seed_and_epoch_repeat(index):
    cfg = ClipConfig(clips_per_video=8)

    def plan(seed, epoch):
        p = plan_epoch_clips(index, cfg, seed=seed, epoch=epoch, batch_size=3)
        return np.concatenate([p.video.ravel(), p.start.ravel()])

    assert np.array_equal(plan(5, 2), plan(5, 2))
    assert not np.array_equal(plan(5, 2), plan(5, 3))
    assert not np.array_equal(plan(5, 2), plan(6, 2))


def test_ranks_partition_every_global_batch(index):
    cfg = ClipConfig(clips_per_video=7)  # 21 clips: 3 ranks x 2 -> 3 steps, 3 dropped
    plans = [plan_epoch_clips(index, cfg, seed=0, epoch=4, batch_size=2, rank=r, world_size=3) for r in range(3)]
    assert [p.steps for p in plans] == [3, 3, 3] and plans[0].num_clips == 21 and plans[0].dropped == 3
    clips = Counter((int(v), int(s)) for p in plans for v, s in zip(p.video.ravel(), p.start.ravel()))
    assert sum(clips.values()) == 18
    per_video = Counter()
    for (video, _), count in clips.items():
        per_video[video] += count
    assert all(count <= 7 for count in per_video.values()) and sum(per_video.values()) == 18
    # One clip per video: no clip appears on two ranks or twice on one.
    one = [plan_epoch_clips(index, ClipConfig(), seed=0, epoch=0, batch_size=1, rank=r, world_size=3) for r in range(3)]
    videos = [int(v) for p in one for v in p.video.ravel()]
    assert sorted(videos) == sorted(CLIP_VALID_STARTS)


def test_span_longer_than_every_video_and_oversized_batches_are_refused(index):
    with pytest.raises(ClipConfigError) as info:
        build_catalogue(index, ClipConfig(frames=40))  # 157 rows > the longest video (130)
    message = str(info.value)
    assert "\n" not in message and "40 frames at stride 4 spans 157 stored frames (6.40 s)" in message
    assert "longest video has 130 frames" in message
    with pytest.raises(ClipConfigError, match=r"3 clips per epoch .* one global batch of 2 x 2"):
        plan_epoch_clips(index, ClipConfig(), seed=0, epoch=0, batch_size=2, world_size=2)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        plan_epoch_clips(index, ClipConfig(), seed=0, epoch=0, batch_size=1, rank=2, world_size=2)


def test_workers_serve_batches_round_robin_from_the_skip():
    assert [list(worker_batches(10, 3, w, skip=4)) for w in range(3)] == [[4, 7], [5, 8], [6, 9]]
    assert [list(worker_batches(5, 1, 0))] == [[0, 1, 2, 3, 4]]
    assert list(worker_batches(2, 4, 3)) == []


def test_the_order_visits_shards_in_groups_and_shuffles_within_them(tmp_path):
    from train.methods.mae.clip_plan import draw_epoch_clips

    videos = tuple((70, None) for _ in range(12))
    index = build_shard_index(make_clip_shards(tmp_path, videos=videos, per_shard=2))  # 6 shards of 2 videos
    for group in (1, 2, 3):
        cfg = ClipConfig(clips_per_video=5, shard_group=group)
        video, _ = draw_epoch_clips(build_catalogue(index, cfg), cfg, seed=0, epoch=0)
        shards = index.video_shard[video]
        # Consecutive blocks of 10 * group clips hold exactly `group` shards each, every shard once.
        groups = [frozenset(shards[i:i + 10 * group].tolist()) for i in range(0, 60, 10 * group)]
        assert all(len(g) == group for g in groups) and len(set().union(*groups)) == 6
        # Inside a block the clips are shuffled, not one video after the other.
        first = video[: 10 * group]
        assert np.count_nonzero(first[1:] != first[:-1]) > 2 * group
    cfg = ClipConfig(clips_per_video=5)  # 6 shards <= 32: one plain shuffle over all of them
    video, _ = draw_epoch_clips(build_catalogue(index, cfg), cfg, seed=0, epoch=0)
    assert len(set(index.video_shard[video[:10]].tolist())) > 2
