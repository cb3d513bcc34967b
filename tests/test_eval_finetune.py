"""`sslfer-eval finetune`: head layout, balanced softmax prior, and a short real training run."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from eval_fixtures import write_pattern_folder
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
