"""Damaged files in OUT/.work are redone alone with a note (never a BadZipFile traceback, no --force)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import prep_clips as clips
from preprocess.cli import main
from preprocess.work_files import npz_problem
from test_prep_resume import prep_process

REPO = Path(__file__).resolve().parents[1]
FAST = ["--jobs", "1", "--descriptor", "landmark-geometry"]


def prep(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory) -> Path:
    return clips.good_clip_set(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def reference(clip_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert prep("videos", clip_root, "--out", out, *FAST).exit_code == 0
    return clips.shard_contents(out)


def _killed_after_swaps(clip_root: Path, out: Path) -> None:
    """A run killed in phase 2: phase-1 work files of every clip are on disk, no shard yet."""
    done = prep_process("videos", clip_root, "--out", out, *FAST, kill_after="swap:1")
    done.communicate(timeout=300)
    assert done.returncode < 0 and not list(out.glob("*.h5"))


def test_a_truncated_work_file_is_redone_alone(clip_root, reference, tmp_path):
    out = tmp_path / "out"
    _killed_after_swaps(clip_root, out)
    victim = sorted((out / ".work" / "videos").glob("*.npz"))[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert npz_problem(victim) is not None
    result = prep("videos", clip_root, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "BadZipFile: File is not a zip file); redoing that clip" in result.output
    clips.assert_same_contents(reference, clips.shard_contents(out))
    # Only that clip was redone: the other three were resumed.
    assert f"resumed (already done)  {len(reference) - 1}" in result.output


def test_damaged_records_pool_and_plan(clip_root, reference, tmp_path):
    out = tmp_path / "out"
    _killed_after_swaps(clip_root, out)
    work = out / ".work"
    record = sorted((work / "videos").glob("*.json"))[-1]
    record.write_text('{"video_id": "id0', encoding="utf-8")
    (work / "donor_pool.npz").write_bytes(b"PK\x03\x04 truncated")
    result = prep("videos", clip_root, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    assert "damaged work record .work/videos/" in result.output and "rebuilding the donor pool" in result.output
    clips.assert_same_contents(reference, clips.shard_contents(out))
    (work / "plan.json").write_text("{", encoding="utf-8")
    result = prep("videos", clip_root, "--out", out, *FAST)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "plan.json is damaged" in result.output and "--force" in result.output


def test_a_damaged_failures_file_of_a_finished_out_without_work_folder(clip_root, reference, tmp_path):
    out = tmp_path / "out"
    assert prep("videos", clip_root, "--out", out, *FAST).exit_code == 0
    shutil.rmtree(out / ".work")
    (out / "failures.jsonl").write_text('{"video_id": "id0/clip0", "skipped": tr\n[1, 2]\n', encoding="utf-8")
    result = prep("videos", clip_root, "--out", out, *FAST)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert f"resumed (already done)  {len(reference)}" in result.output
    clips.assert_same_contents(reference, clips.shard_contents(out))
