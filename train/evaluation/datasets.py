"""Labelled face-image datasets for downstream evaluation, read into one list of records.

Formats:
  folder        <root>/[train|validation|val|test/]<class>/<image>  (FER2013 as commonly distributed; LFW-style
                identity folders are the same layout without split folders)
  fer2013-csv   the original fer2013.csv: emotion (0-6), pixels (2304 gray values), Usage (Training/PublicTest/PrivateTest)
  affectnet-csv AffectNet's training.csv / validation.csv (subDirectory_filePath, face box, expression 0-10, valence, arousal);
                a folder holding both files gives train = training.csv, test = validation.csv
  csv           generic: path, label, and optionally valence, arousal, subject, split
Bad rows are recorded in a ProblemLog (count + first examples) and skipped; the run goes on.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from train.evaluation.problems import ProblemLog

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val",
    "test": "test", "privatetest": "test",
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
FORMATS = ("auto", "folder", "fer2013-csv", "affectnet-csv", "csv")

# Class order of the FER2013 CSV's emotion codes and of AffectNet's expression codes.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
AFFECTNET_CLASSES = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
AFFECTNET_FIRST_SKIPPED = 8  # 8 none, 9 uncertain, 10 non-face
AFFECTNET_MISSING_VA = -2.0
FER2013_SIDE = 48


@dataclass
class ImageRecord:
    source: str  # image file path, or "<csv>:line<N>" for images stored inline
    split: str | None = None
    label: int = -1  # class index into LabelledDataset.class_names; -1 = no class label
    valence: float = math.nan
    arousal: float = math.nan
    subject: str | None = None
    pixels: np.ndarray | None = None  # inline gray image (FER2013 CSV)
    box: tuple[int, int, int, int] | None = None  # face crop (left, top, width, height) in source pixels


@dataclass
class LabelledDataset:
    path: str
    format: str
    records: list[ImageRecord]
    class_names: list[str]
    problems: ProblemLog

    @property
    def has_labels(self) -> bool:
        return bool(self.class_names) and any(r.label >= 0 for r in self.records)

    @property
    def has_regression(self) -> bool:
        return any(math.isfinite(r.valence) or math.isfinite(r.arousal) for r in self.records)

    @property
    def has_splits(self) -> bool:
        return any(r.split is not None for r in self.records)

    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    def regression_targets(self) -> np.ndarray:
        """(N, 2) float64 of (valence, arousal); NaN where absent."""
        return np.array([(r.valence, r.arousal) for r in self.records], dtype=np.float64).reshape(-1, 2)

    def split_of(self) -> np.ndarray:
        return np.array([r.split or "" for r in self.records], dtype=object)

    def keep(self, indices) -> "LabelledDataset":
        return LabelledDataset(self.path, self.format, [self.records[i] for i in indices], self.class_names, self.problems)


# ASCII digits only: str.isdigit() also takes "²", which int() refuses, and int() and float() take "٣".
_INTEGER = re.compile(r"[+-]?[0-9]+")
_CODE = re.compile(r"([+-]?[0-9]+)(?:\.0*)?")


def parse_code(text: str | None) -> int | None:
    """A label code as a CSV writes it: an integer in ASCII digits ("3", "-1", "3.0"); None for anything
    else ("²", "٣", "inf", "nan", "1.5", "", "--1")."""
    match = _CODE.fullmatch((text or "").strip())
    return int(match.group(1)) if match else None


def _label_sort_key(name: str):
    return (0, int(name), name) if _INTEGER.fullmatch(name) else (1, 0, name)


def _assign_labels(raw: list[str | None], records: list[ImageRecord], classes: list[str] | None,
                   problems: ProblemLog, keep_unlabelled: bool) -> tuple[list[ImageRecord], list[str]]:
    """Map raw label strings to class indices.

    Class names: `classes` when given; else the labels seen in the train split (when there is one), else all labels.
    A label outside them is an "unknown label" problem and its record is dropped. Records without any label are
    dropped unless `keep_unlabelled` (they still carry regression targets).
    """
    if classes is None:
        in_train = [name for name, r in zip(raw, records) if name is not None and r.split == "train"]
        pool = in_train if in_train else [name for name in raw if name is not None]
        classes = sorted(set(pool), key=_label_sort_key)
    index = {name: i for i, name in enumerate(classes)}
    kept = []
    for name, record in zip(raw, records):
        if name is None:
            if keep_unlabelled:
                kept.append(record)
            else:
                problems.add("row without label", record.source)
            continue
        if name not in index:
            problems.add("unknown label", f"{record.source} ({name!r})")
            continue
        record.label = index[name]
        kept.append(record)
    return kept, list(classes)


def _image_files(directory: Path) -> list[Path]:
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
    return [directory / name for name in names]


def load_folder(root: Path, classes: list[str] | None, problems: ProblemLog) -> LabelledDataset:
    split_dirs = {SPLIT_ALIASES[d.name.lower()]: d for d in sorted(root.iterdir())
                  if d.is_dir() and d.name.lower() in SPLIT_ALIASES}
    layout = split_dirs.items() if split_dirs else [(None, root)]
    records, raw = [], []
    for split, split_dir in layout:
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            for path in _image_files(class_dir):
                records.append(ImageRecord(source=str(path), split=split))
                raw.append(class_dir.name)
    records, names = _assign_labels(raw, records, classes, problems, keep_unlabelled=False)
    return LabelledDataset(str(root), "folder", records, names, problems)


def _parse_float(text: str | None) -> float:
    """Empty -> NaN (absent); otherwise a finite float. ValueError for anything else, "nan" and "inf"
    included: a non-finite target would reach a metric (the caller counts the row as bad)."""
    if text is None or not text.strip():
        return math.nan
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {text!r}")
    return value


def _read_rows(path: Path):
    """(line number, row dict) for each data row of a CSV with a header."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None:
            raise click.ClickException(f"{path}: empty CSV (no header row)")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        for row in reader:
            yield reader.line_num, row


def _require_columns(path: Path, required: tuple[str, ...]) -> None:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = [name.strip() for name in next(csv.reader(handle), [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise click.ClickException(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")


def load_generic_csv(path: Path, classes: list[str] | None, image_root: Path | None,
                     problems: ProblemLog) -> LabelledDataset:
    _require_columns(path, ("path",))
    root = image_root or path.parent
    records, raw = [], []
    for line, row in _read_rows(path):
        where = f"{path.name}:line{line}"
        image = (row.get("path") or "").strip()
        if not image:
            problems.add("bad row", f"{where} (empty path)")
            continue
        try:
            valence, arousal = _parse_float(row.get("valence")), _parse_float(row.get("arousal"))
        except ValueError:
            problems.add("bad row", f"{where} (valence/arousal not a number)")
            continue
        split_text = (row.get("split") or "").strip().lower()
        if split_text and split_text not in SPLIT_ALIASES:
            problems.add("bad row", f"{where} (unknown split {split_text!r})")
            continue
        file_path = Path(image) if Path(image).is_absolute() else root / image
        if not file_path.is_file():
            problems.add("missing file", str(file_path))
            continue
        label = (row.get("label") or "").strip() or None
        records.append(ImageRecord(source=str(file_path), split=SPLIT_ALIASES.get(split_text), valence=valence,
                                   arousal=arousal, subject=(row.get("subject") or "").strip() or None))
        raw.append(label)
    has_targets = any(math.isfinite(r.valence) or math.isfinite(r.arousal) for r in records)
    if all(label is None for label in raw):
        return LabelledDataset(str(path), "csv", records if has_targets else [], [], problems)
    records, names = _assign_labels(raw, records, classes, problems, keep_unlabelled=has_targets)
    return LabelledDataset(str(path), "csv", records, names, problems)


def load_fer2013_csv(path: Path, classes: list[str] | None, problems: ProblemLog) -> LabelledDataset:
    _require_columns(path, ("emotion", "pixels"))
    records, raw = [], []
    for line, row in _read_rows(path):
        where = f"{path.name}:line{line}"
        usage = (row.get("Usage") or row.get("usage") or "").strip().lower()
        if usage and usage not in SPLIT_ALIASES:
            problems.add("bad row", f"{where} (unknown Usage {usage!r})")
            continue
        try:
            pixels = np.array((row.get("pixels") or "").split(), dtype=np.int64)
        except ValueError:
            pixels = np.zeros(0)
        if pixels.size != FER2013_SIDE * FER2013_SIDE or pixels.min() < 0 or pixels.max() > 255:
            problems.add("corrupt image", f"{where} ({pixels.size} pixel values)")
            continue
        code = (row.get("emotion") or "").strip()
        number = parse_code(code)
        name = FER2013_CLASSES[number] if number is not None and 0 <= number < len(FER2013_CLASSES) else f"emotion {code}"
        records.append(ImageRecord(source=where, split=SPLIT_ALIASES.get(usage),
                                   pixels=pixels.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE)))
        raw.append(name)
    records, names = _assign_labels(raw, records, classes or list(FER2013_CLASSES), problems, keep_unlabelled=False)
    return LabelledDataset(str(path), "fer2013-csv", records, names, problems)


def _affectnet_rows(path: Path, split: str | None, image_root: Path, problems: ProblemLog):
    _require_columns(path, ("subDirectory_filePath", "expression"))
    for line, row in _read_rows(path):
        where = f"{path.name}:line{line}"
        expression = parse_code(row.get("expression"))
        try:
            valence, arousal = _parse_float(row.get("valence")), _parse_float(row.get("arousal"))
        except (TypeError, ValueError):
            expression = None
        if expression is None:
            problems.add("bad row", f"{where} (expression/valence/arousal not a number)")
            continue
        if expression >= AFFECTNET_FIRST_SKIPPED:
            problems.add("skipped: expression >= 8 (none/uncertain/non-face)", where)
            continue
        if valence == AFFECTNET_MISSING_VA or arousal == AFFECTNET_MISSING_VA:
            problems.add("skipped: valence/arousal = -2", where)
            continue
        file_path = image_root / row["subDirectory_filePath"].strip()
        if not file_path.is_file():
            problems.add("missing file", str(file_path))
            continue
        box = None
        try:
            box = tuple(int(float(row[k])) for k in ("face_x", "face_y", "face_width", "face_height"))
            box = box if box[2] > 0 and box[3] > 0 else None
        except (KeyError, TypeError, ValueError, OverflowError):  # OverflowError: int(float("inf"))
            box = None
        name = AFFECTNET_CLASSES[expression] if expression >= 0 else f"expression {expression}"
        yield ImageRecord(source=str(file_path), split=split, valence=valence, arousal=arousal, box=box), name


def load_affectnet(path: Path, classes: list[str] | None, image_root: Path | None,
                   problems: ProblemLog) -> LabelledDataset:
    if path.is_dir():
        parts = [(path / "training.csv", "train"), (path / "validation.csv", "test")]
        base = path
    else:
        parts, base = [(path, None)], path.parent
    if image_root is None:
        # The CSV paths are relative to Manually_Annotated_Images/ in the official distribution.
        nested = base / "Manually_Annotated_Images"
        image_root = nested if nested.is_dir() else base
    records, raw = [], []
    for csv_path, split in parts:
        for record, name in _affectnet_rows(csv_path, split, image_root, problems):
            records.append(record)
            raw.append(name)
    records, names = _assign_labels(raw, records, classes or list(AFFECTNET_CLASSES), problems, keep_unlabelled=False)
    return LabelledDataset(str(path), "affectnet-csv", records, names, problems)


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "training.csv").is_file() and (path / "validation.csv").is_file():
            return "affectnet-csv"
        return "folder"
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = {name.strip() for name in next(csv.reader(handle), [])}
    if {"emotion", "pixels"} <= header:
        return "fer2013-csv"
    if "subDirectory_filePath" in header:
        return "affectnet-csv"
    if "path" in header:
        return "csv"
    raise click.ClickException(f"{path}: cannot tell the CSV format from its header; pass --format")


def load_dataset(path: str | Path, fmt: str = "auto", *, classes: list[str] | None = None,
                 image_root: str | Path | None = None) -> LabelledDataset:
    """Read a dataset; problems with single rows/files are collected in .problems, not raised."""
    try:
        return _load_dataset(path, fmt, classes=classes, image_root=image_root)
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"{path}: not UTF-8 text (byte {exc.start} of a file: {exc.reason}); "
                                   "save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise click.ClickException(f"{path}: not a readable CSV ({exc})") from None


def _load_dataset(path: str | Path, fmt: str, *, classes: list[str] | None,
                  image_root: str | Path | None) -> LabelledDataset:
    path = Path(path)
    if not path.exists():
        raise click.ClickException(f"dataset not found: {path}")
    path = path.resolve()
    if fmt not in FORMATS:
        raise click.ClickException(f"unknown --format {fmt!r}; use one of {', '.join(FORMATS)}")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "folder" and not path.is_dir():
        raise click.ClickException(f"--format folder needs a directory, got file {path}")
    if fmt in ("fer2013-csv", "csv") and not path.is_file():
        raise click.ClickException(f"--format {fmt} needs a CSV file, got directory {path}")
    root = Path(image_root) if image_root is not None else None
    problems = ProblemLog()
    if fmt == "folder":
        dataset = load_folder(path, classes, problems)
    elif fmt == "fer2013-csv":
        dataset = load_fer2013_csv(path, classes, problems)
    elif fmt == "affectnet-csv":
        dataset = load_affectnet(path, classes, root, problems)
    else:
        dataset = load_generic_csv(path, classes, root, problems)
    if not dataset.records:
        raise click.ClickException(f"no usable images in {path} (format {fmt})"
                                   + (f": {'; '.join(problems.summary_lines())}" if problems else ""))
    return dataset


def split_counts(dataset: LabelledDataset, indices_by_split: dict[str, np.ndarray]) -> dict:
    """Per split: total and per-class counts (JSON-ready)."""
    labels = dataset.labels()
    counts = {}
    for split, indices in indices_by_split.items():
        entry: dict = {"total": int(len(indices))}
        if dataset.class_names:
            per_class = np.bincount(labels[indices][labels[indices] >= 0], minlength=len(dataset.class_names))
            entry["per_class"] = {name: int(n) for name, n in zip(dataset.class_names, per_class)}
        counts[split] = entry
    return counts
