"""sslfer-prep's clock and ids: presentation times on variable-frame-rate video, sampling uniform in
time, an unusable container frame rate said where the user looks, and no host paths from a --list."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import prep_clips as clips
from preprocess.cli import main
from preprocess.sources import SourceError, VideoSource, discover_video_list
from preprocess.video_decode import FALLBACK_FPS, ClipReader
from sslfer_core.shard_format import ShardReader

VFR_SECONDS = np.asarray(clips.VFR_PTS_MS) / 1000.0
# At --fps 5 (one frame per 0.2 s): every 5th frame of the 25 fps part, then every frame of the 5 fps part.
VFR_KEPT_AT_5 = list(range(0, 50, 5)) + list(range(50, 100))


def _source(path, video_id="p/clip"):
    return VideoSource(video_id, "p", str(path), video_id + ".mp4", "video")


def _plain_frames(count):
    return [np.full((32, 32, 3), (7 * i) % 256, np.uint8) for i in range(count)]


def test_vfr_timestamps_are_presentation_times_and_sampling_is_uniform_in_time(tmp_path):
    path = clips.write_timed_video(tmp_path / "vfr.mp4", _plain_frames(100), clips.VFR_PTS_MS, 1000)
    reader = ClipReader(_source(path), target_fps=5.0)
    frames = list(reader.frames())
    assert [f.index for f in frames] == VFR_KEPT_AT_5
    assert np.abs(np.array([f.timestamp for f in frames]) - VFR_SECONDS[VFR_KEPT_AT_5]).max() < 1e-6
    assert reader.frames_total == 100 and reader.fps_note == ""
    # Above every rate in the clip, every frame is kept, each at its own time.
    frames = list(ClipReader(_source(path), target_fps=30.0).frames())
    assert np.abs(np.array([f.timestamp for f in frames]) - VFR_SECONDS).max() < 1e-6


def test_a_constant_rate_clip_keeps_the_frames_it_kept_before(tmp_path):
    path = clips.write_video(tmp_path / "cfr.mp4", _plain_frames(40), fps=29.97)
    frames = list(ClipReader(_source(path), target_fps=5.0).frames())
    # one frame per 0.2 s interval, the first of each: frame i with floor(i * 5 / 29.97) new
    expected = [i for i in range(40) if i == 0 or int(i * 5 / 29.97) != int((i - 1) * 5 / 29.97)]
    assert [f.index for f in frames] == expected
    assert np.abs(np.array([f.timestamp for f in frames]) - np.array(expected) / 29.97).max() < 1e-6


def test_a_container_rate_beyond_1000_fps_is_replaced_and_noted(tmp_path):
    # A broken muxer: one time-base tick per frame with a time base of 1/3906 s, so the container
    # states 3906 fps and the presentation times are as wrong as the rate.
    path = clips.write_timed_video(tmp_path / "bogus.mp4", _plain_frames(30), list(range(30)), 3906, rate=3906)
    reader = ClipReader(_source(path), target_fps=5.0)
    frames = list(reader.frames())
    assert "3906" in reader.fps_note and str(FALLBACK_FPS) in reader.fps_note
    assert reader.source_fps == FALLBACK_FPS
    assert [f.index for f in frames] == [0, 5, 10, 15, 20, 25]
    assert [f.timestamp for f in frames] == pytest.approx([i / FALLBACK_FPS for i in (0, 5, 10, 15, 20, 25)])


def test_prep_stores_presentation_times_and_reports_an_assumed_frame_rate(tmp_path):
    root = tmp_path / "in"
    faces = clips.moving_frames(clips.portraits()["id00001"], 100)
    clips.write_timed_video(root / "id00001" / "vfr.mp4", faces, clips.VFR_PTS_MS, 1000)
    clips.write_timed_video(root / "id00002" / "bogus.mp4", clips.moving_frames(clips.portraits()["id00002"], 30),
                            list(range(30)), 3906, rate=3906)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["videos", str(root), "--out", str(out), "--jobs", "1", "--profile", "video",
                                       "--fps", "5"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # The assumed rate is said in the summary and recorded in failures.jsonl, not only in .work/.
    said = [line for line in result.output.splitlines() if "id00002/bogus" in line]
    assert said and "3906" in said[0] and "25" in said[0], result.output
    records = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    noted = {r["video_id"]: r for r in records if "fps_note" in r}
    assert list(noted) == ["id00002/bogus"] and not noted["id00002/bogus"]["skipped"]
    assert "3906" in noted["id00002/bogus"]["fps_note"]
    # ... and by `sslfer-manifest inspect` on the set.
    from data_manifest.cli import main as manifest_main

    report = CliRunner().invoke(manifest_main, ["inspect", str(out)])
    assert report.exit_code == 0 and "1 clip stored with assumed frame times" in report.output, report.output
    with ShardReader(out / "shard-00000.h5") as reader:
        ids = list(reader.videos.video_id)
        rows = reader.video_rows(ids.index("id00001/vfr"))
        stored_index = reader.read_array("frame_index", rows)
        stored_time = reader.read_array("timestamp", rows)
    assert set(stored_index.tolist()) <= set(VFR_KEPT_AT_5) and len(stored_index) >= 0.9 * len(VFR_KEPT_AT_5)
    assert np.abs(stored_time - VFR_SECONDS[stored_index]).max() < 1e-6


def test_a_list_naming_videos_outside_root_is_refused_without_host_paths(tmp_path):
    for name in ("elsewhere/p/a.mp4", "root/q/b.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    root = tmp_path / "root"
    for row in (str(tmp_path / "elsewhere" / "p" / "a.mp4"), "../elsewhere/p/a.mp4", "q/../../elsewhere/p/a.mp4"):
        listing = tmp_path / "list.csv"
        listing.write_text(f"path,identity\nq/b.mp4,q\n{row},p\n", encoding="utf-8")
        with pytest.raises(SourceError, match="list.csv:3: .* is outside") as caught:
            discover_video_list(listing, root)
        assert str(root) in str(caught.value)
        result = CliRunner().invoke(main, ["videos", str(root), "--list", str(listing), "--out",
                                           str(tmp_path / "out")])
        assert result.exit_code == 1 and result.output.count("Error:") == 1 and "list.csv:3" in result.output
        assert not (tmp_path / "out" / "manifest.json").exists()
    # An absolute path inside ROOT is fine, and its id is relative to ROOT.
    listing.write_text(f"path,identity\n{root / 'q' / 'b.mp4'},q\n", encoding="utf-8")
    found = discover_video_list(listing, root)
    assert [(s.video_id, s.source_path) for s in found] == [("q/b", "q/b.mp4")]
    # So is one that reaches ROOT through a symlinked folder, either way round.
    (tmp_path / "link").symlink_to(root)
    for path, given_root in ((root / "q" / "b.mp4", tmp_path / "link"), (tmp_path / "link" / "q" / "b.mp4", root)):
        listing.write_text(f"path,identity\n{path},q\n", encoding="utf-8")
        found = discover_video_list(listing, given_root)
        assert [(s.video_id, s.source_path) for s in found] == [("q/b", "q/b.mp4")]


@pytest.mark.parametrize("row", ["q/a\x00b.mp4,x", "q/b.mp4,x\x00y", "~no-such-user-here/b.mp4,x",
                                 "q/" + "a" * 5000 + ".mp4,x"], ids=["nul path", "nul identity", "unknown home",
                                                                      "name too long"])
def test_hostile_list_values_give_one_line(tmp_path, row):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "b.mp4").write_bytes(b"x")
    listing = tmp_path / "list.csv"
    listing.write_text(f"path,identity\n{row}\n", encoding="utf-8")
    with pytest.raises(SourceError, match="list.csv:2: "):
        discover_video_list(listing)
    result = CliRunner().invoke(main, ["videos", "--list", str(listing), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output.count("Error:") == 1 and "list.csv:2" in result.output


def test_frames_without_increasing_presentation_times_are_placed_after_the_one_before():
    from preprocess.video_decode import PresentationClock

    clock = PresentationClock(25.0)
    # OpenCV reports 0 for a frame without a time; a repeated or backward time is no better.
    reported = [0.0, 0.04, 0.0, 0.08, 0.08, 0.06, float("nan"), 0.2, -1.0, 0.3]
    placed = [clock.time(t) for t in reported]
    assert placed == pytest.approx([0.0, 0.04, 0.08, 0.08, 0.12, 0.16, 0.2, 0.2, 0.24, 0.3])
    assert clock.untimed == 5 and all(b >= a for a, b in zip(placed, placed[1:]))
