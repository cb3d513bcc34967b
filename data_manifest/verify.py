"""Check a shard directory against its manifest: presence, size, HDF5 header, and (full mode) sha256."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py

from sslfer_core import hash_cache
from data_manifest.manifest import (
    MANIFEST_NAME, Manifest, ShardEntry, describe_differences, escaping_link, file_sha256, find_shard_files,
    header_compat, load_manifest, shard_paths, visible_files,
)
from sslfer_core.atomic_files import TEMP_PREFIX
from sslfer_core.shard_format import ShardFormatError, ShardHeader, check_self_contained

ERROR = "error"
WARNING = "warning"


@dataclass
class ShardProblem:
    file: str
    reason: str
    severity: str = ERROR  # ERROR fails verification; WARNING is reported but does not

    def __str__(self) -> str:
        return f"{self.severity.upper()} {self.file}: {self.reason}"


def verify_shards(root: Path, *, quick: bool = False, progress: Callable[[int], None] | None = None,
                  manifest: Manifest | None = None, jobs: int = 1, open_files: bool = True) -> list[ShardProblem]:
    """Every problem found in `root`, errors and warnings, in manifest order.

    quick checks existence, size and the HDF5 header (schema, version, counts, config); full mode also
    hashes every byte, `jobs` shards at a time (threads: reading and sha256 release the GIL). Each shard
    whose hash matches is recorded for later quick starts as soon as it is done, so an interrupted full
    verify keeps its work. `progress(nbytes)` is called as bytes are checked (the total is the manifest's
    bytes). `manifest`: the already parsed manifest of `root`; otherwise it is read (a missing or
    unreadable one raises ManifestError). open_files=False (quick only) stops at presence and size: for a
    caller that opens every shard next anyway and checks the rest with manifest_disagreement.
    """
    root = Path(root)
    manifest = load_manifest(root) if manifest is None else manifest
    if progress is not None and jobs > 1:
        progress = _locked_progress(progress)

    def check(item: tuple[ShardEntry, Path]) -> ShardProblem | None:
        entry, path = item
        reason = escaping_link(path, root)
        if reason:
            if progress:
                progress(entry.bytes)
        else:
            before = None if quick else hash_cache.identity(path)
            reason = _check_shard(entry, path, manifest, quick, progress, open_files)
            if not reason and not quick:
                # Later quick starts on this machine need not read these bytes again.
                hash_cache.remember([(path, entry.sha256, before)])
        return ShardProblem(entry.file, reason) if reason else None

    items = list(zip(manifest.shards, shard_paths(root, manifest, check_links=False)))
    if jobs > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=min(jobs, len(items))) as pool:
            found = list(pool.map(check, items))
    else:
        found = [check(item) for item in items]
    problems = [p for p in found if p is not None]
    problems.extend(_stray_files(root, manifest))
    return problems


def _locked_progress(progress: Callable[[int], None]) -> Callable[[int], None]:
    lock = threading.Lock()

    def advance(nbytes: int) -> None:
        with lock:
            progress(nbytes)
    return advance


def _check_shard(entry: ShardEntry, path: Path, manifest: Manifest, quick: bool, progress,
                 open_files: bool = True) -> str | None:
    def skip():  # keep the progress total honest when a shard is not read
        if progress:
            progress(entry.bytes)

    if not path.exists():
        skip()
        return "missing file"
    if not path.is_file():
        skip()
        return "not a regular file"
    size = path.stat().st_size
    if size != entry.bytes:
        skip()
        hint = "truncated" if size < entry.bytes else "grown or replaced"
        return f"size is {size} bytes but the manifest says {entry.bytes} ({hint})"
    if quick and not open_files:
        skip()
        return None
    try:
        with h5py.File(path, "r") as h5:
            header = ShardHeader.from_attrs(h5.attrs, source=entry.file)
            check_self_contained(h5, entry.file)
            counts = int(h5.attrs.get("num_videos", -1)), int(h5.attrs.get("num_frames", -1))
    except ShardFormatError as exc:
        skip()
        return str(exc)
    except OSError as exc:
        skip()
        return f"unreadable HDF5 ({exc})"
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        skip()
        return f"unreadable HDF5 metadata ({type(exc).__name__}: {exc})"
    reason = manifest_disagreement(entry, header, counts, manifest)
    if reason:
        skip()
        return reason
    if quick:
        skip()
        return None
    digest = file_sha256(path, progress)
    if digest != entry.sha256:
        return f"sha256 mismatch (file {digest[:12]}..., manifest {entry.sha256[:12]}...): content changed or corrupt"
    return None


def manifest_disagreement(entry: ShardEntry, header: ShardHeader, counts: tuple[int, int],
                          manifest: Manifest) -> str | None:
    """Why a shard's (videos, frames) counts or header disagree with its manifest entry, or None."""
    if counts != (entry.videos, entry.frames):
        return (f"holds {counts[0]} videos / {counts[1]} frames but the manifest says "
                f"{entry.videos} / {entry.frames}")
    if not manifest.mixed and header_compat(header) != manifest.compat_config():
        diff = describe_differences([("shard", header_compat(header)), ("manifest", manifest.compat_config())])
        return f"header disagrees with the manifest ({diff})"
    return None


def _stray_files(root: Path, manifest: Manifest) -> list[ShardProblem]:
    listed = {e.file for e in manifest.shards}
    problems = []
    for path in find_shard_files(root):
        rel = path.relative_to(root).as_posix()
        if rel not in listed:
            problems.append(ShardProblem(rel, f"shard file is not listed in {MANIFEST_NAME}; it will not be used",
                                         WARNING))
    for path in sorted(visible_files(root, TEMP_PREFIX + "*")):
        problems.append(ShardProblem(path.relative_to(root).as_posix(),
                                     "leftover temporary file of an interrupted write; safe to delete", WARNING))
    if manifest.failures_file and not (root / manifest.failures_file).is_file():
        problems.append(ShardProblem(manifest.failures_file, "failures file named in the manifest is missing",
                                     WARNING))
    return problems
