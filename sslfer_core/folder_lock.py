"""An exclusive lock that one process holds on a folder it writes (sslfer-prep's OUT, sslfer-train's run
folder), so that a second process on the same folder stops at once instead of overwriting the first."""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Iterator


class FolderLocked(RuntimeError):
    """Another live process holds the lock; `holder` is what it wrote into the lock file."""

    def __init__(self, lock_file: Path, holder: str):
        super().__init__(f"{lock_file} is held by {holder}")
        self.lock_file, self.holder = lock_file, holder


@contextlib.contextmanager
def folder_lock(lock_file: str | os.PathLike, owner: str) -> Iterator[None]:
    """Hold an flock on `lock_file` (created if missing) while the block runs, with "OWNER, pid N on HOST,
    since TIME" written into it; raises FolderLocked naming the holder when another process holds it.
    The kernel drops the lock when its holder exits or is killed, so a stale lock file blocks nothing."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    # "a+", not "w": opening must not erase the holder's line before the lock is known to be free.
    handle = open(lock_file, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(500).strip() or "another process (it has not written its name yet)"
            raise FolderLocked(lock_file, holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{owner}, pid {os.getpid()} on {socket.gethostname()}, "
                     f"since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        handle.flush()
        yield
    finally:
        handle.close()
