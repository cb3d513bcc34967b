"""benchmarks/bench_rows.py without training: the per-step figures it reads from a run's log and metrics,
and the sslfer-train command it would run for a row."""
import json
import statistics

import pytest

from benchmark_scripts import loaded_script


@pytest.fixture(scope="module")
def bench_rows():
    with loaded_script("bench_rows.py") as module:
        yield module


def _run_files(tmp_path, rates, line="all four, resnet50, seed 0: ...; 256 anchors x 4 views per step; 7 steps/epoch"):
    log, metrics = tmp_path / "train.log", tmp_path / "metrics.jsonl"
    log.write_text(f"python -m train.cli train ...\n{line}\ndone\n")
    metrics.write_text("".join(json.dumps({"step": i + 1, "images_per_s": r}) + "\n" for i, r in enumerate(rates)))
    return log, metrics


def test_step_seconds_come_from_images_per_step_over_the_rate_after_the_skipped_steps(bench_rows, tmp_path):
    rates = [50.0, 100.0, 1024.0, 2048.0, 512.0, 2048.0]  # the first two are skipped
    speed = bench_rows.row_speed(*_run_files(tmp_path, rates), skip=2)
    assert speed["views"] == 4 and speed["images_per_step"] == 1024 and speed["timed_steps"] == 4
    assert speed["median_images_per_s"] == statistics.median([1024.0, 2048.0, 512.0, 2048.0])
    assert speed["median_step_s"] == pytest.approx(statistics.median([1.0, 0.5, 2.0, 0.5]))
    assert speed["mean_step_s"] == pytest.approx((1.0 + 0.5 + 2.0 + 0.5) / 4)


def test_a_log_without_the_batch_line_or_steps_is_refused(bench_rows, tmp_path):
    with pytest.raises(ValueError, match="views per step"):
        bench_rows.row_speed(*_run_files(tmp_path, [100.0] * 3, line="something else"), skip=0)
    with pytest.raises(ValueError, match="no step after the first 5"):
        bench_rows.row_speed(*_run_files(tmp_path, [100.0] * 3), skip=5)


def test_row_command_carries_the_rows_strategies_and_the_timing_options(bench_rows, tmp_path):
    budget = bench_rows.Budget(**{**bench_rows.BUDGETS["full"].__dict__, "steps": 40})
    command = bench_rows.train_command(tmp_path / "shards", tmp_path / "run", "TimeAug+HardNeg+MaskFN", 0, budget,
                                       log_every=1, ckpt_every=40)
    assert [c for c in command if c in ("--timeaug", "--hardneg", "--faceswap", "--maskfn", "--cutmix")] == \
        ["--timeaug", "--hardneg", "--maskfn"]
    for option, value in (("--steps", "40"), ("--log-every", "1"), ("--ckpt-every", "40"), ("--arch", "resnet50"),
                          ("--batch-size", "256"), ("--crop", "112")):
        assert command[command.index(option) + 1] == value
    assert "--workers" not in command  # the full budget leaves the loader workers to sslfer-train
