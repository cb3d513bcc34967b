"""The trainer against hostile or careless input (issue 21): a diverged run stops with its last good
checkpoint, non-finite weights are neither exported nor evaluated, absurd settings are usage errors,
resume survives a damaged newest checkpoint, killed writes are cleaned up, and one run folder takes one
run at a time."""
import math
import os
import shutil
import subprocess
import sys

import click
import pytest
import torch
import torchvision
from click.testing import CliRunner

import train.methods.contrastive as contrastive
from sslfer_core.folder_lock import FolderLocked, folder_lock
from sslfer_core.losses import multi_positive_nt_xent, nt_xent_pair_indices
from train.checkpoints import checkpoint_path, list_checkpoints, load_checkpoint
from train.cli import main
from train.evaluation.backbones import load_backbone
from train.metrics_log import read_metrics
from train.run_config import TrainConfig
from train.run_state import RunState
from train_fixtures import TINY_TRAIN, finished, shards  # noqa: F401 (fixtures)
from cli_checks import one_error_line


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- finding 1: divergence


def test_a_nan_embedding_makes_the_loss_nan_instead_of_being_skipped():
    emb = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    idx = nt_xent_pair_indices(4, 2)
    assert math.isfinite(multi_positive_nt_xent(emb, idx, temperature=0.1).item())
    for bad in (float("nan"), float("inf")):
        poisoned = emb.clone()
        poisoned[3, 1] = bad
        assert math.isnan(multi_positive_nt_xent(poisoned, idx, temperature=0.1).item())
    # A row whose whole denominator is excluded is still skipped: the others' mean, finite.
    exclude = torch.zeros(8, 8, dtype=torch.bool)
    exclude[0] = True
    assert math.isfinite(multi_positive_nt_xent(emb, idx, temperature=0.1, exclude_from_denominator=exclude).item())


def test_a_diverging_learning_rate_stops_the_run_with_its_last_good_checkpoint(shards, tmp_path):
    run = tmp_path / "run"
    result = _run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "4", "--ckpt-every", "1",
                   "--warmup-steps", "0", "--lr", "1e30"])
    one_error_line(result, "loss became nan at step 2", "stopped before applying it",
                    f"last good checkpoint: {checkpoint_path(run, 1)}")
    assert list_checkpoints(run) == [checkpoint_path(run, 1)]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]
    weights = load_checkpoint(checkpoint_path(run, 1))["model"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def _hide_nan_loss(monkeypatch):
    """Make the contrastive step behave like a method whose loss skips non-finite values."""
    step = contrastive.Contrastive.step

    def hiding(self, net, batch, generator):
        loss, outputs = step(self, net, batch, generator)
        return torch.nan_to_num(loss, nan=1.0), outputs

    monkeypatch.setattr(contrastive.Contrastive, "step", hiding)


def _poison_after_step(monkeypatch, step: int, key: str):
    advance = RunState.advance

    def poisoning(self, steps_per_epoch):
        ended = advance(self, steps_per_epoch)
        if self.step == step:
            with torch.no_grad():
                self.model.state_dict()[key].fill_(float("nan"))
        return ended

    monkeypatch.setattr(RunState, "advance", poisoning)


@pytest.mark.parametrize("key, what", [
    ("backbone.conv1.weight", "the step's outputs became non-finite by step 4"),  # next forward is NaN
    ("backbone.bn1.running_var", "the model or optimiser state became non-finite by step 4"),  # forward unaffected
])
def test_non_finite_weights_stop_the_run_even_when_the_loss_hides_them(shards, tmp_path, monkeypatch, key, what):
    _hide_nan_loss(monkeypatch)
    _poison_after_step(monkeypatch, 3, key)
    run = tmp_path / "run"
    result = _run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "6", "--ckpt-every", "2"])
    line = one_error_line(result, "training diverged", what, "without writing anything after step 3",
                           f"last good checkpoint: {checkpoint_path(run, 2)}")
    assert "first: " in line and ("embeddings" in line or key in line), line
    assert list_checkpoints(run) == [checkpoint_path(run, 2)]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("args, option", [
    (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"), (["--maskfn", "--maskfn-lambda", "nan"], "--maskfn-lambda"),
    (["--faceswap", "--swap-p", "nan"], "--swap-p"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--weight-decay", "inf"], "--weight-decay"),
])
def test_non_finite_settings_are_usage_errors(tmp_path, args, option):
    result = _run(["--shards", tmp_path / "shards", "--out", tmp_path / "run", "--steps", "1", *args])
    one_error_line(result, option, code=2)
    assert not (tmp_path / "run").exists()


def test_a_new_methods_float_fields_are_checked_too():
    from dataclasses import dataclass

    @dataclass
    class MaskedConfig(TrainConfig):
        mask_ratio: float = 0.9
        scales: tuple[float, float] = (0.5, 1.0)

    MaskedConfig(shards="s", out="o", steps=1)
    with pytest.raises(ValueError, match="^--mask-ratio must be a finite number, got nan$"):
        MaskedConfig(shards="s", out="o", steps=1, mask_ratio=float("nan"))
    with pytest.raises(ValueError, match="^--scales must be a finite number, got 0.5 inf$"):
        MaskedConfig(shards="s", out="o", steps=1, scales=(0.5, float("inf")))
    # The shared limits hold for configs built without the CLI (an edited config.json, the Python API).
    with pytest.raises(ValueError, match="^--steps must be >= 1, got 0$"):
        TrainConfig(shards="s", out="o", steps=0)
    with pytest.raises(ValueError, match="^--keep-checkpoints must be >= 1, got -1$"):
        TrainConfig(shards="s", out="o", steps=1, keep_checkpoints=-1)


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--seed", str(2**32)], ["--steps", "0"], ["--epochs", "-2"],
                                  ["--batch-size", "0"], ["--workers", "-1"], ["--keep-checkpoints", "0"],
                                  ["--ckpt-every", "0"], ["--log-every", "-5"], ["--warmup-steps", "-1"]])
def test_absurd_numbers_are_usage_errors(tmp_path, args):
    steps = [] if args[0] in ("--steps", "--epochs") else ["--steps", "1"]
    result = _run(["--shards", tmp_path / "shards", "--out", tmp_path / "run", *steps, *args])
    one_error_line(result, args[0], code=2)


def test_warmup_longer_than_the_run_is_refused(shards, tmp_path):
    result = _run(["--shards", shards, "--out", tmp_path / "run", *TINY_TRAIN, "--steps", "3", "--warmup-steps", "5"])
    one_error_line(result, "--warmup-steps 5 is more than the run's 3 steps")


def test_export_refuses_non_finite_weights(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    state = load_checkpoint(checkpoint_path(run, 4))
    state["model"]["backbone.layer1.0.conv1.weight"][0, 0, 0, 0] = float("inf")
    torch.save(state, checkpoint_path(run, 6))
    out = tmp_path / "b.pt"
    one_error_line(_run(["export", run, "-o", out]), "ckpt-step00000006.pt", "the weights of a diverged run",
                    "1 of", "first: backbone.layer1.0.conv1.weight", "export an earlier checkpoint with --checkpoint")
    assert not out.exists()
    result = _run(["export", run, "-o", out, "--checkpoint", checkpoint_path(run, 4)])
    assert result.exit_code == 0 and out.is_file(), result.output


def test_eval_refuses_non_finite_weights(tmp_path):
    state = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("fc.")}
    state["layer2.0.bn1.running_mean"][3] = float("nan")
    torch.save(state, tmp_path / "diverged.pt")
    expected = r"refusing to evaluate: 1 of 100 tensors .* \(first: layer2.0.bn1.running_mean\)"
    with pytest.raises(click.ClickException, match=expected):
        load_backbone(str(tmp_path / "diverged.pt"))


# -- finding 5: resume and run folders


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_resume_falls_back_past_a_damaged_newest_checkpoint_and_cleans_killed_writes(finished, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    newest = checkpoint_path(run, 4)
    reference = load_checkpoint(newest)["model"]
    newest.write_bytes(newest.read_bytes()[:len(newest.read_bytes()) // 2] if damage == "truncated" else b"")
    killed = [run / "checkpoints" / ".partial-ckpt-step00000006.pt.0a1b2c", run / ".partial-config.json.3d4e5f"]
    for path in killed:
        path.write_bytes(b"x" * 1000)
    not_ours = run / ".partial-backbone.pt.777777"  # an export being written into the folder
    not_ours.write_bytes(b"y")
    result = _run(["--out", run, "--resume"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "note: removed 2 temporary file(s) of interrupted writes (2.0 KB)" in lines
    warning = [line for line in lines if line.startswith("warning:")]
    assert len(warning) == 1 and "ckpt-step00000004.pt: unreadable checkpoint" in warning[0], result.output
    assert "renamed it to ckpt-step00000004.pt.unusable" in warning[0]
    assert f"resuming {run} from ckpt-step00000002.pt (step 2, epoch 0)" in lines
    assert not any(p.exists() for p in killed) and not_ours.exists()
    assert (run / "checkpoints" / "ckpt-step00000004.pt.unusable").is_file()  # kept for a look, not counted
    redone = load_checkpoint(newest)["model"]  # steps 3-4 again give the weights the damaged file held
    assert all(torch.equal(redone[k], reference[k]) for k in reference)


def test_resume_with_no_readable_checkpoint_isone_error_line(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for path in list_checkpoints(run):
        path.write_bytes(b"")
    one_error_line(_run(["--out", run, "--resume"]), "no checkpoint reads", "another --out")


def test_a_second_run_on_the_same_folder_is_refused_naming_the_holder(shards, tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from sslfer_core.folder_lock import folder_lock\n"
                               f"with folder_lock({str(run / 'train.lock')!r}, 'sslfer-train'):\n"
                               "    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert holder.stdout.readline().strip() == "held"
        result = _run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "1"])
        one_error_line(result, f"{run} is in use by another run (sslfer-train, pid {holder.pid} on ",
                        "choose another --out")
        assert not (run / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # The kernel drops a killed holder's lock: the same command now runs.
    result = _run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "1"])
    assert result.exit_code == 0, result.output


def test_folder_lock_is_exclusive_and_released(tmp_path):
    lock = tmp_path / "out" / "run.lock"
    with folder_lock(lock, "first"):
        with pytest.raises(FolderLocked) as caught:
            with folder_lock(lock, "second"):
                pass
        assert caught.value.holder.startswith(f"first, pid {os.getpid()} on ")
    with folder_lock(lock, "second"):
        assert lock.read_text().startswith("second, pid ")


# -- finding 8 (trainer part): outputs that cannot be written


def test_an_unwritable_out_isone_error_line(shards, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _run(["--shards", shards, "--out", blocker / "run", *TINY_TRAIN, "--steps", "1"])
    one_error_line(result, f"cannot write to {blocker / 'run'}", code=2)


def test_an_unwritable_export_output_isone_error_line(finished, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    one_error_line(_run(["export", finished, "-o", blocker / "sub" / "b.pt"]), "cannot write to", code=2)


def test_prep_uses_the_same_lock_and_names_the_holder(tmp_path):
    from preprocess.runner import PrepError, run_lock
    from preprocess.work_files import WorkDir

    work = WorkDir(tmp_path / "out")
    with run_lock(work):
        expected = rf"another sslfer-prep run is writing here \(sslfer-prep, pid {os.getpid()} on "
        with pytest.raises(PrepError, match=expected):
            with run_lock(work):
                pass
    with run_lock(work):  # released at the end of the block
        pass
