"""Train / validation / test index plans: given splits, seeded stratified carving, subject-independent K folds.

Protocol: model selection uses only the validation split; the test split is scored once at the end.
Every carve is seeded by the run seed, so `--seeds N` also varies carved validation sets and folds.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import click
import numpy as np

from train.evaluation.datasets import SPLITS, LabelledDataset


@dataclass
class SplitPlan:
    seed: int
    fold: int | None
    indices: dict[str, np.ndarray]  # "train" / "val" / "test" -> dataset record indices
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"seed{self.seed}" if self.fold is None else f"fold{self.fold}-seed{self.seed}"

    def without(self, bad: np.ndarray) -> "SplitPlan":
        """The same plan with the given record indices (e.g. undecodable images) removed from every split."""
        indices = {split: idx[~np.isin(idx, bad)] for split, idx in self.indices.items()}
        return SplitPlan(self.seed, self.fold, indices, list(self.notes))


def carve(indices: np.ndarray, fraction: float, rng: np.random.Generator,
          strata: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (kept, carved) with about `fraction` carved per stratum (at least one of each when n >= 2)."""
    indices = np.asarray(indices, dtype=np.int64)
    groups = [indices] if strata is None else [indices[strata[indices] == s] for s in np.unique(strata[indices])]
    kept, carved = [], []
    for group in groups:
        group = rng.permutation(group)
        n_carved = int(round(fraction * len(group)))
        if len(group) >= 2:
            n_carved = min(max(n_carved, 1), len(group) - 1)
        carved.append(group[:n_carved])
        kept.append(group[n_carved:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(carved))


def _strata(dataset: LabelledDataset) -> np.ndarray | None:
    return dataset.labels() if dataset.has_labels else None


def plan_given_splits(dataset: LabelledDataset, seed: int, val_fraction: float, test_fraction: float) -> SplitPlan:
    splits = dataset.split_of()
    everything = np.arange(len(dataset.records))
    rng = np.random.default_rng(seed)
    strata = _strata(dataset)
    notes = []
    if dataset.has_splits:
        unassigned = int(np.sum(splits == ""))
        if unassigned:
            notes.append(f"{unassigned} records without a split were left out")
        indices = {s: everything[splits == s] for s in SPLITS}
    else:
        indices = {"train": everything, "val": everything[:0], "test": everything[:0]}
    if len(indices["test"]) == 0 and not dataset.has_splits:
        indices["train"], indices["test"] = carve(indices["train"], test_fraction, rng, strata)
        notes.append(f"test carved from all records ({test_fraction:.0%}, stratified, seed {seed})")
    if len(indices["val"]) == 0 and len(indices["train"]) > 0:
        indices["train"], indices["val"] = carve(indices["train"], val_fraction, rng, strata)
        notes.append(f"validation carved from train ({val_fraction:.0%}, stratified, seed {seed})")
    return SplitPlan(seed, None, indices, notes)


def _balanced_group_folds(groups: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold number per record; whole groups go to one fold, largest first into the currently smallest fold."""
    names, sizes = np.unique(groups, return_counts=True)
    order = rng.permutation(len(names))
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_sizes = np.zeros(k, dtype=np.int64)
    fold_of_group = {}
    for g in order:
        target = int(np.argmin(fold_sizes))
        fold_of_group[names[g]] = target
        fold_sizes[target] += sizes[g]
    return np.array([fold_of_group[g] for g in groups])


def plan_folds(dataset: LabelledDataset, k: int, group: str, seed: int, val_fraction: float) -> list[SplitPlan]:
    """K folds over all records; with group="subject" no subject appears in two of train / val / test."""
    n = len(dataset.records)
    rng = np.random.default_rng(seed)
    if group == "subject":
        subjects = [r.subject for r in dataset.records]
        missing = sum(s is None for s in subjects)
        if missing:
            raise click.ClickException(f"--group subject needs a subject for every image; {missing} have none")
        groups = np.array(subjects, dtype=object)
        if len(set(subjects)) < k:
            raise click.ClickException(f"--folds {k} needs at least {k} subjects, found {len(set(subjects))}")
    else:
        groups = np.arange(n).astype(object)
    fold_of = _balanced_group_folds(groups, k, rng)
    plans = []
    for fold in range(k):
        test = np.flatnonzero(fold_of == fold)
        rest = np.flatnonzero(fold_of != fold)
        if group == "subject":
            rest_groups = np.unique(groups[rest])
            _, val_groups = carve(np.arange(len(rest_groups)), val_fraction, rng, None)
            is_val = np.isin(groups[rest], rest_groups[val_groups])
            train, val = rest[~is_val], rest[is_val]
            note = f"fold {fold}: subject-independent; validation = {len(val_groups)} held-out subject(s)"
        else:
            train, val = carve(rest, val_fraction, rng, _strata(dataset))
            note = f"fold {fold}: validation carved from train ({val_fraction:.0%}, stratified)"
        plans.append(SplitPlan(seed, fold, {"train": train, "val": val, "test": test}, [note]))
    return plans


def make_plans(dataset: LabelledDataset, seeds: list[int], folds: int | None, group: str,
               val_fraction: float, test_fraction: float) -> list[SplitPlan]:
    plans = []
    for seed in seeds:
        if folds:
            plans.extend(plan_folds(dataset, folds, group, seed, val_fraction))
        else:
            plans.append(plan_given_splits(dataset, seed, val_fraction, test_fraction))
    return plans


def require_nonempty(plan: SplitPlan, dataset_path: str) -> None:
    for split in SPLITS:
        if len(plan.indices[split]) == 0:
            raise click.ClickException(f"split '{split}' is empty ({plan.name}) for {dataset_path}; "
                                       "check the split folders/column or the data")


def subsample_per_split(dataset: LabelledDataset, max_per_split: int, seed: int = 0) -> tuple[LabelledDataset, str]:
    """At most `max_per_split` records per given split (whole pool when there are no splits), stratified, seeded.

    Done before planning with a fixed seed so every run seed shares one feature cache.
    """
    splits = dataset.split_of()
    strata = _strata(dataset)
    rng = np.random.default_rng(seed)
    keep = []
    for split in np.unique(splits):
        idx = np.flatnonzero(splits == split)
        if len(idx) > max_per_split:
            _, idx = carve(idx, max_per_split / len(idx), rng, strata)
        keep.append(idx)
    keep = np.sort(np.concatenate(keep))
    note = f"subsampled to at most ~{max_per_split} images per split (stratified, seed {seed}): {len(keep)} of {len(splits)}"
    return dataset.keep(keep), note
