"""Dynamic-FER scoring (UAR / WAR over a fixed label set) against confusion matrices worked out by hand."""
import math
import warnings

import numpy as np
import pytest

from sslfer_core import metrics


def _reference_sklearn_uar(y_true, y_pred) -> float:
    """The reference's computation, written out: sklearn's confusion_matrix without `labels` uses the sorted
    union of the labels seen in truth and prediction; UAR = mean of diagonal / row sums (0/0 -> NaN)."""
    labels = sorted(set(y_true) | set(y_pred))
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)))
    for t, p in zip(y_true, y_pred):
        counts[index[t], index[p]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(np.mean(counts.diagonal() / counts.sum(axis=1)))


# Example A, 3 classes, 9 clips:
#   y_true = 0 0 0 1 1 2 2 2 2
#   y_pred = 0 1 0 1 1 2 2 0 0
# Confusion (rows true, columns predicted):
#   a: [2, 1, 0]    b: [0, 2, 0]    c: [2, 0, 2]
# recall a = 2/3, b = 2/2, c = 2/4 -> UAR = (2/3 + 1 + 1/2) / 3 = 13/18;  WAR = (2 + 2 + 2) / 9 = 2/3
# column sums (predicted) a = 4, b = 3, c = 2; F1 = 2 TP / (support + predicted):
#   a = 4/7, b = 4/5, c = 4/6 = 2/3 -> macro = (4/7 + 4/5 + 2/3) / 3 = 214/315
#   weighted by support 3, 2, 4: (12/7 + 8/5 + 8/3) / 9 = 628/945
Y_TRUE_A = [0, 0, 0, 1, 1, 2, 2, 2, 2]
Y_PRED_A = [0, 1, 0, 1, 1, 2, 2, 0, 0]


def test_example_a_by_hand():
    report = metrics.dfer_report(Y_TRUE_A, Y_PRED_A, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [2, 0, 2]]
    assert report["uar"] == pytest.approx(13 / 18)
    assert report["war"] == pytest.approx(2 / 3) and report["accuracy"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx(214 / 315)
    assert report["weighted_f1"] == pytest.approx(628 / 945)
    assert report["uar_absent_classes"] == [] and report["warnings"] == []
    rows = {row["class"]: row for row in report["per_class"]}
    assert rows["c"] == {"class": "c", "support": 4, "predicted": 2, "correct": 2, "recall": 0.5,
                         "precision": 1.0, "f1": pytest.approx(2 / 3)}
    assert rows["a"]["precision"] == pytest.approx(2 / 4)
    assert report["uar"] == pytest.approx(_reference_sklearn_uar(Y_TRUE_A, Y_PRED_A))


def test_uar_and_war_from_a_confusion_matrix():
    # rows [9, 1] recall 9/10, [3, 1] recall 1/4 -> UAR = (0.9 + 0.25) / 2 = 0.575; WAR = 10 / 14 = 5/7
    counts = [[9, 1], [3, 1]]
    assert metrics.uar_from_confusion(counts) == pytest.approx(0.575)
    assert metrics.war_from_confusion(counts) == pytest.approx(5 / 7)


# Example B: the label set has 4 classes, class d has no test clip and is never predicted.
#   y_true = 0 0 1 1 2,  y_pred = 0 1 1 1 2
# recall a = 1/2, b = 1, c = 1, d undefined -> UAR over the 3 present = (1/2 + 1 + 1) / 3 = 5/6
# (counting d as recall 0 would give 2.5 / 4 = 5/8; the reference's sklearn computation never sees d: 5/6)
Y_TRUE_B = [0, 0, 1, 1, 2]
Y_PRED_B = [0, 1, 1, 1, 2]


def test_class_absent_from_split_is_left_out_of_uar_and_named():
    report = metrics.dfer_report(Y_TRUE_B, Y_PRED_B, ["a", "b", "c", "d"])
    assert report["uar"] == pytest.approx(5 / 6)
    assert report["uar"] != pytest.approx(5 / 8)
    assert report["uar"] == pytest.approx(_reference_sklearn_uar(Y_TRUE_B, Y_PRED_B))
    assert report["war"] == pytest.approx(4 / 5)
    assert report["uar_absent_classes"] == ["d"]
    assert len(report["warnings"]) == 1 and "3 of 4 classes" in report["warnings"][0] and "d" in report["warnings"][0]
    assert report["per_class"][3] == {"class": "d", "support": 0, "predicted": 0, "correct": 0, "recall": None,
                                      "precision": None, "f1": None}
    assert len(report["confusion_matrix"]) == 4  # the fixed label set, not the labels that happen to occur
    # macro F1 over classes occurring in truth or prediction: a = 2/(2+1) = 2/3, b = 4/(2+3) = 4/5, c = 1 -> 37/45
    assert report["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)


# Example C: class d has no test clip but is predicted once.
#   y_true = 0 0 1 1 2,  y_pred = 0 3 1 1 2
# UAR over present classes = (1/2 + 1 + 1) / 3 = 5/6; the reference's row for d is all zeros -> NaN.
# F1: a = 2/(2+1) = 2/3, b = 1, c = 1, d = 0 (predicted, never true) -> macro = (2/3 + 2) / 4 = 2/3 (as sklearn's).
def test_class_absent_but_predicted_where_the_reference_gives_nan():
    y_true, y_pred = [0, 0, 1, 1, 2], [0, 3, 1, 1, 2]
    report = metrics.dfer_report(y_true, y_pred, ["a", "b", "c", "d"])
    assert report["uar"] == pytest.approx(5 / 6)
    assert math.isnan(_reference_sklearn_uar(y_true, y_pred))
    assert any("predicted but absent" in w and "NaN" in w for w in report["warnings"])
    assert report["macro_f1"] == pytest.approx(2 / 3)
    assert report["per_class"][3]["f1"] == 0.0 and report["per_class"][3]["precision"] == 0.0


def test_label_outside_the_label_set_is_an_error():
    with pytest.raises(ValueError):
        metrics.dfer_report([0, 1, 7], [0, 1, 1], ["a", "b"])


def test_no_runtime_warning_for_absent_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics.dfer_report(Y_TRUE_B, Y_PRED_B, ["a", "b", "c", "d"])
