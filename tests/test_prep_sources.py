"""Input discovery, frame sampling and --part slicing of sslfer-prep (no face work: fast)."""
from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from preprocess.runner import part_of, select_inputs
from preprocess.sources import (
    SourceError, discover_frame_folders, discover_video_folder, discover_video_list, discover_voxceleb, natural_key,
)
from preprocess.video_decode import ClipReader, TimeSampler, read_image_rgb, to_rgb_uint8


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_voxceleb2_layout_with_dev_test_and_mp4_levels(tmp_path):
    touch(tmp_path / "dev" / "mp4" / "id00012" / "abc" / "00002.mp4")
    touch(tmp_path / "dev" / "mp4" / "id00012" / "abc" / "00001.mp4")
    touch(tmp_path / "test" / "mp4" / "id00500" / "x-y_z" / "00001.mp4")
    touch(tmp_path / "dev" / "mp4" / "id00012" / "abc" / "00001.m4a")  # audio is not a clip
    found = discover_voxceleb(tmp_path)
    assert [s.video_id for s in found] == ["id00012/abc/00001", "id00012/abc/00002", "id00500/x-y_z/00001"]
    assert [s.identity for s in found] == ["id00012", "id00012", "id00500"]
    assert found[0].source_path == "dev/mp4/id00012/abc/00001.mp4" and found[0].kind == "video"


def test_voxceleb1_frame_layout_sorts_frames_numerically(tmp_path):
    clip = tmp_path / "A.J._Buckley" / "1.6" / "1zcIwhmdeo4" / "1"
    for name in ("10.jpg", "2.jpg", "1.jpg"):
        touch(clip / name)
    touch(tmp_path / "Aaron_Tveit" / "1.6" / "yt2" / "3" / "1.jpg")
    found = discover_voxceleb(tmp_path, frames_fps=30)
    assert [s.video_id for s in found] == ["A.J._Buckley/1zcIwhmdeo4/1", "Aaron_Tveit/yt2/3"]
    assert found[0].identity == "A.J._Buckley" and found[0].kind == "frames" and found[0].frames_fps == 30
    assert sorted(["10.jpg", "2.jpg", "1.jpg"], key=natural_key) == ["1.jpg", "2.jpg", "10.jpg"]


def test_voxceleb_empty_or_mixed_root_is_refused(tmp_path):
    with pytest.raises(SourceError, match="no VoxCeleb clips"):
        discover_voxceleb(tmp_path)
    touch(tmp_path / "id1" / "yt" / "00001.mp4")
    touch(tmp_path / "name" / "1.6" / "yt" / "1" / "1.jpg")
    with pytest.raises(SourceError, match="both"):
        discover_voxceleb(tmp_path)


def test_video_folder_identity_is_parent_and_ids_are_relative(tmp_path):
    touch(tmp_path / "Ann Lee" / "clip ü 1.MP4")
    touch(tmp_path / "bob" / "sub" / "talk.avi")
    touch(tmp_path / "bob" / "notes.txt")
    found = discover_video_folder(tmp_path)
    assert [(s.video_id, s.identity) for s in found] == [("Ann Lee/clip ü 1", "Ann Lee"), ("bob/sub/talk", "sub")]


def test_video_list_csv_identity_column_and_fallback(tmp_path):
    touch(tmp_path / "vids" / "p1" / "a.mp4")
    touch(tmp_path / "vids" / "p2" / "b.mp4")
    listing = tmp_path / "list.csv"
    listing.write_text("path,who\nvids/p1/a.mp4,alice\nvids/p2/b.mp4,\n", encoding="utf-8")
    found = discover_video_list(listing, identity_column="who")
    assert [(s.video_id, s.identity) for s in found] == [("vids/p1/a", "alice"), ("vids/p2/b", "p2")]
    with pytest.raises(SourceError, match="no 'file' column"):
        discover_video_list(listing, path_column="file")


def test_duplicate_video_ids_are_refused(tmp_path):
    touch(tmp_path / "p" / "a.mp4")
    touch(tmp_path / "p" / "a.avi")
    with pytest.raises(SourceError, match="two inputs map to video id 'p/a'"):
        discover_video_folder(tmp_path)


def test_frame_folders_one_clip_per_folder(tmp_path):
    touch(tmp_path / "carol" / "take1" / "1.png")
    touch(tmp_path / "dave" / "1.jpg")
    found = discover_frame_folders(tmp_path, frames_fps=12.5)
    assert [(s.video_id, s.identity, s.frames_fps) for s in found] == [("carol/take1", "carol", 12.5),
                                                                       ("dave", "dave", 12.5)]


@pytest.mark.parametrize("source_fps,target,expected", [(25.0, 5.0, [0, 5, 10, 15]), (10.0, 5.0, [0, 2, 4, 6, 8]),
                                                        (4.0, 5.0, list(range(20)))])
def test_time_sampler_takes_first_frame_of_each_interval(source_fps, target, expected):
    sampler = TimeSampler(target)
    kept = [i for i in range(20) if sampler.keep(i / source_fps)]
    assert kept[: len(expected)] == expected
    assert len(kept) == math.floor(19 * min(target, source_fps) / source_fps) + 1


def test_time_sampler_at_ntsc_rate_stays_within_one_source_frame_of_the_grid():
    sampler = TimeSampler(5.0)
    kept = [i for i in range(300) if sampler.keep(i / 29.97)]
    times = np.array(kept) / 29.97
    assert len(kept) == math.floor(299 / 29.97 * 5.0) + 1  # one per 0.2 s interval that holds a frame
    assert np.all(np.abs(times - np.arange(len(kept)) / 5.0) < 1 / 29.97)


def test_image_conversion_handles_gray_bgra_and_16_bit(tmp_path):
    gray = np.full((4, 5), 100, np.uint8)
    assert to_rgb_uint8(gray).shape == (4, 5, 3)
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0] = 255  # blue
    assert to_rgb_uint8(bgra)[0, 0].tolist() == [0, 0, 255]
    assert to_rgb_uint8(np.full((2, 2), 65535, np.uint16)).max() == 255
    path = tmp_path / "ünï cödé.png"
    cv2.imencode(".png", bgra)[1].tofile(str(path))
    assert read_image_rgb(path)[0, 0].tolist() == [0, 0, 255]
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert read_image_rgb(tmp_path / "broken.jpg") is None


def test_frame_folder_reader_skips_unreadable_frames(tmp_path):
    folder = tmp_path / "p" / "clip"
    folder.mkdir(parents=True)
    for i in range(1, 7):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((8, 8, 3), i * 10, np.uint8))
    (folder / "3.png").write_bytes(b"corrupt")
    source = discover_frame_folders(tmp_path, frames_fps=10)[0]
    reader = ClipReader(source, target_fps=10)
    frames = list(reader.frames())
    assert [f.index for f in frames] == [0, 1, 3, 4, 5]
    assert reader.unreadable_frames == [2]
    assert frames[1].timestamp == pytest.approx(0.1) and frames[1].image[0, 0, 0] == 20


def test_part_slices_are_disjoint_complete_and_stable_under_additions(tmp_path):
    for i in range(40):
        touch(tmp_path / f"p{i % 7}" / f"v{i}.mp4")
    sources = discover_video_folder(tmp_path)
    slices = [select_inputs(sources, (i, 3), None) for i in range(3)]
    ids = [s.video_id for part in slices for s in part]
    assert sorted(ids) == sorted(s.video_id for s in sources) and len(ids) == len(set(ids))
    assert all(len(part) > 5 for part in slices)  # the hash spreads clips over all parts
    touch(tmp_path / "p9" / "new.mp4")
    grown = discover_video_folder(tmp_path)
    for i in range(3):
        before = {s.video_id for s in slices[i]}
        assert before <= {s.video_id for s in select_inputs(grown, (i, 3), None)}


# part_of = first 8 bytes of sha1(video id), big-endian, mod parts; the values below were computed once from
# that formula, so they hold on any machine and in any process.
PARTS_OF = {"id1/yt/00001": [1, 1, 0, 6], "id00012/abc/00003": [0, 1, 2, 6], "a": [0, 1, 3, 5], "clip-7": [1, 1, 0, 5]}


def test_part_of_is_a_fixed_function_of_the_id():
    for video_id, expected in PARTS_OF.items():
        assert [part_of(video_id, parts) for parts in (2, 3, 5, 7)] == expected, video_id
    head = int.from_bytes(hashlib.sha1(b"id1/yt/00001").digest()[:8], "big")
    assert [part_of("id1/yt/00001", parts) for parts in (11, 13, 1000)] == [head % 11, head % 13, head % 1000]


def test_part_of_does_not_depend_on_the_process_hash_seed():
    code = ("from preprocess.runner import part_of; "
            f"print([[part_of(v, p) for p in (2, 3, 5, 7)] for v in {list(PARTS_OF)!r}])")
    seen = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        seen.add(result.stdout.strip())
    assert seen == {str(list(PARTS_OF.values()))}
