"""Label layouts that would make a score meaningless, found before any feature is computed.

Refused (exit 1): a train split that holds a single class (a one-class classifier scores 100 %); an
image file listed in train and in val or test of one plan (the same path twice in a CSV, say).
Warned, and recorded in results.json (the plan's notes, or the config's notes for dataset-wide ones):
- images with the same content (byte-identical files, or identical FER2013 pixel rows) in train and in
  val or test of a plan: a leak that lifts the score (FER2013 as distributed holds some);
- a class that is tested but has no training image in a plan (e.g. a label held by one subject under
  --group subject --folds K): it can never be predicted;
- a class with no test images in a plan: it is left out of that plan's macro F1 (protocol.score);
- a class that looks like a typo of another one (close name, fewer images, absent from the other splits).
"""
from __future__ import annotations

import difflib
import hashlib
import os
from collections import defaultdict

import click
import numpy as np

from sslfer_core.progress import Progress
from train.evaluation.datasets import LabelledDataset
from train.evaluation.splits import SplitPlan

TYPO_SIMILARITY = 0.8  # difflib ratio above which two class names are taken for spellings of one


def check_plans(dataset: LabelledDataset, plans: list[SplitPlan], warn) -> list[str]:
    """Refuse or annotate the plans (see the module doc); returns the dataset-wide warnings."""
    check_overlap(dataset, plans, warn)
    if not dataset.has_labels:
        return []
    labels, names = dataset.labels(), dataset.class_names
    subjects = np.array([r.subject for r in dataset.records], dtype=object)
    for plan in plans:
        present = {split: set(labels[idx][labels[idx] >= 0].tolist()) for split, idx in plan.indices.items()}
        if len(present["train"]) < 2:
            only = ", ".join(repr(names[c]) for c in sorted(present["train"])) or "none"
            raise click.ClickException(
                f"split 'train' of {plan.name} holds a single class ({only}): a classifier of one class "
                f"scores 100 % without learning anything; give training images of at least two classes")
        for c in sorted(present["test"] - present["train"]):
            holders = sorted({str(s) for s in subjects[labels == c] if s is not None})
            held = f" (all its images belong to subject(s) {', '.join(holders[:3])})" if 0 < len(holders) <= 3 else ""
            _note(plan, warn, f"class {names[c]!r} has test images in {plan.name} but no training image{held}: "
                              "it can never be predicted there")
        for c in sorted(present["train"] - present["test"]):
            _note(plan, warn, f"class {names[c]!r} has no test images in {plan.name}: left out of its macro F1")
    notes = _typo_warnings(dataset, plans[0] if plans else None)
    for note in notes:
        warn(note)
    return notes


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _file_digest(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def content_keys(dataset: LabelledDataset, candidates: np.ndarray) -> dict[int, str]:
    """record index -> a key equal for records of identical content, for the `candidates` that might
    share content with another record: inline pixels are hashed, and files are hashed only where another
    file has the same size (most files then are never read)."""
    keys: dict[int, str] = {}
    by_size: dict[int, list[int]] = defaultdict(list)
    for i in candidates.tolist():
        record = dataset.records[i]
        if record.pixels is not None:
            keys[i] = "pixels:" + hashlib.sha256(record.pixels.tobytes()).hexdigest() + repr(record.box)
        else:
            size = _file_size(record.source)
            if size is not None:
                by_size[size].append(i)
    to_read = [i for group in by_size.values() if len(group) > 1 for i in group]
    progress = Progress("comparing images across splits", len(to_read), unit="images")
    for i in to_read:
        digest = _file_digest(dataset.records[i].source)
        if digest is not None:
            keys[i] = "file:" + digest + repr(dataset.records[i].box)
        progress.advance(1)
    progress.close()
    return keys


def check_overlap(dataset: LabelledDataset, plans: list[SplitPlan], warn) -> None:
    """Refuse a plan whose train split shares an image path with its val or test split; warn (into the
    plan's notes) where they share image content."""
    sources = [os.path.realpath(r.source) if r.pixels is None else r.source for r in dataset.records]
    everything = np.unique(np.concatenate([idx for plan in plans for idx in plan.indices.values()])) \
        if plans else np.zeros(0, dtype=np.int64)
    keys = None
    for plan in plans:
        train = plan.indices["train"]
        train_sources = {sources[i] for i in train.tolist()}
        for split in ("val", "test"):
            shared = sorted({sources[i] for i in plan.indices[split].tolist()} & train_sources)
            if shared:
                raise click.ClickException(
                    f"{len(shared)} image(s) are in both train and {split} of {plan.name} (e.g. {shared[0]}): the "
                    f"{split} score would measure memory, not recognition; list each image in one split")
        if keys is None:
            keys = content_keys(dataset, everything)
        train_keys = {keys[i] for i in train.tolist() if i in keys}
        for split in ("val", "test"):
            leaked = [i for i in plan.indices[split].tolist() if keys.get(i) in train_keys]
            if leaked:
                _note(plan, warn, f"{len(leaked)} {split} image(s) of {plan.name} have the same content as a train "
                                  f"image (e.g. {dataset.records[leaked[0]].source}): a leak that lifts the {split} "
                                  "score; remove the duplicates for a score that means what it says")


def _note(plan: SplitPlan, warn, text: str) -> None:
    plan.notes.append(f"warning: {text}")
    warn(text)


def _typo_warnings(dataset: LabelledDataset, plan: SplitPlan | None) -> list[str]:
    labels, names = dataset.labels(), dataset.class_names
    counts = np.bincount(labels[labels >= 0], minlength=len(names))
    splits = dataset.split_of()
    out = []
    for c, name in enumerate(names):
        others = [n for n in names if n != name]
        close = [n for n in others if n.lower() == name.lower()] or difflib.get_close_matches(
            name, others, n=1, cutoff=TYPO_SIMILARITY)
        if not close:
            continue
        match = names.index(close[0])
        in_splits = sorted({s for s in splits[labels == c] if s})
        if counts[c] < counts[match] and (not dataset.has_splits or in_splits == ["train"]):
            where = "only in train" if dataset.has_splits else "in the data"
            out.append(f"class {name!r} ({counts[c]} images, {where}) looks like a misspelling of {close[0]!r} "
                       f"({counts[match]} images): it is scored as a class of its own; fix the label or pass --classes")
    return out
