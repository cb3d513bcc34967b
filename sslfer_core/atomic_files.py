"""Atomic file writes: a reader sees either the old file or the complete new one, never a partial one."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from sslfer_core.byte_sizes import human_bytes

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


class _KeptWriteError:
    """A binary file whose first failed write is kept: torch.save turns an OSError raised by the file's
    write into its own "enforce fail ... unexpected pos" text, which hides a full disk."""

    def __init__(self, handle: BinaryIO):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.handle.flush()


def write_through(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Create the file `path` and call write(file) on it (torch.save, say); a write that fails on the
    disk (full, quota, read-only) raises that OSError, with its errno, whatever `write` made of it."""
    with open(path, "wb") as handle:
        kept = _KeptWriteError(handle)
        try:
            write(kept)
        except Exception:
            if kept.error is not None:
                raise kept.error from None
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


# Write failures named the way a user looks for them; torch and safetensors otherwise hide them behind
# their own texts ("enforce fail at inline_container.cc", "Error while serializing").
WRITE_ERRNO_NAMES = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system"}


def free_space(folder: str | os.PathLike) -> str:
    try:
        return f"{human_bytes(shutil.disk_usage(folder).free)} free there"
    except OSError:
        return "free space unknown"


def write_error_text(error: BaseException, folder: str | os.PathLike) -> str:
    """Why a write into `folder` failed, in one line: "disk full (12.0 KB free there)" for a full disk,
    otherwise the error's first line."""
    code = getattr(error, "errno", None)
    if code in WRITE_ERRNO_NAMES:
        return f"{WRITE_ERRNO_NAMES[code]} ({free_space(folder)})"
    text = str(getattr(error, "strerror", None) or error).strip()
    first = text.splitlines()[0][:200] if text else type(error).__name__
    return f"{first}; {free_space(folder)}"
