"""Split plans: stratified validation carving, subject-independent folds, empty-split errors."""
import click
import numpy as np
import pytest

from train.evaluation.datasets import ImageRecord, LabelledDataset
from train.evaluation.problems import ProblemLog
from train.evaluation.splits import carve, make_plans, plan_given_splits, require_nonempty, subsample_per_split


def _dataset(labels, splits=None, subjects=None):
    records = [ImageRecord(source=f"img{i}", label=label, split=None if splits is None else splits[i],
                           subject=None if subjects is None else subjects[i]) for i, label in enumerate(labels)]
    return LabelledDataset("mem", "csv", records, ["a", "b", "c"], ProblemLog())


def test_carve_is_stratified_and_seeded():
    strata = np.array([0] * 50 + [1] * 30 + [2] * 20)
    kept, carved = carve(np.arange(100), 0.1, np.random.default_rng(3), strata)
    assert sorted(np.bincount(strata[carved]).tolist()) == [2, 3, 5]  # 10 % of 50 / 30 / 20
    assert len(np.intersect1d(kept, carved)) == 0 and len(kept) + len(carved) == 100
    again = carve(np.arange(100), 0.1, np.random.default_rng(3), strata)[1]
    other = carve(np.arange(100), 0.1, np.random.default_rng(4), strata)[1]
    assert np.array_equal(carved, again) and not np.array_equal(carved, other)


def test_carve_keeps_one_of_each_in_a_small_stratum():
    kept, carved = carve(np.arange(2), 0.1, np.random.default_rng(0), None)
    assert len(kept) == 1 and len(carved) == 1


def test_validation_carved_from_train_when_missing():
    labels = [0, 1, 2] * 20
    splits = ["train"] * 45 + ["test"] * 15
    plan = plan_given_splits(_dataset(labels, splits), seed=0, val_fraction=0.2, test_fraction=0.2)
    assert len(plan.indices["test"]) == 15 and np.all(plan.indices["test"] >= 45)
    assert len(plan.indices["val"]) == 9 and np.all(plan.indices["val"] < 45)
    assert "validation carved from train" in plan.notes[0]


def test_no_splits_carves_test_then_validation():
    plan = plan_given_splits(_dataset([0, 1, 2] * 10), seed=1, val_fraction=0.1, test_fraction=0.2)
    sizes = {k: len(v) for k, v in plan.indices.items()}
    assert sizes == {"train": 21, "val": 3, "test": 6}
    assert len(np.unique(np.concatenate(list(plan.indices.values())))) == 30


def test_subject_folds_never_share_a_subject():
    subjects = [f"s{i // 4}" for i in range(40)]  # 10 subjects x 4 images
    dataset = _dataset([i % 3 for i in range(40)], subjects=subjects)
    plans = make_plans(dataset, seeds=[0], folds=5, group="subject", val_fraction=0.2, test_fraction=0.2)
    assert len(plans) == 5
    tested = []
    for plan in plans:
        owners = {split: {subjects[i] for i in idx} for split, idx in plan.indices.items()}
        assert not owners["train"] & owners["test"] and not owners["val"] & owners["test"]
        assert not owners["train"] & owners["val"] and owners["val"]
        tested.extend(plan.indices["test"].tolist())
    assert sorted(tested) == list(range(40))  # every image is tested exactly once


def test_subject_folds_need_subjects():
    with pytest.raises(click.ClickException, match="needs a subject"):
        make_plans(_dataset([0, 1, 2]), seeds=[0], folds=2, group="subject", val_fraction=0.1, test_fraction=0.2)


def test_empty_split_is_a_click_error():
    plan = plan_given_splits(_dataset([0, 1] * 5, ["train"] * 6 + ["val"] * 4), 0, 0.1, 0.2)
    with pytest.raises(click.ClickException, match="split 'test' is empty"):
        require_nonempty(plan, "somewhere")


def test_subsample_per_split_caps_each_split():
    splits = ["train"] * 90 + ["test"] * 30
    small, note = subsample_per_split(_dataset([0, 1, 2] * 40, splits), 15)
    counts = {s: sum(r.split == s for r in small.records) for s in ("train", "test")}
    assert counts == {"train": 15, "test": 15}
    assert "15" in note
