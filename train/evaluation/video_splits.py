"""Train / validation / test plans for video datasets: per reference fold, validation carved from the training
side when the dataset has none of its own (subject-disjoint when every clip names a subject and there are at
least two, else clip-disjoint and stratified where every class has two clips), test scored once. A video
listed in train and in val or test of one fold is refused."""
from __future__ import annotations

import click
import numpy as np

from train.evaluation.splits import SplitPlan, carve
from train.evaluation.video_datasets import VideoDataset

MIN_GROUPS = 2


def _subjects(dataset: VideoDataset, indices: np.ndarray) -> np.ndarray | None:
    subjects = [dataset.records[i].subject for i in indices]
    if any(s is None for s in subjects) or len(set(subjects)) < MIN_GROUPS:
        return None
    return np.array(subjects, dtype=object)


def carve_disjoint(dataset: VideoDataset, indices: np.ndarray, fraction: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(kept, carved, how): whole subjects carved when possible, else clips (stratified when each class allows)."""
    subjects = _subjects(dataset, indices)
    if subjects is not None:
        names = np.unique(subjects)
        _, carved_names = carve(np.arange(len(names)), fraction, rng, None)
        is_carved = np.isin(subjects, names[carved_names])
        return indices[~is_carved], indices[is_carved], f"subject-disjoint ({len(carved_names)} of {len(names)} subjects)"
    labels = dataset.labels()
    per_class = np.bincount(labels[indices]) if len(indices) else np.zeros(0, dtype=np.int64)
    stratified = bool(len(indices)) and per_class[per_class > 0].min() >= 2
    kept, carved = carve(indices, fraction, rng, labels if stratified else None)
    return kept, carved, "clip-disjoint, " + ("stratified by class" if stratified else "not stratified (a class has one clip)")


def plan_video(dataset: VideoDataset, seed: int, val_fraction: float, test_fraction: float) -> list[SplitPlan]:
    """One plan per fold (one plan when there are no folds); the carving is seeded by the run seed."""
    plans = []
    splits = dataset.split_of()
    folds = np.array([-1 if r.fold is None else r.fold for r in dataset.records])
    for fold in dataset.folds:
        rng = np.random.default_rng((seed, 0 if fold is None else fold + 1))
        pool = np.flatnonzero(folds == (-1 if fold is None else fold))
        notes = []
        if dataset.has_splits:
            indices = {s: pool[splits[pool] == s] for s in ("train", "val", "test")}
            unassigned = int(np.sum(splits[pool] == ""))
            if unassigned:
                notes.append(f"{unassigned} clips without a split were left out")
        else:
            train, test, how = carve_disjoint(dataset, pool, test_fraction, rng)
            indices = {"train": train, "val": pool[:0], "test": test}
            notes.append(f"test carved from all clips ({test_fraction:.0%}, {how}, seed {seed})")
        if len(indices["val"]) == 0 and len(indices["train"]):
            indices["train"], indices["val"], how = carve_disjoint(dataset, indices["train"], val_fraction, rng)
            notes.append(f"validation carved from train ({val_fraction:.0%}, {how}, seed {seed})")
        else:
            notes.append("validation = the dataset's own validation split")
        train_sources = {dataset.records[i].source for i in indices["train"]}
        for split in ("val", "test"):
            shared = sorted(train_sources & {dataset.records[i].source for i in indices[split]})
            if shared:  # the score would measure memory of those clips
                where = "" if fold is None else f" of fold {fold}"
                raise click.ClickException(f"{len(shared)} video(s) are in both train and {split}{where} (e.g. "
                                           f"{shared[0]}); list each video in one split")
        train_subjects = {dataset.records[i].subject for i in indices["train"]} - {None}
        test_subjects = {dataset.records[i].subject for i in indices["test"]} - {None}
        if dataset.has_splits and train_subjects & test_subjects:
            notes.append(f"the dataset's train and test share {len(train_subjects & test_subjects)} subject(s)")
        plans.append(SplitPlan(seed, fold, indices, notes))
    return plans
