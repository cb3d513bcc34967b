"""Per-machine record of shard files already hashed, so that a quick start can trust a shard's bytes
without reading them again.

An entry maps a file's real path to the sha256 seen when its bytes were last read, together with the
file's (size, mtime_ns, ctime_ns, inode, device). Any write to the file, a replacement by another file,
a rename over it or a `touch` changes one of these; ctime cannot be set back from user space, so an entry
matches only a file that nothing has written since it was hashed. Bit rot below the filesystem is not
seen by this check (docs/guarantees.md); full verification (`sslfer-manifest verify`, `sslfer-train
--verify`) always reads every byte again.

The record is a JSON file ($SSLFER_HASH_CACHE, else $XDG_CACHE_HOME/sslfer/verified-shards.json, else
~/.cache/sslfer/verified-shards.json). A missing, unreadable or malformed record counts as empty; a
record that cannot be written (a read-only home in a CI sandbox, a full disk) only means the next start
hashes again: it never fails a command, and a process says so once, on stderr.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Callable

from sslfer_core.atomic_files import TEMP_PREFIX
from sslfer_core.file_hash import file_sha256

HASH_CACHE_ENV = "SSLFER_HASH_CACHE"
CACHE_SCHEMA = "sslfer.verified-shards"
MAX_ENTRIES = 100_000  # the oldest entries are dropped beyond this (a dropped entry costs one re-hash)


def cache_file() -> Path:
    explicit = os.environ.get(HASH_CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sslfer" / "verified-shards.json"


def identity(path: str | os.PathLike) -> tuple[str, list[int]] | None:
    """(real path, stat values an entry is keyed by), or None when the file cannot be stat'ed."""
    return _identity(Path(path))


def _identity(path: Path) -> tuple[str, list[int]] | None:
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return real, [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


_memo: dict[tuple, dict[str, dict]] = {}  # parsed record, keyed by the record file's identity


def _load() -> dict[str, dict]:
    path = cache_file()
    ident = _identity(path)
    if ident is not None and (ident[0], *ident[1]) in _memo:
        return dict(_memo[(ident[0], *ident[1])])
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(obj, dict) or obj.get("schema") != CACHE_SCHEMA or not isinstance(obj.get("files"), dict):
        return {}
    files = {k: v for k, v in obj["files"].items()
             if isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("stat"), list)}
    if ident is not None:
        _memo.clear()
        _memo[(ident[0], *ident[1])] = files
    return dict(files)


def cached_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 recorded for this file, if nothing has changed it since; else None."""
    ident = _identity(Path(path))
    if ident is None:
        return None
    entry = _load().get(ident[0])
    return entry["sha256"] if entry is not None and entry["stat"] == ident[1] else None


_warned_unwritable = False  # one warning per process, however many shards or workers meet it


def _warn_unwritable(path: Path, error: OSError) -> None:
    global _warned_unwritable
    if _warned_unwritable:
        return
    _warned_unwritable = True
    print(f"warning: cannot write the record of verified shards {path} ({error.strerror or error}); "
          f"nothing fails, but the next start hashes these shards again (set {HASH_CACHE_ENV} to a writable "
          "file to keep it)", file=sys.stderr)


def remember(items: list[tuple]) -> bool:
    """Record (path, sha256[, identity before reading]) items whose bytes were just read; a file whose
    identity changed while it was read is left out. False (with a warning, once per process) when the
    record cannot be written."""
    files = _load()
    for path, digest, *before in items:
        ident = _identity(Path(path))
        if ident is not None and (not before or before[0] == ident):
            files.pop(ident[0], None)  # re-inserted last: the newest entries survive the size cap
            files[ident[0]] = {"sha256": digest, "stat": ident[1]}
    if len(files) > MAX_ENTRIES:
        files = dict(list(files.items())[-MAX_ENTRIES:])
    path = cache_file()
    # Renamed into place but not fsync'ed: a record lost in a crash only costs a re-hash.
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"schema": CACHE_SCHEMA, "files": files}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):  # on a read-only file system even this unlink fails
            tmp.unlink(missing_ok=True)
        _warn_unwritable(path, error)
        return False
    return True


def hash_and_remember(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> str:
    """sha256 of the file's current bytes (always read), recorded for later quick starts."""
    before = _identity(Path(path))
    digest = file_sha256(path, progress)
    remember([(path, digest, before)])
    return digest
