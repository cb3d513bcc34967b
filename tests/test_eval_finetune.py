"""`sslfer-eval finetune`: head layout, balanced softmax prior, and a short real training run."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from eval_fixtures import SKEWED_VAL_TRUTH, macro_f1, write_pattern_folder, write_skewed_folder
from train.evaluation.cli import main
from train.evaluation.finetune import build_head
from train.evaluation.linear_probe import class_log_prior


def test_default_head_is_d_1024_512_c_with_dropout():
    head = build_head(512, (1024, 512), 0.5, 7)
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 1024), (1024, 512), (512, 7)]
    assert [m.p for m in head if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]


def test_class_log_prior():
    # counts 3, 1, 0 -> the missing class counts as 1 so nothing is log(0): priors 3/5, 1/5, 1/5
    np.testing.assert_allclose(class_log_prior(np.array([0, 0, 0, 1]), 3), np.log([0.6, 0.2, 0.2]))


def test_finetune_learns_patterns_and_selects_on_validation(tmp_path):
    data = write_pattern_folder(tmp_path / "patterns", {"train": 8, "val": 3, "test": 4})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "finetune", "--backbone", "random", "--data", str(data), "--out", str(out), "--image-size", "32",
        "--epochs", "3", "--batch-size", "8", "--lr", "1e-3", "--head-dims", "64", "--workers", "0", "--threads", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    results = json.loads((out / "results.json").read_text())
    run = results["backbones"][0]["runs"][0]
    assert [h["epoch"] for h in run["history"]] == [1, 2, 3]
    best = max(run["history"], key=lambda h: h["val_score"])
    assert run["selected"]["epoch"] == best["epoch"]  # the epoch with the best validation score, first on ties
    assert run["selected"]["val_macro_f1"] == pytest.approx(best["val_score"])
    assert run["test"]["count"] == 12
    assert run["test"]["accuracy"] >= 0.75  # chance is 1/3; three epochs on easy patterns reach 1.0 here
    assert results["config"]["finetune"]["loss"] == "balanced-softmax"
    assert results["config"]["finetune"]["head_dims"] == [64]


FAST = ["--backbone", "random", "--image-size", "32", "--batch-size", "8", "--lr", "1e-3", "--head-dims", "64",
        "--workers", "0", "--threads", "1"]


def _finetune(data, out, *args):
    result = CliRunner().invoke(main, ["finetune", "--data", str(data), "--out", str(out), *FAST, *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((out / "results.json").read_text())["backbones"][0]["runs"][0]


def test_selection_never_sees_the_test_labels(tmp_path):
    clean = write_pattern_folder(tmp_path / "clean", {"train": 8, "val": 3, "test": 4})
    poisoned = tmp_path / "poisoned"
    shutil.copytree(clean, poisoned)
    # Every test image gets the wrong class (a rotation of the folders): test scores collapse, but history
    # and selection depend on train and val only, so they must not move.
    names = ["horizontal", "vertical", "checker"]
    for name in names:
        (poisoned / "test" / name).rename(poisoned / "test" / (name + ".tmp"))
    for name, wrong in zip(names, names[1:] + names[:1]):
        (poisoned / "test" / (name + ".tmp")).rename(poisoned / "test" / wrong)
    a = _finetune(clean, tmp_path / "a", "--epochs", "3")
    b = _finetune(poisoned, tmp_path / "b", "--epochs", "3")
    assert a["history"] == b["history"] and a["selected"] == b["selected"] and a["val"] == b["val"]
    assert a["test"]["accuracy"] >= 0.75 and b["test"]["accuracy"] <= 0.25  # the poison did reach the test split


@pytest.fixture(scope="module")
def skewed_data(tmp_path_factory):
    return write_skewed_folder(tmp_path_factory.mktemp("skewed"))


@pytest.mark.parametrize("loss, x_means", [("ce", "a"), ("balanced-softmax", "b")])
def test_balanced_softmax_removes_the_class_prior_on_a_skewed_split(skewed_data, tmp_path, loss, x_means):
    run = _finetune(skewed_data, tmp_path / loss, "--epochs", "10", "--loss", loss, "--lr", "1e-2", "--head-dims", "")
    # once trained, Y -> a, Z -> c, and X -> x_means (eval_fixtures.write_skewed_folder)
    predicted = [x_means] * 2 + ["a"] * 8 + [x_means, "c"]
    assert run["history"][-1]["val_score"] == pytest.approx(macro_f1(SKEWED_VAL_TRUTH, predicted))
    with open(run["predictions_file"]) as handle:  # test: a = 2 X + 2 Y, b = 2 X, c = 2 Z
        got = [row["predicted"] for row in csv.DictReader(handle)]
    assert sorted(got) == sorted([x_means] * 4 + ["a"] * 2 + ["c"] * 2)
