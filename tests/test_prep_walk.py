"""sslfer-prep's input walk visits each real folder and file once: symlink loops and folder aliases are
reported, not followed again; FIFOs and other special files are skipped (never opened); file names that
are not UTF-8 are stored under an escaped id and opened without crashing OpenCV."""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

import prep_clips as clips
from preprocess.cli import main
from preprocess.sources import (
    VideoSource, discover_frame_folders, discover_video_folder, discover_video_list, discover_voxceleb, safe_text,
)
from preprocess.video_decode import ClipReader, UnreadableClip, probe_duration
from sslfer_core.shard_format import ShardReader

BAD_NAME = os.fsdecode(b"caf\xe9-latin1.mp4")  # a Latin-1 file name: not valid UTF-8


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


@pytest.fixture
def no_hang():
    def fail(*_):
        raise TimeoutError("blocked")
    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_symlink_to_the_parent_is_a_reported_loop(tmp_path, no_hang):
    touch(tmp_path / "id0" / "clip.mp4")
    os.symlink("..", tmp_path / "id0" / "up")
    found = discover_video_folder(tmp_path)
    assert [s.video_id for s in found] == ["id0/clip"]
    assert found.notes == ["skipped id0/up: a folder loop (the same folder as .)"]
    touch(tmp_path / "vox" / "id00012" / "abc" / "00001.mp4")
    os.symlink("../..", tmp_path / "vox" / "id00012" / "abc" / "again")
    found = discover_voxceleb(tmp_path / "vox")
    assert [s.video_id for s in found] == ["id00012/abc/00001"] and "a folder loop" in found.notes[0]


def test_a_folder_alias_and_a_file_alias_are_visited_once(tmp_path):
    touch(tmp_path / "id0" / "clip.mp4")
    os.symlink("id0", tmp_path / "zz-alias")
    os.symlink("clip.mp4", tmp_path / "id0" / "same.mp4")
    found = discover_video_folder(tmp_path)
    assert [s.video_id for s in found] == ["id0/clip"]
    assert sorted(found.notes) == ["skipped id0/same.mp4: the same file as id0/clip.mp4",
                                   "skipped zz-alias: a folder alias (the same folder as id0)"]
    frames = tmp_path / "frames"
    touch(frames / "p0" / "c0" / "1.jpg")
    os.symlink("c0", frames / "p0" / "c1")
    found = discover_frame_folders(frames)
    assert [s.video_id for s in found] == ["p0/c0"] and "a folder alias" in found.notes[0]


def test_a_fifo_named_mp4_is_skipped_and_never_opened(tmp_path, no_hang):
    touch(tmp_path / "id0" / "clip.mp4")
    os.mkfifo(tmp_path / "id0" / "pipe.mp4")
    found = discover_video_folder(tmp_path)
    assert [s.video_id for s in found] == ["id0/clip"] and found.notes == ["skipped id0/pipe.mp4: not a regular file"]
    fifo = VideoSource("id0/pipe", "id0", str(tmp_path / "id0" / "pipe.mp4"), "id0/pipe.mp4", "video")
    with pytest.raises(UnreadableClip, match="not a regular file"):
        list(ClipReader(fifo, 5.0).frames())
    assert probe_duration(fifo) == (0.0, 0.0)
    listed = tmp_path / "list.csv"
    listed.write_text("path,identity\nid0/pipe.mp4,a\nid0/clip.mp4,a\nid0/clip.mp4,a\n", encoding="utf-8")
    found = discover_video_list(listed)
    assert [s.video_id for s in found] == ["id0/clip"]
    assert found.notes == ["skipped list.csv:2 id0/pipe.mp4: not a regular file",
                           "skipped list.csv:4 id0/clip.mp4: the same file as line 3"]


def test_a_list_that_is_not_utf8_is_one_error(tmp_path):
    from preprocess.sources import SourceError

    listed = tmp_path / "list.csv"
    listed.write_bytes("path,identity\nÉcole/a.mp4,é\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8 text"):
        discover_video_list(listed)


def test_a_non_utf8_file_name_is_stored_under_an_escaped_id(tmp_path):
    root = tmp_path / "clips"
    clips.good_clip_set(root)
    ident = sorted(p.name for p in root.iterdir())[0]
    os.replace(root / ident / "clip0.mp4", root / ident / BAD_NAME)
    os.mkfifo(root / ident / "pipe.mp4")
    found = discover_video_folder(root)
    escaped = f"{ident}/caf\\xe9-latin1"
    assert escaped in [s.video_id for s in found]
    source = next(s for s in found if s.video_id == escaped)
    assert source.source_path == escaped + ".mp4" and source.path.endswith(BAD_NAME)
    assert safe_text(source.path).encode("utf-8")  # what is stored is always UTF-8
    assert len(list(ClipReader(source, 5.0).frames())) > 0  # OpenCV opens it (it segfaulted on the name)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["videos", str(root), "--out", str(out), "--jobs", "1",
                                       "--descriptor", "landmark-geometry"])
    assert result.exit_code == 0, result.output
    assert "warning: skipped" in result.output and "pipe.mp4: not a regular file" in result.output
    stored = []
    for shard in sorted(out.glob("*.h5")):
        with ShardReader(shard) as reader:
            stored += list(reader.videos.video_id)
    assert escaped in stored and len(stored) == 4
    shutil.rmtree(out)
