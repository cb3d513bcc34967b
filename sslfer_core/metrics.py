"""Downstream metrics for expression recognition (numpy only, no torch).

Classification: accuracy, macro F1, per-class recall, UAR (mean per-class recall), WAR (recall weighted by class
frequency, which equals accuracy), confusion matrix (rows = true class, columns = predicted class).
Regression (valence / arousal): CCC (concordance correlation with population variances) and RMSE, per dimension.
"""
from __future__ import annotations

import math

import numpy as np


def _as_labels(values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"class labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _paired_labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = _as_labels(y_true), _as_labels(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("metrics of an empty set are undefined")
    if y_true.min() < 0 or y_pred.min() < 0:
        raise ValueError("class labels must be >= 0")
    return y_true, y_pred


def confusion_matrix(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Counts[i, j] = number of samples of true class i predicted as class j."""
    y_true, y_pred = _paired_labels(y_true, y_pred)
    needed = int(max(y_true.max(), y_pred.max())) + 1
    if num_classes is None:
        num_classes = needed
    elif num_classes < needed:
        raise ValueError(f"label {needed - 1} is outside num_classes={num_classes}")
    flat = y_true * num_classes + y_pred
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _paired_labels(y_true, y_pred)
    return float(np.mean(y_true == y_pred))


def per_class_recall(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """Recall of each class; NaN for a class that has no true samples (its recall is undefined)."""
    counts = confusion_matrix(y_true, y_pred, num_classes)
    support = counts.sum(axis=1)
    recall = np.full(len(counts), np.nan)
    present = support > 0
    recall[present] = np.diag(counts)[present] / support[present]
    return recall


def unweighted_average_recall(y_true, y_pred, num_classes: int | None = None) -> float:
    """UAR: plain mean of the recalls of the classes present in y_true."""
    return float(np.nanmean(per_class_recall(y_true, y_pred, num_classes)))


def weighted_average_recall(y_true, y_pred, num_classes: int | None = None) -> float:
    """WAR: recalls weighted by class support. Algebraically identical to accuracy; computed the long way."""
    counts = confusion_matrix(y_true, y_pred, num_classes)
    support = counts.sum(axis=1)
    recall = per_class_recall(y_true, y_pred, num_classes)
    present = support > 0
    return float(np.sum(recall[present] * support[present]) / support.sum())


def per_class_f1(y_true, y_pred, num_classes: int | None = None) -> np.ndarray:
    """F1 of each class; 0 when the class has no true positive; NaN when it occurs neither as truth nor prediction."""
    counts = confusion_matrix(y_true, y_pred, num_classes)
    true_pos = np.diag(counts).astype(np.float64)
    support = counts.sum(axis=1)
    predicted = counts.sum(axis=0)
    denominator = support + predicted  # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (support + predicted)
    f1 = np.full(len(counts), np.nan)
    occurs = denominator > 0
    f1[occurs] = 2.0 * true_pos[occurs] / denominator[occurs]
    return f1


def macro_f1(y_true, y_pred, num_classes: int | None = None) -> float:
    """Unweighted mean F1 over the classes that occur in y_true or y_pred."""
    return float(np.nanmean(per_class_f1(y_true, y_pred, num_classes)))


def classification_report(y_true, y_pred, num_classes: int) -> dict:
    """All classification metrics in one JSON-ready dict."""
    recall = per_class_recall(y_true, y_pred, num_classes)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, num_classes),
        "uar": unweighted_average_recall(y_true, y_pred, num_classes),
        "war": weighted_average_recall(y_true, y_pred, num_classes),
        "per_class_recall": [None if math.isnan(r) else float(r) for r in recall],
        "confusion_matrix": confusion_matrix(y_true, y_pred, num_classes).tolist(),
        "count": int(np.asarray(y_true).size),
    }


def _paired_values(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true shape {y_true.shape} differs from y_pred shape {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("metrics of an empty set are undefined")
    return y_true, y_pred


def concordance_correlation(y_true, y_pred) -> float:
    """Lin's CCC = 2 cov / (var_true + var_pred + (mean_true - mean_pred)^2), population (1/N) moments.

    NaN when both series are constant and equal (0 / 0).
    """
    y_true, y_pred = _paired_values(y_true, y_pred)
    mean_true, mean_pred = y_true.mean(), y_pred.mean()
    covariance = np.mean((y_true - mean_true) * (y_pred - mean_pred))
    denominator = y_true.var() + y_pred.var() + (mean_true - mean_pred) ** 2
    if denominator == 0:
        return float("nan")
    return float(2.0 * covariance / denominator)


def root_mean_squared_error(y_true, y_pred) -> float:
    y_true, y_pred = _paired_values(y_true, y_pred)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


REGRESSION_DIMENSIONS = ("valence", "arousal")


def regression_report(y_true, y_pred) -> dict:
    """CCC and RMSE per dimension for arrays of shape (N, 2) holding (valence, arousal)."""
    y_true, y_pred = _paired_values(y_true, y_pred)
    if y_true.ndim != 2 or y_true.shape[1] != len(REGRESSION_DIMENSIONS):
        raise ValueError(f"expected shape (N, 2) for (valence, arousal), got {y_true.shape}")
    report: dict = {"count": int(len(y_true))}
    for column, name in enumerate(REGRESSION_DIMENSIONS):
        report[f"ccc_{name}"] = concordance_correlation(y_true[:, column], y_pred[:, column])
        report[f"rmse_{name}"] = root_mean_squared_error(y_true[:, column], y_pred[:, column])
    return report


# ---- Dynamic FER (video) scoring: UAR / WAR over a dataset's fixed label set ----
#
# A class with no true sample in the scored split has an undefined recall. It is left out of the UAR mean and
# named in the report's "uar_absent_classes" and "warnings"; it is not counted as recall 0, which would charge a
# model for a class it could not have recalled. This matches the reference's sklearn computation
# (confusion_matrix without `labels`, then mean of diagonal / row sums) whenever the absent class is also never
# predicted; when it is predicted, the reference's row is all zeros, 0/0 gives NaN and its UAR is NaN, while
# here the UAR is still the mean over the present classes and the warning says that the reference would be NaN.


def uar_from_confusion(counts) -> float:
    """Mean recall over the classes (rows) that have at least one true sample; NaN when no row has any."""
    counts = np.asarray(counts)
    support = counts.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(counts)[present] / support[present]))


def war_from_confusion(counts) -> float:
    """Trace / total: accuracy, which is recall weighted by support."""
    counts = np.asarray(counts)
    total = counts.sum()
    return float(np.trace(counts) / total) if total else float("nan")


def dfer_report(y_true, y_pred, class_names) -> dict:
    """Dynamic-FER metrics over the fixed label set `class_names` (index = class), JSON-ready.

    uar, war (= accuracy), macro_f1 (mean F1 over classes occurring in truth or prediction, as sklearn's
    average='macro'), weighted_f1 (F1 weighted by support), per-class table, confusion matrix (rows = truth),
    the classes left out of the UAR and warnings.
    """
    names = list(class_names)
    counts = confusion_matrix(y_true, y_pred, len(names))
    support, predicted = counts.sum(axis=1), counts.sum(axis=0)
    true_pos = np.diag(counts)
    recall = per_class_recall(y_true, y_pred, len(names))
    f1 = per_class_f1(y_true, y_pred, len(names))
    present = support > 0
    absent = [names[i] for i in np.flatnonzero(~present)]
    warnings = []
    if absent:
        warnings.append(f"UAR is the mean over {int(present.sum())} of {len(names)} classes; "
                        f"no test sample of: {', '.join(absent)}")
    predicted_absent = [names[i] for i in np.flatnonzero(~present & (predicted > 0))]
    if predicted_absent:
        warnings.append(f"predicted but absent from the truth: {', '.join(predicted_absent)} "
                        "(the reference's sklearn-based UAR is NaN in this case)")
    table = []
    for i, name in enumerate(names):
        table.append({
            "class": name, "support": int(support[i]), "predicted": int(predicted[i]), "correct": int(true_pos[i]),
            "recall": None if not present[i] else float(recall[i]),
            "precision": None if predicted[i] == 0 else float(true_pos[i] / predicted[i]),
            "f1": None if math.isnan(f1[i]) else float(f1[i]),
        })
    weighted = float(np.sum(np.nan_to_num(f1[present]) * support[present]) / support.sum())
    return {
        "uar": uar_from_confusion(counts),
        "war": war_from_confusion(counts),
        "accuracy": war_from_confusion(counts),
        "macro_f1": float(np.nanmean(f1)),
        "weighted_f1": weighted,
        "per_class_recall": [None if math.isnan(r) else float(r) for r in recall],
        "per_class": table,
        "confusion_matrix": counts.tolist(),
        "classes": names,
        "uar_absent_classes": absent,
        "warnings": warnings,
        "count": int(counts.sum()),
    }
