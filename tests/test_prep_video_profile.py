"""sslfer-prep --profile video: faces only at 25 fps / 160 px, the h264 codec end to end, resume, refusals."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import prep_clips as clips
from data_manifest.cli import main as manifest_main
from preprocess.cli import main
from preprocess.runner import KILL_AFTER_ENV
from test_prep_resume import prep_process

pytest.importorskip("av", reason="the h264 codec needs PyAV (pip install 'sslfer[video]')")


def prep(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def contents(out: Path) -> dict[str, dict[str, np.ndarray]]:
    from data_manifest.manifest import load_manifest, shard_paths
    from sslfer_core.shard_format import ShardReader

    videos = {}
    for path in shard_paths(out, load_manifest(out)):
        with ShardReader(path) as reader:
            for v, video_id in enumerate(reader.videos.video_id):
                rows = reader.video_rows(v)
                videos[video_id] = {name: reader.read_array(name, rows)
                                    for name in ("landmarks", "timestamp", "frame_index", "det_score")}
                videos[video_id]["face"] = reader.read_images("face", rows)
    return videos


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory) -> Path:
    return clips.good_clip_set(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def h264_run(clip_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "out"
    result = prep("videos", clip_root, "--out", out, "--profile", "video", "--codec", "h264:23", "--jobs", "1")
    assert result.exit_code == 0, result.output
    return out


def test_video_profile_stores_aligned_faces_only(h264_run):
    from sslfer_core.shard_format import ImageCodec, ShardReader

    (path,) = sorted(h264_run.glob("*.h5"))
    with ShardReader(path) as reader:
        h = reader.header
        assert (h.image_size, h.patch_size, h.swaps_per_frame, h.descriptor_kind, h.descriptor_dim) == \
            (160, 0, 0, "none", 0)
        assert h.codecs == {"face": ImageCodec("h264", 23)}
        assert h.schema_version == (1, 1)
        config = h.prep_config
        assert (config["fps"], config["size"], config["profile"], config["smooth"], config["codec"]) == \
            (25.0, 160, "video", 1.0, "h264:23")
        assert reader.fields == ("det_score", "face", "frame_index", "landmarks", "timestamp", "video_row")
        # The clips are 20 frames at 10 fps: at --fps 25 every source frame is kept.
        assert list(reader.videos.row_count) == [20, 20, 20, 20]
        faces = reader.read_images("face", reader.video_rows(0))
        assert faces.shape == (20, 160, 160, 3) and faces.dtype == np.uint8
        assert faces.std() > 10  # a face, not a blank image
        with pytest.raises(KeyError):
            reader.read_images("eyes", [0])


def test_manifest_verify_and_inspect_read_video_shards(h264_run):
    runner = CliRunner()
    verify = runner.invoke(manifest_main, ["verify", str(h264_run)])
    assert verify.exit_code == 0, verify.output
    inspect = runner.invoke(manifest_main, ["inspect", str(h264_run), "--json"])
    assert inspect.exit_code == 0, inspect.output
    report = json.loads(inspect.stdout)
    assert report["codecs"] == {"face": {"name": "h264", "crf": 23, "chunk_frames": 32, "preset": "medium",
                                         "pix_fmt": "yuv420p"}}
    assert report["fields"]["face"]["codec"] == "h264" and report["fields"]["face"]["bytes_per_frame"] > 0
    assert "eyes" not in report["fields"] and report["totals"]["frames"] == 80


def test_a_killed_h264_run_resumes_to_the_same_shards(clip_root, h264_run, tmp_path):
    out = tmp_path / "out"
    args = ("videos", clip_root, "--out", out, "--profile", "video", "--codec", "h264:23", "--jobs", "1")
    killed = prep_process(*args, env_extra={KILL_AFTER_ENV: "extract:2"})
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert not list(out.glob("*.h5"))
    resumed = prep(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "resumed (already done)  2" in resumed.stdout
    expected, got = contents(h264_run), contents(out)
    assert sorted(expected) == sorted(got)
    for video_id in expected:
        for name in expected[video_id]:
            np.testing.assert_array_equal(got[video_id][name], expected[video_id][name], err_msg=f"{video_id} {name}")
    again = prep(*args)
    assert again.exit_code == 0 and "nothing left to do" in again.stdout
    other = prep(*args[:-4], "--codec", "jpeg:90", "--jobs", "1")
    assert other.exit_code == 2 and "codec: 'h264:23' -> 'jpeg:90'" in other.output


def test_explicit_options_override_the_profile(clip_root, tmp_path):
    from sslfer_core.shard_format import ImageCodec, read_shard_header

    out = tmp_path / "out"
    result = prep("videos", clip_root, "--out", out, "--profile", "video", "--fps", "5", "--size", "96",
                  "--smooth-sigma", "1.5", "--limit", "1", "--jobs", "1")
    assert result.exit_code == 0, result.output
    header = read_shard_header(next(out.glob("*.h5")))
    assert (header.image_size, header.prep_config["fps"], header.prep_config["smooth_sigma"]) == (96, 5.0, 1.5)
    assert header.codecs == {"face": ImageCodec("jpeg", 90)}


@pytest.mark.parametrize("args,message", [
    (["--profile", "video", "--swaps", "1"], "--profile video stores aligned faces only; drop --swaps"),
    (["--profile", "video", "--descriptor", "landmark-geometry"], "drop --descriptor"),
    (["--codec", "h264:23"], "needs --swaps 0"),
    (["--profile", "video", "--codec", "h264", "--size", "97"], "needs an even --size"),
    (["--codec", "h264:60"], "h264 CRF must be in 0..51"),
])
def test_refusals_are_one_line_usage_errors(clip_root, tmp_path, args, message):
    result = prep("videos", clip_root, "--out", tmp_path / "out", "--jobs", "1", *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_contrastive_prep_config_has_no_new_keys():
    from preprocess.prep_config import PrepConfig

    config = PrepConfig(source="videos").prep_config()
    assert "profile" not in config and "smooth_sigma" not in config and config["patch_size"] == 64
    assert PrepConfig(source="videos", smooth_sigma=2.0).prep_config()["smooth_sigma"] == 2.0
