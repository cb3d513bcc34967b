"""benchmarks/plot_mae_losses.py on hand-made metrics.jsonl lines: its step-weighted windowed percentages
against the zero-prediction loss, and the PNG it writes."""
import json

import numpy as np
import pytest

from benchmark_scripts import loaded_script


@pytest.fixture(scope="module")
def plot():
    with loaded_script("plot_mae_losses.py") as module:
        yield module


def _record(step, loss_app, loss_mot, zero_app=1.0, zero_mot=0.5):
    return {"step": step, "loss": 0.5 * (loss_app + loss_mot), "loss_appearance": loss_app,
            "loss_motion": loss_mot, "zero_loss": 0.5 * (zero_app + zero_mot),
            "zero_loss_appearance": zero_app, "zero_loss_motion": zero_mot}


def test_windows_weight_each_interval_by_its_steps(plot):
    # steps 1-10 at appearance 1.0, 11-12 (an epoch-end line) at 0.6, 13-20 at 0.6; motion at its zero level
    records = [_record(10, 1.0, 0.5), _record(12, 0.6, 0.5), _record(20, 0.6, 0.5)]
    curves = plot.relative_curves(records, smooth=10)
    steps, app = curves["_appearance"]
    assert steps.tolist() == [10, 12, 20]
    # step 12: its window is steps 1-12 (no line at step 2 to start from); step 20: steps 11-20, all at 0.6
    expected_12 = (10 * 1.0 + 2 * 0.6) / 12 - 1
    assert app == pytest.approx(100 * np.array([0.0, expected_12, -0.4]))
    assert curves["_motion"][1] == pytest.approx([0.0, 0.0, 0.0])
    total_20 = (0.5 * (0.6 + 0.5)) / (0.5 * (1.0 + 0.5)) - 1
    assert curves[""][1][-1] == pytest.approx(100 * total_20)


def test_writes_a_png_and_refuses_runs_without_mae_lines(plot, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [_record(10 * k, 1.0 - 0.02 * k, 0.5) for k in range(1, 30)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "img" / "losses.png"
    assert plot.main([str(run), "--smooth", "50", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = tmp_path / "contrastive"
    other.mkdir()
    (other / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    with pytest.raises(SystemExit, match="no MAE loss records"):
        plot.main([str(other), "-o", str(out)])
