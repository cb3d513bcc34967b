"""Shared fixtures: where the real data lives, and skips that say why."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "SSLFER_DATA"


def shared_data_root() -> Path:
    """../shared/data beside the project, or $SSLFER_DATA."""
    return Path(os.environ.get(DATA_ENV, REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def voxceleb_mini() -> Path:
    root = shared_data_root() / "voxceleb_mini"
    if not (root / "mp4").is_dir():
        pytest.skip(f"real clips not found at {root} (set {DATA_ENV} to the folder holding voxceleb_mini/)")
    return root


@pytest.fixture(scope="session")
def fer2013() -> Path:
    root = shared_data_root() / "fer2013"
    if not (root / "train").is_dir():
        pytest.skip(f"FER2013 not found at {root} (set {DATA_ENV} to the folder holding fer2013/)")
    return root


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path_factory, monkeypatch):
    """Keep the per-machine record of hashed shards (sslfer_core/hash_cache.py) out of the user's home;
    subprocesses inherit it through the environment."""
    monkeypatch.setenv("SSLFER_HASH_CACHE", str(tmp_path_factory.mktemp("hash-cache") / "verified-shards.json"))
