"""sha256 of files: shards, model files, weights and exported backbones are identified by it everywhere."""
from __future__ import annotations

import hashlib
import os
from typing import Callable

HASH_BLOCK = 4 << 20  # bytes read per call; large blocks keep Python overhead out of the hashing


def file_sha256(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file; `progress(nbytes)` is called after each block."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            if progress:
                progress(len(block))
    return digest.hexdigest()
