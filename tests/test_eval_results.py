"""Result summaries, strict JSON, tables and `compare` in the paper layout."""
import json
import math

import click
import pytest

from train.evaluation.problems import ProblemLog
from train.evaluation.results import code_version, compare_markdown, json_ready, render_table, summarise


def test_summarise_mean_and_sample_std():
    # macro_f1 0.5, 0.7 -> mean 0.6, sample std = sqrt(((-0.1)^2 + 0.1^2) / 1) = 0.141421...
    summary = summarise([{"macro_f1": 0.5, "count": 10, "confusion_matrix": [[1]]},
                         {"macro_f1": 0.7, "count": 10, "confusion_matrix": [[1]]}])
    assert set(summary) == {"macro_f1"}  # counts and matrices are not averaged
    assert summary["macro_f1"]["mean"] == pytest.approx(0.6)
    assert summary["macro_f1"]["std"] == pytest.approx(math.sqrt(0.02))
    assert summarise([{"accuracy": 0.25}])["accuracy"] == {"mean": 0.25, "std": 0.0, "n": 1, "values": [0.25]}


def test_json_ready_makes_strict_json():
    import numpy as np

    cleaned = json_ready({"ccc": float("nan"), "n": np.int64(3), "v": np.array([1.5, np.inf])})
    assert json.loads(json.dumps(cleaned, allow_nan=False)) == {"ccc": None, "n": 3, "v": [1.5, None]}


def test_code_version_names_package_version():
    import re

    # "0.1.0" outside a checkout, "0.1.0+g<12 hex>[.dirty]" in one (train/run_config.py, the one definition)
    assert re.fullmatch(r"\d+\.\d+\.\d+(\+g[0-9a-f]{12}(\.dirty)?)?", code_version())


def _payload(command, name, metrics):
    summary = {k: {"mean": v, "std": 0.0, "n": 1, "values": [v]} for k, v in metrics.items()}
    return {"command": command, "backbones": [{"backbone": {"name": name}, "summary": summary}]}


def test_compare_markdown_paper_layout(tmp_path):
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(_payload("linear", "simclr", {"macro_f1": 0.61234, "accuracy": 0.65, "uar": 0.6})))
    b.write_text(json.dumps(_payload("finetune", "ours", {"macro_f1": 0.7, "accuracy": 0.72,
                                                          "ccc_valence": 0.55, "rmse_arousal": 0.4})))
    lines = compare_markdown([a, b]).splitlines()
    assert lines[0] == "| backbone | macro F1 (%) | accuracy (%) | CCC-V | RMSE-A |"
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[2] == "| simclr (linear) | 61.23 | 65.00 | – | – |"
    assert lines[3] == "| ours (finetune) | 70.00 | 72.00 | 0.550 | 0.400 |"


def test_plain_table_and_bad_results_file(tmp_path):
    rows = [("random", {"macro_f1": {"mean": 0.2, "std": 0.01, "n": 3}})]
    text = render_table(rows, ("macro_f1", "accuracy"), markdown=False)
    assert "20.00 ± 1.00" in text and "accuracy" not in text
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(click.ClickException, match="not an sslfer-eval results.json"):
        compare_markdown([bad])


def test_problem_log_keeps_count_and_first_examples():
    log = ProblemLog()
    for i in range(8):
        log.add("missing file", f"f{i}.png")
    assert log.count("missing file") == 8
    assert log.summary_lines() == ["8 missing file (e.g. f0.png, f1.png, f2.png, f3.png, f4.png)"]
