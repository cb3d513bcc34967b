"""Check a shard directory against its manifest: presence, size, HDF5 header, and (full mode) sha256."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py

from sslfer_core import hash_cache
from data_manifest.manifest import (
    MANIFEST_NAME, MAX_LISTED, Manifest, ShardEntry, describe_differences, describe_repeat, escaping_link,
    file_sha256, find_shard_files, header_compat, load_manifest, repeated_clips, shard_paths, visible_files,
)
from sslfer_core.atomic_files import TEMP_PREFIX
from sslfer_core.shard_format import ShardFormatError, ShardHeader, check_self_contained, read_backed

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

    quick checks existence, size, the HDF5 header (schema, version, counts, config) and the video ids the
    shard holds (as the manifest lists them, and each clip in one shard only: a file listed twice, or
    a copy under another name, is an error); full mode also hashes every byte, `jobs` shards at a time
    (threads: reading and sha256 release the GIL). Each shard whose hash matches is recorded for later
    quick starts as soon as it is done, so an interrupted full verify keeps its work. `progress(nbytes)` is
    called as bytes are checked (the total is the manifest's bytes). `manifest`: the already parsed
    manifest of `root`; otherwise it is read (a missing or unreadable one raises ManifestError).
    open_files=False (quick only) stops at presence, size and files listed twice: for a caller that opens
    every shard next anyway and checks the rest with manifest_disagreement and repeated_clips.
    """
    root = Path(root)
    manifest = load_manifest(root) if manifest is None else manifest
    if progress is not None and jobs > 1:
        progress = _locked_progress(progress)
    items = list(zip(manifest.shards, shard_paths(root, manifest, check_links=False)))
    files: dict[tuple[int, int], str] = {}  # (device, inode) -> the entry that names that file first
    # In manifest order, so a link is reported against the entry listed first.
    real_root = os.path.realpath(root)
    early = [escaping_link(path, root, real_root) or _same_file(path, files, entry.file) for entry, path in items]

    def check(index: int) -> tuple[str | None, list[str] | None]:
        (entry, path), reason, video_ids = items[index], early[index], None
        if reason:
            if progress:
                progress(entry.bytes)
        else:
            before = None if quick else hash_cache.identity(path)
            reason, video_ids = _check_shard(entry, path, manifest, quick, progress, open_files)
            if not reason and not quick:
                # Later quick starts on this machine need not read these bytes again.
                hash_cache.remember([(path, entry.sha256, before)])
        return reason, video_ids

    if jobs > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=min(jobs, len(items))) as pool:
            found = list(pool.map(check, range(len(items))))
    else:
        found = [check(index) for index in range(len(items))]
    problems = []
    contents: list[tuple[str, list[str]]] = []  # video ids read from each shard that passed
    for (entry, _), (reason, video_ids) in zip(items, found):
        if reason:
            problems.append(ShardProblem(entry.file, reason))
        elif video_ids is not None:
            contents.append((entry.file, video_ids))
    for name, first, video_ids in repeated_clips(contents):
        problems.append(ShardProblem(name, describe_repeat("it", first, video_ids)
                                     + "; a set must hold each clip once"))
    problems.extend(_stray_files(root, manifest))
    return problems


def _locked_progress(progress: Callable[[int], None]) -> Callable[[int], None]:
    lock = threading.Lock()

    def advance(nbytes: int) -> None:
        with lock:
            progress(nbytes)
    return advance


def _same_file(path: Path, files: dict[tuple[int, int], str], name: str) -> str | None:
    """Why `path` is a file an earlier entry already names (a symlink or hard link to it), or None."""
    try:
        info = path.stat()
    except OSError:
        return None  # reported by the shard's own checks
    key = (info.st_dev, info.st_ino)
    if key in files:
        return f"the same file as {files[key]} (listed twice through a link); a set must hold each clip once"
    files[key] = name
    return None


def _check_shard(entry: ShardEntry, path: Path, manifest: Manifest, quick: bool, progress,
                 open_files: bool = True) -> tuple[str | None, list[str] | None]:
    """(what is wrong with the shard or None, the video ids it holds; None when the file is not opened)."""
    def skip():  # keep the progress total honest when a shard is not read
        if progress:
            progress(entry.bytes)

    if not path.exists():
        skip()
        return "missing file", []
    if not path.is_file():
        skip()
        return "not a regular file", []
    size = path.stat().st_size
    if size != entry.bytes:
        skip()
        hint = "truncated" if size < entry.bytes else "grown or replaced"
        return f"size is {size} bytes but the manifest says {entry.bytes} ({hint})", []
    if quick and not open_files:
        skip()
        return None, None
    try:
        with h5py.File(path, "r") as h5:
            header = ShardHeader.from_attrs(h5.attrs, source=entry.file)
            check_self_contained(h5, entry.file)
            counts = int(h5.attrs.get("num_videos", -1)), int(h5.attrs.get("num_frames", -1))
            video_ids = [str(v) for v in read_backed(h5["videos/video_id"], size, entry.file, text=True)]
    except ShardFormatError as exc:
        skip()
        return str(exc), []
    except OSError as exc:
        skip()
        return f"unreadable HDF5 ({exc})", []
    except (KeyError, ValueError, TypeError, RuntimeError, OverflowError) as exc:
        skip()
        return f"unreadable HDF5 metadata ({type(exc).__name__}: {exc})", []
    reason = manifest_disagreement(entry, header, counts, manifest, video_ids)
    if reason:
        skip()
        return reason, []
    if quick:
        skip()
        return None, video_ids
    digest = file_sha256(path, progress)
    if digest != entry.sha256:
        return (f"sha256 mismatch (file {digest[:12]}..., manifest {entry.sha256[:12]}...): content changed or "
                "corrupt"), []
    return None, video_ids


def _listed(video_ids: list[str]) -> str:
    more = f" and {len(video_ids) - MAX_LISTED} more" if len(video_ids) > MAX_LISTED else ""
    return ", ".join(video_ids[:MAX_LISTED]) + more if video_ids else "none"


def video_ids_disagreement(entry: ShardEntry, video_ids: list[str]) -> str | None:
    """Why the video ids read from a shard are not the ones its manifest entry lists, or None."""
    if video_ids == entry.video_ids:
        return None
    return (f"holds video ids {_listed(video_ids)} but the manifest says {_listed(entry.video_ids)}; "
            "the manifest does not describe this file")


def manifest_disagreement(entry: ShardEntry, header: ShardHeader, counts: tuple[int, int],
                          manifest: Manifest, video_ids: list[str] | None = None) -> str | None:
    """Why a shard's (videos, frames) counts, video ids (when given) or header disagree with its manifest
    entry, or None."""
    if counts != (entry.videos, entry.frames):
        return (f"holds {counts[0]} videos / {counts[1]} frames but the manifest says "
                f"{entry.videos} / {entry.frames}")
    if video_ids is not None:
        wrong_ids = video_ids_disagreement(entry, video_ids)
        if wrong_ids:
            return wrong_ids
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
