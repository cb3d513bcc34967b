"""manifest.json: what a directory of shards holds, with sizes and hashes to check it against.

The manifest is plain JSON (never pickle) written atomically beside the shards. Shard paths inside it are
relative POSIX paths; loading refuses absolute paths and paths that climb out of the directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Callable

from sslfer_core import hash_cache, strict_json
from sslfer_core import __version__ as TOOL_VERSION
from sslfer_core.atomic_files import TEMP_PREFIX, write_json_atomic
from sslfer_core.file_hash import file_sha256
from sslfer_core.shard_format import SCHEMA_VERSION as SHARD_SCHEMA_VERSION
from sslfer_core.shard_format import ShardFormatError, ShardHeader, ShardReader, parse_schema_version

MANIFEST_NAME = "manifest.json"
FAILURES_NAME = "failures.jsonl"
MANIFEST_SCHEMA = "sslfer.manifest"
MANIFEST_VERSION = (1, 0)
SHARD_SUFFIX = ".h5"
# Counts and sizes in a manifest are JSON integers in 0..MAX_COUNT (what a file offset can hold); anything
# else (a float, Infinity, a string, a bool, a negative or larger number) is refused as malformed.
MAX_COUNT = (1 << 63) - 1
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
MAX_LISTED = 5  # video ids named in a message about repeated clips

# Header fields that change what a training sample is; shards that differ in any of them are not one dataset.
HEADER_COMPAT_KEYS = (
    "shard_schema_major", "image_size", "patch_size", "swaps_per_frame", "descriptor_kind", "descriptor_dim",
    "descriptor_weights_sha256", "dlib_model_sha256",
)
# prep_config keys that describe how a run was executed rather than what a sample is; ignored when
# comparing shard sets. "seed" is here because parts made with different seeds (swap donors, sampling)
# are still one dataset.
RUN_ONLY_PREP_KEYS = frozenset({
    "jobs", "n_jobs", "workers", "backend", "input", "source", "source_root", "data", "out", "output",
    "output_dir", "limit", "resume", "shard_videos", "videos_per_shard", "progress", "verbose", "seed",
    "part", "model_dir",
})


class ManifestError(ValueError):
    """The manifest is missing, malformed, unsafe, or disagrees with the shards."""


@dataclass
class ShardEntry:
    file: str  # relative POSIX path inside the shard directory
    bytes: int
    sha256: str
    videos: int
    frames: int
    identities: list[str]
    video_ids: list[str]
    swaps_per_frame: int
    descriptor_kind: str
    schema_version: str  # the shard's own schema version, "major.minor"
    part: int | None = None  # index into Manifest.parts for merged sets


@dataclass
class Manifest:
    schema_version: str
    tool_version: str
    prep_config: dict
    descriptor_kind: str
    image_size: int
    swaps_per_frame: int
    shards: list[ShardEntry]
    failures: int
    patch_size: int = 0
    descriptor_dim: int = 0
    descriptor_weights_sha256: str | None = None
    dlib_model_sha256: dict = field(default_factory=dict)
    codecs: dict = field(default_factory=dict)
    shard_schema_version: str = "{}.{}".format(*SHARD_SCHEMA_VERSION)
    failures_file: str | None = None
    created: str = ""
    mixed: bool = False  # True only for merges made with --allow-mixed: parts[i] then holds each part's config
    parts: list[dict] = field(default_factory=list)

    def totals(self) -> dict:
        identities = {i for s in self.shards for i in s.identities}
        return {
            "shards": len(self.shards),
            "videos": sum(s.videos for s in self.shards),
            "frames": sum(s.frames for s in self.shards),
            "identities": len(identities),
            "bytes": sum(s.bytes for s in self.shards),
            "failures": self.failures,
        }

    def compat_config(self) -> dict:
        """The values two shard sets must share to be merged without --allow-mixed."""
        return {
            "shard_schema_major": int(self.shard_schema_version.split(".")[0]),
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "swaps_per_frame": self.swaps_per_frame,
            "descriptor_kind": self.descriptor_kind,
            "descriptor_dim": self.descriptor_dim,
            "descriptor_weights_sha256": self.descriptor_weights_sha256,
            "dlib_model_sha256": self.dlib_model_sha256,
            **{f"prep_config.{k}": v for k, v in self.prep_config.items() if k not in RUN_ONLY_PREP_KEYS},
        }

    def to_json(self) -> dict:
        obj = asdict(self)
        obj["schema"] = MANIFEST_SCHEMA
        obj["totals"] = self.totals()
        return obj


def now_utc() -> str:
    """ISO time in UTC; SOURCE_DATE_EPOCH pins it for reproducible outputs."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def header_compat(header: ShardHeader) -> dict:
    """compat_config() of a manifest made from this one header."""
    return _manifest_from_header(header, []).compat_config()


def describe_differences(configs: list[tuple[str, dict]]) -> str:
    """'key: a=1, b=2; ...' for every key whose value is not the same in all named configs."""
    keys = sorted({k for _, cfg in configs for k in cfg})
    parts = []
    for key in keys:
        values = [cfg.get(key) for _, cfg in configs]
        if any(v != values[0] for v in values):
            parts.append(f"{key}: " + ", ".join(f"{name}={json.dumps(v)}" for (name, _), v in zip(configs, values)))
    return "; ".join(parts)


def describe_shard(path: Path, root: Path) -> ShardEntry:
    """Size, sha256, counts and ids of one finished shard; `file` is its path relative to `root`."""
    return _describe(Path(path), Path(root))[0]


def _describe(path: Path, root: Path) -> tuple[ShardEntry, ShardHeader]:
    rel = relative_shard_name(path, root)
    reason = escaping_link(path, root)
    if reason:
        raise ManifestError(f"{path}: refused: {reason}")
    with ShardReader(path) as reader:
        videos = reader.videos
        header = reader.header
        num_frames = reader.num_frames
    entry = ShardEntry(
        file=rel,
        bytes=path.stat().st_size,
        sha256=file_sha256(path),
        videos=len(videos),
        frames=num_frames,
        identities=sorted(set(videos.identity.tolist())),
        video_ids=list(videos.video_id.tolist()),
        swaps_per_frame=header.swaps_per_frame,
        descriptor_kind=header.descriptor_kind,
        schema_version="{}.{}".format(*header.schema_version),
    )
    return entry, header


def relative_shard_name(path: Path, root: Path) -> str:
    try:
        rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        raise ManifestError(f"{path}: shard is not inside {root}") from None
    return rel.as_posix()


def find_shard_files(root: Path) -> list[Path]:
    """Finished shard files under root (any depth), sorted. Interrupted writes (TEMP_PREFIX) and hidden
    folders (sslfer-prep's .work/) are skipped."""
    return sorted(p for p in visible_files(root, "*" + SHARD_SUFFIX) if not p.name.startswith(TEMP_PREFIX))


def visible_files(root: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` below root, outside hidden folders."""
    root = Path(root)
    return [p for p in root.rglob(pattern)
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])]


def count_failures(root: Path) -> int:
    path = Path(root) / FAILURES_NAME
    if not path.is_file():
        return 0
    return len(failure_file_lines(path))


def failure_file_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line of a failures.jsonl, split at newlines only (a record
    may hold other Unicode line breaks in its strings). A file that is not UTF-8 (another tool's log, a
    damaged copy) is a ManifestError naming the first bad line."""
    lines = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(f"{path}:{number}: not UTF-8 text (byte {exc.start} of the line); fix or "
                                    "remove that line") from None
            if text.strip():
                lines.append((number, text.rstrip("\r\n")))
    return lines


def repeated_clips(shards: list[tuple[str, list[str]]]) -> list[tuple[str, str, list[str]]]:
    """(shard, earlier shard, shared video ids) for every shard that holds a video id an earlier one holds.
    `shards` are (name, video ids) in order; a set must hold each clip once, or the clip is trained on
    twice as often and can sit on both sides of a train/test split."""
    owner: dict[str, str] = {}
    found = []
    for name, video_ids in shards:
        shared: dict[str, list[str]] = {}
        for video_id in video_ids:
            if video_id in owner:
                shared.setdefault(owner[video_id], []).append(video_id)
            else:
                owner[video_id] = name
        found.extend((name, first, ids) for first, ids in shared.items())
    return found


def describe_repeat(name: str, first: str, video_ids: list[str]) -> str:
    shown = ", ".join(video_ids[:MAX_LISTED]) + (f" and {len(video_ids) - MAX_LISTED} more"
                                                 if len(video_ids) > MAX_LISTED else "")
    return f"{name} holds clips that {first} holds too (video ids {shown})"


def build_manifest(root: Path, shard_files: list[Path] | None = None, failures: int | None = None, *,
                   jobs: int = 1, progress: Callable[[int], None] | None = None) -> Manifest:
    """A manifest of the shards in `root` (all *.h5 below it when shard_files is None).

    failures=None counts the records in root/failures.jsonl. Shards whose headers disagree on anything in
    HEADER_COMPAT_KEYS or the prep config raise ManifestError naming the differing keys. `jobs` shards are
    described (hashed) at a time, in threads; each is recorded as hashed on this machine once done.
    `progress(nbytes)` is called after each shard with its size.
    """
    root = Path(root)
    files = find_shard_files(root) if shard_files is None else [Path(p) for p in shard_files]
    if not files:
        raise ManifestError(f"{root}: no shard files to describe")
    lock = threading.Lock()

    def describe(path: Path) -> tuple[ShardEntry, ShardHeader]:
        before = hash_cache.identity(path)
        entry, header = _describe(path, root)
        hash_cache.remember([(path, entry.sha256, before)])
        if progress:
            with lock:
                progress(entry.bytes)
        return entry, header

    if jobs > 1 and len(files) > 1:
        with ThreadPoolExecutor(max_workers=min(jobs, len(files))) as pool:
            described = list(pool.map(describe, files))
    else:
        described = [describe(path) for path in files]
    entries = [entry for entry, _ in described]
    first_header = described[0][1]
    configs = [(entry.file, header_compat(header)) for entry, header in described]
    repeats = repeated_clips([(e.file, e.video_ids) for e in entries])
    if repeats:
        raise ManifestError(f"{root}: {describe_repeat(*repeats[0])}; a set holds each clip once, so remove "
                            "one of them" + (f" ({len(repeats)} shards repeat clips)" if len(repeats) > 1 else ""))
    differences = describe_differences([configs[0]] + [c for c in configs[1:] if c[1] != configs[0][1]])
    if differences:
        raise ManifestError(f"{root}: shards were prepared with different settings ({differences})")
    manifest = _manifest_from_header(first_header, entries)
    manifest.failures = count_failures(root) if failures is None else int(failures)
    manifest.failures_file = FAILURES_NAME if (root / FAILURES_NAME).is_file() else None
    return manifest


def _manifest_from_header(header: ShardHeader, entries: list[ShardEntry]) -> Manifest:
    return Manifest(
        schema_version="{}.{}".format(*MANIFEST_VERSION),
        tool_version=TOOL_VERSION,
        prep_config=dict(header.prep_config),
        descriptor_kind=header.descriptor_kind,
        image_size=header.image_size,
        swaps_per_frame=header.swaps_per_frame,
        shards=entries,
        failures=0,
        patch_size=header.patch_size,
        descriptor_dim=header.descriptor_dim,
        descriptor_weights_sha256=header.descriptor_weights_sha256,
        dlib_model_sha256=dict(header.dlib_model_sha256),
        codecs={k: v.to_json() for k, v in header.codecs.items()},
        shard_schema_version="{}.{}".format(*header.schema_version),
        created=now_utc(),
    )


def save_manifest(root: Path, manifest: Manifest) -> None:
    """Write root/manifest.json atomically (a reader sees the old manifest or the new one)."""
    for entry in manifest.shards:
        check_relative_path(entry.file)
    write_json_atomic(Path(root) / MANIFEST_NAME, manifest.to_json())


def check_relative_path(name: str, what: str = "shard path") -> PurePosixPath:
    """Refuse anything but a plain relative POSIX path that stays inside the directory."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise ManifestError(f"unsafe {what} {name!r} in manifest: must be a relative POSIX path")
    pure = PurePosixPath(name)
    if pure.is_absolute() or (pure.parts and ":" in pure.parts[0]):
        raise ManifestError(f"unsafe {what} {name!r} in manifest: absolute paths are refused")
    if ".." in pure.parts:
        raise ManifestError(f"unsafe {what} {name!r} in manifest: '..' would leave the shard directory")
    if pure.parts in ((), (".",)):
        raise ManifestError(f"unsafe {what} {name!r} in manifest: names no file")
    return pure


def shard_paths(root: Path, manifest: Manifest, *, check_links: bool = True) -> list[Path]:
    """Absolute-or-root-relative paths of the manifest's shards, each checked to stay inside root, also
    after following symlinks (check_links=False leaves that to the caller: verify reports it per shard)."""
    root = Path(root)
    paths = [root.joinpath(*check_relative_path(entry.file).parts) for entry in manifest.shards]
    if check_links:
        real_root = os.path.realpath(root)
        for entry, path in zip(manifest.shards, paths):
            reason = escaping_link(path, root, real_root)
            if reason:
                raise ManifestError(f"{root}: shard {entry.file} is refused: {reason}")
    return paths


def escaping_link(path: Path, root: Path, real_root: str | None = None) -> str | None:
    """Why `path` (or a folder on the way to it) is a symlink that leads out of `root`, or None. The
    sha256 in a manifest vouches for files inside the set's folder; a link out of it lets anyone who can
    write the link's target change a verified set. real_root: os.path.realpath(root), when the caller
    checks many paths."""
    real_root = os.path.realpath(root) if real_root is None else real_root
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        return f"it is reached through a symlink that leaves the shard folder (to {real})"
    return None


def load_manifest(root: Path) -> Manifest:
    """Read and validate root/manifest.json; every problem is a ManifestError with a one-line message."""
    return load_manifest_and_digest(root)[0]


def load_manifest_and_digest(root: Path) -> tuple[Manifest, str]:
    """load_manifest and the sha256 of the bytes it parsed (a run records which manifest it trained on),
    from one read: at VoxCeleb2 scale the file is tens of MB."""
    path = Path(root) / MANIFEST_NAME
    if path.exists() and not path.is_file():  # a FIFO would block the read until someone writes to it
        raise ManifestError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest here (run sslfer-prep, or build one with the library)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read ({exc})") from None
    try:
        obj = strict_json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    return manifest_from_json(obj, str(path)), hashlib.sha256(data).hexdigest()


def manifest_from_json(obj, source: str = MANIFEST_NAME) -> Manifest:
    if not isinstance(obj, dict) or obj.get("schema") != MANIFEST_SCHEMA:
        raise ManifestError(f"{source}: not an sslfer manifest (schema {obj.get('schema') if isinstance(obj, dict) else None!r})")
    version = _parse_version(obj.get("schema_version"), source)
    if version[0] != MANIFEST_VERSION[0]:
        raise ManifestError(
            f"{source}: manifest schema version {version[0]}.{version[1]} is not readable by sslfer {TOOL_VERSION}, "
            f"which reads manifest schema {MANIFEST_VERSION[0]}.x"
        )
    try:
        shards = [_entry_from_json(e) for e in obj["shards"]]
        manifest = Manifest(
            schema_version=str(obj["schema_version"]),
            tool_version=str(obj["tool_version"]),
            prep_config=_expect(obj["prep_config"], dict, "prep_config"),
            descriptor_kind=str(obj["descriptor_kind"]),
            image_size=_count(obj["image_size"], "image_size"),
            swaps_per_frame=_count(obj["swaps_per_frame"], "swaps_per_frame"),
            shards=shards,
            failures=_count(obj["failures"], "failures"),
            patch_size=_count(obj.get("patch_size", 0), "patch_size"),
            descriptor_dim=_count(obj.get("descriptor_dim", 0), "descriptor_dim"),
            descriptor_weights_sha256=obj.get("descriptor_weights_sha256"),
            dlib_model_sha256=_expect(obj.get("dlib_model_sha256", {}), dict, "dlib_model_sha256"),
            codecs=_expect(obj.get("codecs", {}), dict, "codecs"),
            shard_schema_version=str(obj.get("shard_schema_version", "1.0")),
            failures_file=obj.get("failures_file"),
            created=str(obj.get("created", "")),
            mixed=bool(obj.get("mixed", False)),
            parts=_expect(obj.get("parts", []), list, "parts"),
        )
    except ManifestError as exc:
        raise ManifestError(f"{source}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"{source}: manifest is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    _parse_version(manifest.shard_schema_version, source, "shard_schema_version")
    if manifest.failures_file is not None:
        check_relative_path(manifest.failures_file, "failures file")
    seen: dict[str, str] = {}
    for entry in shards:
        # "x.h5", "./x.h5" and "sub//x.h5"-style spellings name one file.
        name = str(check_relative_path(entry.file))
        if name in seen:
            also = "" if seen[name] == entry.file else f" (also as {seen[name]!r})"
            raise ManifestError(f"{source}: shard {entry.file!r} is listed twice{also}")
        seen[name] = entry.file
    for entry in shards:
        if entry.part is not None and manifest.parts and entry.part >= len(manifest.parts):
            raise ManifestError(f"{source}: shard {entry.file!r} names part {entry.part}, but the manifest "
                                f"has {len(manifest.parts)} parts")
    return manifest


def _entry_from_json(obj) -> ShardEntry:
    obj = _expect(obj, dict, "shard entry")
    file = obj["file"]
    check_relative_path(file)
    sha256 = obj["sha256"]
    if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 of {file!r} must be 64 lowercase hex digits")
    return ShardEntry(
        file=file,
        bytes=_count(obj["bytes"], "bytes"),
        sha256=sha256,
        videos=_count(obj["videos"], "videos"),
        frames=_count(obj["frames"], "frames"),
        identities=[str(i) for i in _expect(obj["identities"], list, "identities")],
        video_ids=[str(v) for v in _expect(obj["video_ids"], list, "video_ids")],
        swaps_per_frame=_count(obj["swaps_per_frame"], "swaps_per_frame"),
        descriptor_kind=str(obj["descriptor_kind"]),
        schema_version=str(obj["schema_version"]),
        part=None if obj.get("part") is None else _count(obj["part"], "part"),
    )


def _count(value, name: str) -> int:
    """A JSON integer in 0..MAX_COUNT, else ValueError (json reads Infinity, NaN and 1e400 as floats)."""
    if type(value) is not int or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{name} must be a whole number from 0 to 2^63-1, got {json.dumps(value)[:40]}")
    return value


def _expect(value, kind, name):
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _parse_version(text, source: str, what: str = "manifest schema version") -> tuple[int, int]:
    try:
        return parse_schema_version(str(text), source)
    except ShardFormatError:
        raise ManifestError(f"{source}: unreadable {what} {text!r}") from None


__all__ = [
    "MANIFEST_NAME", "FAILURES_NAME", "ManifestError", "ShardEntry", "Manifest", "describe_shard", "build_manifest",
    "load_manifest", "save_manifest", "shard_paths", "find_shard_files", "file_sha256",
]
