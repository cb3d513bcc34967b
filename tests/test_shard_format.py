import os
import pickle
import stat

import h5py
import numpy as np
import pytest

from sslfer_core import shard_format
from sslfer_core.shard_format import (
    ShardFormatError, ShardReader, ShardVersionError, ShardWriter, decode_jpeg, encode_jpeg, write_shard,
)
from shard_fixtures import make_header, make_video


def _write_three_videos(path, header, rng):
    videos = [make_video(rng, header, n, video_id=f"v{i}", identity=f"id{i % 2}") for i, n in enumerate((7, 1, 12))]
    write_shard(path, header, videos)
    return videos


@pytest.mark.parametrize("swaps,descriptor_dim", [(1, 8), (2, 0), (0, 8)])
def test_round_trip_is_bit_exact(tmp_path, swaps, descriptor_dim):
    rng = np.random.default_rng(0)
    header = make_header(swaps=swaps, descriptor_dim=descriptor_dim)
    videos = _write_three_videos(tmp_path / "a.h5", header, rng)
    reader = ShardReader(tmp_path / "a.h5")
    assert reader.num_frames == 20
    assert reader.header == header
    assert list(reader.videos.video_id) == ["v0", "v1", "v2"]
    assert list(reader.videos.identity) == ["id0", "id1", "id0"]
    assert list(reader.videos.first_row) == [0, 7, 8]
    for i, video in enumerate(videos):
        rows = reader.video_rows(i)
        np.testing.assert_array_equal(reader.read_images("face", rows), video.faces)
        np.testing.assert_array_equal(reader.read_images("eyes", rows), video.eyes)
        np.testing.assert_array_equal(reader.read_images("mouth", rows), video.mouth)
        np.testing.assert_array_equal(reader.read_array("landmarks", rows), video.landmarks)
        np.testing.assert_array_equal(reader.read_array("timestamp", rows), video.timestamps)
        np.testing.assert_array_equal(reader.read_array("frame_index", rows), video.frame_index)
        np.testing.assert_array_equal(reader.read_array("det_score", rows), video.det_score)
        np.testing.assert_array_equal(reader.read_array("video_row", rows), np.full(len(video), i))
        if swaps:
            np.testing.assert_array_equal(reader.read_images("swaps", rows), video.swaps)
            np.testing.assert_array_equal(reader.read_array("swap_ok", rows), video.swap_ok)
        else:
            assert not reader.has_field("swaps")
        if descriptor_dim:
            np.testing.assert_array_equal(reader.read_array("descriptor", rows), video.descriptors.astype(np.float16))
        else:
            assert not reader.has_field("descriptor")


def test_random_rows_come_back_in_request_order(tmp_path):
    rng = np.random.default_rng(1)
    header = make_header()
    videos = _write_three_videos(tmp_path / "a.h5", header, rng)
    faces = np.concatenate([v.faces for v in videos])
    reader = ShardReader(tmp_path / "a.h5")
    for rows in ([19, 0, 5, 5, 3], [2, 18], [4]):
        np.testing.assert_array_equal(reader.read_images("face", rows), faces[rows])


def test_slice_by_time_returns_the_right_rows(tmp_path):
    rng = np.random.default_rng(2)
    header = make_header()
    _write_three_videos(tmp_path / "a.h5", header, rng)
    reader = ShardReader(tmp_path / "a.h5")
    # video 2 starts at row 8 and has frames at 0.0, 0.2, ..., 2.2 s
    rows = reader.rows_between(2, 0.5, 1.3)
    assert (rows.start, rows.stop) == (8 + 3, 8 + 7)
    np.testing.assert_allclose(reader.read_array("timestamp", rows), [0.6, 0.8, 1.0, 1.2])
    empty = reader.rows_between(2, 5.0, 9.0)
    assert empty.stop == empty.start


def test_jpeg_codec_is_close_and_recorded(tmp_path):
    rng = np.random.default_rng(3)
    header = make_header(codec="jpeg:95", size=64, patch=32)
    video = make_video(rng, header, 4)
    smooth = np.stack([np.full((64, 64, 3), (40 * i, 100, 200), np.uint8) for i in range(4)])
    video.faces = smooth
    write_shard(tmp_path / "j.h5", header, [video])
    reader = ShardReader(tmp_path / "j.h5")
    assert reader.header.codecs["face"].name == "jpeg" and reader.header.codecs["face"].quality == 95
    faces = reader.read_images("face", slice(0, 4))
    assert faces.dtype == np.uint8 and faces.shape == (4, 64, 64, 3)
    assert np.abs(faces.astype(int) - smooth.astype(int)).max() <= 4
    assert reader.read_images("swaps", [1, 3]).shape == (2, 1, 64, 64, 3)


def test_jpeg_keeps_rgb_order():
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 0] = 250  # pure red
    decoded = decode_jpeg(encode_jpeg(image, 95))
    assert decoded[..., 0].mean() > 200 and decoded[..., 2].mean() < 40


def test_newer_major_version_is_refused_with_both_versions(tmp_path):
    rng = np.random.default_rng(4)
    header = make_header()
    _write_three_videos(tmp_path / "a.h5", header, rng)
    with h5py.File(tmp_path / "a.h5", "r+") as h5:
        h5.attrs["schema_version"] = "2.3"
    with pytest.raises(ShardVersionError, match=r"2\.3.*1\.x"):
        ShardReader(tmp_path / "a.h5")


def test_newer_minor_version_is_read(tmp_path):
    rng = np.random.default_rng(4)
    _write_three_videos(tmp_path / "a.h5", make_header(), rng)
    with h5py.File(tmp_path / "a.h5", "r+") as h5:
        h5.attrs["schema_version"] = "1.7"
    assert ShardReader(tmp_path / "a.h5").header.schema_version == (1, 7)


def test_foreign_hdf5_and_garbage_are_refused(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["x"] = np.arange(3)
    with pytest.raises(ShardFormatError, match="not an sslfer shard"):
        ShardReader(tmp_path / "other.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(ShardFormatError, match="cannot open"):
        ShardReader(tmp_path / "junk.h5")


def test_killed_writer_leaves_no_file(tmp_path):
    rng = np.random.default_rng(5)
    header = make_header()
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "a.h5", header) as writer:
            writer.add_video(make_video(rng, header, 3))
            raise RuntimeError("simulated crash mid-shard")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_wrong_shapes_and_unsorted_time(tmp_path):
    rng = np.random.default_rng(6)
    header = make_header()
    video = make_video(rng, header, 3)
    video.timestamps = video.timestamps[::-1].copy()
    with pytest.raises(ValueError, match="sorted"):
        write_shard(tmp_path / "a.h5", header, [video])
    video = make_video(rng, header, 3)
    video.swaps = None
    with pytest.raises(ValueError, match="swaps"):
        write_shard(tmp_path / "b.h5", header, [video])
    assert list(tmp_path.iterdir()) == []


def test_no_pickled_objects_in_a_shard(tmp_path):
    rng = np.random.default_rng(7)
    _write_three_videos(tmp_path / "a.h5", make_header(codec="jpeg"), rng)
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        def check(name, obj):
            if isinstance(obj, h5py.Dataset):
                assert obj.dtype.kind != "O" or h5py.check_vlen_dtype(obj.dtype) is not None \
                    or h5py.check_string_dtype(obj.dtype) is not None, name
        h5.visititems(check)
        for value in h5.attrs.values():
            assert isinstance(value, (str, bytes, int, np.integer)), type(value)


# ----------------------------------------------------------------------------- row reads

ROW_REQUESTS = [
    [19, 0, 5, 13, 2],  # scattered, unsorted: several runs
    [7, 7, 3, 7],  # repeats
    [0, 1, 2, 10, 11, 18],  # sorted runs: no reordering needed
    [4, 6, 5, 5],  # dense: one read of the span
    [-1, 0, -20],  # negative indices count from the end, as in numpy
    np.array([12, 9], np.int32),
    [[3, 15], [0, 19]],  # any index shape
    [],
    np.array([], np.int64),
    [11],
    11,
    slice(2, 9), slice(None), slice(5, 5), slice(0, 20, 3), slice(None, None, -2), slice(-3, None), slice(15, 99),
]


class _RecordingDataset:
    """Stands in for an h5py Dataset and records every key it is read with."""

    def __init__(self, dataset):
        self.dataset, self.keys = dataset, []
        self.shape, self.dtype = dataset.shape, dataset.dtype

    def __getitem__(self, key):
        self.keys.append(key)
        return self.dataset[key]


@pytest.mark.parametrize("span_bytes", [0, shard_format.SPAN_READ_BYTES])  # 0: runs even for small fields
@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_row_reads_match_numpy_indexing_of_the_full_array(tmp_path, monkeypatch, codec, span_bytes):
    monkeypatch.setattr(shard_format, "SPAN_READ_BYTES", span_bytes)
    rng = np.random.default_rng(8)
    _write_three_videos(tmp_path / "a.h5", make_header(swaps=2, codec=codec), rng)
    reader = ShardReader(tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r") as h5:
        full = {name: h5["frames"][name][()] for name in ("face", "swaps", "swap_ok", "landmarks", "timestamp")}
    for name, array in full.items():
        for rows in ROW_REQUESTS:
            got, expected = reader.read_array(name, rows), array[rows]
            assert got.shape == expected.shape and got.dtype == expected.dtype, (name, rows)
            if array.dtype.kind == "O":  # JPEG payloads: compare every buffer
                assert all(np.array_equal(g, e) for g, e in zip(got.reshape(-1), expected.reshape(-1))), (name, rows)
            else:
                np.testing.assert_array_equal(got, expected, err_msg=f"{name} {rows}")
    if codec == "raw":
        np.testing.assert_array_equal(reader.read_images("face", [19, 0, 19]), full["face"][[19, 0, 19]])


def _recorded_keys(reader, name, rows):
    recorder = reader._datasets[name] = _RecordingDataset(reader._dataset(name))
    reader.read_array(name, rows)
    return recorder.keys


def test_scattered_rows_are_read_as_one_slice_per_run_or_span(tmp_path, monkeypatch):
    rng = np.random.default_rng(9)
    _write_three_videos(tmp_path / "a.h5", make_header(size=64), rng)  # 12 KiB per face
    _write_three_videos(tmp_path / "j.h5", make_header(codec="jpeg"), rng)
    reader, jpeg = ShardReader(tmp_path / "a.h5"), ShardReader(tmp_path / "j.h5")
    scattered = [17, 3, 4, 16, 5, 3, 9]
    monkeypatch.setattr(shard_format, "SPAN_READ_BYTES", 64 << 10)
    assert _recorded_keys(reader, "face", scattered) == [slice(3, 6), slice(9, 10), slice(16, 18)]
    assert _recorded_keys(reader, "timestamp", scattered) == [slice(3, 18)]  # small rows: one span
    assert _recorded_keys(reader, "face", [6, 4, 5, 8]) == [slice(4, 9)]  # dense: one span
    keys = _recorded_keys(jpeg, "face", scattered)  # variable-length rows: one point selection
    assert len(keys) == 1 and list(keys[0]) == [3, 4, 5, 9, 16, 17]


def test_bad_row_requests_are_clear_errors(tmp_path):
    rng = np.random.default_rng(10)
    _write_three_videos(tmp_path / "a.h5", make_header(), rng)
    reader = ShardReader(tmp_path / "a.h5")
    with pytest.raises(IndexError, match="row 20 is out of range for a field of 20 rows"):
        reader.read_array("timestamp", [0, 20])
    with pytest.raises(IndexError, match="row -21"):
        reader.read_array("timestamp", [-21])
    with pytest.raises(TypeError, match="integers"):
        reader.read_array("timestamp", [0.5, 1.0])
    with pytest.raises(KeyError, match="no field 'nonsense'"):
        reader.read_array("nonsense", [0])


def test_datasets_are_cached_per_handle_and_dropped_on_close_and_pickle(tmp_path):
    rng = np.random.default_rng(11)
    videos = _write_three_videos(tmp_path / "a.h5", make_header(), rng)
    faces = np.concatenate([v.faces for v in videos])
    reader = ShardReader(tmp_path / "a.h5")
    reader.read_images("face", [1])
    cached = reader._dataset("face")
    assert reader._dataset("face") is cached
    clone = pickle.loads(pickle.dumps(reader))  # h5py objects cannot be pickled: the cache must not travel
    assert clone._datasets == {}
    np.testing.assert_array_equal(clone.read_images("face", [4, 2]), faces[[4, 2]])
    reader.close()
    assert reader._datasets == {}
    np.testing.assert_array_equal(reader.read_images("face", [2]), faces[[2]])
    assert reader._dataset("face") is not cached


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_reads_through_its_own_handle_and_datasets(tmp_path):
    rng = np.random.default_rng(12)
    videos = _write_three_videos(tmp_path / "a.h5", make_header(), rng)
    faces = np.concatenate([v.faces for v in videos])
    reader = ShardReader(tmp_path / "a.h5")
    reader.read_images("face", [0])
    inherited_file, inherited_face = reader._h5, reader._dataset("face")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report whether it used fresh objects and read the right pixels, then leave at once
        try:
            images = reader.read_images("face", [13, 6, 13])
            ok = (reader._h5 is not inherited_file and reader._dataset("face") is not inherited_face
                  and np.array_equal(images, faces[[13, 6, 13]]))
            os.write(write_end, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 16)
    os.waitpid(pid, 0)
    os.close(read_end)
    assert answer == b"ok"
    assert reader._dataset("face") is inherited_face  # the parent keeps its own
    np.testing.assert_array_equal(reader.read_images("face", [6]), faces[[6]])


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_shards_get_the_umask_mode_not_a_private_one(tmp_path, umask):
    rng = np.random.default_rng(13)
    previous = os.umask(umask)
    try:
        _write_three_videos(tmp_path / "a.h5", make_header(), rng)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.h5").stat().st_mode) == 0o666 & ~umask
