"""Join shard sets prepared on different machines into one directory with one manifest.

Each part's shards go under OUT/<NN>-<part name>/ (so names never clash), and the new manifest records
where every shard came from. The merged directory is assembled in a temporary sibling and renamed into
place only when complete: an interrupted merge leaves no half-made OUT.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

from sslfer_core import hash_cache, strict_json
from data_manifest.manifest import (
    FAILURES_NAME, MANIFEST_VERSION, Manifest, ManifestError, describe_differences, failure_file_lines,
    load_manifest, now_utc, save_manifest, shard_paths,
)
from data_manifest.verify import ERROR, verify_shards
from sslfer_core import __version__ as TOOL_VERSION
from sslfer_core.atomic_files import TEMP_PREFIX, fsync_directory
from sslfer_core.file_hash import HASH_BLOCK
from sslfer_core.shard_format import ShardFormatError, check_self_contained, parse_schema_version

MAX_LISTED = 5


def merge_shard_sets(out: Path, parts: list[Path], *, allow_mixed: bool = False, link: bool = False,
                     progress: Callable[[int], None] | None = None) -> Manifest:
    """Merge the shard directories `parts` into the new directory `out` and return its manifest.

    Every part must pass the quick checks of verify_shards first, so the manifests' claims that the
    rules below compare (settings, video ids) are what the shards hold. Refuses (ManifestError) parts whose
    compatibility settings differ unless allow_mixed, and video ids that occur in more than one part
    (always: the same clip twice would leak between train and test splits).
    link=True hard-links shards instead of copying them (same filesystem only); copies are checked
    against the part's sha256 as they are written.
    """
    out = Path(out)
    parts = [Path(p) for p in parts]
    _check_locations(out, parts)
    manifests = [load_manifest(p) for p in parts]
    labels = [f"{i:02d}-{_safe_name(p.resolve().name)}" for i, p in enumerate(parts)]
    _check_parts_hold_what_they_claim(parts, labels)
    _check_compatible(labels, manifests, allow_mixed)
    _check_unique_videos(labels, manifests)

    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX + "merge-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~_current_umask())  # mkdtemp makes it private; OUT should look like any new folder
        entries, known = [], []
        for index, (part, manifest, label) in enumerate(zip(parts, manifests, labels)):
            for entry, src in zip(manifest.shards, shard_paths(part, manifest)):
                new = replace(entry, file=f"{label}/{entry.file}", part=index)
                if _transfer(src, tmp / new.file, entry, link, label, progress):
                    known.append(new)
                entries.append(new)
        failures_file = _merge_failures(tmp, parts, manifests, labels)
        merged = _merged_manifest(manifests, labels, entries, failures_file)
        save_manifest(tmp, merged)
        if out.exists():
            out.rmdir()  # checked empty above
        os.rename(tmp, out)
        fsync_directory(out.parent)
        hash_cache.remember([(out / e.file, e.sha256) for e in known])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return merged


def _check_locations(out: Path, parts: list[Path]) -> None:
    if not parts:
        raise ManifestError("nothing to merge: give at least one shard directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ManifestError(f"{out}: output must be a new or empty directory")
    resolved = [p.resolve() for p in parts]
    if len(set(resolved)) != len(resolved):
        raise ManifestError("the same shard directory is given twice")
    out_resolved = out.resolve()
    for part in resolved:
        if out_resolved == part or part in out_resolved.parents or out_resolved in part.parents:
            raise ManifestError(f"{out}: output must not be inside a part or contain one ({part})")
    out.parent.mkdir(parents=True, exist_ok=True)


def _check_parts_hold_what_they_claim(parts: list[Path], labels: list[str]) -> None:
    for part, label in zip(parts, labels):
        errors = [p for p in verify_shards(part, quick=True) if p.severity == ERROR]
        if errors:
            more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
            raise ManifestError(f"part {label}: shard {errors[0].file}: {errors[0].reason}{more}; "
                                "run sslfer-manifest verify on that part")


def _check_compatible(labels: list[str], manifests: list[Manifest], allow_mixed: bool) -> None:
    if allow_mixed:
        return
    for label, manifest in zip(labels, manifests):
        if manifest.mixed:
            raise ManifestError(f"part {label} is itself a mixed-config merge; pass --allow-mixed to merge it")
    differences = describe_differences([(label, m.compat_config()) for label, m in zip(labels, manifests)])
    if differences:
        raise ManifestError(f"parts were prepared with different settings: {differences}; "
                            "pass --allow-mixed to merge them anyway")


def _check_unique_videos(labels: list[str], manifests: list[Manifest]) -> None:
    owner: dict[str, str] = {}
    clashes: dict[str, list[str]] = {}
    for label, manifest in zip(labels, manifests):
        for entry in manifest.shards:
            for video_id in entry.video_ids:
                if video_id in owner and owner[video_id] != label:
                    clashes.setdefault(video_id, [owner[video_id]]).append(label)
                owner.setdefault(video_id, label)
    if clashes:
        shown = "; ".join(f"{v} in {', '.join(ls)}" for v, ls in sorted(clashes.items())[:MAX_LISTED])
        more = f" and {len(clashes) - MAX_LISTED} more" if len(clashes) > MAX_LISTED else ""
        raise ManifestError(f"{len(clashes)} video id(s) occur in more than one part ({shown}{more}); "
                            "remove the duplicates from one part before merging")


def _transfer(src: Path, dst: Path, entry, link: bool, label: str, progress) -> bool:
    """Copy or link one shard; True when its bytes are known to match entry.sha256 (read while copying,
    or a link to a file this machine has verified)."""
    if not src.is_file():
        raise ManifestError(f"part {label}: shard {entry.file} is missing")
    if src.stat().st_size != entry.bytes:
        raise ManifestError(f"part {label}: shard {entry.file} has the wrong size; run sslfer-manifest verify on it")
    _check_own_content(src, label, entry)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
        except OSError as exc:
            raise ManifestError(f"cannot hard-link {src} ({exc.strerror}); use --copy") from None
        if progress:
            progress(entry.bytes)
        return hash_cache.cached_sha256(src) == entry.sha256
    digest = hashlib.sha256()
    with open(src, "rb") as reader, open(dst, "wb") as writer:
        while block := reader.read(HASH_BLOCK):
            digest.update(block)
            writer.write(block)
            if progress:
                progress(len(block))
        writer.flush()
        os.fsync(writer.fileno())
    if digest.hexdigest() != entry.sha256:
        raise ManifestError(f"part {label}: shard {entry.file} does not match its sha256; "
                            "run sslfer-manifest verify on that part")
    return True


def _check_own_content(src: Path, label: str, entry) -> None:
    """A sha256 covers only the file's own bytes: refuse shards whose HDF5 content lives elsewhere."""
    import h5py

    try:
        with h5py.File(src, "r") as h5:
            check_self_contained(h5, f"part {label}: shard {entry.file}")
    except ShardFormatError as exc:
        raise ManifestError(str(exc)) from None
    except OSError as exc:
        raise ManifestError(f"part {label}: shard {entry.file} is not readable HDF5 ({exc}); "
                            "run sslfer-manifest verify on that part") from None


def _merge_failures(tmp: Path, parts: list[Path], manifests: list[Manifest], labels: list[str]) -> str | None:
    """Concatenate the parts' failures.jsonl, tagging each record with its part."""
    lines = []
    for part, manifest, label in zip(parts, manifests, labels):
        path = part / (manifest.failures_file or FAILURES_NAME)
        if not path.is_file():
            continue
        for _number, line in failure_file_lines(path):
            try:
                record = strict_json.loads(line, constants=True)
            except ValueError:
                record = None
            record = record if isinstance(record, dict) else {"unparsed": line}
            lines.append(json.dumps({**record, "part": label}, sort_keys=True))
    if not lines:
        return None
    target = tmp / FAILURES_NAME
    with open(target, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())
    return FAILURES_NAME


def _merged_manifest(manifests: list[Manifest], labels: list[str], entries, failures_file) -> Manifest:
    first = manifests[0]
    configs = [m.compat_config() for m in manifests]
    mixed = any(m.mixed for m in manifests) or any(c != configs[0] for c in configs)
    provenance = [
        {
            "label": label,
            "created": m.created,
            "tool_version": m.tool_version,
            "manifest_schema_version": m.schema_version,
            "shard_schema_version": m.shard_schema_version,
            "config": configs[i],
            "codecs": m.codecs,
            "totals": m.totals(),
            "mixed": m.mixed,
            "parts": m.parts,
        }
        for i, (label, m) in enumerate(zip(labels, manifests))
    ]
    shard_versions = [parse_schema_version(m.shard_schema_version, "manifest") for m in manifests]
    return replace(
        first,
        schema_version="{}.{}".format(*MANIFEST_VERSION),
        shard_schema_version="{}.{}".format(*max(shard_versions)),
        tool_version=TOOL_VERSION,
        shards=entries,
        failures=sum(m.failures for m in manifests),
        failures_file=failures_file,
        created=now_utc(),
        mixed=mixed,
        parts=provenance,
    )


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "part"
