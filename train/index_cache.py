"""Per-machine cache of the shard index, so that a start after the first one reads a few arrays instead of
opening every shard.

Building the index opens every shard (header, video table, timestamps): about 6 ms per shard here, 42 s
for VoxCeleb2's 6,556 contrastive shards on every start. What it reads is a function of the shards' bytes,
and those are pinned by manifest.json (one sha256 per shard) once the start has matched every shard to
its sha256 (train/shard_set.py, the hash record). So the index is kept under the manifest's sha256, beside
the hash record ($SSLFER_HASH_CACHE + ".index/", else ~/.cache/sslfer/verified-shards.json.index/):

    <manifest sha256>/index/        the index's per-video arrays, shard headers and identity names
    <manifest sha256>/timestamps/   every timestamp (values, offsets), for methods that keep them
    <manifest sha256>/<name>/       what a method derives per shard (a CachedHook's arrays, e.g. the MAE's
                                    clip catalogue), one folder per configuration

Each folder holds .npy files and meta.json with every file's sha256. A load reads each file once to hash
it and then maps it read-only: the ranks of a machine share one copy of the index in the page cache, and
nothing can write into it. A folder that is missing, of another version, or whose bytes do not match is
not used (a damaged one is named in one warning line) and the index is read from the shards again: the
ranks of a machine each read a consecutive share of the shards and keep it as a part (save_part), and
the machine's rank 0 merges the parts and writes the set (merge_parts, save_index). Folders are written
under a temporary name and renamed into place, so a crash leaves no half folder. A cache that cannot be written (a read-only home) only
means every start reads the shards: it fails nothing, and says so once. `--verify` ignores the cache and
rewrites it. At most MAX_SETS sets are kept; the least recently written go first.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from sslfer_core import hash_cache, strict_json
from sslfer_core.atomic_files import TEMP_PREFIX
from sslfer_core.file_hash import file_sha256
from sslfer_core.shard_format import ShardFormatError, ShardHeader
from train.shard_index import ShardIndex, Timestamps, merge_indexes

SCHEMA = "sslfer.shard-index-cache"
# Raised whenever what build_shard_index or a CachedHook computes from the same bytes changes.
VERSION = 1
MAX_SETS = 8
INDEX, TIMESTAMPS = "index", "timestamps"
INDEX_ARRAYS = ("video_shard", "video_local", "video_first_row", "video_frames", "video_identity", "video_names")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")  # a CachedHook's folder
_KEY = re.compile(r"[a-z0-9_]{1,64}")  # an array's file name, without .npy


@runtime_checkable
class CachedHook(Protocol):
    """A train/shard_index.py ShardHook whose result the cache can keep: cache_name says what it computes
    (its configuration included; lower-case letters, digits, '.' and '-'), cache_arrays gives its result
    after every shard was seen (None: nothing to keep, e.g. it stopped early), restore puts back what
    cache_arrays gave for the same shards, as if it had watched them being read, and combine joins the
    results of shares of the shards that several ranks read."""

    cache_name: str

    def __call__(self, shard, path, header, timestamps, counts) -> None: ...

    def cache_arrays(self) -> dict[str, np.ndarray] | None: ...

    def restore(self, paths: list[Path], arrays: dict[str, np.ndarray]) -> None: ...

    def combine(self, parts: list[dict[str, np.ndarray]], video_offsets: list[int]) -> dict[str, np.ndarray] | None:
        """cache_arrays of the whole set from those of consecutive shares of its shards, whose first videos
        are video_offsets in the whole set; None when they do not combine (then the shards are read)."""
        ...


class _Damaged(Exception):
    """A cached folder exists but cannot be used; the message says why."""


def cache_root() -> Path:
    record = hash_cache.cache_file()
    return record.with_name(record.name + ".index")


def _set_folder(manifest_sha256: str) -> Path:
    if not _DIGEST.fullmatch(manifest_sha256):
        raise ValueError(f"not a sha256: {manifest_sha256!r}")
    return cache_root() / manifest_sha256


_warned_unwritable = False


def _warn_unwritable(folder: Path, error: OSError) -> None:
    global _warned_unwritable
    if not _warned_unwritable:
        _warned_unwritable = True
        print(f"warning: cannot write the shard index cache {folder} ({error.strerror or error}); nothing fails, "
              f"but every start reads the index from the shards (set {hash_cache.HASH_CACHE_ENV} to a writable "
              "file to keep it)", file=sys.stderr)


# ----------------------------------------------------------------------------- folders of arrays
def _write_folder(target: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write arrays and meta.json under a temporary name and rename the folder into place (a folder already
    there, written meanwhile by another machine's rank, is kept)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{TEMP_PREFIX}{target.name}.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        files = {}
        for key, array in arrays.items():
            path = tmp / f"{key}.npy"
            np.save(path, np.ascontiguousarray(array), allow_pickle=False)
            files[key] = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        (tmp / "meta.json").write_text(json.dumps({"schema": SCHEMA, "version": VERSION, "files": files, **meta}))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_folder(folder: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(meta, read-only arrays mapped from their files), None when the folder is absent or of another
    version; _Damaged when it is there but its bytes are not what meta.json says."""
    try:
        meta = strict_json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise _Damaged(f"{folder.name}/meta.json unreadable ({error})") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise _Damaged(f"{folder.name}/meta.json is not an index cache")
    if meta.get("version") != VERSION:
        return None
    files = meta.get("files")
    if not isinstance(files, dict):
        raise _Damaged(f"{folder.name}/meta.json lists no files")
    arrays = {}
    for key, expect in files.items():
        path = folder / f"{key}.npy"
        if not (isinstance(expect, dict) and _KEY.fullmatch(key)):
            raise _Damaged(f"{folder.name}/meta.json is malformed")
        try:
            if path.stat().st_size != expect.get("bytes") or file_sha256(path) != expect.get("sha256"):
                raise _Damaged(f"{folder.name}/{path.name} does not match its sha256")
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as error:
            raise _Damaged(f"{folder.name}/{path.name} unreadable ({error})") from None
        arrays[key] = array.view(np.ndarray)  # still the read-only mapping, as a plain array
    return meta, arrays


# ----------------------------------------------------------------------------- the index
def load_index(manifest_sha256: str, paths: list[Path], *, keep_timestamps: bool = True,
               on_shard: object | None = None, warn: Callable[[str], None] = lambda text: None) -> ShardIndex | None:
    """The index of these shards as cached under the manifest's sha256 (with its timestamps when
    keep_timestamps; with on_shard restored when it is a CachedHook), or None when something it needs
    is not cached (a plain hook always needs the shards)."""
    if on_shard is not None and not isinstance(on_shard, CachedHook):
        return None
    folder = _set_folder(manifest_sha256)
    try:
        found = _load_from(folder, paths, keep_timestamps, on_shard)
    except (_Damaged, ShardFormatError, KeyError, TypeError) as error:
        warn(f"warning: the cached index of this set in {folder} is damaged ({str(error).splitlines()[0]}); "
             "reading the shards instead")
        drop_set(manifest_sha256)  # so that the start writes it again
        return None
    if found is None:
        return None
    index, derived = found
    if on_shard is not None:
        on_shard.restore([Path(p) for p in paths], derived)
    return index


def _load_from(folder: Path, paths: list[Path], keep_timestamps: bool,
               on_shard: CachedHook | None) -> tuple[ShardIndex, dict | None] | None:
    """(index, the hook's arrays) kept in `folder`; None when something asked for is not there."""
    found = _read_folder(folder / INDEX)
    if found is None:
        return None
    meta, arrays = found
    if meta.get("shards") != len(paths) or set(arrays) != set(INDEX_ARRAYS):
        raise _Damaged(f"{INDEX}/meta.json describes another set")
    headers = [ShardHeader.from_attrs(attrs, source=f"{folder}/{INDEX}") for attrs in meta["headers"]]
    per_shard = meta["header_of_shard"]
    if len(per_shard) != len(paths) or not all(isinstance(i, int) and 0 <= i < len(headers) for i in per_shard):
        raise _Damaged(f"{INDEX}/meta.json names headers it does not hold")
    timestamps = None
    if keep_timestamps:
        stamps = _read_folder(folder / TIMESTAMPS)
        if stamps is None:
            return None
        timestamps = Timestamps(stamps[1]["values"], stamps[1]["offsets"])
        if len(timestamps) != len(arrays["video_frames"]):
            raise _Damaged(f"{TIMESTAMPS} has another number of videos than {INDEX}")
    derived = None
    if on_shard is not None:
        found = _read_folder(folder / _checked_name(on_shard.cache_name))
        if found is None:
            return None
        derived = found[1]
    index = ShardIndex(paths=[Path(p) for p in paths], headers=[headers[i] for i in per_shard],
                       identity_names=list(meta["identity_names"]), timestamps=timestamps,
                       **{key: arrays[key] for key in INDEX_ARRAYS})
    return index, derived


def save_index(manifest_sha256: str, index: ShardIndex, on_shard: object | None = None) -> bool:
    """Keep what was just read from the shards of this manifest (what is already kept stays); False,
    with a warning once per process, when the cache cannot be written."""
    folder = _set_folder(manifest_sha256)
    try:
        _save_into(folder, index, on_shard.cache_arrays() if isinstance(on_shard, CachedHook) else None,
                   on_shard.cache_name if isinstance(on_shard, CachedHook) else None)
        _evict(folder)
    except OSError as error:
        _warn_unwritable(cache_root(), error)
        return False
    return True


def _save_into(folder: Path, index: ShardIndex, derived: dict | None, name: str | None) -> None:
    if not (folder / INDEX / "meta.json").is_file():
        unique: dict[str, int] = {}
        attrs = [json.dumps(h.attrs(), sort_keys=True) for h in index.headers]
        per_shard = [unique.setdefault(a, len(unique)) for a in attrs]
        _write_folder(folder / INDEX, {key: getattr(index, key) for key in INDEX_ARRAYS}, {
            "shards": len(index.paths), "headers": [json.loads(a) for a in unique], "header_of_shard": per_shard,
            "identity_names": list(index.identity_names)})
    if index.timestamps is not None and not (folder / TIMESTAMPS / "meta.json").is_file():
        _write_folder(folder / TIMESTAMPS, {"values": index.timestamps.values,
                                            "offsets": index.timestamps.offsets}, {})
    if derived is not None and not (folder / _checked_name(name) / "meta.json").is_file():
        _write_folder(folder / name, derived, {})


# ----------------------------------------------------------------------------- a machine's ranks share the reading
def parts_folder(manifest_sha256: str, job: str) -> Path:
    """Where the ranks of one machine of one job leave the parts of the index they read (`job` tells
    apart machines and jobs that share the cache)."""
    return _set_folder(manifest_sha256) / f"{TEMP_PREFIX}parts-{job}"


def save_part(folder: Path, part: ShardIndex, on_shard: object | None) -> bool:
    """Keep the index of one rank's share of the shards (and what on_shard derived from it) for the
    machine's rank 0 to merge; False when it cannot be written or on_shard has nothing to keep."""
    derived = name = None
    if on_shard is not None:
        if not isinstance(on_shard, CachedHook) or (derived := on_shard.cache_arrays()) is None:
            return False
        name = on_shard.cache_name
    try:
        _save_into(folder, part, derived, name)
    except OSError as error:
        _warn_unwritable(cache_root(), error)
        return False
    return True


def merge_parts(folders: list[Path], shares: list[list[Path]], keep_timestamps: bool,
                on_shard: object | None) -> ShardIndex | None:
    """The whole index from the parts the ranks kept (shares: each part's shard paths, in shard order),
    with on_shard restored to what it would have found reading every shard; None when a part is missing
    or the hook's parts do not combine (the caller then reads the shards)."""
    parts, derived = [], []
    try:
        for folder, paths in zip(folders, shares):
            found = _load_from(folder, paths, keep_timestamps, on_shard)
            if found is None:
                return None
            parts.append(found[0])
            derived.append(found[1])
    except (_Damaged, ShardFormatError, KeyError, TypeError):
        return None
    index = merge_indexes(parts)
    if on_shard is not None:
        offsets = np.cumsum([0] + [part.num_videos for part in parts[:-1]]).tolist()
        combined = on_shard.combine(derived, offsets)
        if combined is None:
            return None
        on_shard.restore(index.paths, combined)
    return index


def drop_set(manifest_sha256: str) -> None:
    """Remove this set's cached folders (a process that has them mapped keeps reading its copy)."""
    shutil.rmtree(_set_folder(manifest_sha256), ignore_errors=True)


def _checked_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name in (INDEX, TIMESTAMPS):
        raise ValueError(f"not a cache name: {name!r}")
    return name


def _evict(keep: Path) -> None:
    """Remove the sets written longest ago beyond MAX_SETS (never `keep`, the set just written)."""
    sets = [p for p in keep.parent.iterdir() if _DIGEST.fullmatch(p.name) and p != keep]
    sets.sort(key=lambda p: p.stat().st_mtime)
    for old in sets[:max(0, len(sets) - (MAX_SETS - 1))]:
        shutil.rmtree(old, ignore_errors=True)
