"""Shared evaluation protocol: which tasks to run, scoring predictions against the dataset's truth,
one run per (backbone, split plan), predictions files, and the results payload.

A method (linear probe, fine-tuning) only supplies `fit(backbone, plan) -> RunOutcome`: it may look at the
validation split as often as it likes and returns test predictions made once, by the selected model.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click
import numpy as np

from sslfer_core import metrics
from sslfer_core.atomic_files import atomic_path
from train.evaluation.datasets import LabelledDataset, split_counts
from train.evaluation.results import code_version, now_utc, output_write, summarise
from train.evaluation.splits import SplitPlan

TASK_CHOICES = ("auto", "classification", "regression", "both")


def tasks_for(dataset: LabelledDataset, requested: str) -> list[str]:
    available = [t for t, ok in (("classification", dataset.has_labels), ("regression", dataset.has_regression)) if ok]
    if not available:
        raise click.ClickException("the dataset has neither class labels nor valence/arousal values")
    if requested == "auto":
        return available
    wanted = ["classification", "regression"] if requested == "both" else [requested]
    missing = [t for t in wanted if t not in available]
    if missing:
        needs = {"classification": "class labels", "regression": "valence/arousal values"}
        raise click.ClickException(f"--task {requested}: the dataset has no {' and no '.join(needs[t] for t in missing)}")
    return wanted


@dataclass
class Predictions:
    indices: np.ndarray  # dataset record indices that were predicted
    labels: np.ndarray | None = None  # predicted class per index
    regression: np.ndarray | None = None  # (n, 2) predicted valence, arousal


@dataclass
class RunOutcome:
    selected: dict  # hyper-parameters chosen on validation, with their validation score
    val: Predictions
    test: Predictions
    extra: dict = field(default_factory=dict)


def score(dataset: LabelledDataset, predictions: Predictions, tasks: list[str], split: str) -> dict:
    """Metrics for one split; a split with nothing to score is a clear error, not a NaN."""
    result: dict = {}
    idx = predictions.indices
    if "classification" in tasks:
        truth = dataset.labels()[idx]
        has = truth >= 0
        if not has.any():
            raise click.ClickException(f"split '{split}' has no labelled images to score")
        result.update(metrics.classification_report(truth[has], predictions.labels[has], len(dataset.class_names)))
        result.update(_macro_f1_over_tested(truth[has], predictions.labels[has], dataset.class_names))
    if "regression" in tasks:
        truth = dataset.regression_targets()[idx]
        for d, name in enumerate(metrics.REGRESSION_DIMENSIONS):
            has = np.isfinite(truth[:, d])
            if not has.any():
                continue
            result[f"ccc_{name}"] = metrics.concordance_correlation(truth[has, d], predictions.regression[has, d])
            result[f"rmse_{name}"] = metrics.root_mean_squared_error(truth[has, d], predictions.regression[has, d])
            result[f"count_{name}"] = int(has.sum())
        if not any(k.startswith("ccc_") for k in result):
            raise click.ClickException(f"split '{split}' has no valence/arousal values to score")
    return result


def _macro_f1_over_tested(truth: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict:
    """Macro F1 over the classes the split holds: a class without images there would add an F1 of 0
    whenever it is predicted, which says nothing about it (sanity.py warns about such classes)."""
    f1 = metrics.per_class_f1(truth, predicted, len(names))
    support = np.bincount(truth, minlength=len(names))
    untested = [names[c] for c in range(len(names)) if support[c] == 0]
    out = {"macro_f1": float(np.mean(f1[support > 0]))}
    if untested:
        out["classes_without_images"] = untested
    return out


def write_predictions(path: Path, dataset: LabelledDataset, predictions: Predictions) -> None:
    names = dataset.class_names
    truth_labels, truth_targets = dataset.labels(), dataset.regression_targets()
    with output_write(path), atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "label", "predicted", "valence", "arousal", "predicted_valence", "predicted_arousal"])
        for row, index in enumerate(predictions.indices):
            label = names[truth_labels[index]] if truth_labels[index] >= 0 else ""
            predicted = names[predictions.labels[row]] if predictions.labels is not None else ""
            values = [repr(float(v)) if math.isfinite(v) else "" for v in truth_targets[index]]
            guessed = [repr(float(v)) for v in predictions.regression[row]] if predictions.regression is not None else ["", ""]
            writer.writerow([dataset.records[index].source, label, predicted, *values, *guessed])


def run_backbone(backbone, dataset: LabelledDataset, plans: list[SplitPlan], tasks: list[str],
                 fit: Callable[[SplitPlan], RunOutcome], out_dir: Path | None) -> list[dict]:
    runs = []
    for plan in plans:
        outcome = fit(plan)
        run = {
            "name": plan.name, "seed": plan.seed, "fold": plan.fold, "notes": plan.notes,
            "counts": split_counts(dataset, plan.indices), "selected": outcome.selected,
            "val": score(dataset, outcome.val, tasks, "val"),
            "test": score(dataset, outcome.test, tasks, "test"),
            **outcome.extra,
        }
        if out_dir is not None:
            path = Path(out_dir) / "predictions" / f"{backbone.name.replace('/', '_')}-{plan.name}-test.csv"
            write_predictions(path, dataset, outcome.test)
            run["predictions_file"] = str(path)
        runs.append(run)
    return runs


def backbone_entry(backbone, runs: list[dict], **extra) -> dict:
    return {"backbone": backbone.describe(), "runs": runs, "summary": summarise([r["test"] for r in runs]), **extra}


def results_payload(command: str, config: dict, dataset: LabelledDataset, plans: list[SplitPlan],
                    entries: list[dict]) -> dict:
    return {
        "command": command,
        "created": now_utc(),
        "code_version": code_version(),
        "config": config,
        "dataset": {
            "path": dataset.path, "format": dataset.format, "classes": dataset.class_names,
            "counts": split_counts(dataset, plans[0].indices) if plans else {},
            "problems": dataset.problems.as_dict(),
        },
        "backbones": entries,
    }
