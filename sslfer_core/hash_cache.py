"""Per-machine record of shard files already hashed, so that a quick start can trust a shard's bytes
without reading them again.

An entry maps a file's real path to the sha256 seen when its bytes were last read, together with the
file's (size, mtime_ns, ctime_ns, inode, device). Any write to the file, a replacement by another file,
a rename over it or a `touch` changes one of these; ctime cannot be set back from user space, so an entry
matches only a file that nothing has written since it was hashed. Bit rot below the filesystem is not
seen by this check (docs/guarantees.md); full verification (`sslfer-manifest verify`, `sslfer-train
--verify`) always reads every byte again.

The record is a JSON file ($SSLFER_HASH_CACHE, else $XDG_CACHE_HOME/sslfer/verified-shards.json, else
~/.cache/sslfer/verified-shards.json) and a journal beside it (same name + ".journal", one JSON line per
entry). New entries are appended to the journal, one short write each under a lock, so that every shard
is recorded the moment it is verified (an interrupted start keeps what it hashed) and several processes
(the ranks of a job, parallel verify workers) record at once without losing each other's entries. The
journal is folded into the JSON file once it holds as many lines as the file has entries, which keeps
recording linear in the number of shards. A missing, unreadable or malformed record or journal line
counts as empty; a record that cannot be written (a read-only home in a CI sandbox, a full disk) only
means the next start hashes again: it never fails a command, and a process says so once, on stderr.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from sslfer_core.atomic_files import TEMP_PREFIX
from sslfer_core.file_hash import file_sha256

HASH_CACHE_ENV = "SSLFER_HASH_CACHE"
CACHE_SCHEMA = "sslfer.verified-shards"
MAX_ENTRIES = 100_000  # the oldest entries are dropped beyond this (a dropped entry costs one re-hash)
JOURNAL_SUFFIX = ".journal"
LOCK_SUFFIX = ".lock"
MIN_FOLD_LINES = 1024  # a journal shorter than this is never folded (folding rewrites the whole record)


def cache_file() -> Path:
    explicit = os.environ.get(HASH_CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sslfer" / "verified-shards.json"


def journal_file(record: Path | None = None) -> Path:
    record = cache_file() if record is None else record
    return record.with_name(record.name + JOURNAL_SUFFIX)


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


class _Parsed:
    """The record as last read: the JSON file's identity, how far the journal was read, and the entries."""

    def __init__(self, record: Path, key: tuple | None):
        self.record, self.key, self.journal_offset, self.journal_lines = record, key, 0, 0
        self.files: dict[str, dict] = {}
        self.malformed = False  # the JSON file exists but does not parse: it and its journal count as empty


_memo: _Parsed | None = None


def _valid(entry) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("stat"), list)


def _read_record(path: Path) -> dict[str, dict] | None:
    """The JSON file's entries; None when it does not parse as a record."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("schema") != CACHE_SCHEMA or not isinstance(obj.get("files"), dict):
        return None
    return {k: v for k, v in obj["files"].items() if _valid(v)}


def _read_journal(parsed: _Parsed) -> None:
    """Apply the journal's complete lines after parsed.journal_offset (a line still being written waits)."""
    try:
        with open(journal_file(parsed.record), "rb") as handle:
            handle.seek(parsed.journal_offset)
            tail = handle.read()
    except OSError:
        return
    end = tail.rfind(b"\n") + 1
    for line in tail[:end].splitlines():
        try:
            item = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(item, dict) and isinstance(item.get("path"), str) and _valid(item):
            parsed.files.pop(item["path"], None)  # re-inserted last: the newest entries survive the size cap
            parsed.files[item["path"]] = {"sha256": item["sha256"], "stat": item["stat"]}
        parsed.journal_lines += 1
    parsed.journal_offset += end


def _load() -> dict[str, dict]:
    """The current entries. Parsed once per change of the JSON file; journal lines are read as they come.
    The returned dict is shared: callers read it and never change it."""
    global _memo
    record = cache_file()
    ident = _identity(record)
    key = None if ident is None else (ident[0], *ident[1])
    try:
        journal_size = os.stat(journal_file(record)).st_size
    except OSError:
        journal_size = 0
    # key None (no JSON file yet, only a journal) is a state like any other: the journal is read on.
    if _memo is None or _memo.record != record or _memo.key != key:
        _memo = _Parsed(record, key)
        files = _read_record(record) if key is not None else {}
        if files is None:  # the journal belongs to a record that is gone: lines written from now on count
            _memo.malformed, _memo.journal_offset, files = True, journal_size, {}
        _memo.files = files
    if journal_size < _memo.journal_offset:  # folded meanwhile by another process
        _memo = None
        return _load()
    if journal_size > _memo.journal_offset:
        _read_journal(_memo)
    return _memo.files


def cached_sha256(path: str | os.PathLike) -> str | None:
    """The sha256 recorded for this file, if nothing has changed it since; else None."""
    return cached_sha256_many([path])[0]


def cached_sha256_many(paths: list) -> list[str | None]:
    """cached_sha256 of each path, reading the record once (a training start asks for every shard)."""
    files = _load()
    found = []
    for path in paths:
        ident = _identity(Path(path))
        entry = None if ident is None else files.get(ident[0])
        found.append(entry["sha256"] if entry is not None and entry["stat"] == ident[1] else None)
    return found


@contextlib.contextmanager
def _locked(record: Path) -> Iterator[None]:
    record.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(record.with_name(record.name + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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
    identity changed while it was read is left out. False (with a warning, once per process)
    when the record cannot be written."""
    lines = []
    for path, digest, *before in items:
        ident = _identity(Path(path))
        if ident is not None and (not before or before[0] == ident):
            lines.append(json.dumps({"path": ident[0], "sha256": digest, "stat": ident[1]}) + "\n")
    if not lines:
        return True
    record = cache_file()
    try:
        with _locked(record):
            with open(journal_file(record), "ab") as handle:
                handle.write("".join(lines).encode("utf-8"))
            parsed = _load()
            if _memo is not None and (_memo.malformed or
                                      _memo.journal_lines >= max(MIN_FOLD_LINES, len(parsed) - _memo.journal_lines)):
                _fold(record, parsed)
    except OSError as error:
        _warn_unwritable(record, error)
        return False
    return True


def _fold(record: Path, files: dict[str, dict]) -> None:
    """Write every entry into the JSON file and empty the journal (called under the lock)."""
    global _memo
    if len(files) > MAX_ENTRIES:
        files = dict(list(files.items())[-MAX_ENTRIES:])
    # Renamed into place but not fsync'ed: a record lost in a crash only costs a re-hash.
    tmp = record.with_name(f"{TEMP_PREFIX}{record.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps({"schema": CACHE_SCHEMA, "files": files}), encoding="utf-8")
        os.replace(tmp, record)
    except OSError:
        tmp.unlink(missing_ok=True) if tmp.parent.is_dir() else None
        raise
    os.truncate(journal_file(record), 0)
    _memo = None


def hash_and_remember(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> str:
    """sha256 of the file's current bytes (always read), recorded for later quick starts."""
    before = _identity(Path(path))
    digest = file_sha256(path, progress)
    remember([(path, digest, before)])
    return digest
