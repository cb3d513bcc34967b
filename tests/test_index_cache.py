"""The per-machine index cache (train/index_cache.py): a start after the first reads the index from it,
equal to the one read from the shards and opening no shard; a damaged, stale or unwritable cache only
means the shards are read again."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

import train.shard_index as shard_index
from clip_fixtures import make_clip_shards
from data_manifest.manifest import build_manifest, save_manifest
from train import index_cache
from train.methods.mae.clip_plan import CatalogueBuilder, ClipConfig
from train.shard_set import open_shard_set
from train_fixtures import make_train_shards


@pytest.fixture
def opened(monkeypatch):
    """Counts the shards build_shard_index opens."""
    count = {"n": 0}
    real = shard_index.ShardReader

    def counting(path, *args, **kwargs):
        count["n"] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shard_index, "ShardReader", counting)
    return count


def _same_index(a, b) -> None:
    for field in ("video_shard", "video_local", "video_first_row", "video_frames", "video_identity", "video_names"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and np.array_equal(x, y), field
    assert a.identity_names == b.identity_names and a.headers == b.headers and a.paths == b.paths
    assert a.sha256 == b.sha256
    if a.timestamps is None:
        assert b.timestamps is None
    else:
        assert np.array_equal(a.timestamps.values, b.timestamps.values)
        assert np.array_equal(a.timestamps.offsets, b.timestamps.offsets)


def test_second_start_reads_the_cache_equal_and_opens_no_shard(tmp_path, opened):
    root = make_train_shards(tmp_path / "s", shards=3, videos=4, frames=12, identities=3)
    first, digest = open_shard_set(root)
    assert opened["n"] == 3
    second, again = open_shard_set(root)
    assert opened["n"] == 3 and again == digest  # not one more shard opened
    _same_index(first, second)
    assert not second.video_frames.flags.writeable and not second.timestamps.values.flags.writeable
    assert type(second.video_frames) is np.ndarray  # a plain array over the read-only mapping
    assert (index_cache.cache_root() / digest / "index" / "meta.json").is_file()


def test_a_method_without_timestamps_then_one_with_them(tmp_path, opened):
    root = make_train_shards(tmp_path / "s", shards=2, videos=2, frames=10)
    without, _ = open_shard_set(root, keep_timestamps=False)
    assert without.timestamps is None and opened["n"] == 2
    with_times, _ = open_shard_set(root)  # the cache has no timestamps yet: the shards are read
    assert opened["n"] == 4 and with_times.timestamps is not None
    cached, _ = open_shard_set(root)
    assert opened["n"] == 4
    _same_index(with_times, cached)


def test_mae_catalogue_is_restored_per_clip_configuration(tmp_path, opened):
    paths = make_clip_shards(tmp_path / "clips")
    root = tmp_path / "clips"
    save_manifest(root, build_manifest(root, paths))
    cfg = ClipConfig(frames=16, stride_frames=4)

    def start(config):
        builder = CatalogueBuilder(config)
        index, _ = open_shard_set(root, keep_timestamps=False, on_shard=builder)
        return builder.finish(index)

    read = start(cfg)
    assert opened["n"] == 2
    restored = start(cfg)
    assert opened["n"] == 2
    for field in dataclasses.fields(read):
        x, y = getattr(read, field.name), getattr(restored, field.name)
        assert (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y), field.name
    assert not restored.usable.flags.writeable
    other = start(dataclasses.replace(cfg, frames=8))  # another configuration: its own catalogue, read once
    assert opened["n"] == 4 and other.usable.size >= read.usable.size
    start(dataclasses.replace(cfg, frames=8, clips_per_video=3))  # the epoch's draw does not change it
    assert opened["n"] == 4


def test_a_damaged_cache_is_named_read_again_and_rewritten(tmp_path, opened):
    root = make_train_shards(tmp_path / "s", shards=2, videos=3, frames=10)
    first, digest = open_shard_set(root)
    target = index_cache.cache_root() / digest / "index" / "video_frames.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1  # one bit of the last video's frame count
    target.write_bytes(bytes(data))
    warned = []
    second, _ = open_shard_set(root, warn=warned.append)
    assert opened["n"] == 4 and len(warned) == 1
    assert "damaged" in warned[0] and "video_frames.npy does not match its sha256" in warned[0]
    _same_index(first, second)
    third, _ = open_shard_set(root, warn=warned.append)  # rewritten by the second start
    assert opened["n"] == 4 and len(warned) == 1
    _same_index(first, third)


def test_a_folder_of_another_version_or_a_half_written_one_is_not_used(tmp_path, opened, monkeypatch):
    root = make_train_shards(tmp_path / "s", shards=1, videos=2, frames=10)
    _, digest = open_shard_set(root)
    folder = index_cache.cache_root() / digest
    (folder / ".partial-index.999").mkdir()  # left by a start killed while writing
    monkeypatch.setattr(index_cache, "VERSION", index_cache.VERSION + 1)
    warned = []
    open_shard_set(root, warn=warned.append)
    assert opened["n"] == 2 and warned == []  # another version is no damage: it is read again, silently


def test_another_manifest_is_another_entry(tmp_path, opened):
    root = make_train_shards(tmp_path / "s", shards=2, videos=2, frames=10)
    _, digest = open_shard_set(root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]  # the same folder, now a set of one shard
    (root / "manifest.json").write_text(json.dumps(manifest))
    index, other = open_shard_set(root)
    assert other != digest and opened["n"] == 3 and len(index.paths) == 1


def test_full_verify_reads_the_shards_and_rewrites_the_cache(tmp_path, opened):
    root = make_train_shards(tmp_path / "s", shards=2, videos=2, frames=10)
    first, digest = open_shard_set(root)
    stamp = (index_cache.cache_root() / digest / "index" / "meta.json").stat().st_mtime_ns
    verified, _ = open_shard_set(root, full_verify=True)
    assert opened["n"] == 4
    _same_index(first, verified)
    assert (index_cache.cache_root() / digest / "index" / "meta.json").stat().st_mtime_ns != stamp


def test_only_the_newest_sets_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(index_cache, "MAX_SETS", 2)
    digests = []
    for n in range(3):
        root = make_train_shards(tmp_path / f"s{n}", shards=1, videos=2, frames=10, seed=n)
        digests.append(open_shard_set(root)[1])
        folder = index_cache.cache_root() / digests[-1]
        os.utime(folder, (n + 1, n + 1))  # written in this order
    kept = sorted(p.name for p in index_cache.cache_root().iterdir())
    assert kept == sorted(digests[1:])


def test_an_unwritable_cache_fails_nothing_and_warns_once(tmp_path, monkeypatch, capsys, opened):
    root = make_train_shards(tmp_path / "s", shards=1, videos=2, frames=10)
    monkeypatch.setattr(index_cache, "_warned_unwritable", False)

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(index_cache, "_write_folder", refuse)
    open_shard_set(root)
    open_shard_set(root)
    assert opened["n"] == 2  # each start read the shard
    warned = [line for line in capsys.readouterr().err.splitlines() if "shard index cache" in line]
    assert len(warned) == 1 and "Read-only file system" in warned[0]


def test_a_ranks_load_hashes_the_files_it_maps(tmp_path):
    """The sha256 check is what makes the cache safe to trust: a file swapped for another valid .npy of
    the same size is refused too."""
    root = make_train_shards(tmp_path / "s", shards=1, videos=2, frames=10)
    _, digest = open_shard_set(root)
    target = index_cache.cache_root() / digest / "index" / "video_identity.npy"
    original = np.load(target)
    swapped = original[::-1].copy()
    assert not np.array_equal(original, swapped) and target.stat().st_size == len(_npy_bytes(swapped))
    np.save(target, swapped)
    warned = []
    index, _ = open_shard_set(root, warn=warned.append)
    assert len(warned) == 1 and "video_identity.npy does not match" in warned[0]
    assert np.array_equal(index.video_identity, original)


def _npy_bytes(array) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_reading_the_index_from_the_shards_shows_a_bar_of_shards(tmp_path, monkeypatch):
    import train.shard_set as shard_set

    bars = []

    class Recorded:
        def __init__(self, label, total, **kwargs):
            self.label, self.total, self.done, self.closed = label, total, 0, False
            bars.append(self)

        def advance(self, amount=1, note=""):
            self.done += amount

        def close(self):
            self.closed = True

    monkeypatch.setattr(shard_set, "Progress", Recorded)
    root = make_train_shards(tmp_path / "s", shards=3, videos=2, frames=10)
    open_shard_set(root)
    indexing = [b for b in bars if b.label == "indexing"]
    assert len(indexing) == 1 and indexing[0].total == indexing[0].done == 3 and indexing[0].closed
    open_shard_set(root)  # from the cache: nothing to show
    assert len([b for b in bars if b.label == "indexing"]) == 1


def _rank_start(rank, port, root, out_dir):
    from gloo_ranks import gloo_environment

    gloo_environment(rank, port, 2, local_world=2)
    import train.shard_index as index_module
    from train.distributed import init_distributed, shutdown
    from train.shard_set import ShardSetError, open_shard_set as start

    real, opened_here = index_module.ShardReader, []

    def counting(path, *args, **kwargs):
        opened_here.append(Path(path).name)
        return real(path, *args, **kwargs)

    index_module.ShardReader = counting
    ctx = init_distributed("cpu")
    builder = CatalogueBuilder(ClipConfig(frames=4, stride_frames=1, frame_rate=5.0))
    try:
        index, _ = start(Path(root), ctx=ctx, on_shard=builder)
        catalogue = builder.finish(index)
    except ShardSetError as error:
        (Path(out_dir) / f"rank{rank}.error").write_text(str(error))
        return
    finally:
        shutdown(ctx)
    np.savez(Path(out_dir) / f"rank{rank}.npz", opened=np.array(opened_here), frames=index.video_frames,
             times=index.timestamps.values, writeable=index.video_frames.flags.writeable,
             runs=catalogue.run_start, usable=catalogue.usable)


def _two_rank_start(root: Path, out: Path) -> list[dict]:
    from gloo_ranks import spawn_ranks

    out.mkdir()
    spawn_ranks(_rank_start, (str(root), str(out)), 2)
    return [dict(np.load(out / f"rank{r}.npz")) if (out / f"rank{r}.npz").exists()
            else {"error": (out / f"rank{r}.error").read_text()} for r in range(2)]


def test_two_ranks_share_the_reading_then_both_map_the_cache(tmp_path):
    """A new machine: each rank reads half the shards, rank 0 merges the halves; the next start maps them.
    Index and MAE catalogue equal those of one process reading every shard."""
    root = make_train_shards(tmp_path / "s", shards=6, videos=2, frames=10, identities=3)
    first, second = _two_rank_start(root, tmp_path / "a"), _two_rank_start(root, tmp_path / "b")
    assert [sorted(r["opened"]) for r in first] == [[f"shard-{s:05d}.h5" for s in range(3)],
                                                    [f"shard-{s:05d}.h5" for s in range(3, 6)]]
    assert [len(r["opened"]) for r in second] == [0, 0]
    assert not any(bool(r["writeable"]) for r in first + second)  # the first start maps the merge too
    index_cache.drop_set(open_shard_set(root)[1])
    builder = CatalogueBuilder(ClipConfig(frames=4, stride_frames=1, frame_rate=5.0))
    alone, _ = open_shard_set(root, on_shard=builder)  # one process reading every shard
    catalogue = builder.finish(alone)
    for r in first + second:
        assert np.array_equal(r["frames"], alone.video_frames) and np.array_equal(r["times"], alone.timestamps.values)
        assert np.array_equal(r["runs"], catalogue.run_start) and np.array_equal(r["usable"], catalogue.usable)
    assert [p.name for p in (index_cache.cache_root() / open_shard_set(root)[1]).iterdir()
            if p.name.startswith(".")] == []  # no parts left behind


def test_a_failing_shard_in_one_ranks_share_stops_both_ranks_on_the_same_line(tmp_path):
    root = make_train_shards(tmp_path / "s", shards=4, videos=2, frames=10)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][3]["frames"] += 1  # shard 3 (rank 1's share) now disagrees with the manifest
    (root / "manifest.json").write_text(json.dumps(manifest))
    ranks = _two_rank_start(root, tmp_path / "a")
    assert ranks[0]["error"] == ranks[1]["error"] and "shard-00003.h5 fails verification" in ranks[0]["error"]


def test_merged_parts_equal_the_index_read_in_one_go(tmp_path):
    from train.shard_index import build_shard_index, merge_indexes

    root = make_train_shards(tmp_path / "s", shards=4, videos=3, frames=9, identities=4)
    paths = sorted(root.glob("*.h5"))
    whole = build_shard_index(paths)
    for cut in ([1], [2], [3], [1, 3]):
        bounds = [0, *cut, len(paths)]
        merged = merge_indexes([build_shard_index(paths[a:b]) for a, b in zip(bounds, bounds[1:])])
        _same_index(whole, merged)


def test_catalogue_parts_combine_to_the_catalogue_of_the_whole_set(tmp_path):
    from train.shard_index import build_shard_index, merge_indexes

    paths = make_clip_shards(tmp_path / "clips", per_shard=2)  # 3 shards, gaps and short videos among them
    cfg = ClipConfig(frames=16, stride_frames=4)
    whole_builder = CatalogueBuilder(cfg)
    whole = whole_builder.finish(build_shard_index(paths, keep_timestamps=False, on_shard=whole_builder))
    for cut in (1, 2):
        builders = [CatalogueBuilder(cfg), CatalogueBuilder(cfg)]
        parts = [build_shard_index(share, keep_timestamps=False, on_shard=b)
                 for share, b in zip((paths[:cut], paths[cut:]), builders)]
        index = merge_indexes(parts)
        joined = CatalogueBuilder(cfg)
        joined.restore(index.paths, CatalogueBuilder.combine([b.cache_arrays() for b in builders],
                                                             [0, parts[0].num_videos]))
        catalogue = joined.finish(index)
        for field in dataclasses.fields(whole):
            x, y = getattr(whole, field.name), getattr(catalogue, field.name)
            assert (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y), (cut, field.name)


def test_parts_of_different_face_sizes_are_refused_as_one_read_refuses_them(tmp_path):
    from train.shard_index import build_shard_index, merge_indexes

    small = build_shard_index(sorted(make_train_shards(tmp_path / "a", shards=1, videos=1, frames=5).glob("*.h5")))
    large = dataclasses.replace(small, headers=[dataclasses.replace(small.headers[0], image_size=36)])
    with pytest.raises(ValueError, match="different sizes"):
        merge_indexes([small, large])
