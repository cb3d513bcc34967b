"""Dataset readers: folder splits, FER2013 / AffectNet / generic CSV, problems reported instead of raised."""
import math

import click
import numpy as np
import pytest

from eval_fixtures import pattern_image, write_csv, write_pattern_folder
from train.evaluation.datasets import FER2013_CLASSES, detect_format, load_dataset, split_counts


def test_folder_with_split_aliases(tmp_path):
    root = write_pattern_folder(tmp_path / "ds", {"train": 3, "val": 2, "test": 1})
    dataset = load_dataset(root)
    assert dataset.format == "folder"
    assert dataset.class_names == ["checker", "horizontal", "vertical"]  # sorted folder names
    splits = dataset.split_of()
    assert (splits == "train").sum() == 9 and (splits == "val").sum() == 6 and (splits == "test").sum() == 3
    counts = split_counts(dataset, {"test": np.flatnonzero(splits == "test")})
    assert counts["test"]["per_class"] == {"checker": 1, "horizontal": 1, "vertical": 1}


def test_folder_class_only_in_test_is_unknown_label(tmp_path):
    root = write_pattern_folder(tmp_path / "ds", {"train": 2, "validation": 1, "test": 1}, classes=("a", "b"))
    extra = root / "test" / "c"
    extra.mkdir()
    import cv2

    cv2.imwrite(str(extra / "x.png"), pattern_image("checker", np.random.default_rng(0)))
    (root / "train" / "a" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    dataset = load_dataset(root)
    assert dataset.class_names == ["a", "b"]
    assert dataset.problems.count("unknown label") == 1
    assert len(dataset.records) == 2 * 2 + 2 + 2


def test_generic_csv_keeps_regression_labels_as_floats(tmp_path):
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), pattern_image("checker", np.random.default_rng(i)))
    csv_path = write_csv(tmp_path / "va.csv", ["path", "valence", "arousal", "subject"],
                         [["0.png", "0.25", "-0.75", "s1"], ["1.png", "-0.5", "0.125", "s2"], ["2.png", "", "0.5", "s1"]])
    dataset = load_dataset(csv_path)
    assert dataset.format == "csv" and not dataset.has_labels and dataset.has_regression
    values = [(r.valence, r.arousal) for r in dataset.records]
    assert values[0] == (0.25, -0.75) and values[1] == (-0.5, 0.125)
    assert all(isinstance(v, float) for pair in values for v in pair)
    assert math.isnan(values[2][0]) and values[2][1] == 0.5  # empty = absent, not 0
    targets = dataset.regression_targets()
    assert targets.dtype == np.float64 and targets[1, 1] == 0.125
    assert [r.subject for r in dataset.records] == ["s1", "s2", "s1"]


def test_generic_csv_reports_missing_file_bad_row_and_unknown_label(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "ok.png"), pattern_image("checker", np.random.default_rng(0)))
    csv_path = write_csv(tmp_path / "data.csv", ["path", "label"],
                         [["ok.png", "happy"], ["gone.png", "happy"], ["ok.png", "contempt"], ["", "sad"]])
    dataset = load_dataset(csv_path, classes=["happy", "sad"])
    assert dataset.class_names == ["happy", "sad"]
    assert dataset.problems.count("missing file") == 1
    assert dataset.problems.count("unknown label") == 1
    assert dataset.problems.count("bad row") == 1
    assert len(dataset.records) == 1
    assert "gone.png" in " ".join(dataset.problems.summary_lines())


def _fer_row(emotion, usage, value=128, count=2304):
    return [str(emotion), " ".join([str(value)] * count), usage]


def test_fer2013_csv(tmp_path):
    rows = [_fer_row(3, "Training"), _fer_row(0, "PublicTest", 10), _fer_row(6, "PrivateTest"),
            _fer_row(9, "Training"), _fer_row(1, "Training", count=100), _fer_row(2, "Somewhere")]
    path = write_csv(tmp_path / "fer2013.csv", ["emotion", "pixels", "Usage"], rows)
    assert detect_format(path) == "fer2013-csv"
    dataset = load_dataset(path)
    assert dataset.class_names == list(FER2013_CLASSES)
    assert [(r.split, dataset.class_names[r.label]) for r in dataset.records] == [
        ("train", "happy"), ("val", "angry"), ("test", "neutral")]
    assert dataset.records[1].pixels.shape == (48, 48) and dataset.records[1].pixels[0, 0] == 10
    assert dataset.problems.count("unknown label") == 1  # emotion 9
    assert dataset.problems.count("corrupt image") == 1  # 100 pixel values
    assert dataset.problems.count("bad row") == 1  # Usage "Somewhere"


def test_affectnet_csv_skips_categories_and_missing_valence(tmp_path):
    import cv2

    images = tmp_path / "Manually_Annotated_Images" / "1"
    images.mkdir(parents=True)
    for name in "abcde":
        cv2.imwrite(str(images / f"{name}.jpg"), np.full((40, 40, 3), 100, np.uint8))
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
              "expression", "valence", "arousal"]
    rows = [["1/a.jpg", 5, 5, 20, 20, "", 1, 0.8125, 0.25],  # happy
            ["1/b.jpg", 0, 0, 40, 40, "", 8, 0.1, 0.1],  # none -> skipped
            ["1/c.jpg", 0, 0, 40, 40, "", 10, -2, -2],  # non-face -> skipped
            ["1/d.jpg", 0, 0, 40, 40, "", 3, -2, 0.3],  # valence -2 -> skipped
            ["1/e.jpg", 0, 0, 40, 40, "", 7, -0.3125, 0.5]]  # contempt
    write_csv(tmp_path / "training.csv", header, rows)
    write_csv(tmp_path / "validation.csv", header, [rows[0]])
    assert detect_format(tmp_path) == "affectnet-csv"
    dataset = load_dataset(tmp_path)
    assert [dataset.class_names[r.label] for r in dataset.records] == ["happy", "contempt", "happy"]
    assert [r.split for r in dataset.records] == ["train", "train", "test"]
    assert dataset.records[0].valence == 0.8125 and dataset.records[1].valence == -0.3125
    assert dataset.records[0].box == (5, 5, 20, 20)
    assert dataset.problems.count("skipped: expression >= 8 (none/uncertain/non-face)") == 2
    assert dataset.problems.count("skipped: valence/arousal = -2") == 1


def test_unreadable_header_and_missing_dataset_are_click_errors(tmp_path):
    odd = write_csv(tmp_path / "odd.csv", ["a", "b"], [["1", "2"]])
    with pytest.raises(click.ClickException, match="cannot tell the CSV format"):
        load_dataset(odd)
    with pytest.raises(click.ClickException, match="dataset not found"):
        load_dataset(tmp_path / "nope")
    empty = write_csv(tmp_path / "empty.csv", ["path", "label"], [["missing.png", "x"]])
    with pytest.raises(click.ClickException, match="no usable images"):
        load_dataset(empty)
