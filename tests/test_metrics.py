"""Metrics against small examples whose answers were computed by hand (working in the comments)."""
import math

import numpy as np
import pytest

from sslfer_core import metrics

# Example A, 3 classes, 6 samples:
#   y_true = 0 0 0 1 1 2
#   y_pred = 0 0 1 1 2 2
# Confusion (rows true, cols predicted):
#   true 0: [2, 1, 0]
#   true 1: [0, 1, 1]
#   true 2: [0, 0, 1]
# accuracy = (2 + 1 + 1) / 6 = 2/3
# recall: c0 = 2/3, c1 = 1/2, c2 = 1/1  -> UAR = (2/3 + 1/2 + 1) / 3 = 13/18 = 0.72222...
# WAR = 3/6 * 2/3 + 2/6 * 1/2 + 1/6 * 1 = 1/3 + 1/6 + 1/6 = 2/3 (= accuracy)
# precision: c0 = 2/2 = 1, c1 = 1/2 (column 1 holds 1 + 1), c2 = 1/2 (column 2 holds 1 + 1)
# F1: c0 = 2*1*(2/3)/(1 + 2/3) = 4/5, c1 = 2*(1/2)*(1/2)/1 = 1/2, c2 = 2*(1/2)*1/(3/2) = 2/3
# macro F1 = (4/5 + 1/2 + 2/3) / 3 = (24 + 15 + 20) / 90 = 59/90 = 0.65555...
Y_TRUE_A = [0, 0, 0, 1, 1, 2]
Y_PRED_A = [0, 0, 1, 1, 2, 2]


def test_confusion_matrix_example_a():
    expected = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(metrics.confusion_matrix(Y_TRUE_A, Y_PRED_A), expected)


def test_confusion_matrix_pads_to_num_classes():
    # Class 3 never occurs: a 4x4 matrix whose last row and column are zero.
    counts = metrics.confusion_matrix(Y_TRUE_A, Y_PRED_A, num_classes=4)
    assert counts.shape == (4, 4)
    assert counts[3].sum() == 0 and counts[:, 3].sum() == 0


def test_accuracy_example_a():
    assert metrics.accuracy(Y_TRUE_A, Y_PRED_A) == pytest.approx(2 / 3)


def test_per_class_recall_and_uar_example_a():
    np.testing.assert_allclose(metrics.per_class_recall(Y_TRUE_A, Y_PRED_A), [2 / 3, 1 / 2, 1.0])
    assert metrics.unweighted_average_recall(Y_TRUE_A, Y_PRED_A) == pytest.approx(13 / 18)


def test_war_example_a_equals_accuracy():
    assert metrics.weighted_average_recall(Y_TRUE_A, Y_PRED_A) == pytest.approx(2 / 3)


def test_f1_example_a():
    np.testing.assert_allclose(metrics.per_class_f1(Y_TRUE_A, Y_PRED_A), [4 / 5, 1 / 2, 2 / 3])
    assert metrics.macro_f1(Y_TRUE_A, Y_PRED_A) == pytest.approx(59 / 90)


# Example B, imbalanced, where UAR and WAR differ:
#   y_true = 0 0 0 0 1,  y_pred = 0 0 0 0 0   (always the majority class)
# recall c0 = 4/4 = 1, c1 = 0/1 = 0 -> UAR = 1/2, WAR = 4/5 * 1 + 1/5 * 0 = 4/5 = accuracy
# F1 c0: precision 4/5, recall 1 -> 2 * (4/5) / (9/5) = 8/9; F1 c1 = 0 (no true positive) -> macro F1 = 4/9
def test_majority_classifier_example_b():
    y_true, y_pred = [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]
    assert metrics.unweighted_average_recall(y_true, y_pred) == pytest.approx(0.5)
    assert metrics.weighted_average_recall(y_true, y_pred) == pytest.approx(0.8)
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(0.8)
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(4 / 9)


def test_class_absent_from_truth_has_nan_recall_and_is_left_out_of_uar():
    # Class 2 only predicted: recall undefined (NaN); UAR averages c0 (1/2) and c1 (1/1) = 3/4.
    # F1: c0 = 2*1/(2+1) = 2/3, c1 = 2*1/(1+1) = 1, c2 = 0 (predicted once, never true) -> macro = 5/9.
    y_true, y_pred = [0, 0, 1], [0, 2, 1]
    recall = metrics.per_class_recall(y_true, y_pred)
    assert math.isnan(recall[2])
    assert metrics.unweighted_average_recall(y_true, y_pred) == pytest.approx(3 / 4)
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx(5 / 9)


def test_classification_report_is_json_ready():
    report = metrics.classification_report(Y_TRUE_A, Y_PRED_A, num_classes=4)
    assert report["per_class_recall"][3] is None
    assert report["confusion_matrix"][0] == [2, 1, 0, 0]
    assert report["count"] == 6
    assert report["macro_f1"] == pytest.approx(59 / 90)


def test_classification_rejects_float_labels_and_mismatched_lengths():
    with pytest.raises(ValueError):
        metrics.accuracy([0.0, 1.0], [0, 1])
    with pytest.raises(ValueError):
        metrics.accuracy([0, 1, 1], [0, 1])


# Example C, regression:
#   t = 1 2 3 4, p = 2 2 4 4
# mean t = 2.5, mean p = 3
# var t (population) = (1.5^2 + 0.5^2 + 0.5^2 + 1.5^2) / 4 = 5/4; var p = (1 + 1 + 1 + 1) / 4 = 1
# cov = ((-1.5)(-1) + (-0.5)(-1) + (0.5)(1) + (1.5)(1)) / 4 = 4/4 = 1
# CCC = 2 * 1 / (5/4 + 1 + (2.5 - 3)^2) = 2 / 2.5 = 0.8
# RMSE: errors 1 0 1 0 -> sqrt(2/4) = sqrt(0.5) = 0.70710...
T_C = [1.0, 2.0, 3.0, 4.0]
P_C = [2.0, 2.0, 4.0, 4.0]


def test_ccc_example_c():
    assert metrics.concordance_correlation(T_C, P_C) == pytest.approx(0.8)


def test_rmse_example_c():
    assert metrics.root_mean_squared_error(T_C, P_C) == pytest.approx(math.sqrt(0.5))


def test_ccc_perfect_reversed_and_constant():
    t = np.array(T_C)
    assert metrics.concordance_correlation(t, t) == pytest.approx(1.0)
    # p = 5 - t: same mean and variance, cov = -5/4 -> CCC = -2.5 / 2.5 = -1
    assert metrics.concordance_correlation(t, 5 - t) == pytest.approx(-1.0)
    # constant prediction at the mean: cov = 0 -> CCC = 0
    assert metrics.concordance_correlation(t, np.full(4, 2.5)) == pytest.approx(0.0)
    # both constant and equal: 0 / 0
    assert math.isnan(metrics.concordance_correlation([1.0, 1.0], [1.0, 1.0]))


def test_ccc_penalises_bias_unlike_pearson():
    # p = t + 1: Pearson r = 1 but CCC = 2 (5/4) / (5/4 + 5/4 + 1) = 2.5 / 3.5 = 5/7
    t = np.array(T_C)
    assert metrics.concordance_correlation(t, t + 1) == pytest.approx(5 / 7)


def test_regression_report_per_dimension():
    # valence column = example C (CCC 0.8, RMSE sqrt(0.5)); arousal column exact (CCC 1, RMSE 0).
    y_true = np.column_stack([T_C, [0.1, 0.2, 0.3, 0.4]])
    y_pred = np.column_stack([P_C, [0.1, 0.2, 0.3, 0.4]])
    report = metrics.regression_report(y_true, y_pred)
    assert report["ccc_valence"] == pytest.approx(0.8)
    assert report["rmse_valence"] == pytest.approx(math.sqrt(0.5))
    assert report["ccc_arousal"] == pytest.approx(1.0)
    assert report["rmse_arousal"] == pytest.approx(0.0)
    assert report["count"] == 4


def test_metrics_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, sslfer_core.metrics; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
