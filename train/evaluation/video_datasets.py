"""Video datasets for dynamic FER: the reference's annotation files (DFEW, FERV39k, MAFW) and a generic CSV.

Reference annotation files (as written by MAE-DFER's preprocess/*.py): one `<frames dir> <label>` per line,
space-separated, no header, label = the class index of the built-in label set. A line is split on its LAST space,
so a path may contain spaces. A label may also be written as a class name (FERV39k's and MAFW's own split files).

  dfew     7 classes, DFEW's label minus 1: 0 Happy, 1 Sad, 2 Neutral, 3 Angry, 4 Surprise, 5 Disgust, 6 Fear.
           DFEW's own `set_N.csv` (header video_name,label; label 1..7) is read too (paths = --video-root/%05d).
  ferv39k  the same 7 names, {Happy 0, Sad 1, Neutral 2, Angry 3, Surprise 4, Disgust 5, Fear 6}.
  mafw     11 classes: anger, disgust, fear, happiness, neutral, sadness, surprise, contempt, anxiety,
           helplessness, disappointment.
  video-csv  header `path,label[,subject][,split]` (`file` for `path` too): video files (mp4, avi, ...) or frame
           folders, relative to the CSV's folder or --video-root.

`--data` is an annotation file, a folder holding train.csv / test.csv (/ val.csv), or for the 5-fold datasets a
folder holding split01 ... split05 of those. A val.csv that lists the test clips (DFEW's reference val.csv is
test.csv) is ignored and said so; validation is then carved from train.

Bad rows (missing path, undecodable video, unknown label, fewer frames than one clip needs, malformed line) are
counted in a ProblemLog with the first few paths and skipped.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import click

from train.evaluation.datasets import (IMAGE_SUFFIXES, SPLIT_ALIASES, ImageRecord, LabelledDataset, _assign_labels,
                                      parse_code)
from train.evaluation.problems import ProblemLog

EMOTIONS_7 = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
MAFW_CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt", "anxiety",
                "helplessness", "disappointment")
LABEL_SETS = {"dfew": EMOTIONS_7, "ferv39k": EMOTIONS_7, "mafw": MAFW_CLASSES}
VIDEO_FORMATS = ("auto", "dfew", "ferv39k", "mafw", "video-csv")
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
PATH_ALIAS = "file"  # a `file` column serves as `path` (the shared data's SOURCES.csv)
SPLIT_FILES = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
FOLD_DIR = re.compile(r"^split0*(\d+)$")
DFEW_OFFICIAL_HEADER = ("video_name", "label")
DFEW_OFFICIAL_FIRST_LABEL = 1  # DFEW's own split files count classes from 1

# Problem kinds (the ProblemLog keys).
MISSING = "missing video"
UNDECODABLE = "undecodable video"
UNKNOWN_LABEL = "unknown label"
TOO_SHORT = "fewer frames than one clip needs"
BAD_ROW = "bad row"
SHORT_OF_HEADER = "video decodes fewer frames than its header says (decoded count used)"
FFMPEG_LOGLEVEL_ENV, FFMPEG_QUIET = "OPENCV_FFMPEG_LOGLEVEL", "-8"


@dataclass
class VideoRecord(ImageRecord):
    fold: int | None = None  # the reference's splitNN folder
    kind: str = ""  # "frames" (a folder of images) or "video" (a file)
    num_frames: int = 0


@dataclass
class VideoDataset(LabelledDataset):
    notes: list[str] | None = None

    @property
    def folds(self) -> list[int | None]:
        return sorted({r.fold for r in self.records}, key=lambda f: -1 if f is None else f)

    def keep(self, indices) -> "VideoDataset":
        return VideoDataset(self.path, self.format, [self.records[i] for i in indices], self.class_names,
                            self.problems, self.notes)


def frame_files(directory: Path) -> list[Path]:
    """Image files of a frame folder, sorted by name (the reference's sorted glob)."""
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    return [directory / name for name in names]


def quiet_ffmpeg() -> None:
    """FFmpeg prints a line per damaged packet; the counts below report such videos instead."""
    os.environ.setdefault(FFMPEG_LOGLEVEL_ENV, FFMPEG_QUIET)


def probe_video(path: Path) -> tuple[str, int, int | None]:
    """(kind, frame count, header count): count 0 = nothing decodable. Frame folders are counted; video files
    are demuxed to the end (headers overstate truncated files), header count kept to report the gap."""
    if path.is_dir():
        return "frames", len(frame_files(path)), None
    import cv2

    quiet_ffmpeg()
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return "video", 0, None
        header = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        count = 0
        while capture.grab():
            count += 1
        return "video", count, header
    finally:
        capture.release()


def split_last_space(line: str) -> tuple[str, str] | None:
    """'<path with spaces> <label>' -> (path, label); None when there is no separating space."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    head, sep, tail = text.rstrip().rpartition(" ")
    if not sep or not head.strip() or not tail:
        return None
    return head, tail


def _label_name(token: str, names: tuple[str, ...], first_index: int = 0) -> str:
    """An index (relative to first_index) or a class name (case-insensitive) -> the class name; else the token."""
    code = parse_code(token) if "." not in token else None  # "3.0" is a name here, not an index
    if code is not None:
        index = code - first_index
        return names[index] if 0 <= index < len(names) else f"label {token}"
    by_lower = {n.lower(): n for n in names}
    return by_lower.get(token.lower(), token)


@dataclass(frozen=True)
class PathMap:
    """Where annotation paths point: relative ones under `root` (default: the annotation file's folder); absolute
    ones starting with `old_prefix` (the reference files hold the authors' /mnt/... paths) moved to `new_prefix`."""
    root: Path | None = None
    old_prefix: str | None = None
    new_prefix: str | None = None

    def __call__(self, text: str, base: Path) -> Path:
        if self.old_prefix and text.startswith(self.old_prefix):
            return Path(self.new_prefix + text[len(self.old_prefix):])
        path = Path(text)
        return path if path.is_absolute() else (self.root or base) / path


def read_reference_file(path: Path, dataset: str, split: str | None, fold: int | None, paths: PathMap,
                        problems: ProblemLog) -> tuple[list[VideoRecord], list[str]]:
    """Rows of one reference annotation file (or DFEW's own set_N.csv) -> records and their raw class names."""
    names = LABEL_SETS[dataset]
    records, raw = [], []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lines = handle.read().splitlines()
    first = [c.strip() for c in lines[0].split(",")] if lines else []
    official = dataset == "dfew" and tuple(first[:2]) == DFEW_OFFICIAL_HEADER
    for number, line in enumerate(lines[1:] if official else lines, start=2 if official else 1):
        where = f"{path.name}:line{number}"
        if official:
            parts = [c.strip() for c in line.split(",")]
            if len(parts) < 2 or not re.fullmatch(r"[0-9]+", parts[0]):  # ASCII: "²".isdigit() is True
                if line.strip():
                    problems.add(BAD_ROW, f"{where} ({line[:60]!r})")
                continue
            video = (paths.root or path.parent) / f"{int(parts[0]):05d}"
            name = _label_name(parts[1], names, DFEW_OFFICIAL_FIRST_LABEL)
        else:
            parsed = split_last_space(line)
            if parsed is None:
                if line.strip():
                    problems.add(BAD_ROW, f"{where} (expected '<path> <label>': {line[:60]!r})")
                continue
            video = paths(parsed[0], path.parent)
            name = _label_name(parsed[1], names)
        records.append(VideoRecord(source=str(video), split=split, fold=fold))
        raw.append(name)
    return records, raw


def _split_files(folder: Path) -> dict[str, Path]:
    return {split: folder / name for split, name in SPLIT_FILES.items() if (folder / name).is_file()}


def _same_rows(a: list[VideoRecord], b: list[VideoRecord]) -> bool:
    return {r.source for r in a} == {r.source for r in b}


def load_reference(path: Path, dataset: str, paths: PathMap, problems: ProblemLog) -> VideoDataset:
    notes: list[str] = []
    if path.is_file():
        layout = [(None, {None: path})]
    else:
        fold_dirs = sorted(((int(m.group(1)), d) for d in path.iterdir() if d.is_dir() and (m := FOLD_DIR.match(d.name))))
        folders = [(fold, d) for fold, d in fold_dirs if _split_files(d)] or [(None, path)]
        layout = [(fold, _split_files(d)) for fold, d in folders]
        if not any(layout_files for _, layout_files in layout):
            raise click.ClickException(f"{path}: no train.csv / test.csv here or in split01..split05")
    records: list[VideoRecord] = []
    raw: list[str] = []
    for fold, files in layout:
        parts = {split: read_reference_file(file, dataset, split, fold, paths, problems) for split, file in files.items()}
        if "val" in parts and "test" in parts:
            where = f"fold {fold}" if fold is not None else path.name
            if _same_rows(parts["val"][0], parts["test"][0]):
                notes.append(f"{where}: val.csv lists exactly the test clips; ignored (validation carved from train)")
                del parts["val"]
            else:
                test_sources = {r.source for r in parts["test"][0]}
                kept = [(r, n) for r, n in zip(*parts["val"]) if r.source not in test_sources]
                dropped = len(parts["val"][0]) - len(kept)
                if dropped:
                    notes.append(f"{where}: {dropped} val.csv clips are also test clips; left out of validation")
                parts["val"] = ([r for r, _ in kept], [n for _, n in kept])
        for split_records, split_raw in parts.values():
            records.extend(split_records)
            raw.extend(split_raw)
    records, class_names = _assign_labels(raw, records, list(LABEL_SETS[dataset]), problems, keep_unlabelled=False)
    return VideoDataset(str(path), dataset, records, class_names, problems, notes)


def load_video_csv(path: Path, classes: list[str] | None, paths: PathMap, problems: ProblemLog) -> VideoDataset:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise click.ClickException(f"{path}: empty CSV (no header row)")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        path_column = "path" if "path" in reader.fieldnames else PATH_ALIAS
        missing = [c for c in (path_column, "label") if c not in reader.fieldnames]
        if missing:
            raise click.ClickException(f"{path}: missing column(s) {', '.join(missing)} "
                                       f"(header: {', '.join(reader.fieldnames)})")
        records, raw = [], []
        for row in reader:
            where = f"{path.name}:line{reader.line_num}"
            video = (row.get(path_column) or "").strip()
            label = (row.get("label") or "").strip()
            if not video or not label:
                problems.add(BAD_ROW, f"{where} (empty {'path' if not video else 'label'})")
                continue
            split_text = (row.get("split") or "").strip().lower()
            if split_text and split_text not in SPLIT_ALIASES:
                problems.add(BAD_ROW, f"{where} (unknown split {split_text!r})")
                continue
            file_path = paths(video, path.parent)
            records.append(VideoRecord(source=str(file_path), split=SPLIT_ALIASES.get(split_text),
                                       subject=(row.get("subject") or "").strip() or None))
            raw.append(label)
    records, class_names = _assign_labels(raw, records, classes, problems, keep_unlabelled=False)
    return VideoDataset(str(path), "video-csv", records, class_names, problems, [])


def check_videos(dataset: VideoDataset, min_frames: int) -> VideoDataset:
    """Probe each distinct video once; drop (and count) missing, undecodable and too-short ones."""
    seen: dict[str, tuple[str, int, int | None] | None] = {}
    keep = []
    for index, record in enumerate(dataset.records):
        if record.source not in seen:
            path = Path(record.source)
            if not path.exists():
                seen[record.source] = None
                dataset.problems.add(MISSING, record.source)
            else:
                kind, count, header = probe_video(path)
                seen[record.source] = (kind, count, header)
                if count and header is not None and count < header:
                    dataset.problems.add(SHORT_OF_HEADER, f"{record.source} ({count} of {header})")
                if count == 0:
                    dataset.problems.add(UNDECODABLE, record.source)
                elif count < min_frames:
                    dataset.problems.add(TOO_SHORT, f"{record.source} ({count} < {min_frames})")
        probed = seen[record.source]
        if probed is None or probed[1] < max(min_frames, 1):
            continue
        record.kind, record.num_frames = probed[0], probed[1]
        keep.append(index)
    return dataset.keep(keep)


def detect_video_format(path: Path) -> str:
    if path.is_file() and path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = [name.strip() for name in next(csv.reader(handle), [])]
        if ("path" in header or PATH_ALIAS in header) and "label" in header:
            return "video-csv"
    raise click.ClickException(f"{path}: cannot tell the video dataset format; pass --format dfew|ferv39k|mafw|video-csv")


def load_video_dataset(path: str | Path, fmt: str = "auto", *, classes: list[str] | None = None,
                       video_root: str | Path | None = None, path_prefix: tuple[str, str] | None = None,
                       min_frames: int = 16, probe: bool = True) -> VideoDataset:
    """Read annotations, then (probe=True) check every video; row problems are collected, not raised."""
    path = Path(path)
    if not path.exists():
        raise click.ClickException(f"dataset not found: {path}")
    if fmt not in VIDEO_FORMATS:
        raise click.ClickException(f"unknown --format {fmt!r}; use one of {', '.join(VIDEO_FORMATS)}")
    fmt = detect_video_format(path) if fmt == "auto" else fmt
    paths = PathMap(Path(video_root) if video_root is not None else None, *(path_prefix or (None, None)))
    problems = ProblemLog()
    if fmt == "video-csv":
        if not path.is_file():
            raise click.ClickException(f"--format video-csv needs a CSV file, got directory {path}")
        dataset = load_video_csv(path.resolve(), classes, paths, problems)
    else:
        if classes is not None and list(classes) != list(LABEL_SETS[fmt]):
            raise click.ClickException(f"--format {fmt} has a fixed label set ({', '.join(LABEL_SETS[fmt])}); "
                                       "drop --classes")
        dataset = load_reference(path.resolve(), fmt, paths, problems)
    if probe:
        dataset = check_videos(dataset, min_frames)
    if not dataset.records:
        raise click.ClickException(f"no usable videos in {path} (format {fmt})"
                                   + (f": {'; '.join(problems.summary_lines())}" if problems else ""))
    return dataset
