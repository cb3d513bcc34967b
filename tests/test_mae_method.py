"""The video MAE method on the shared trainer: a short run logs appearance and motion losses and the
zero-prediction baseline, resume is exact, two gloo ranks give one process's loss and gradients, the
export loads into LGIFormerEncoder, and bad input is refused in one line naming the fix."""
import json
import math
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import train.run_state
import train.trainer
from data_manifest.manifest import build_manifest, save_manifest
from shard_fixtures import make_header, make_video
from sslfer_core.lgi_export import EXPORT_FORMAT, load_encoder
from sslfer_core.lgi_former import LGIFormerEncoder
from sslfer_core.mae import mae_targets
from sslfer_core.shard_format import write_shard
from gloo_ranks import join_gloo, spawn_ranks
from train.checkpoints import latest_checkpoint
from train.cli import main
from train.distributed import DistContext, shutdown
from train.methods import get_method
from train.metrics_log import read_metrics
from train.weights_file import read_payload
from train_fixtures import TINY_TRAIN, interrupt_after_checkpoint, make_train_shards

# Tiny preset with 4-frame clips (token grid 2 x 10 x 10, 2 regions): a step takes a fraction of a second.
TINY_MAE = ["--preset", "tiny", "--frames", "4", "--stride", "2", "--batch-size", "2", "--workers", "0",
            "--log-every", "1", "--precision", "fp32"]
FPS = 25.0
ONE_STEP = [*TINY_MAE, "--min-lr", "0", "--steps", "1"]  # for runs refused before they train


def make_mae_shards(root, *, fps=FPS, frames=30, videos_per_shard=2, shards=2, size=32, seed=0):
    """Shards of `shards` x `videos_per_shard` videos of `frames` frames at `fps`, with a manifest."""
    rng = np.random.default_rng(seed)
    header = make_header(size=size, patch=8, swaps=0, descriptor_dim=0)
    header.prep_config = {"fps": fps, "size": size}
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        batch = [make_video(rng, header, frames, video_id=f"s{s}v{v}", identity=f"id{v}", fps=fps)
                 for v in range(videos_per_shard)]
        paths.append(write_shard(root / f"shard-{s:05d}.h5", header, batch))
    save_manifest(root, build_manifest(root, paths))
    return root


def _train(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_mae_shards(tmp_path_factory.mktemp("mae_shards"))


@pytest.fixture(scope="module")
def straight_run(shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("mae_runs") / "straight"
    result = _train(["mae", "--shards", shards, "--out", run, *TINY_MAE, "--steps", "4", "--ckpt-every", "2",
                     "--warmup-steps", "1", "--lr", "1e-3", "--min-lr", "1e-4"])
    assert result.exit_code == 0, result.output
    return run


def test_short_run_logs_appearance_motion_and_zero_baseline(straight_run):
    records = read_metrics(straight_run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        # one step per log line on one rank: the interval means are that step's values
        assert math.isclose(r["loss"], 0.5 * r["loss_appearance"] + 0.5 * r["loss_motion"], rel_tol=1e-5)
        assert math.isclose(r["zero_loss"], 0.5 * r["zero_loss_appearance"] + 0.5 * r["zero_loss_motion"],
                            rel_tol=1e-6)
        # independent random frames: a standardised frame has mean square ~1, the difference of two about 2
        # (more when their means differ, which the joint standardisation of the tubelet leaves in)
        assert 0.8 < r["zero_loss_appearance"] < 1.1 and 1.5 < r["zero_loss_motion"] < 3.0
    # lr before each step: warm-up 1 step to 1e-3, then cosine over the remaining steps to 1e-4 at the last
    expected = [1e-3] + [1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi * k / 2)) for k in range(3)]
    assert [r["lr"] for r in records] == pytest.approx(expected, rel=1e-9)
    config = json.loads((straight_run / "config.json").read_text())
    assert config["method"] == "mae" and config["preset"] == "tiny" and config["bf16_used"] is False
    assert config["peak_lr"] == 1e-3 and config["lr_rule"] == "given with --lr" and config["base_lr"] == 3e-4
    assert config["clip_stride_rows"] == 2 and config["usable_videos"] == 4
    figures = sorted(p.name for p in (straight_run / "figures").glob("*.png"))
    assert figures == ["reconstruction-step00000002.png", "reconstruction-step00000004.png"]
    assert (straight_run / "figures" / figures[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lr_is_base_lr_scaled_by_global_batch(shards, tmp_path):
    run = tmp_path / "run"
    result = _train(["mae", "--shards", shards, "--out", run, *TINY_MAE, "--steps", "1", "--base-lr", "0.0256",
                     "--min-lr", "0", "--warmup-steps", "0"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == pytest.approx(0.0256 * 2 / 256) and config["base_lr"] == 0.0256
    assert config["lr_rule"] == "base_lr 0.0256 x 2 / 256"
    assert read_metrics(run / "metrics.jsonl")[0]["lr"] == pytest.approx(2e-4)


def test_resumed_run_equals_straight_run(shards, straight_run, tmp_path, monkeypatch):
    restore_saving = interrupt_after_checkpoint(monkeypatch, step=2)
    split = tmp_path / "split"
    first = _train(["mae", "--shards", shards, "--out", split, *TINY_MAE, "--steps", "4", "--ckpt-every", "2",
                    "--warmup-steps", "1", "--lr", "1e-3", "--min-lr", "1e-4"])
    assert first.exit_code == 130 and f"sslfer-train mae --out {split} --resume" in first.output
    restore_saving()
    torch.manual_seed(1234)  # the checkpoint restores every RNG the run uses
    second = _train(["mae", "--out", split, "--resume"])
    assert second.exit_code == 0, second.output

    a = torch.load(latest_checkpoint(straight_run), weights_only=True)
    b = torch.load(latest_checkpoint(split), weights_only=True)
    assert a["step"] == b["step"] == 4 and a["sampler"] == b["sampler"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])
    ra, rb = read_metrics(straight_run / "metrics.jsonl"), read_metrics(split / "metrics.jsonl")
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for key in ("loss", "loss_appearance", "loss_motion", "zero_loss", "lr"):
        assert [r[key] for r in ra] == [r[key] for r in rb], key


def test_export_loads_into_lgi_former_encoder(straight_run, tmp_path):
    out = tmp_path / "encoder.pt"
    result = _train(["export", straight_run, "-o", out])
    assert result.exit_code == 0, result.output
    assert "LGI-Former tiny encoder (4 x 80^2)" in result.output and "step 4" in result.output
    payload = read_payload(out)
    assert payload["format"] == EXPORT_FORMAT and payload["preset"] == "tiny"
    assert (payload["input_size"], payload["frames"], payload["tubelet"]) == (80, 4, 2)
    assert payload["clip"]["stride_seconds"] == pytest.approx(2 / 25) and payload["clip"]["fps"] == 25.0
    encoder, meta = load_encoder(payload)
    assert isinstance(encoder, LGIFormerEncoder) and meta["model_config"]["frames"] == 4
    trained = torch.load(latest_checkpoint(straight_run), weights_only=True)["model"]
    state = encoder.state_dict()
    assert set(state) == {k[len("encoder."):] for k in trained if k.startswith("encoder.")}
    for key, value in state.items():  # the checkpoint's trained weights, not a fresh encoder's
        assert torch.equal(value, trained["encoder." + key]), key
    assert not torch.equal(state["rep_tokens"], LGIFormerEncoder(encoder.cfg).state_dict()["rep_tokens"])
    assert encoder.pooled(torch.zeros(1, 3, 4, 80, 80)).shape == (1, encoder.cfg.dim)


def test_shards_at_too_low_an_fps_are_refused(tmp_path):
    low = make_mae_shards(tmp_path / "low", fps=5.0)
    line = _one_line_error(_train(["mae", "--shards", low, "--out", tmp_path / "run", *ONE_STEP]))
    assert "prepared at 5 fps" in line and "sslfer-prep --fps" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_clip_span_longer_than_every_video_is_refused(shards, tmp_path):
    args = ["mae", "--shards", shards, "--out", tmp_path / "run", *ONE_STEP]
    line = _one_line_error(_train([*args, "--frames", "16"]))  # 16 frames at stride 2: 31 rows > 30
    assert "--frames 16 at --stride 2 spans 31 stored frames" in line and "has 30" in line
    assert "lower --frames or the stride" in line
    line = _one_line_error(_train([*args, "--stride", "5", "--frames", "8"]))  # 36 rows
    assert "--frames 8 at --stride 5 spans 36" in line


def test_batch_not_divisible_by_the_ranks_is_refused(shards, tmp_path, monkeypatch):
    # Rank 0 of two, without a process group (the check comes before any collective but the barrier that
    # lets both ranks leave together).
    monkeypatch.setattr(train.trainer, "init_distributed", lambda device: DistContext(rank=0, world_size=2))
    monkeypatch.setattr(train.trainer, "barrier", lambda ctx: None)
    args = ["mae", "--shards", shards, "--out", tmp_path / "run", *ONE_STEP]
    line = _one_line_error(_train([*args, "--batch-size", "3"]))
    assert "--batch-size 3 is not divisible by the 2 ranks; give a multiple of 2 (e.g. 2 or 4)" in line


def test_resuming_a_run_of_the_other_method_is_refused(straight_run, tmp_path):
    line = _one_line_error(_train(["--out", straight_run, "--resume"]), code=2)
    assert "is a mae run, not contrastive" in line and f"sslfer-train mae --out {straight_run} --resume" in line
    contrastive_shards = make_train_shards(tmp_path / "cshards", shards=1, videos=3, frames=20)
    run = tmp_path / "contrastive"
    made = _train(["--shards", contrastive_shards, "--out", run, *TINY_TRAIN, "--steps", "1"])
    assert made.exit_code == 0, made.output
    line = _one_line_error(_train(["mae", "--out", run, "--resume"]), code=2)
    assert "is a contrastive run, not mae" in line and f"sslfer-train --out {run} --resume" in line


def test_bad_options_are_usage_errors(shards, tmp_path):
    args = ["mae", "--shards", shards, "--out", tmp_path / "run", *ONE_STEP]
    assert "--frames 5 does not fit the tiny preset" in _one_line_error(_train([*args, "--frames", "5"]), 2)
    assert "not both" in _one_line_error(_train([*args, "--stride-seconds", "0.1"]), 2)
    line = _one_line_error(_train([*args, "--lr", "1e-6", "--min-lr", "1e-5"]), 2)
    assert "--min-lr 1e-05 is above the peak lr 1e-06" in line
    assert "--crop-scales: scales must be fractions in (0, 1]" in _one_line_error(
        _train([*args, "--crop-scales", "1,1.5"]), 2)
    assert "not a comma-separated list" in _one_line_error(_train([*args, "--crop-scales", "1,big"]), 2)


def test_crop_scales_reach_the_augmentation_and_config(shards, tmp_path):
    run = tmp_path / "run"
    result = _train(["mae", "--shards", shards, "--out", run, *ONE_STEP, "--crop-scales", "1,0.5"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["crop_scales"] == [1.0, 0.5]
    cls = get_method("mae").config_class
    restored = cls.from_json(config)
    assert restored.crop_scales == (1.0, 0.5)
    assert get_method("mae")(restored, DistContext(device=torch.device("cpu"))).augment.scales == (1.0, 0.5)
    default = cls(shards=str(shards), out=str(tmp_path / "other"), steps=1)
    assert default.augment_config.scales == (1.0, 0.875, 0.75, 0.66)


# -- two gloo ranks against one process on the same global batch
WORLD, LOCAL_B = 2, 2


def _mae_config(shards, out):
    cls = get_method("mae").config_class
    return cls(shards=str(shards), out=str(out), preset="tiny", clip_frames=4, stride=2, batch_size=WORLD * LOCAL_B,
               steps=1, precision="fp32", lr=1e-3)


def _global_clips():
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 256, (WORLD * LOCAL_B, 4, 32, 32, 3), generator=g, dtype=torch.uint8)


def _rank_main(rank, port, state, out_dir):
    ctx = join_gloo(rank, port, WORLD)
    try:
        method = get_method("mae")(_mae_config(out_dir, out_dir), ctx)
        model = method.build_model()
        model.load_state_dict(state)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        clips = _global_clips()[rank * LOCAL_B:(rank + 1) * LOCAL_B]
        x, clips_01, mask = method.inputs({"clips": clips}, torch.Generator().manual_seed(100 + rank))
        loss, parts = method.objective(ddp, x, clips_01, mask)
        loss.backward()
        # step() redraws the same inputs from the same generator and adds its parts to the logged means
        method.step(ddp, {"clips": clips}, torch.Generator().manual_seed(100 + rank))
        logged = method.log_record({}, {})
        torch.save({"x": x, "clips_01": clips_01, "mask": mask, "loss": loss.detach(),
                    "grads": {n: p.grad.clone() for n, p in model.named_parameters()}, "logged": logged},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        shutdown(ctx)


def test_two_gloo_ranks_match_one_process(tmp_path):
    method = get_method("mae")(_mae_config(tmp_path, tmp_path), DistContext())
    torch.manual_seed(0)
    model = method.build_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    spawn_ranks(_rank_main, (state, str(tmp_path)), WORLD)
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    x = torch.cat([g["x"] for g in got])
    clips_01 = torch.cat([g["clips_01"] for g in got])
    mask = torch.cat([g["mask"] for g in got])
    loss, parts = method.objective(model, x, clips_01, mask)
    loss.backward()
    appearance, motion = mae_targets(clips_01, method.model_cfg)  # the zero prediction's loss, by hand
    hand = [float((t * t * mask[..., None]).sum() / (mask.sum() * t.shape[-1])) for t in (appearance, motion)]
    assert [float(parts["zero_loss_appearance"]), float(parts["zero_loss_motion"])] == pytest.approx(hand, rel=1e-5)
    # every rank masks the same number of tokens, so the global mean is the mean of the rank means
    torch.testing.assert_close((got[0]["loss"] + got[1]["loss"]) / 2, loss.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        for g in got:  # DDP averaged the ranks' gradients: each rank holds the one-process gradient
            torch.testing.assert_close(g["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    for g in got:  # the logged interval means are over both ranks, and equal on both
        assert g["logged"]["loss_appearance"] == pytest.approx(float(parts["loss_appearance"]), rel=1e-5)
        assert g["logged"]["zero_loss_motion"] == pytest.approx(float(parts["zero_loss_motion"]), rel=1e-5)


def test_bf16_rule_cuda_and_native_bf16_cpus_only(monkeypatch, tmp_path):
    import train.methods.mae as mae
    cls = get_method("mae")
    cpu = DistContext(device=torch.device("cpu"))

    def method(precision, native):
        monkeypatch.setattr(mae, "cpu_has_native_bf16", lambda: native)
        cfg = cls.config_class(shards=str(tmp_path), out=str(tmp_path), preset="tiny", steps=1, lr=1e-3,
                               precision=precision)
        return cls(cfg, cpu)

    assert method("auto", True).bf16 and not method("auto", False).bf16
    assert not method("fp32", True).bf16 and method("bf16", False).bf16
