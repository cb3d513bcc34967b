"""Atomic file writes: a reader sees either the old file or the complete new one, never a partial one."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterator

TEMP_PREFIX = ".partial-"


def fsync_directory(directory: Path) -> None:
    # The rename itself must reach the disk, not only the file's bytes.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp_file(final_path: Path) -> Path:
    """A new empty file beside final_path. Mode 0o666 filtered by the umask (and default ACLs), like a
    plain open(): shards and manifests are shared, and mkstemp's 0o600 would make them private."""
    for _ in range(100):
        candidate = final_path.parent / f"{TEMP_PREFIX}{final_path.name}.{secrets.token_hex(6)}"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"{final_path.parent}: could not create a unique temporary file for {final_path.name}")


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; on success fsync it and rename it into place.

    On any exception the temporary file is removed and `final_path` is untouched.
    Temporary names start with TEMP_PREFIX so that tools can ignore and clean them.
    """
    final_path = Path(final_path)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp_file(final_path)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, final_path)
        fsync_directory(final_path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def writable_dir_problem(directory: str | os.PathLike) -> str | None:
    """Why files cannot be created in `directory` (made if missing), or None. Tried for real, with a
    probe file, since permission bits say nothing for root, read-only mounts or full disks' inodes."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = _create_temp_file(directory / "write-probe")
        probe.unlink()
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(directory) else ""
        return f"cannot write to {directory}: {exc.strerror or exc}{where}"
    return None
