"""Manifest data model: build, save/load round trip, validation and path safety."""
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from data_manifest.manifest import (
    MANIFEST_NAME, ManifestError, build_manifest, describe_shard, file_sha256, load_manifest, save_manifest,
    shard_paths,
)
from manifest_fixtures import make_shard_set
from shard_fixtures import make_header, make_video
from sslfer_core.shard_format import write_shard


def _rewrite(root: Path, **changes) -> None:
    obj = json.loads((root / MANIFEST_NAME).read_text())
    for key, value in changes.items():
        if key == "first_file":
            obj["shards"][0]["file"] = value
        else:
            obj[key] = value
    (root / MANIFEST_NAME).write_text(json.dumps(obj))


def test_build_records_counts_hashes_and_config(tmp_path):
    root = make_shard_set(tmp_path / "set", failures=[{"video": "x", "reason": "no face"}] * 3, swaps=2)
    manifest = load_manifest(root)
    assert [e.file for e in manifest.shards] == ["shard-00000.h5", "shard-00001.h5"]
    first = manifest.shards[0]
    assert first.bytes == (root / "shard-00000.h5").stat().st_size
    assert first.sha256 == file_sha256(root / "shard-00000.h5")
    assert (first.videos, first.frames) == (2, 3 + 4)
    assert first.video_ids == ["v0", "v1"] and first.identities == ["vid0", "vid1"]
    assert first.swaps_per_frame == 2 and first.descriptor_kind == "landmark-geometry"
    assert (manifest.image_size, manifest.patch_size, manifest.swaps_per_frame) == (32, 16, 2)
    assert manifest.prep_config == {"fps": 5.0, "size": 32}
    assert manifest.failures == 3 and manifest.failures_file == "failures.jsonl"
    assert manifest.totals() == {"shards": 2, "videos": 4, "frames": 14, "identities": 2,
                                 "bytes": sum(e.bytes for e in manifest.shards), "failures": 3}
    raw = json.loads((root / MANIFEST_NAME).read_text())
    assert raw["schema"] == "sslfer.manifest" and raw["totals"]["frames"] == 14
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", raw["created"])


def test_save_load_round_trip_is_equal(tmp_path):
    root = make_shard_set(tmp_path / "set")
    manifest = load_manifest(root)
    save_manifest(root, manifest)
    assert load_manifest(root) == manifest
    assert [p.name for p in shard_paths(root, manifest)] == ["shard-00000.h5", "shard-00001.h5"]


def test_shards_with_different_settings_are_not_one_set(tmp_path):
    rng = np.random.default_rng(0)
    a, b = make_header(size=32), make_header(size=32, swaps=2)
    write_shard(tmp_path / "a.h5", a, [make_video(rng, a, 2, video_id="x")])
    write_shard(tmp_path / "b.h5", b, [make_video(rng, b, 2, video_id="y")])
    with pytest.raises(ManifestError, match=r"swaps_per_frame: a\.h5=1, b\.h5=2"):
        build_manifest(tmp_path)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../outside.h5", "sub/../../x.h5", "a\\..\\b.h5", "C:/x.h5", ""])
def test_unsafe_shard_paths_are_refused(tmp_path, bad):
    root = make_shard_set(tmp_path / "set", shards=1)
    _rewrite(root, first_file=bad)
    with pytest.raises(ManifestError, match="unsafe shard path"):
        load_manifest(root)


def test_describe_refuses_a_shard_outside_the_root(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    with pytest.raises(ManifestError, match="not inside"):
        describe_shard(root / "shard-00000.h5", tmp_path / "elsewhere")


def test_bad_json_missing_keys_and_newer_major_are_refused(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    good = (root / MANIFEST_NAME).read_text()
    (root / MANIFEST_NAME).write_text(good[:-20])
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(root)
    obj = json.loads(good)
    del obj["shards"][0]["sha256"]
    (root / MANIFEST_NAME).write_text(json.dumps(obj))
    with pytest.raises(ManifestError, match="incomplete or malformed.*sha256"):
        load_manifest(root)
    (root / MANIFEST_NAME).write_text(good)
    _rewrite(root, schema_version="2.1")
    with pytest.raises(ManifestError, match=r"2\.1.*1\.x"):
        load_manifest(root)
    _rewrite(root, schema_version="1.9")
    assert load_manifest(root).schema_version == "1.9"
    (root / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError, match="no manifest"):
        load_manifest(root)


def test_save_is_atomic_when_serialisation_fails(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    before = (root / MANIFEST_NAME).read_bytes()
    manifest = load_manifest(root)
    manifest.prep_config = {"not_json": object()}
    with pytest.raises(TypeError):
        save_manifest(root, manifest)
    assert (root / MANIFEST_NAME).read_bytes() == before
    assert sorted(p.name for p in root.iterdir()) == [MANIFEST_NAME, "shard-00000.h5"]


def test_saved_manifest_gets_the_umask_mode_and_replaces_a_private_one(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    manifest = load_manifest(root)
    (root / MANIFEST_NAME).chmod(0o600)
    previous = os.umask(0o027)
    try:
        save_manifest(root, manifest)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((root / MANIFEST_NAME).stat().st_mode) == 0o640
    assert load_manifest(root) == manifest


def test_compat_config_ignores_run_only_keys_such_as_part(tmp_path):
    manifest = load_manifest(make_shard_set(tmp_path / "set", shards=1))
    other = load_manifest(tmp_path / "set")
    manifest.prep_config.update(part=[0, 2], seed=1)
    other.prep_config.update(part=[1, 2], seed=2)
    assert manifest.compat_config() == other.compat_config()
    other.prep_config["fps"] = 10.0  # a content setting still counts
    assert manifest.compat_config() != other.compat_config()


UNPICKLING = (r"import (c?pickle|dill|shelve)|from (c?pickle|dill|shelve) import|allow_pickle\s*=\s*True"
              r"|np\.load\(|joblib\.load|torch\.load")


def test_no_pickle_in_data_manifest_sources():
    package = Path(__file__).resolve().parents[1] / "data_manifest"
    for source in package.glob("*.py"):
        text = source.read_text()
        assert not re.search(UNPICKLING, text), source.name
