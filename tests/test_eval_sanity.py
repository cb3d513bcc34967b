"""Evaluation refuses or flags label layouts whose scores mean nothing, naming the class and the split,
and results.json records each warning."""
import json
import shutil

import cv2
import numpy as np
from click.testing import CliRunner

from eval_fixtures import pattern_image, write_csv, write_pattern_folder
from sslfer_core import metrics
from train.evaluation.cli import main
from train.evaluation.datasets import LabelledDataset
from train.evaluation.problems import ProblemLog
from train.evaluation.protocol import Predictions, score

FAST = ["--image-size", "32", "--max-iterations", "20", "--weight-decays", "0", "--workers", "0", "--threads", "1",
        "--no-cache"]


def _linear(data, out=None, *extra):
    args = ["linear", "--backbone", "random", "--data", str(data), *FAST, *extra]
    return CliRunner().invoke(main, args + (["--out", str(out)] if out else []))


def test_one_class_in_train_is_refused(tmp_path):
    data = write_pattern_folder(tmp_path / "d", {"train": 6, "val": 2, "test": 3}, classes=("vertical",))
    for split in ("val", "test"):
        shutil.copytree(data / split / "vertical", data / split / "horizontal")
    result = _linear(data)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "split 'train' of seed0 holds a single class ('vertical')" in result.output


def test_a_label_held_by_one_subject_is_flagged_per_fold(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for subject in range(5):
        kinds = ("vertical", "horizontal") + (("checker",) if subject == 0 else ())
        for kind in kinds:
            for i in range(3):
                name = f"s{subject}_{kind}_{i}.png"
                cv2.imwrite(str(tmp_path / name), pattern_image(kind, rng))
                rows.append([name, kind, f"subject{subject}"])
    data = write_csv(tmp_path / "ck.csv", ["path", "label", "subject"], rows)
    result = _linear(data, tmp_path / "out", "--folds", "5", "--group", "subject")
    assert result.exit_code == 0, result.output
    expected = "class 'checker' has test images in fold"
    assert expected in result.output and "subject(s) subject0" in result.output
    runs = json.loads((tmp_path / "out" / "results.json").read_text())["backbones"][0]["runs"]
    flagged = [r for r in runs if any(expected in n for n in r["notes"])]
    # Exactly the fold that tests subject0 has no training image of 'checker'.
    assert len(flagged) == 1 and flagged[0]["counts"]["train"]["per_class"]["checker"] == 0
    others = [r for r in runs if r is not flagged[0]]
    trained = [r for r in others if r["counts"]["train"]["per_class"]["checker"] > 0]
    assert trained and all(any("'checker' has no test images" in n for n in r["notes"]) for r in trained)
    assert all(r["test"]["classes_without_images"] == ["checker"] for r in others)


def test_a_label_typo_in_train_is_flagged_and_recorded(tmp_path):
    data = write_pattern_folder(tmp_path / "d", {"train": 8, "val": 3, "test": 3}, classes=("vertical", "horizontal"))
    (data / "train" / "vertcal").mkdir()
    for i in range(2):
        shutil.move(str(data / "train" / "vertical" / f"{i:03d}.png"), data / "train" / "vertcal" / f"{i:03d}.png")
    result = _linear(data, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "class 'vertcal' (2 images, only in train) looks like a misspelling of 'vertical' (12 images)" in result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert any("'vertcal'" in n and "misspelling" in n for n in results["config"]["notes"])
    run = results["backbones"][0]["runs"][0]
    assert any("'vertcal' has no test images in seed0" in n for n in run["notes"])


def test_macro_f1_leaves_out_classes_without_test_images():
    records = []
    dataset = LabelledDataset("x", "csv", records, ["a", "b", "c"], ProblemLog())
    from train.evaluation.datasets import ImageRecord

    truth = [0, 0, 1, 1]
    records.extend(ImageRecord(source=str(i), label=t) for i, t in enumerate(truth))
    predicted = np.array([0, 2, 1, 1])  # one 'a' image predicted as 'c', which has no test image
    result = score(dataset, Predictions(np.arange(4), labels=predicted), ["classification"], "test")
    # F1(a) = 2*1/(2+1) = 2/3, F1(b) = 1; c (no test image) is not averaged in: (2/3 + 1) / 2 = 5/6.
    assert abs(result["macro_f1"] - 5 / 6) < 1e-12
    assert abs(metrics.macro_f1(truth, predicted, 3) - (2 / 3 + 1 + 0) / 3) < 1e-12  # what counting c gives
    assert result["classes_without_images"] == ["c"]


def test_a_csv_that_is_not_utf8_is_one_error(tmp_path):
    data = tmp_path / "latin.csv"
    data.write_bytes("path,label\nécole.png,happy\n".encode("latin-1"))
    result = _linear(data)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "not UTF-8 text" in result.output and "latin.csv" in result.output
