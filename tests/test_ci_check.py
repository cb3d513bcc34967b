""".ci/run runs exactly the README's `make test` with $SSLFER_REQUIRE_DATA set, and under it a checkout whose
shared data, dlib models or mp4 writer is missing fails instead of passing with those tests skipped. Each case
runs one or two tests in a child pytest, never the whole suite."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import prep_clips
from needs import REQUIRE_ENV

REPO = Path(__file__).resolve().parents[1]
DATA_TESTS = ["tests/test_eval_linear.py::test_fer2013_subset_with_alignment",
              "tests/test_face_alignment.py::test_rotated_frame_aligns_to_the_same_crop"]


def _pytest(args, require: bool, **env):
    environ = {k: v for k, v in os.environ.items() if k != REQUIRE_ENV}
    environ.update(env, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
    if require:
        environ[REQUIRE_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=REPO,
                          env=environ, capture_output=True, text=True, timeout=300)


def test_ci_runs_make_test_with_every_test_required():
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[0] == "set -euo pipefail"  # make's failure, pytest's exit 5 (no test ran) included, fails CI
    assert f"export {REQUIRE_ENV}=1" in commands and "make test" in commands
    assert commands.index(f"export {REQUIRE_ENV}=1") < commands.index("make test")
    recipe = (REPO / "Makefile").read_text().split("\ntest: install\n", 1)[1].splitlines()[0]
    assert recipe.strip() == "$(PY) -m pytest -q"


def test_wrong_data_path_fails_under_ci_and_skips_locally(tmp_path):
    nowhere = str(tmp_path / "no-data")
    ci = _pytest(DATA_TESTS, require=True, SSLFER_DATA=nowhere)
    assert ci.returncode == 1, ci.stdout[-3000:]
    assert "2 errors" in ci.stdout and f"FER2013 not found at {nowhere}" in ci.stdout
    assert f"real clips not found at {nowhere}" in ci.stdout and f"{REQUIRE_ENV}=1" in ci.stdout
    local = _pytest(DATA_TESTS, require=False, SSLFER_DATA=nowhere)
    assert local.returncode == 0 and "2 skipped" in local.stdout, local.stdout[-3000:]
    assert f"FER2013 not found at {nowhere}" in local.stdout  # -ra prints the reason


def test_broken_dlib_model_lookup_fails_even_locally(tmp_path):
    (tmp_path / "models").mkdir()  # an explicitly named folder without the predictor: the lookup fails
    result = _pytest(["tests/test_face_detection.py::test_upsampling_follows_the_expected_face_size"],
                     require=False, SSLFER_DLIB_MODELS=str(tmp_path / "models"))
    assert result.returncode == 1 and "model lookup failed" in result.stdout, result.stdout[-3000:]


def test_any_other_skip_fails_under_ci(tmp_path):
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\ndef test_needs_a_module():\n    pytest.importorskip('no_such_module_here')\n")
    (tmp_path / "test_module_probe.py").write_text(
        "import pytest\n\npytest.importorskip('no_such_module_either')\n\ndef test_never_runs():\n    pass\n")
    # tests/conftest.py as a plugin, so its hooks apply to files outside tests/
    ci = _pytest(["-p", "conftest", str(tmp_path / "test_probe.py")], require=True)
    assert ci.returncode == 1 and "1 failed" in ci.stdout and "no_such_module_here" in ci.stdout, ci.stdout
    ci = _pytest(["-p", "conftest", str(tmp_path / "test_module_probe.py")], require=True)
    assert ci.returncode == 2 and "1 error" in ci.stdout and "no_such_module_either" in ci.stdout, ci.stdout
    local = _pytest(["-p", "conftest", str(tmp_path / "test_probe.py"), str(tmp_path / "test_module_probe.py")],
                    require=False)
    assert local.returncode == 0 and "2 skipped" in local.stdout, local.stdout


class _ClosedWriter:
    def __init__(self, *args):
        pass

    def isOpened(self):
        return False


def test_missing_mp4_writer_fails_under_ci_and_skips_locally(tmp_path, monkeypatch):
    monkeypatch.setattr(cv2, "VideoWriter", _ClosedWriter)
    frames = [np.zeros((16, 16, 3), np.uint8)]
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="cannot write mp4v"):
        prep_clips.write_video(tmp_path / "a.mp4", frames)
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=f"cannot write mp4v.*{REQUIRE_ENV}=1"):
        prep_clips.write_video(tmp_path / "a.mp4", frames)
