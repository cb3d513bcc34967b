"""Input discovery: which clips a run will process, with their identity and a stable video id.

Three kinds of input:
- voxceleb: VoxCeleb2 videos `[dev|test/][mp4/]idNNNNN/<youtube id>/<clip>.mp4` or VoxCeleb1 face frames
  `<name>/1.6/<youtube id>/<clip>/<frame>.jpg`; identity is the id/name folder.
- videos: any folder of video files (identity = parent folder) or a CSV list (identity from a column).
- frames: folders of frame images, one folder per clip.
Everything is returned sorted by video id so that every machine sees the same order.
"""
from __future__ import annotations

import csv
import os
import re
import stat
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VOXCELEB1_VERSION_DIR = "1.6"
_DIGITS = re.compile(r"(\d+)")


class SourceError(ValueError):
    """The input folder or list cannot be used (missing, empty layout, duplicate ids)."""


@dataclass(frozen=True)
class VideoSource:
    video_id: str  # "<identity>/<youtube id>/<clip>" for VoxCeleb, a relative path otherwise
    identity: str
    path: str  # absolute path of the video file or of the frame folder
    source_path: str  # path relative to the source root, stored in the shard
    kind: str  # "video" or "frames"
    frames_fps: float | None = None  # frame rate stated for a frame folder


class SourceList(list):
    """Discovered clips, plus `notes`: what the walk left out and why (loops, aliases, duplicates,
    special files), one line each, for the CLI to print."""

    def __init__(self, items=(), notes=()):
        super().__init__(items)
        self.notes = list(notes)


def safe_text(name: str) -> str:
    """`name` as valid UTF-8 text: bytes of a file name that are not UTF-8 (which Python carries as
    surrogates) become \\xNN escapes, so ids, JSON records and HDF5 strings can hold them."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def natural_key(name: str) -> tuple:
    """Sort key that orders '2.jpg' before '10.jpg' (the reference relied on directory order)."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(name))


def list_frame_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


def _walk_sorted(root: Path, notes: list[str] | None = None):
    """os.walk over root, following symlinks, that visits each real folder and each real file once.
    A folder reached again (a symlink loop, or an alias of a folder seen already) is not entered, a file
    reached again is left out, and anything but a regular file (FIFO, socket, device) is left out: each
    gets a line in `notes`. Yields (folder, subfolders, regular file names), all sorted."""
    notes = [] if notes is None else notes
    claimed: dict[str, Path] = {os.path.realpath(root): root}  # real folder -> the path that visits it
    seen_files: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real_here = os.path.realpath(here)
        keep_dirs = []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(here / name)
            if real in claimed:
                kind = "loop" if os.path.commonpath([real, real_here]) == real else "alias"
                notes.append(f"skipped {_shown(here / name, root)}: a folder {kind} (the same folder as "
                             f"{_shown(claimed[real], root) or '.'})")
            else:
                claimed[real] = here / name
                keep_dirs.append(name)
        dirnames[:] = keep_dirs
        files = []
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = here / name
            try:
                info = os.stat(path)
            except OSError as exc:
                notes.append(f"skipped {_shown(path, root)}: cannot stat ({exc.strerror})")
                continue
            if not stat.S_ISREG(info.st_mode):
                notes.append(f"skipped {_shown(path, root)}: not a regular file")
                continue
            real = os.path.realpath(path)
            if real in seen_files:
                notes.append(f"skipped {_shown(path, root)}: the same file as {_shown(seen_files[real], root)}")
                continue
            seen_files[real] = path
            files.append(name)
        yield here, dirnames, files


def _shown(path: Path, root: Path) -> str:
    try:
        return safe_text(path.relative_to(root).as_posix())
    except ValueError:
        return safe_text(str(path))


def _check_root(root: str | os.PathLike) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SourceError(f"{root}: not a directory")
    return root.resolve()


def _unique_sorted(sources: list[VideoSource], notes: list[str] = ()) -> SourceList:
    seen: dict[str, VideoSource] = {}
    for source in sources:
        source = replace(source, video_id=safe_text(source.video_id), identity=safe_text(source.identity),
                         source_path=safe_text(source.source_path))
        other = seen.get(source.video_id)
        if other is not None:
            raise SourceError(f"two inputs map to video id {source.video_id!r}: "
                              f"{other.source_path} and {source.source_path}")
        seen[source.video_id] = source
    return SourceList([seen[k] for k in sorted(seen)], notes)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# ----------------------------------------------------------------------------- voxceleb

def discover_voxceleb(root: str | os.PathLike, frames_fps: float = 25.0) -> list[VideoSource]:
    """Auto-detect the VoxCeleb1 frame layout (a `1.6` folder level) or the VoxCeleb2 video layout."""
    root = _check_root(root)
    videos, frame_clips, notes = [], [], []
    for dirpath, _dirs, files in _walk_sorted(root, notes):
        rel_parts = dirpath.relative_to(root).parts
        if len(rel_parts) >= 4 and rel_parts[-3] == VOXCELEB1_VERSION_DIR and any(
                Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            name, youtube_id, clip = rel_parts[-4], rel_parts[-2], rel_parts[-1]
            frame_clips.append(VideoSource(f"{name}/{youtube_id}/{clip}", name, str(dirpath),
                                           _rel(dirpath, root), "frames", float(frames_fps)))
            continue
        for name in files:
            path = dirpath / name
            if path.suffix.lower() != ".mp4":
                continue
            parts = path.relative_to(root).parts
            if len(parts) < 3:
                continue  # not inside <identity>/<youtube id>/
            identity, youtube_id, clip = parts[-3], parts[-2], path.stem
            videos.append(VideoSource(f"{identity}/{youtube_id}/{clip}", identity, str(path), _rel(path, root),
                                      "video"))
    if videos and frame_clips:
        raise SourceError(f"{root}: holds both VoxCeleb2 videos and VoxCeleb1 frame folders; point ROOT at one of them")
    found = videos or frame_clips
    if not found:
        raise SourceError(
            f"{root}: no VoxCeleb clips found (expected [dev|test/][mp4/]idNNNNN/<youtube id>/<clip>.mp4 "
            f"or <name>/{VOXCELEB1_VERSION_DIR}/<youtube id>/<clip>/<frame>.jpg)"
        )
    return _unique_sorted(found, notes)


# ----------------------------------------------------------------------------- generic videos

def discover_video_folder(root: str | os.PathLike) -> list[VideoSource]:
    """Every video file below root; identity = its parent folder, video id = its relative path without suffix."""
    root = _check_root(root)
    found, notes = [], []
    for dirpath, _dirs, files in _walk_sorted(root, notes):
        for name in files:
            path = dirpath / name
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            rel = PurePosixPath(_rel(path, root))
            identity = rel.parent.name or rel.stem
            found.append(VideoSource(str(rel.with_suffix("")), identity, str(path), str(rel), "video"))
    if not found:
        raise SourceError(f"{root}: no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) found")
    return _unique_sorted(found, notes)


def discover_video_list(list_csv: str | os.PathLike, root: str | os.PathLike | None = None, *,
                        path_column: str = "path", identity_column: str = "identity") -> list[VideoSource]:
    """Videos named in a CSV. Relative paths are taken from `root`, or from the CSV's folder when root is None;
    every path, absolute or relative, must lie below that folder (the video id is the path below it).

    A row without an identity value falls back to the video's parent folder name.
    """
    list_csv = Path(list_csv).expanduser()
    if not list_csv.is_file():
        raise SourceError(f"{list_csv}: no such list file")
    base = _check_root(root) if root is not None else list_csv.resolve().parent
    # The base as given too: a listed absolute path may reach it through a symlinked folder.
    bases = [base, Path(os.path.abspath(Path(root).expanduser() if root is not None else list_csv.parent))]
    try:
        with open(list_csv, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            if path_column not in columns:
                raise SourceError(f"{list_csv}: no {path_column!r} column (columns: {', '.join(columns) or 'none'})")
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise SourceError(f"{list_csv}: not UTF-8 text (byte {exc.start}); save the list as UTF-8") from None
    except csv.Error as exc:
        raise SourceError(f"{list_csv}: not a readable CSV ({exc})") from None
    found, notes, seen_files = [], [], {}
    for line, row in enumerate(rows, start=2):
        text = (row.get(path_column) or "").strip()
        if not text:
            raise SourceError(f"{list_csv}:{line}: empty {path_column!r} value")
        identity = (row.get(identity_column) or "").strip()
        if "\x00" in text + identity:  # no file name holds one, and HDF5 strings cannot
            raise SourceError(f"{list_csv}:{line}: the row holds a NUL character")
        try:
            item = _listed_video(text, identity, base, bases)
        except (OSError, RuntimeError, ValueError) as exc:  # a name too long, an unknown ~user, ...
            raise SourceError(f"{list_csv}:{line}: {safe_text(text)[:200]}: cannot be used "
                              f"({getattr(exc, 'strerror', None) or exc})") from None
        if item is None:
            # A video id is the path below the base: one outside it would put this machine's folders into
            # the ids, shards and manifest, which another lab receives.
            raise SourceError(f"{list_csv}:{line}: {safe_text(text)[:200]} is outside {safe_text(str(base))}; "
                              "video ids are paths below it, so give a ROOT that holds every listed video")
        source, real, regular = item
        if not regular:
            notes.append(f"skipped {list_csv.name}:{line} {safe_text(text)}: not a regular file")
            continue
        if real in seen_files:
            notes.append(f"skipped {list_csv.name}:{line} {safe_text(text)}: the same file as line {seen_files[real]}")
            continue
        seen_files[real] = line
        found.append(source)
    if not found:
        raise SourceError(f"{list_csv}: the list has no rows" + (f" left ({notes[0]})" if notes else ""))
    return _unique_sorted(found, notes)


def _listed_video(text: str, identity: str, base: Path, bases: list[Path]) -> tuple[VideoSource, str, bool] | None:
    """(source, real path, whether it is a regular file or absent) of one listed path, None when it is
    outside the base folders."""
    # normpath folds "a/../b" so that ".." cannot walk out of the base unnoticed; links are not
    # followed, so a link inside the base keeps its own name.
    path = Path(os.path.normpath(base / Path(text).expanduser()))
    rel = _below(path, bases)
    if rel is None:
        return None
    source = VideoSource(str(PurePosixPath(rel).with_suffix("")), identity or path.parent.name, str(path), rel, "video")
    return source, os.path.realpath(path), not path.exists() or path.is_file()


def _below(path: Path, bases: list[Path]) -> str | None:
    """`path` relative to the first of `bases` that holds it, as given or with its links resolved; None
    when none does."""
    for candidate in (path, Path(os.path.realpath(path))):
        for base in bases:
            try:
                return _rel(candidate, base)
            except ValueError:
                continue
    return None


# ----------------------------------------------------------------------------- frame folders

def discover_frame_folders(root: str | os.PathLike, frames_fps: float = 25.0) -> list[VideoSource]:
    """Each folder holding image files is one clip; identity = its parent folder (the clip folder itself at
    top level)."""
    root = _check_root(root)
    found, notes = [], []
    for dirpath, _dirs, files in _walk_sorted(root, notes):
        if dirpath == root or not any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            continue
        rel = PurePosixPath(_rel(dirpath, root))
        identity = rel.parent.name or rel.name
        found.append(VideoSource(str(rel), identity, str(dirpath), str(rel), "frames", float(frames_fps)))
    if not found:
        raise SourceError(f"{root}: no folders of frame images found")
    return _unique_sorted(found, notes)
