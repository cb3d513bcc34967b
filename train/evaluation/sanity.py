"""Label layouts that would make a score meaningless, found before any feature is computed.

Refused (exit 1): a train split that holds a single class (a one-class classifier scores 100 %).
Warned, and recorded in results.json (the plan's notes, or the config's notes for dataset-wide ones):
- a class that is tested but has no training image in a plan (e.g. a label held by one subject under
  --group subject --folds K): it can never be predicted;
- a class with no test images in a plan: it is left out of that plan's macro F1 (protocol.score);
- a class that looks like a typo of another one (close name, fewer images, absent from the other splits).
"""
from __future__ import annotations

import difflib

import click
import numpy as np

from train.evaluation.datasets import LabelledDataset
from train.evaluation.splits import SplitPlan

TYPO_SIMILARITY = 0.8  # difflib ratio above which two class names are taken for spellings of one


def check_plans(dataset: LabelledDataset, plans: list[SplitPlan], warn) -> list[str]:
    """Refuse or annotate the plans (see the module doc); returns the dataset-wide warnings."""
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
