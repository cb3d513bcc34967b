"""A killed or interrupted sslfer-prep run resumes to the same shards; a --part split merges to the same frames."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import prep_clips as clips
from preprocess.cli import main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--jobs", "1", "--descriptor", "landmark-geometry"]
# Everything but the swaps, whose donors come from the part's own pool in a split run.
PHASE1_FIELDS = ("face", "eyes", "mouth", "landmarks", "descriptor", "timestamp", "frame_index", "det_score")


def prep(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def prep_process(*args, env_extra=None, kill_after: str | None = None, **popen):
    """sslfer-prep in a subprocess; kill_after="PHASE:N" SIGKILLs it after the N-th task of PHASE."""
    env = {**os.environ, **(env_extra or {})}
    entry = ("from preprocess.cli import main; main()" if kill_after is None else
             "import sys; sys.path.insert(0, 'tests'); from prep_killed import main; main()")
    command = [sys.executable, "-c", entry, *([kill_after] if kill_after else []), *map(str, args)]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory) -> Path:
    return clips.good_clip_set(tmp_path_factory.mktemp("clips"), clips_per_identity=2)


@pytest.fixture(scope="module")
def reference(clip_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference") / "out"
    result = prep("videos", clip_root, "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    return clips.shard_contents(out)


@pytest.mark.parametrize("kill_at", ["extract:3", "swap:2"])
def test_killed_run_resumes_to_the_uninterrupted_result(clip_root, reference, tmp_path, kill_at):
    out = tmp_path / "out"
    killed = prep_process("videos", clip_root, "--out", out, *FAST, kill_after=kill_at)
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists() and not list(out.glob("*.h5"))  # nothing partial is visible
    resumed = prep("videos", clip_root, "--out", out, *FAST)
    assert resumed.exit_code == 0, resumed.output
    done_before = 3 if kill_at.startswith("extract") else 8
    assert f"resumed (already done)  {done_before}" in resumed.stdout
    clips.assert_same_contents(reference, clips.shard_contents(out))
    assert not list(out.rglob(".partial-*"))


def _sigint_as_in_a_terminal() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and children inherit that
    # (a CI runner launched with `&` did); a prep started from a terminal has the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# sslfer-prep that, once the first phase-1 clip is done, says so in $READY_FILE and then waits: the signal comes
# neither before the interpreter's handlers exist nor after the run has finished, however loaded the machine.
_READY_AFTER_FIRST_CLIP = """
import os, pathlib, time
import sslfer_core.progress
advance = sslfer_core.progress.PhaseProgress.advance
def advance_then_wait(self, *args, **kwargs):
    advance(self, *args, **kwargs)
    pathlib.Path(os.environ["READY_FILE"]).touch()
    time.sleep(600)
sslfer_core.progress.PhaseProgress.advance = advance_then_wait
from preprocess.cli import main
main()
"""


def test_ctrl_c_exits_130_cleanly_and_the_rerun_completes(clip_root, reference, tmp_path):
    out, ready = tmp_path / "out", tmp_path / "ready"
    command = [sys.executable, "-c", _READY_AFTER_FIRST_CLIP, "videos", str(clip_root), "--out", str(out),
               "--jobs", "2", "--descriptor", "landmark-geometry"]
    run = subprocess.Popen(command, cwd=REPO, env={**os.environ, "READY_FILE": str(ready)}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=_sigint_as_in_a_terminal)
    deadline = time.monotonic() + 300
    while not ready.exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    if not ready.exists():
        run.kill()
        _, stderr = run.communicate(timeout=60)
        pytest.fail(f"prep never finished its first clip (exit {run.returncode}): {stderr[-2000:]}")
    os.killpg(run.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    try:
        _, stderr = run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # it ignored the signal: leave nothing running
        raise
    assert run.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not (out / "manifest.json").exists()
    resumed = prep("videos", clip_root, "--out", out, *FAST)
    assert resumed.exit_code == 0, resumed.output
    clips.assert_same_contents(reference, clips.shard_contents(out))


def test_parts_merged_give_the_single_run_frames_landmarks_and_descriptors(clip_root, reference, tmp_path):
    from data_manifest.merge import merge_shard_sets
    from preprocess.donor_pool import load_pool
    from preprocess.work_files import WorkDir, load_npz

    parts = []
    for i in range(2):
        out = tmp_path / f"part{i}"
        result = prep("videos", clip_root, "--out", out, *FAST, "--part", f"{i}/2", "--keep-work")
        assert result.exit_code == 0, result.output
        assert [p.name for p in out.glob("*.h5")] == [f"part{i}of2-shard-00000.h5"]
        # swap donors come from this part's own pool
        part_identities = {item["identity"] for item in clips.shard_contents(out).values()}
        work = WorkDir(out)
        pool = load_pool(work.pool_file)
        assert set(pool.identity.tolist()) == part_identities
        for video_id in clips.shard_contents(out):
            rows = load_npz(work.swaps_path(video_id))["donor_row"]
            assert set(pool.identity[rows[rows >= 0]].tolist()) <= part_identities
        parts.append(out)
    merged = tmp_path / "merged"
    merge_shard_sets(merged, parts)
    together = clips.shard_contents(merged)
    assert len(reference) == 8 and all(len(clips.shard_contents(p)) > 0 for p in parts)
    clips.assert_same_contents(reference, together, PHASE1_FIELDS)


def test_dask_backend_without_dask_says_how_to_install_it(clip_root, tmp_path, monkeypatch):
    # dask is in the test extra, so it is made unimportable here (None in sys.modules fails the import).
    for name in ("dask", "dask.distributed"):
        monkeypatch.setitem(sys.modules, name, None)
    result = prep("videos", clip_root, "--out", tmp_path / "out", *FAST, "--backend", "dask")
    assert result.exit_code == 1 and "pip install 'sslfer[dask]'" in result.output
    assert "Traceback" not in result.output


def test_dask_backend_on_a_local_cluster_gives_the_same_shards(clip_root, reference, tmp_path):
    pytest.importorskip("dask.distributed", reason="dask is not installed (optional extra: pip install 'sslfer[dask]')")
    result = prep("videos", clip_root, "--out", tmp_path / "out", "--jobs", "2", "--descriptor", "landmark-geometry",
                  "--backend", "dask")
    assert result.exit_code == 0, result.output
    clips.assert_same_contents(reference, clips.shard_contents(tmp_path / "out"))
