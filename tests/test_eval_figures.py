"""Pictures of evaluation results: the confusion matrix beside results.json (its cells are the counts the file
holds) and the bar chart of `compare --plot` (bars and error bars are the file's means and stds)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from eval_fixtures import write_pattern_folder
from train.evaluation.cli import main
from train.evaluation.figures import (compare_figure, confusion_figure, row_normalised, summed_confusion,
                                     write_confusion_figures)

FAST = ["--image-size", "32", "--max-iterations", "40", "--weight-decays", "0,1e-2", "--workers", "0", "--threads", "1"]


def _cells(figure):
    """(colour values, annotated counts, tick labels x, tick labels y) of a confusion figure."""
    axes = figure.axes[0]
    n = len(axes.get_xticklabels())
    counts = np.zeros((n, n), dtype=np.int64)
    for text in axes.texts:
        x, y = (int(round(v)) for v in text.get_position())
        counts[y, x] = int(text.get_text().split("\n")[1])
    return (np.asarray(axes.images[0].get_array()), counts, [t.get_text() for t in axes.get_xticklabels()],
            [t.get_text() for t in axes.get_yticklabels()])


def test_confusion_figure_shows_counts_normalised_per_true_class():
    counts = np.array([[8, 2, 0], [1, 1, 2], [0, 0, 0]])  # the third class has no test items
    colours, annotated, xs, ys = _cells(confusion_figure(counts, ["a", "b", "c"], "t"))
    assert xs == ys == ["a", "b", "c"]
    assert np.array_equal(annotated, counts)
    assert np.allclose(colours, [[0.8, 0.2, 0.0], [0.25, 0.25, 0.5], [0.0, 0.0, 0.0]])
    assert np.allclose(row_normalised(counts).sum(axis=1), [1, 1, 0])


def test_linear_writes_a_confusion_matrix_per_backbone_with_the_counts_of_results_json(tmp_path):
    data = write_pattern_folder(tmp_path / "pool", {"train": 10, "test": 4})
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["linear", "--backbone", "random", "--backbone", "random:1", "--data", str(data),
                                       "--out", str(out), "--seeds", "2", "--no-cache", *FAST])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "results.json").read_text())
    names = payload["dataset"]["classes"]
    pictures = sorted(p.name for p in out.glob("confusion-*.png"))
    assert len(pictures) == 2 and "confusion-random-resnet18.png" in pictures, pictures
    for entry in payload["backbones"]:
        expected = sum(np.array(run["test"]["confusion_matrix"]) for run in entry["runs"])  # both seeds
        assert expected.sum() == sum(run["test"]["count"] for run in entry["runs"])
        assert np.array_equal(summed_confusion(entry), expected)
        colours, annotated, xs, ys = _cells(confusion_figure(summed_confusion(entry), names, "t"))
        assert np.array_equal(annotated, expected) and xs == ys == names
        assert np.allclose(colours, expected / expected.sum(axis=1, keepdims=True))
    # The PNGs written by the command are those drawn from results.json alone, byte for byte.
    again = write_confusion_figures(tmp_path / "again", payload)
    assert sorted(p.name for p in again) == pictures
    for path in again:
        assert path.read_bytes() == (out / path.name).read_bytes()
    assert "confusion matrix: " in result.output


def test_compare_plot_bars_are_means_with_std_error_bars(tmp_path):
    rows = [("a", {"macro_f1": {"mean": 0.5, "std": 0.1, "n": 3}}), ("b", {"macro_f1": {"mean": 0.8, "std": 0.0, "n": 1}})]
    axes = compare_figure(rows, "macro_f1", "t").axes[0]
    from matplotlib.container import BarContainer

    bars = next(c for c in axes.containers if isinstance(c, BarContainer))
    assert [bar.get_height() for bar in bars] == pytest.approx([50.0, 80.0])
    segments = bars.errorbar.lines[2][0].get_segments()
    assert [seg[1][1] - seg[0][1] for seg in segments] == pytest.approx([20.0, 0.0])  # ± std, in percent
    assert [t.get_text() for t in axes.get_xticklabels()] == ["a", "b"]


def test_compare_cli_plot_and_its_refusals(tmp_path):
    payload = {"command": "linear", "backbones": [
        {"backbone": {"name": "x"}, "summary": {"macro_f1": {"mean": 0.4, "std": 0.05, "n": 2}}},
        {"backbone": {"name": "y"}, "summary": {"ccc_valence": {"mean": 0.3, "std": 0.0, "n": 1}}}]}
    results = tmp_path / "results.json"
    results.write_text(json.dumps(payload))
    ok = CliRunner().invoke(main, ["compare", str(results), "--plot", str(tmp_path / "bars.png")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "bars.png").stat().st_size > 0 and "y (linear) has no macro_f1; left out" in ok.output
    bad = CliRunner().invoke(main, ["compare", str(results), "--plot", str(tmp_path / "bars.svg")])
    assert bad.exit_code == 2 and "name it *.png" in bad.output
    none = CliRunner().invoke(main, ["compare", str(results), "--plot", str(tmp_path / "u.png"), "--metric", "uar"])
    assert none.exit_code == 1 and "no compared row has uar" in none.output.strip().splitlines()[-1]
