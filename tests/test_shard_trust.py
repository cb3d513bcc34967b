"""A verified shard set holds only its own bytes: HDF5 content stored outside the file (external storage,
external links, virtual datasets) and shards reached through symlinks that leave the set's folder are
refused by verify, by training's start-up and by merge. A quick start notices changed bytes once per
machine, and a shard that breaks during training stops the run with one line naming it."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from sslfer_core import hash_cache
from data_manifest.cli import main as manifest_main
from data_manifest.manifest import ManifestError, load_manifest, save_manifest
from data_manifest.merge import merge_shard_sets
from data_manifest.verify import verify_shards
from manifest_fixtures import make_shard_set
from sslfer_core.file_hash import file_sha256
from sslfer_core.shard_format import ShardFormatError, ShardReader, unwrap_worker_message
from train.shard_set import ShardSetError, open_shard_set
from train_fixtures import TINY_TRAIN, make_train_shards


def _rehash_manifest(root: Path) -> None:
    """What an attacker does after editing a shard: make the manifest vouch for the new bytes."""
    manifest = load_manifest(root)
    for entry in manifest.shards:
        path = root / entry.file
        entry.bytes, entry.sha256 = path.stat().st_size, file_sha256(path)
    save_manifest(root, manifest)


def _point_outside(shard: Path, outside: Path, kind: str) -> None:
    """Replace frames/det_score by a dataset whose bytes live in `outside`."""
    with h5py.File(shard, "r+") as h5:
        values = h5["frames/det_score"][()]
        del h5["frames/det_score"]
        if kind == "external":
            outside.write_bytes(values.astype("<f4").tobytes())
            h5["frames"].create_dataset("det_score", shape=values.shape, dtype="<f4",
                                        external=[(str(outside), 0, values.nbytes)])
        elif kind == "link":
            with h5py.File(outside, "w") as other:
                other["det_score"] = values
            h5["frames/det_score"] = h5py.ExternalLink(str(outside), "/det_score")
        else:  # virtual
            with h5py.File(outside, "w") as other:
                other["det_score"] = values
            layout = h5py.VirtualLayout(shape=values.shape, dtype=values.dtype)
            layout[:] = h5py.VirtualSource(str(outside), "det_score", shape=values.shape)
            h5["frames"].create_virtual_dataset("det_score", layout)


@pytest.fixture(params=["external", "link", "virtual"])
def outside_set(request, tmp_path):
    root = make_train_shards(tmp_path / "set", shards=2, videos=2, frames=20)
    _point_outside(root / "shard-00000.h5", tmp_path / f"outside-{request.param}.bin", request.param)
    _rehash_manifest(root)
    return root


def test_the_doctored_shard_really_reads_outside_bytes(tmp_path):
    # The attack this file guards against works at the HDF5 level: h5py follows external storage.
    root = make_train_shards(tmp_path / "set", shards=1, videos=1, frames=5)
    outside = tmp_path / "outside.bin"
    _point_outside(root / "shard-00000.h5", outside, "external")
    outside.write_bytes(np.full(5, 7.0, "<f4").tobytes())
    with h5py.File(root / "shard-00000.h5", "r") as h5:
        assert h5["frames/det_score"][()].tolist() == [7.0] * 5


def test_verify_train_and_merge_refuse_content_outside_the_file(outside_set, tmp_path):
    problems = verify_shards(outside_set)
    assert [p.file for p in problems] == ["shard-00000.h5"]
    assert "content outside the file" in problems[0].reason and "det_score" in problems[0].reason
    result = CliRunner().invoke(manifest_main, ["verify", str(outside_set)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "shard-00000.h5" in result.output and "content outside the file" in result.output
    with pytest.raises(ShardSetError, match="content outside the file"):
        open_shard_set(outside_set)
    with pytest.raises(ShardFormatError, match="content outside the file"):
        ShardReader(outside_set / "shard-00000.h5")
    result = CliRunner().invoke(manifest_main, ["merge", str(tmp_path / "merged"), str(outside_set)])
    assert result.exit_code == 1 and "content outside the file" in result.output, result.output
    assert not (tmp_path / "merged").exists()


def test_train_cli_refuses_a_shard_with_external_storage(tmp_path):
    from train.cli import main as train_main

    root = make_train_shards(tmp_path / "set", shards=2, videos=2, frames=20)
    _point_outside(root / "shard-00001.h5", tmp_path / "outside.bin", "external")
    _rehash_manifest(root)
    result = CliRunner().invoke(train_main, [str(a) for a in ["--shards", root, "--out", tmp_path / "run",
                                                             *TINY_TRAIN, "--steps", "1"]])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "shard-00001.h5" in lines[0] and "content outside the file" in lines[0]


@pytest.fixture(params=["shard", "folder"])
def escaping_set(request, tmp_path):
    """A set whose second shard (or the folder holding it) is a symlink to a place outside the set."""
    root = make_train_shards(tmp_path / "set", shards=2, videos=2, frames=20)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    manifest = load_manifest(root)
    if request.param == "shard":
        os.replace(root / "shard-00001.h5", elsewhere / "shard-00001.h5")
        os.symlink(elsewhere / "shard-00001.h5", root / "shard-00001.h5")
    else:
        os.replace(root / "shard-00001.h5", elsewhere / "shard-00001.h5")
        os.symlink(elsewhere, root / "sub")
        manifest.shards[1].file = "sub/shard-00001.h5"
        save_manifest(root, manifest)
    return root


def test_verify_train_and_merge_refuse_symlinks_leaving_the_set(escaping_set, tmp_path):
    problems = verify_shards(escaping_set)
    assert len(problems) == 1 and "symlink that leaves the shard folder" in problems[0].reason
    result = CliRunner().invoke(manifest_main, ["verify", "--quick", str(escaping_set)])
    assert result.exit_code == 1 and "symlink that leaves the shard folder" in result.output
    with pytest.raises(ShardSetError, match="symlink that leaves the shard folder"):
        open_shard_set(escaping_set)
    with pytest.raises(ManifestError, match="symlink that leaves the shard folder"):
        merge_shard_sets(tmp_path / "merged", [escaping_set])
    result = CliRunner().invoke(manifest_main, ["merge", str(tmp_path / "merged"), str(escaping_set)])
    assert result.exit_code == 1 and "symlink that leaves the shard folder" in result.output
    assert not (tmp_path / "merged").exists()


def test_a_symlink_inside_the_set_is_fine(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=2)
    (root / ".store").mkdir()  # hidden: not taken for a stray shard
    os.replace(root / "shard-00001.h5", root / ".store" / "shard-00001.h5")
    os.symlink(root / ".store" / "shard-00001.h5", root / "shard-00001.h5")
    assert verify_shards(root) == []


def test_quick_start_hashes_once_per_machine_and_sees_changed_bytes(tmp_path, monkeypatch):
    root = make_train_shards(tmp_path / "set", shards=2, videos=2, frames=20)
    messages: list[str] = []
    # Shards that build_manifest hashed on this machine are trusted without reading them again.
    open_shard_set(root, warn=messages.append)
    assert messages == []
    # A new machine (empty record): the first quick start hashes both shards, the second none.
    monkeypatch.setenv(hash_cache.HASH_CACHE_ENV, str(tmp_path / "other-machine.json"))
    open_shard_set(root, warn=messages.append)
    open_shard_set(root, warn=messages.append)
    assert len(messages) == 1 and messages[0].startswith("hashing 2 of 2 shards")
    # A same-size change inside a raw pixel block passes the quick header check but not the hash.
    shard = root / "shard-00000.h5"
    with ShardReader(shard) as reader:
        offset = reader._dataset("face").id.get_chunk_info(0).byte_offset
    data = bytearray(shard.read_bytes())
    data[offset + 10] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify_shards(root, quick=True) == []
    with pytest.raises(ShardSetError, match=r"shard-00000.h5 does not match its sha256.*sslfer-manifest verify"):
        open_shard_set(root)


def test_a_corrupt_record_counts_as_empty(tmp_path, monkeypatch):
    record = tmp_path / "record.json"
    monkeypatch.setenv(hash_cache.HASH_CACHE_ENV, str(record))
    root = make_shard_set(tmp_path / "set", shards=1)
    for text in ("{not json", '{"schema": "sslfer.verified-shards", "files": []}', "\xff\xfe"):
        record.write_text(text, encoding="latin-1")
        assert hash_cache.cached_sha256(root / "shard-00000.h5") is None
    digest = hash_cache.hash_and_remember(root / "shard-00000.h5")
    assert hash_cache.cached_sha256(root / "shard-00000.h5") == digest == load_manifest(root).shards[0].sha256
    os.utime(root / "shard-00000.h5", ns=(1, 1))  # any metadata change forgets the entry
    assert hash_cache.cached_sha256(root / "shard-00000.h5") is None


def test_worker_tracebacks_are_unwrapped_to_the_original_line():
    wrapped = ("Caught ShardSetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise ShardSetError("boom")\n'
               "train.shard_set.ShardSetError: /data/shard-00003.h5: cannot read field 'face'\n")
    assert str(ShardSetError(wrapped)) == "/data/shard-00003.h5: cannot read field 'face'"
    assert str(ShardFormatError(wrapped)) == "/data/shard-00003.h5: cannot read field 'face'"
    assert unwrap_worker_message("plain message") == "plain message"


def test_looking_up_every_shard_reads_the_record_once(tmp_path, monkeypatch):
    """A start looks up each shard in the record: the journal's lines are parsed once, not once per
    lookup (that grew with shards squared), also before the journal is first folded into the record."""
    import json as json_module

    monkeypatch.setenv(hash_cache.HASH_CACHE_ENV, str(tmp_path / "record.json"))
    files = []
    for i in range(30):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(bytes([i]) * 10)
        files.append(path)
    for path in files:
        hash_cache.hash_and_remember(path)
    assert not (tmp_path / "record.json").exists()  # 30 lines: still only a journal
    parsed = []
    real_loads = json_module.loads
    monkeypatch.setattr(hash_cache.json, "loads", lambda text, *a, **k: parsed.append(1) or real_loads(text, *a, **k))
    hash_cache._memo = None
    for path in files:
        assert hash_cache.cached_sha256(path) is not None
    assert len(parsed) == len(files)  # one per journal line, over all lookups together
