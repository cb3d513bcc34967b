"""A per-machine hash record that cannot be written (a read-only ~/.cache in a CI sandbox or on a shared
cluster home) fails no command: `sslfer-manifest verify` and a training start go on, warning once
(issue 32)."""
import builtins
import errno
import os
import pathlib

import pytest
from click.testing import CliRunner

import sslfer_core.hash_cache as hash_cache
from data_manifest.cli import main as manifest_main
from train.cli import main as train_main
from train_fixtures import TINY_TRAIN, make_train_shards


@pytest.fixture
def read_only_cache(tmp_path, monkeypatch):
    """$SSLFER_HASH_CACHE in a folder that exists on a read-only file system: every write, open for
    writing (the record's journal and lock), rename, unlink or mkdir under it fails with EROFS, as the kernel answers there (unlink of a missing file too)."""
    folder = tmp_path / "ro-home" / ".cache" / "sslfer"
    folder.mkdir(parents=True)
    monkeypatch.setenv(hash_cache.HASH_CACHE_ENV, str(folder / "verified-shards.json"))
    monkeypatch.setattr(hash_cache, "_warned_unwritable", False)
    monkeypatch.setattr(hash_cache, "_memo", None)

    def inside(path) -> bool:
        return str(os.path.abspath(path)).startswith(str(folder))

    def refuse(real):
        def wrapper(self_or_path, *args, **kwargs):
            exists_already = real.__name__ == "mkdir" and os.path.isdir(self_or_path)  # EEXIST comes first
            if inside(self_or_path) and not exists_already:
                raise OSError(errno.EROFS, "Read-only file system", str(self_or_path))
            return real(self_or_path, *args, **kwargs)
        return wrapper

    for name in ("write_text", "write_bytes", "unlink", "mkdir", "touch"):
        monkeypatch.setattr(pathlib.Path, name, refuse(getattr(pathlib.Path, name)))
    real_os_open = os.open
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    monkeypatch.setattr(os, "open", lambda path, flags, *args, **kw: (
        (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system", str(path)))
        if inside(path) and flags & writing else real_os_open(path, flags, *args, **kw)))
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda file, mode="r", *args, **kw: (
        (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system", str(file)))
        if isinstance(file, (str, os.PathLike)) and inside(file) and set(mode) & set("wax+")
        else real_open(file, mode, *args, **kw)))
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst, **kw: (
        (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system", str(dst))) if inside(dst)
        else real_replace(src, dst, **kw)))
    return folder


def _warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if "cannot write the record of verified shards" in line]


def test_remember_on_a_read_only_cache_returns_false_and_warns_once(read_only_cache, tmp_path, capsys):
    shard = tmp_path / "a.h5"
    shard.write_bytes(b"bytes")
    assert hash_cache.remember([(shard, "0" * 64)]) is False
    assert hash_cache.remember([(shard, "0" * 64)]) is False
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 1 and "Read-only file system" in warned[0] and "SSLFER_HASH_CACHE" in warned[0]
    assert hash_cache.cached_sha256(shard) is None  # nothing recorded: the next start hashes again


def test_verify_passes_on_a_read_only_cache(read_only_cache, tmp_path):
    shards = make_train_shards(tmp_path / "shards", shards=2, videos=2, frames=8)
    hash_cache._warned_unwritable = False  # making the shards met the read-only record already
    result = CliRunner().invoke(manifest_main, ["verify", str(shards)])
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "OK: 2 shards" in result.output and "Traceback" not in result.stderr
    assert len(_warnings(result.stderr)) == 1


def test_training_starts_on_a_read_only_cache(read_only_cache, tmp_path):
    shards = make_train_shards(tmp_path / "shards", shards=1, videos=3, frames=8)
    hash_cache._warned_unwritable = False  # making the shards met the read-only record already
    result = CliRunner().invoke(train_main, ["--shards", str(shards), "--out", str(tmp_path / "run"),
                                                             *TINY_TRAIN, "--steps", "1"])
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    assert "hashing 1 of 1 shards" in result.stderr and len(_warnings(result.stderr)) == 1
    assert (tmp_path / "run" / "checkpoints" / "ckpt-step00000001.pt").is_file()
