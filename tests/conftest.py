"""Shared fixtures: where the real data lives, and skips that say why (failures under $SSLFER_REQUIRE_DATA)."""
import os
from pathlib import Path

import pytest

from needs import MACHINE_SKIP, REQUIRE_ENV, missing, required

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "SSLFER_DATA"


def shared_data_root() -> Path:
    """../shared/data beside the project, or $SSLFER_DATA."""
    return Path(os.environ.get(DATA_ENV, REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def voxceleb_mini() -> Path:
    root = shared_data_root() / "voxceleb_mini"
    if not (root / "mp4").is_dir():
        missing(f"real clips not found at {root} (set {DATA_ENV} to the folder holding voxceleb_mini/)")
    return root


@pytest.fixture(scope="session")
def fer2013() -> Path:
    root = shared_data_root() / "fer2013"
    if not (root / "train").is_dir():
        missing(f"FER2013 not found at {root} (set {DATA_ENV} to the folder holding fer2013/)")
    return root


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path_factory, monkeypatch):
    """Keep the per-machine record of hashed shards (sslfer_core/hash_cache.py) out of the user's home;
    subprocesses inherit it through the environment."""
    monkeypatch.setenv("SSLFER_HASH_CACHE", str(tmp_path_factory.mktemp("hash-cache") / "verified-shards.json"))


def _fail_a_skip(report) -> None:
    if required() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if MACHINE_SKIP in reason:
            return
        report.outcome = "failed"
        report.longrepr = f"skipped, but {REQUIRE_ENV}=1 needs every test to run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under $SSLFER_REQUIRE_DATA every skip is a failure, whatever raised it (a skipif, an importorskip)."""
    outcome = yield
    _fail_a_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped while it is collected (a module-level importorskip)."""
    outcome = yield
    _fail_a_skip(outcome.get_result())
