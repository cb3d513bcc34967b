"""Start-up checks of the shard folder: manifest present and verified (quick by default, every byte with
--verify). Each failure is one ShardSetError line."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

from sslfer_core import hash_cache
from data_manifest.manifest import MANIFEST_NAME, ManifestError, find_shard_files, load_manifest, shard_paths
from data_manifest.verify import ERROR, verify_shards
from sslfer_core.shard_format import ShardFormatError, unwrap_worker_message
from train.shard_index import ShardIndex, build_shard_index


class ShardSetError(ValueError):
    """The shard folder cannot be trained on; the message says why in one line (also when a DataLoader
    worker raised it: the main process then sees the worker's original line, not its traceback)."""

    def __init__(self, *args):
        super().__init__(*(unwrap_worker_message(a) for a in args))


def open_shard_set(root: Path, *, full_verify: bool = False,
                   warn: Callable[[str], None] = lambda text: None) -> tuple[ShardIndex, str]:
    """(index of the manifest's shards, sha256 of manifest.json)."""
    root = Path(root)
    if not root.is_dir():
        raise ShardSetError(f"{root}: no such shard folder")
    if not (root / MANIFEST_NAME).is_file():
        if not find_shard_files(root):
            raise ShardSetError(f"{root}: no shards here (no {MANIFEST_NAME} and no *.h5 files); run sslfer-prep first")
        raise ShardSetError(f"{root}: shards but no {MANIFEST_NAME}; run `sslfer-manifest build {root}`")
    try:
        manifest = load_manifest(root)
        if not manifest.shards:
            raise ShardSetError(f"{root}: {MANIFEST_NAME} lists no shards")
        problems = verify_shards(root, quick=not full_verify)
        paths = shard_paths(root, manifest)
    except ManifestError as error:
        raise ShardSetError(str(error)) from None
    errors = [p for p in problems if p.severity == ERROR]
    for problem in problems:
        if problem.severity != ERROR:
            warn(f"warning: {problem.file}: {problem.reason}")
    if errors:
        first = errors[0]
        raise ShardSetError(f"{root}: {len(errors)} of {len(manifest.shards)} shards fail verification "
                            f"(first: {first.file}: {first.reason}); see `sslfer-manifest verify {root}`")
    if not full_verify:
        _check_hashes_once(root, manifest, paths, warn)
    digest = hashlib.sha256((root / MANIFEST_NAME).read_bytes()).hexdigest()
    try:
        index = build_shard_index(paths)
    except (ShardFormatError, ValueError) as error:
        raise ShardSetError(str(error).splitlines()[0]) from None
    index.sha256 = [entry.sha256 for entry in manifest.shards]
    return index, digest


def _check_hashes_once(root: Path, manifest, paths: list[Path], warn: Callable[[str], None]) -> None:
    """A quick start still trains only on bytes whose sha256 matches the manifest: each shard is hashed
    once per machine (sslfer_core/hash_cache.py) and later starts only compare file metadata. Shards
    written by sslfer-prep, merge or verify on this machine are recorded already."""
    todo = [(entry, path) for entry, path in zip(manifest.shards, paths) if hash_cache.cached_sha256(path) != entry.sha256]
    if not todo:
        return
    warn(f"hashing {len(todo)} of {len(manifest.shards)} shards not yet verified on this machine "
         f"({sum(e.bytes for e, _ in todo) / 2**20:.0f} MiB, once)")
    seen = []
    for entry, path in todo:
        before = hash_cache.identity(path)
        try:
            digest = hash_cache.file_sha256(path)
        except OSError as error:
            raise ShardSetError(f"{path}: cannot read ({error.strerror or error}); "
                                f"see `sslfer-manifest verify {root}`") from None
        if digest != entry.sha256:
            hash_cache.remember(seen)
            raise ShardSetError(f"{root}: shard {entry.file} does not match its sha256 in {MANIFEST_NAME} "
                                f"(content changed or corrupt); see `sslfer-manifest verify {root}`")
        seen.append((path, digest, before))
    hash_cache.remember(seen)

