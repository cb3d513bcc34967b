"""Check a shard directory against its manifest: presence, size, HDF5 header, and (full mode) sha256."""
from __future__ import annotations

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


def verify_shards(root: Path, *, quick: bool = False,
                  progress: Callable[[int], None] | None = None) -> list[ShardProblem]:
    """Every problem found in `root`, errors and warnings, in manifest order.

    quick checks existence, size, the HDF5 header (schema, version, counts, config) and the video ids the
    shard holds (as the manifest lists them, and each clip in one shard only: a file listed twice, or
    a copy under another name, is an error); full mode also hashes every byte. `progress(nbytes)` is
    called as bytes are checked (the total is the manifest's bytes). A missing or unreadable manifest raises ManifestError.
    """
    root = Path(root)
    manifest = load_manifest(root)
    problems = []
    hashed: list[tuple[Path, str]] = []
    files: dict[tuple[int, int], str] = {}  # (device, inode) -> the entry that names that file first
    contents: list[tuple[str, list[str]]] = []  # video ids read from each shard that passed
    for entry, path in zip(manifest.shards, shard_paths(root, manifest, check_links=False)):
        reason = escaping_link(path, root) or _same_file(path, files, entry.file)
        if reason:
            if progress:
                progress(entry.bytes)
        else:
            before = None if quick else hash_cache.identity(path)
            reason, video_ids = _check_shard(entry, path, manifest, quick, progress)
            if not reason:
                contents.append((entry.file, video_ids))
            if not reason and not quick:
                hashed.append((path, entry.sha256, before))
        if reason:
            problems.append(ShardProblem(entry.file, reason))
    for name, first, video_ids in repeated_clips(contents):
        problems.append(ShardProblem(name, describe_repeat("it", first, video_ids)
                                     + "; a set must hold each clip once"))
    problems.extend(_stray_files(root, manifest))
    if hashed:
        hash_cache.remember(hashed)  # later quick starts on this machine need not read these bytes again
    return problems



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


def _check_shard(entry: ShardEntry, path: Path, manifest: Manifest, quick: bool,
                 progress) -> tuple[str | None, list[str]]:
    """(what is wrong with the shard or None, the video ids it holds)."""
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
    if counts != (entry.videos, entry.frames):
        skip()
        return (f"holds {counts[0]} videos / {counts[1]} frames but the manifest says "
                f"{entry.videos} / {entry.frames}"), []
    if video_ids != entry.video_ids:
        skip()
        return (f"holds video ids {_listed(video_ids)} but the manifest says {_listed(entry.video_ids)}; "
                "the manifest does not describe this file"), []
    if not manifest.mixed and header_compat(header) != manifest.compat_config():
        skip()
        diff = describe_differences([("shard", header_compat(header)), ("manifest", manifest.compat_config())])
        return f"header disagrees with the manifest ({diff})", []
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
