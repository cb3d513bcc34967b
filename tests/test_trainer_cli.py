"""sslfer-train through its command line: a short run writes what it promises, and every bad input gives
one error line (never a traceback)."""
import json

import pytest
import torch
from click.testing import CliRunner

import train.checkpoints
from train.cli import main
from train.metrics_log import read_metrics
from train_fixtures import TINY_TRAIN, make_train_shards
from train_fixtures import two_shards as shards  # noqa: F401 (a fixture)


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_one_line_error(result, *fragments, code=1):
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)  # a handled error, not a crash
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.output
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


def test_short_run_writes_config_metrics_and_checkpoints(shards, tmp_path):
    run = tmp_path / "run"
    result = _run(["--shards", shards, "--out", run, *TINY_TRAIN, "--timeaug", "--hardneg", "--faceswap", "--maskfn",
                   "--maskfn-mode", "mask", "--steps", "3", "--ckpt-every", "2", "--seed", "5"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "resnet18" and config["seed"] == 5 and config["maskfn_mode"] == "mask"
    assert config["ablation"] == "TimeAug+HardNeg+FaceSwap+MaskFN"
    assert len(config["manifest_sha256"]) == 64 and config["code_version"].startswith("0.1.0")
    assert config["total_steps"] == 3 and config["steps_per_epoch"] == (6 * 40) // 6
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["ckpt-step00000002.pt", "ckpt-step00000003.pt"]
    state = torch.load(run / "checkpoints" / names[-1], weights_only=True)
    assert {"model", "optimizer", "scheduler", "sampler", "rng", "config", "step", "epoch",
            "code_version"} <= set(state)
    assert state["step"] == 3 and state["sampler"]["batch_in_epoch"] == 3
    assert all(k.startswith(("backbone.", "projector.")) for k in state["model"])
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert r["loss"] > 0 and r["images_per_s"] > 0 and -1 <= r["pos_cos"] <= 1 and -1 <= r["neg_cos"] <= 1
        assert set(r["fallbacks"]) == {"timeaug", "hardneg", "faceswap", "cutmix"}
    # 3 steps: the default warm-up is 1 step (5 %, at least 1), then cosine over the other 2. Each line logs the
    # rate its step used: 3e-4 * [(0+1)/1, (1 + cos(0))/2, (1 + cos(pi/2))/2] (no warm-up: [1, 0.75, 0.25]).
    assert config["warmup_steps_used"] == 1
    assert [r["lr"] for r in records] == pytest.approx([3e-4, 3e-4, 1.5e-4], rel=1e-9)


def test_empty_shard_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    _assert_one_line_error(_run(["--shards", tmp_path / "empty", "--out", tmp_path / "run", *TINY_TRAIN]),
                           "no shards here")


def test_manifest_that_fails_verification(tmp_path):
    root = make_train_shards(tmp_path / "shards", shards=2, videos=2, frames=20)
    shard = root / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[:-100])
    result = _run(["--shards", root, "--out", tmp_path / "run", *TINY_TRAIN, "--steps", "1"])
    _assert_one_line_error(result, "1 of 2 shards fail verification", "shard-00001.h5", "truncated")
    assert not (tmp_path / "run" / "config.json").exists()


def test_faceswap_on_shards_without_swaps(tmp_path):
    root = make_train_shards(tmp_path / "shards", shards=1, videos=2, frames=20, swaps=0)
    result = _run(["--shards", root, "--out", tmp_path / "run", *TINY_TRAIN, "--timeaug", "--faceswap", "--steps", "1"])
    _assert_one_line_error(result, "--faceswap", "swaps_per_frame 0")


def test_maskfn_on_shards_without_descriptors(tmp_path):
    root = make_train_shards(tmp_path / "shards", shards=1, videos=2, frames=20, descriptor_dim=0)
    result = _run(["--shards", root, "--out", tmp_path / "run", *TINY_TRAIN, "--maskfn", "--steps", "1"])
    _assert_one_line_error(result, "--maskfn", "descriptor_dim 0")


def test_videos_too_short_for_hardneg_fall_back_and_are_counted(tmp_path):
    root = make_train_shards(tmp_path / "shards", shards=1, videos=3, frames=10)  # 1.8 s clips
    run = tmp_path / "run"
    result = _run(["--shards", root, "--out", run, *TINY_TRAIN, "--timeaug", "--hardneg", "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "hardneg 12" in result.output  # every sample of both steps (2 x 6) fell back
    assert read_metrics(run / "metrics.jsonl")[-1]["fallbacks"]["hardneg"] == 12


def test_conflicting_and_missing_options(shards, tmp_path):
    _assert_one_line_error(_run(["--shards", shards, "--out", tmp_path / "r", *TINY_TRAIN, "--faceswap", "--cutmix"]),
                           "--faceswap and --cutmix", code=2)
    _assert_one_line_error(_run(["--out", tmp_path / "r", *TINY_TRAIN]), "--shards is required", code=2)
    _assert_one_line_error(_run(["--out", tmp_path / "nothing", "--resume"]), "cannot resume", code=2)
    if not torch.cuda.is_available():
        _assert_one_line_error(_run(["--shards", shards, "--out", tmp_path / "r", *TINY_TRAIN, "--steps", "1",
                                     "--device", "cuda"]), "no CUDA device")


def test_existing_run_needs_resume_and_resume_keeps_settings(shards, tmp_path):
    run = tmp_path / "run"
    assert _run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "1"]).exit_code == 0
    _assert_one_line_error(_run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "1"]),
                           "already holds a run", "--resume")
    _assert_one_line_error(_run(["--out", run, "--resume", "--arch", "resnet50"]), "--arch", code=2)


def test_crop_area_trains_is_recorded_and_kept_on_resume(shards, tmp_path):
    run = tmp_path / "run"
    result = _run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "2", "--ckpt-every", "1",
                   "--crop-area", "0.3", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["crop_area"] == [0.3, 1.0]
    _assert_one_line_error(_run(["--out", run, "--resume", "--crop-area", "0.5", "1"]), "--crop-area", code=2)
    _assert_one_line_error(_run(["--shards", shards, "--out", tmp_path / "bad", *TINY_TRAIN, "--steps", "1",
                                 "--crop-area", "0", "1"]), "--crop-area", code=2)


def test_bf16_on_cpu_trains_and_is_recorded(shards, tmp_path):
    run = tmp_path / "run"
    result = _run(["--shards", shards, "--out", run, *TINY_TRAIN, "--timeaug", "--steps", "2", "--precision", "bf16",
                   "--device", "cpu"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["precision"] == "bf16" and config["bf16_used"] is True
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["loss"] > 0 for r in records)
    default = tmp_path / "default"
    assert _run(["--shards", shards, "--out", default, *TINY_TRAIN, "--steps", "1", "--device", "cpu"]).exit_code == 0
    assert json.loads((default / "config.json").read_text())["bf16_used"] is False  # auto: fp32 on CPU


def test_bf16_autocast_changes_the_forward_pass_on_cpu():
    from train.methods.contrastive.step import ContrastiveStep
    from train.distributed import DistContext
    from sslfer_core.models import ContrastiveModel

    torch.manual_seed(0)
    model = ContrastiveModel("resnet18", 16).eval()
    x = torch.randn(4, 3, 32, 32)
    batch = {"video_ids": torch.arange(8), "row_valid": torch.ones(8, dtype=torch.bool)}
    outputs = {}
    for bf16 in (False, True):
        step = ContrastiveStep(DistContext(), batch_size=4, num_views=2, resize=32, crop=32,
                               precision="bf16" if bf16 else "fp32")
        assert step.bf16 is bf16 and step.channels_last is bf16  # CPU: channels_last only with bf16
        with torch.no_grad():
            outputs[bf16] = step.loss(model, torch.cat([x, x]), batch).embeddings
    difference = (outputs[True] - outputs[False]).abs().max().item()
    assert 0 < difference < 0.1  # bf16 rounding is visible but small


def test_checkpoint_write_failure_is_one_error_line_with_the_resume_command(shards, tmp_path, monkeypatch):
    def no_space(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train.checkpoints.torch, "save", no_space)
    run = tmp_path / "run"
    result = _run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "2", "--ckpt-every", "1"])
    _assert_one_line_error(result, "could not write checkpoint ckpt-step00000001.pt", "(disk full (",
                           f"sslfer-train --out {run} --resume")
    assert list((run / "checkpoints").iterdir()) == []
