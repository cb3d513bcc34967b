"""sslfer-prep end to end on small synthetic clips: bad inputs are recorded and skipped, exit codes, resume, --force,
the space check. Runs in-process with --jobs 1 (the face models stay loaded between invocations)."""
from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import prep_clips as clips
from preprocess.cli import main

FAST = ["--jobs", "1", "--descriptor", "landmark-geometry"]
Run = namedtuple("Run", "root out result")


def prep(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def failures(out: Path) -> dict[str, dict]:
    lines = (out / "failures.jsonl").read_text(encoding="utf-8").splitlines()
    return {record["video_id"]: record for record in map(json.loads, lines)}


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> Run:
    """Four good clips plus one of each bad input, processed once for the tests below."""
    root = clips.good_clip_set(tmp_path_factory.mktemp("mixed"))
    clips.face_clip(root / "Zoë Ünï" / "clip ñ 1.mp4", "id00002m")  # spaces and non-ASCII, valid
    clips.face_clip(root / "small" / "tiny.mp4", "id00001", scale=0.35)  # face ~35 px < --min-face-px 80
    clips.no_face_clip(root / "noface" / "blur.mp4")
    clips.two_face_clip(root / "pair" / "two.mp4", "id00001", "id00002")
    clips.face_clip(root / "short" / "ten.mp4", "id00002", count=10, fps=25.0)  # 10 frames = 2 samples
    (root / "bad").mkdir()
    (root / "bad" / "zero.mp4").write_bytes(b"")
    (root / "bad" / "junk.mp4").write_bytes(bytes(range(256)) * 40)
    out = tmp_path_factory.mktemp("out") / "shards"
    result = prep("videos", root, "--out", out, *FAST, "--keep-work")
    return Run(root, out, result)


def test_bad_inputs_are_skipped_with_their_reason_and_the_run_succeeds(mixed_run):
    assert mixed_run.result.exit_code == 0, mixed_run.result.output
    assert "6 clips skipped" in mixed_run.result.stdout
    reasons = {vid: r["reason"] for vid, r in failures(mixed_run.out).items() if r["skipped"]}
    assert reasons == {"bad/zero": "unreadable", "bad/junk": "unreadable", "noface/blur": "no_face",
                       "pair/two": "ambiguous", "short/ten": "too_few_frames", "small/tiny": "small_face"}
    assert "0 bytes" in failures(mixed_run.out)["bad/zero"]["detail"]
    assert failures(mixed_run.out)["noface/blur"]["dropped"] == {"no_face": 10}


def test_good_clips_are_stored_with_k_swaps_from_other_identities(mixed_run):
    from data_manifest.manifest import load_manifest
    from data_manifest.verify import ERROR, verify_shards
    from sslfer_core.shard_format import read_shard_header

    stored = clips.shard_contents(mixed_run.out)
    assert sorted(stored) == ["Zoë Ünï/clip ñ 1", "id00001/clip0", "id00001m/clip0", "id00002/clip0",
                              "id00002m/clip0"]
    manifest = load_manifest(mixed_run.out)
    assert manifest.failures == 6 and not [p for p in verify_shards(mixed_run.out) if p.severity == ERROR]
    header = read_shard_header(mixed_run.out / manifest.shards[0].file)
    assert (header.swaps_per_frame, header.image_size, header.patch_size) == (1, 128, 64)
    assert header.descriptor_kind == "landmark-geometry" and header.descriptor_dim == 84
    assert header.codecs["swaps"].name == "jpeg" and header.codecs["swaps"].quality == 90
    assert header.prep_config["fps"] == 5.0 and header.prep_config["seed"] == 0 and header.dlib_model_sha256
    for item in stored.values():
        assert len(item["face"]) == 10 and item["swaps"].shape == (10, 1, 128, 128, 3)
        assert np.all(np.diff(item["timestamp"]) > 0) and np.all(item["frame_index"] % 2 == 0)  # 10 fps -> 5 fps
        assert item["swap_ok"].all()
        assert np.abs(item["swaps"][:, 0].astype(int) - item["face"]).mean() > 5  # a swap is not the face itself
        assert np.allclose(np.linalg.norm(item["descriptor"].astype(np.float32), axis=1), 1.0, atol=1e-2)
    # --keep-work left the donor rows: every donor is of another identity
    from preprocess.donor_pool import load_pool
    from preprocess.work_files import WorkDir, load_npz

    work = WorkDir(mixed_run.out)
    pool = load_pool(work.pool_file)
    for video_id, item in stored.items():
        rows = load_npz(work.swaps_path(video_id))["donor_row"]
        assert (rows >= 0).all() and not set(pool.identity[rows.ravel()]) & {item["identity"]}


def test_rerun_resumes_without_redoing_work_and_force_redoes_it(mixed_run):
    shard = next(mixed_run.out.glob("shard-*.h5"))
    # A stamp far in the past instead of the write time: a rewrite shows whatever the filesystem's resolution.
    stamp = 1_000_000_000 * 10**9
    os.utime(shard, ns=(stamp, stamp))
    again = prep("videos", mixed_run.root, "--out", mixed_run.out, *FAST, "--keep-work")
    assert again.exit_code == 0 and "nothing left to do" in again.stdout
    assert "resumed (already done)  11" in again.stdout and shard.stat().st_mtime_ns == stamp
    contents = clips.shard_contents(mixed_run.out)
    forced = prep("videos", mixed_run.root, "--out", mixed_run.out, *FAST, "--keep-work", "--force")
    assert forced.exit_code == 0 and "resumed (already done)  0" in forced.stdout
    assert shard.stat().st_mtime_ns > stamp + 10**9
    clips.assert_same_contents(contents, clips.shard_contents(mixed_run.out))


def test_resume_into_out_made_with_other_settings_is_refused(mixed_run):
    result = prep("videos", mixed_run.root, "--out", mixed_run.out, *FAST, "--fps", "4")
    assert result.exit_code == 2 and "different configuration (fps: 5.0 -> 4.0)" in result.output
    result = prep("videos", mixed_run.root, "--out", mixed_run.out, *FAST, "--part", "0/2")
    assert result.exit_code == 2 and "part: None -> [0, 2]" in result.output


def test_frame_folders_gray_rgba_and_a_corrupt_frame(tmp_path):
    clips.frame_folder(tmp_path / "in" / "id00001" / "gray", "id00001", mode="gray")
    clips.frame_folder(tmp_path / "in" / "id00002" / "rgba", "id00002", mode="rgba")
    broken = clips.frame_folder(tmp_path / "in" / "id00002m" / "broken", "id00002m")
    (broken / "3.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    result = prep("frames", tmp_path / "in", "--out", out, "--frames-fps", "10", *FAST)
    assert result.exit_code == 0, result.output
    stored = clips.shard_contents(out)
    assert sorted(stored) == ["id00001/gray", "id00002/rgba", "id00002m/broken"]
    assert len(stored["id00001/gray"]["face"]) == 6 and len(stored["id00002m/broken"]["face"]) == 5
    gray_face = stored["id00001/gray"]["face"].astype(int)
    assert np.abs(gray_face[..., 0] - gray_face[..., 1]).max() <= 12  # gray in, gray out (up to JPEG chroma)
    record = failures(out)["id00002m/broken"]
    assert not record["skipped"] and record["dropped"] == {"unreadable_frame": 1}
    assert record["ranges"] == [{"count": 1, "first": 2, "last": 2, "reason": "unreadable_frame"}]


def test_exit_codes_for_empty_input_no_stored_clip_and_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    result = prep("videos", tmp_path / "empty", "--out", tmp_path / "o1", *FAST)
    assert result.exit_code == 1 and "no video files" in result.output
    clips.no_face_clip(tmp_path / "bad" / "p" / "blur.mp4")
    result = prep("videos", tmp_path / "bad", "--out", tmp_path / "o2", *FAST)
    assert result.exit_code == 1 and "no clip was stored (1 skipped" in result.output
    assert failures(tmp_path / "o2")["p/blur"]["reason"] == "no_face"
    for bad in (["--part", "2/2"], ["--codec", "png"], ["--swaps", "-1"]):
        result = prep("videos", tmp_path / "bad", "--out", tmp_path / "o3", *FAST, *bad)
        assert result.exit_code == 2, bad
    result = prep("voxceleb", "--out", tmp_path / "o4", *FAST)
    assert result.exit_code == 2 and "ROOT" in result.output


def test_space_check_stops_before_work_and_can_be_overridden(tmp_path, monkeypatch):
    import shutil

    root = clips.face_clip(tmp_path / "in" / "id00001" / "a.mp4", "id00001").parent.parent
    real = shutil.disk_usage
    monkeypatch.setattr("preprocess.space_estimate.shutil.disk_usage",
                        lambda path: real(path)._replace(free=200_000))
    result = prep("videos", root, "--out", tmp_path / "out", *FAST)
    assert result.exit_code == 1 and "not enough free space" in result.output and "--no-space-check" in result.output
    assert not list((tmp_path / "out").glob("*.h5"))
    result = prep("videos", root, "--out", tmp_path / "out", *FAST, "--no-space-check", "--swaps", "0")
    assert result.exit_code == 0, result.output
    assert "estimated output" in result.stderr


def test_single_identity_stores_failed_swaps_and_warns(tmp_path):
    root = clips.face_clip(tmp_path / "in" / "id00002" / "a.mp4", "id00002").parent.parent
    result = prep("videos", root, "--out", tmp_path / "out", *FAST, "--codec", "raw")
    assert result.exit_code == 0, result.output
    assert "fewer than 2 identities" in result.stderr
    from sslfer_core.shard_format import read_shard_header

    assert {c.name for c in read_shard_header(tmp_path / "out" / "shard-00000.h5").codecs.values()} == {"raw"}
    item = clips.shard_contents(tmp_path / "out")["id00002/a"]
    assert not item["swap_ok"].any() and item["swaps"].max() == 0
    record = failures(tmp_path / "out")["id00002/a"]
    assert record["reason"] == "failed_swaps" and record["swaps_failed"] == len(item["face"]) == 10


def test_voxceleb_root_from_the_environment(tmp_path):
    for identity in ("id00001", "id00002"):
        clips.face_clip(tmp_path / "vox" / "dev" / "mp4" / identity / "yt_A-1" / "00001.mp4", identity)
    result = CliRunner(env={"SSLFER_VOXCELEB_ROOT": str(tmp_path / "vox")}).invoke(
        main, ["voxceleb", "--out", str(tmp_path / "out"), *FAST, "--shard-size", "0.1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stored = clips.shard_contents(tmp_path / "out")
    assert sorted(stored) == ["id00001/yt_A-1/00001", "id00002/yt_A-1/00001"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.h5")) == ["shard-00000.h5", "shard-00001.h5"]


def test_out_without_its_work_folder_resumes_from_the_manifest(mixed_run, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(mixed_run.out, out)
    shutil.rmtree(out / ".work")
    shard = out / "shard-00000.h5"
    before = (shard.stat().st_mtime_ns, (out / "failures.jsonl").read_text(encoding="utf-8"))
    result = prep("videos", mixed_run.root, "--out", out, *FAST)
    assert result.exit_code == 0 and "resumed (already done)  11" in result.stdout, result.output
    assert (shard.stat().st_mtime_ns, (out / "failures.jsonl").read_text(encoding="utf-8")) == before
    extra = tmp_path / "more"
    shutil.copytree(mixed_run.root, extra)
    clips.face_clip(extra / "id00001" / "new.mp4", "id00001", drift=2.5)
    result = prep("videos", extra, "--out", out, *FAST)
    assert result.exit_code == 0 and "resumed (already done)  11" in result.stdout, result.output
    assert sorted(p.name for p in out.glob("*.h5")) == ["shard-00000.h5", "shard-00001.h5"]
    new = clips.shard_contents(out)["id00001/new"]
    assert shard.stat().st_mtime_ns == before[0] and new["swap_ok"].all()  # donors from the adopted shards
