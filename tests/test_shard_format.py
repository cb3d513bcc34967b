import h5py
import numpy as np
import pytest

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
