"""The shard index, the MAE clip catalogue and the epoch's video assignment are built with array operations
over whole shards; they must equal the per-video implementations they replace, kept here as references,
on sets with gaps, several shards, and one video's frames split over two shards."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from clip_fixtures import make_clip_shards
from shard_fixtures import make_header, make_video
from sslfer_core.shard_format import ShardReader, write_shard
from train.methods.mae.clip_plan import CatalogueBuilder, ClipConfig, build_catalogue, clip_stride_frames, shard_fps, valid_starts
from train.methods.contrastive.epoch_plan import assign_videos
from train.shard_index import build_shard_index
from train.methods.contrastive.temporal_sampler import positive_candidates


# -- the per-video implementations these replace (references only)
def reference_index(paths):
    shard_ids, local, first, frames, identities, names, times = [], [], [], [], [], [], []
    for s, path in enumerate(paths):
        reader = ShardReader(path)
        table = reader.videos
        for v in range(len(table)):
            rows = reader.video_rows(v)
            shard_ids.append(s)
            local.append(v)
            first.append(rows.start)
            frames.append(rows.stop - rows.start)
            identities.append(str(table.identity[v]))
            names.append(str(table.video_id[v]))
            times.append(np.asarray(reader.timestamps[rows], dtype=np.float64))
    identity_names = sorted(set(identities))
    lookup = {name: i for i, name in enumerate(identity_names)}
    return dict(video_shard=shard_ids, video_local=local, video_first_row=first, video_frames=frames,
                video_identity=[lookup[i] for i in identities], video_names=names, identity_names=identity_names,
                timestamps=times)


def reference_catalogue(index, cfg):
    fps = shard_fps(index)
    stride = clip_stride_frames(fps, cfg)
    span = (cfg.frames - 1) * stride + 1
    run_video, run_start, run_length, usable = [], [], [], []
    short = mistimed = 0
    for video, ts in enumerate(index.timestamps):
        if len(ts) < span:
            short += 1
            continue
        ok = valid_starts(ts, cfg.frames, stride, fps, cfg.timing_tolerance)
        edges = np.diff(np.concatenate([[0], ok.astype(np.int8), [0]]))
        begins, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if not len(begins):
            mistimed += 1
            continue
        usable.append(video)
        run_video += [video] * len(begins)
        run_start += begins.tolist()
        run_length += (ends - begins).tolist()
    return dict(run_video=run_video, run_start=run_start, run_length=run_length, usable=usable,
                skipped_short=short, skipped_timing=mistimed, stride=stride)


def reference_assign(index, num_units, seed, epoch):
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0xA5]))
    if len(index.paths) >= num_units:
        items = [np.flatnonzero(index.video_shard == s) for s in range(len(index.paths))]
    else:
        items = [np.array([v]) for v in range(index.num_videos)]
    sizes = np.array([index.video_frames[i].sum() for i in items])
    order = rng.permutation(len(items))
    order = order[np.argsort(-sizes[order], kind="stable")]
    loads = np.zeros(num_units, np.int64)
    owned = [[] for _ in range(num_units)]
    unit_label = rng.permutation(num_units)
    for item in order:
        u = int(np.argmin(loads[unit_label]))
        owned[unit_label[u]].append(items[item])
        loads[unit_label[u]] += sizes[item]
    return [np.sort(np.concatenate(o)) if o else np.zeros(0, np.int64) for o in owned]


# -- synthetic sets
def gappy_set(root: Path, *, fps: float = 25.0, shards: int = 4, seed: int = 0) -> list[Path]:
    """Shards of videos of many lengths, some with dropped frames, one video's frames split over the
    last two shards (the same video id continues at a later time), identities interleaved."""
    rng = np.random.default_rng(seed)
    header = dataclasses.replace(make_header(size=8, patch=4, swaps=0, descriptor_dim=0),
                                 prep_config={"fps": fps, "size": 8})
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        videos = []
        for v in range(int(rng.integers(2, 6))):
            n = int(rng.integers(1, 140))
            video = make_video(rng, header, n, video_id=f"s{s}v{v}", identity=f"id{rng.integers(5)}", fps=fps,
                               start=float(rng.integers(0, 3)) / fps)
            if n > 10 and rng.random() < 0.5:  # drop a few frames: gaps in time
                keep = rng.random(n) > 0.1
                keep[0] = True
                for name in ("faces", "landmarks", "eyes", "mouth", "timestamps", "frame_index", "det_score"):
                    setattr(video, name, getattr(video, name)[keep])
            videos.append(video)
        if s >= shards - 2:  # the same video continues from one shard into the next
            split = make_video(rng, header, 80, video_id="split", identity="id1", fps=fps,
                               start=0.0 if s == shards - 2 else 80 / fps)
            videos.append(split)
        paths.append(write_shard(root / f"shard-{s:05d}.h5", header, videos))
    return paths


def assert_index_equal(index, ref):
    for key in ("video_shard", "video_local", "video_first_row", "video_frames", "video_identity"):
        got = getattr(index, key)
        assert got.dtype == np.int64 and got.tolist() == list(ref[key]), key
    assert [index.video_name(v) for v in range(index.num_videos)] == ref["video_names"]
    assert index.identity_names == ref["identity_names"]
    assert len(index.timestamps) == len(ref["timestamps"])
    for got, want in zip(index.timestamps, ref["timestamps"]):
        assert got.dtype == np.float64 and np.array_equal(got, want)  # bit for bit


def assert_catalogue_equal(cat, ref):
    for key in ("run_video", "run_start", "run_length", "usable"):
        got = getattr(cat, key)
        assert got.dtype == np.int64 and got.tolist() == list(ref[key]), key
    assert (cat.skipped_short, cat.skipped_timing, cat.stride) == (ref["skipped_short"], ref["skipped_timing"],
                                                                   ref["stride"])


CONFIGS = [ClipConfig(), ClipConfig(frames=4, stride_frames=2), ClipConfig(frames=1),
           ClipConfig(frames=3, stride_frames=1, timing_tolerance=0.2)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_and_catalogue_equal_the_per_video_versions_on_gappy_sets(tmp_path, seed):
    paths = gappy_set(tmp_path / "set", seed=seed)
    index = build_shard_index(paths)
    assert_index_equal(index, reference_index(paths))
    assert index.video_names.tolist().count(b"split") == 2  # one video, two shards: two index entries
    for cfg in CONFIGS:
        assert_catalogues_equal(paths, index, cfg)


def assert_catalogues_equal(paths, index, cfg):
    """build_catalogue, and the catalogue built while an index without timestamps is read, both equal
    the reference."""
    ref = reference_catalogue(index, cfg)
    assert ref["usable"]
    assert_catalogue_equal(build_catalogue(index, cfg), ref)
    builder = CatalogueBuilder(cfg)
    lean = build_shard_index(paths, keep_timestamps=False, on_shard=builder)
    assert lean.timestamps is None and builder.covers(lean)
    assert_catalogue_equal(builder.finish(lean), ref)


def test_index_and_catalogue_equal_the_per_video_versions_on_real_shards(voxceleb_mini, tmp_path):
    """Two voxceleb_mini clips prepared at 5 fps: real timestamps, dropped frames included."""
    from click.testing import CliRunner
    from preprocess.cli import main

    out = tmp_path / "real"
    result = CliRunner().invoke(main, ["voxceleb", str(voxceleb_mini), "--out", str(out), "--limit", "2",
                                       "--jobs", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    paths = sorted(out.glob("*.h5"))
    index = build_shard_index(paths)
    assert_index_equal(index, reference_index(paths))
    for cfg in (ClipConfig(frames=4, stride_frames=None, stride_seconds=0.2), ClipConfig(frames=2, stride_frames=None,
                stride_seconds=0.4), ClipConfig(frames=8, stride_frames=None, stride_seconds=0.2, timing_tolerance=0.1)):
        assert_catalogues_equal(paths, index, cfg)


def test_the_clip_fixture_set_and_its_refusals(tmp_path):
    paths = make_clip_shards(tmp_path / "clips")
    index = build_shard_index(paths)
    assert_index_equal(index, reference_index(paths))
    for cfg in CONFIGS:
        assert_catalogues_equal(paths, index, cfg)
    long = ClipConfig(frames=40)  # longer than every video: both refuse with the catalogue's error
    builder = CatalogueBuilder(long)
    lean = build_shard_index(paths, keep_timestamps=False, on_shard=builder)
    expected = "spans 157 stored frames .* but the longest video has 130 frames"
    with pytest.raises(ValueError, match=expected):
        builder.finish(lean)
    with pytest.raises(ValueError, match=expected):
        build_catalogue(index, long)
    with pytest.raises(ValueError, match="read without timestamps"):
        build_catalogue(lean, long)


@pytest.mark.parametrize("units", [1, 3, 4, 6, 40])
def test_assign_videos_equals_the_scan_per_shard(tmp_path, units):
    index = build_shard_index(gappy_set(tmp_path / "set", seed=5, shards=6))
    for epoch in range(3):
        got, want = assign_videos(index, units, 11, epoch), reference_assign(index, units, 11, epoch)
        assert [g.tolist() for g in got] == [w.tolist() for w in want]


def test_float32_relative_time_is_not_exact_at_the_rates_in_use():
    """Why the index keeps float64: at 25 and 5 fps the float32 times differ from the stored ones, and
    TimeAug's weights with them (so a seeded epoch could draw other frames)."""
    for fps in (25.0, 5.0):
        ts = np.arange(200) / fps
        rel32 = (ts - ts[0]).astype(np.float32).astype(np.float64) + ts[0]
        assert not np.array_equal(rel32, ts)
        _, weight64 = positive_candidates(ts)
        _, weight32 = positive_candidates(rel32)
        assert not np.array_equal(weight32, weight64)
