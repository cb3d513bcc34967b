"""The one progress bar (sslfer_core/progress.py, on tqdm): quiet off a terminal, torch-free for data_manifest."""
import io
import subprocess
import sys

from sslfer_core.progress import Progress, TrainProgress


def test_quiet_when_the_stream_is_not_a_terminal():
    first, second = io.StringIO(), io.StringIO()  # StringIO is not a TTY
    bar = Progress("x", 3, stream=first)
    bar.advance(2)
    bar.close()
    train = TrainProgress(5, stream=second)
    train.update(3, 0.5, 100.0)
    train.close()
    assert first.getvalue() == "" and second.getvalue() == "" and bar.done == 2


def test_training_bar_shows_step_loss_rate_and_eta():
    shown = io.StringIO()
    bar = TrainProgress(10, start=4, stream=shown, enabled=True, min_interval=0)
    bar.update(6, 1.23456, 1500.0)
    bar.update(10, 0.5, 2000.0)
    bar.close()
    last = shown.getvalue().split("\r")[-1]
    assert "6/10" in shown.getvalue() and "10/10" in last and "loss 0.5000" in last and "2,000 img/s" in last
    assert "<" in last and last.endswith("\n")  # tqdm's elapsed<ETA


def test_scaled_units_count_bytes_and_show_mib():
    shown = io.StringIO()
    bar = Progress("verify", 4 * 2**20, unit="MiB", scale=2**20, stream=shown, enabled=True, min_interval=0)
    bar.advance(2**20)
    bar.advance(3 * 2**20)
    bar.close()
    assert "| 1.0/4.0 [" in shown.getvalue() and "| 4.0/4.0 [" in shown.getvalue() and "MiB/s" in shown.getvalue()


def test_data_manifest_does_not_import_torch():
    code = "import sys, data_manifest.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
