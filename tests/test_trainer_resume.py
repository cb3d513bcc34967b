"""A run interrupted and resumed lands on the same weights as an uninterrupted one; a non-finite loss stops
the run with a clear message and leaves the last good checkpoint in place."""
import math
import os
import subprocess
import sys

import torch
from click.testing import CliRunner

import train.methods.contrastive.step
import train.run_state
import train.trainer
from train.checkpoints import list_checkpoints
from train.cli import main
from train.metrics_log import read_metrics
from train_fixtures import TINY_TRAIN, interrupt_after_checkpoint, make_train_shards
from train_fixtures import two_shards as shards  # noqa: F401 (a fixture)

ABLATION = ["--timeaug", "--hardneg", "--faceswap", "--maskfn"]


def _train(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_interrupted_and_resumed_run_matches_straight_run(shards, tmp_path, monkeypatch):
    common = ["--shards", shards, *TINY_TRAIN, *ABLATION, "--steps", "4", "--ckpt-every", "2", "--warmup-steps", "1"]
    straight = _train([*common, "--out", tmp_path / "straight"])
    assert straight.exit_code == 0, straight.output

    restore_saving = interrupt_after_checkpoint(monkeypatch, step=2)
    first = _train([*common, "--out", tmp_path / "split"])
    assert first.exit_code == 130 and "--resume" in first.output
    restore_saving()
    torch.manual_seed(1234)  # a different process state must not matter: the checkpoint restores it
    second = _train(["--out", tmp_path / "split", "--resume"])
    assert second.exit_code == 0, second.output

    a = torch.load(list_checkpoints(tmp_path / "straight")[-1], weights_only=True)
    b = torch.load(list_checkpoints(tmp_path / "split")[-1], weights_only=True)
    assert a["step"] == b["step"] == 4
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    assert a["sampler"] == b["sampler"]
    # metrics of the resumed run continue where the checkpoint was, without duplicated steps
    ra, rb = read_metrics(tmp_path / "straight" / "metrics.jsonl"), read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]


def _loss_turning_nan_at_call(monkeypatch, call):
    real_loss = train.methods.contrastive.step.multi_positive_nt_xent
    calls = []

    def loss_turning_nan(*args, **kwargs):
        calls.append(1)
        value = real_loss(*args, **kwargs)
        return value * float("nan") if len(calls) == call else value

    monkeypatch.setattr(train.methods.contrastive.step, "multi_positive_nt_xent", loss_turning_nan)


def _read_losses_at_sync_points_only(monkeypatch):
    """What a CUDA run does (train/loss_watch.py), on the CPU."""
    monkeypatch.setattr(train.trainer, "settles_each_step", lambda device: False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(shards, tmp_path, monkeypatch):
    _loss_turning_nan_at_call(monkeypatch, 3)
    run = tmp_path / "run"
    result = _train(["--shards", shards, "--out", run, *TINY_TRAIN, "--timeaug", "--steps", "5", "--ckpt-every", "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "loss became nan at step 3" in result.output and "ckpt-step00000002.pt" in result.output
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-step00000002.pt"]
    state = torch.load(list_checkpoints(run)[0], weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert all(math.isfinite(r["loss"]) for r in read_metrics(run / "metrics.jsonl"))


def test_deferred_loss_read_stops_before_writing_after_a_non_finite_loss(shards, tmp_path, monkeypatch):
    _read_losses_at_sync_points_only(monkeypatch)
    _loss_turning_nan_at_call(monkeypatch, 3)
    run = tmp_path / "run"
    result = _train(["--shards", shards, "--out", run, *TINY_TRAIN, "--timeaug", "--steps", "6", "--ckpt-every", "2",
                     "--log-every", "2"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    # step 3's update was applied before the loss was read at step 4, but step 4's checkpoint was not written
    assert "loss became nan at step 3 (epoch 0); stopped at step 4 without writing anything after step 2" \
        in result.output and "ckpt-step00000002.pt" in result.output
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-step00000002.pt"]
    state = torch.load(list_checkpoints(run)[0], weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [2]


def test_deferred_loss_read_logs_and_trains_exactly_as_reading_every_step(shards, tmp_path, monkeypatch):
    common = ["--shards", shards, *TINY_TRAIN, *ABLATION, "--steps", "5", "--ckpt-every", "4", "--log-every", "2"]
    each_step = _train([*common, "--out", tmp_path / "each"])
    assert each_step.exit_code == 0, each_step.output
    _read_losses_at_sync_points_only(monkeypatch)
    deferred = _train([*common, "--out", tmp_path / "deferred"])
    assert deferred.exit_code == 0, deferred.output

    ra, rb = read_metrics(tmp_path / "each" / "metrics.jsonl"), read_metrics(tmp_path / "deferred" / "metrics.jsonl")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [2, 4, 5]
    for key in ("loss", "loss_last", "fallbacks", "pos_cos", "neg_cos", "false_negatives"):
        assert [r[key] for r in ra] == [r[key] for r in rb], key
    a = torch.load(list_checkpoints(tmp_path / "each")[-1], weights_only=True)
    b = torch.load(list_checkpoints(tmp_path / "deferred")[-1], weights_only=True)
    assert a["step"] == b["step"] == 5 and a["sampler"] == b["sampler"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


# sslfer-train in a fresh interpreter, SIGKILLed right after it appends the metrics line of step $KILL_AT_STEP.
_KILLED_AFTER_LOGGING = """
import os, signal, sys
import train.metrics_log
write = train.metrics_log.MetricsLog.write
def write_then_die(self, record):
    write(self, record)
    if record.get("step") == int(os.environ.get("KILL_AT_STEP", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
train.metrics_log.MetricsLog.write = write_then_die
from train.cli import main
main()
"""


def _train_process(args, kill_at_step=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_AT_STEP": str(kill_at_step)}  # same threads in every run
    return subprocess.run([sys.executable, "-c", _KILLED_AFTER_LOGGING, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def test_killed_between_checkpoints_resumes_across_the_epoch_end_in_a_fresh_process(tmp_path):
    # 3 videos x 10 frames / batch 6 = 5 steps per epoch; checkpoints at 3, 5 (epoch end), 6 and 8.
    shards = make_train_shards(tmp_path / "shards", shards=1, videos=3, frames=10)
    common = ["--shards", shards, *TINY_TRAIN, *ABLATION, "--steps", "8", "--ckpt-every", "3", "--warmup-steps", "2"]
    straight = _train_process([*common, "--out", tmp_path / "straight"])
    assert straight.returncode == 0, straight.stderr[-3000:]
    # killed after step 4 is logged: the newest checkpoint is step 3's, so step 4's line is replayed on resume
    killed = _train_process([*common, "--out", tmp_path / "split"], kill_at_step=4)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(tmp_path / "split")] == ["ckpt-step00000003.pt"]
    resumed = _train_process(["--out", tmp_path / "split", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    ra, rb = read_metrics(tmp_path / "straight" / "metrics.jsonl"), read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in rb] == list(range(1, 9))  # step 4 once: the killed run's line was dropped
    assert [r["epoch"] for r in rb] == [0] * 5 + [1] * 3
    for key in ("loss", "loss_last", "lr", "fallbacks", "pos_cos", "neg_cos", "false_negatives"):
        assert [r[key] for r in ra] == [r[key] for r in rb], key
    a = torch.load(list_checkpoints(tmp_path / "straight")[-1], weights_only=True)
    b = torch.load(list_checkpoints(tmp_path / "split")[-1], weights_only=True)
    assert a["step"] == b["step"] == 8 and a["epoch"] == b["epoch"] and a["sampler"] == b["sampler"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
