"""The method interface (train/methods/): a second method plugs into the shared loop unchanged (counters,
per-method metrics, gradient clipping, checkpoint hook, exact resume, export dispatch), and the loop refuses
a batch that the ranks cannot share and a resume with the wrong method, each in one line naming the fix."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import train.methods as methods
import train.run_state as run_state
import train.trainer as trainer
from train.checkpoints import latest_checkpoint, list_checkpoints
from train.cli import main
from train.distributed import DistContext
from train.export import export_run
from train.methods import Exported, Method, register
from train.methods.contrastive.epoch_plan import PlanConfig
from train.methods.contrastive.shard_stream import ShardStream, make_loader
from train.metrics_log import read_metrics
from train.run_config import TrainConfig
from train.trainer import TrainingError
from train.weights_file import read_weights
from train_fixtures import TINY_TRAIN, make_train_shards

CLIP = 0.05


@dataclass
class ToyConfig(TrainConfig):
    width: int = 3
    noise: float = 0.1
    batch_size: int = 4  # a shared field with this method's own default
    lr: float = 1e-2
    method: ClassVar[str] = "toy"


class Toy(Method):
    """Regress each image's mean colour onto itself through a (width x 3) bottleneck, with input noise from
    the step's generator; one counter (rows seen)."""

    name = "toy"
    config_class = ToyConfig
    counter_names = ("rows",)
    rate_unit = "frames"
    figures: list[int] = []

    def make_stream(self, index, workers):
        plan = PlanConfig(seed=self.cfg.seed, batch_size=self.cfg.batch_size // self.ctx.world_size)
        return ShardStream(index, plan, rank=self.ctx.rank, world_size=self.ctx.world_size, num_workers=workers)

    def make_loader(self, stream, workers, pin_memory):
        return make_loader(stream, workers, pin_memory=pin_memory)

    def build_model(self):
        return nn.Sequential(nn.Linear(3, self.cfg.width), nn.Linear(self.cfg.width, 3)).to(self.ctx.device)

    def build_optimizer(self, model):
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        return torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=self.cfg.lr, betas=(0.9, 0.95))

    @property
    def grad_clip(self):
        return CLIP

    def step(self, net, batch, generator):
        x = batch["images"].float().mean(dim=(1, 2)) / 255
        noisy = x + self.cfg.noise * torch.randn(x.shape, generator=generator, device=x.device)
        error = (net(noisy) - x).pow(2).mean(dim=1)
        return error.mean(), {"worst": error.max().detach()}

    def counts(self, batch, outputs):
        return torch.tensor([batch["images"].shape[0]], device=batch["images"].device)

    def log_record(self, outputs, counters):
        return {"worst": float(outputs["worst"]), "rows": counters["rows"]}

    def on_checkpoint(self, model, run_dir, step, batch):
        path = Path(run_dir) / f"figure-{step}.txt"
        path.write_text(f"{batch['images'].shape[0]} rows\n")
        self.figures.append(step)
        return [path]

    @classmethod
    def export(cls, state, source):
        return Exported({"first.weight": state["model"]["0.weight"]}, "toy bottleneck")


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(methods.METHOD_MODULES, "toy", __name__)
    monkeypatch.setattr(methods, "_REGISTERED", dict(methods._REGISTERED))
    register(Toy)
    Toy.figures = []
    return Toy


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_train_shards(tmp_path_factory.mktemp("shards"), shards=2, videos=3, frames=20)


def _toy_config(shards, out, **kwargs):
    settings = dict(steps=4, ckpt_every=2, log_every=1, workers=0, seed=7) | kwargs
    return ToyConfig(shards=str(shards), out=str(out), **settings)


def _quiet(text):
    pass


def test_a_second_method_trains_through_the_shared_loop(toy, shards, tmp_path):
    run = tmp_path / "toy"
    summary = trainer.train(_toy_config(shards, run), echo=_quiet)
    assert summary.steps == 4 and summary.counters == {"rows": 4 * 2 * 4}  # 4 steps x 2 views x 4 samples
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "toy" and config["batch_size"] == 4 and config["width"] == 3
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["rows"] for r in records] == [8, 16, 24, 32]
    for r in records:
        assert r["frames_per_s"] > 0 and r["grad_norm"] > 0 and r["worst"] >= r["loss_last"] > 0
        assert "images_per_s" not in r and "fallbacks" not in r
    assert toy.figures == [2, 4] and (run / "figure-4.txt").read_text() == "8 rows\n"
    state = torch.load(latest_checkpoint(run), weights_only=True)
    assert state["config"]["method"] == "toy" and state["sampler"]["counters"] == {"rows": 32}
    assert [g["weight_decay"] for g in state["optimizer"]["param_groups"]] == [1e-4, 0.0]


def test_figures_keep_the_ckpt_every_cadence_when_epochs_are_short(toy, tmp_path):
    """Every epoch end writes a checkpoint, but the method's figure comes only every --ckpt-every steps
    and at the last step: on a small shard set an epoch is a few steps."""
    few = make_train_shards(tmp_path / "few", shards=1, videos=2, frames=8)
    run = tmp_path / "toy"
    trainer.train(_toy_config(few, run, steps=11, ckpt_every=5, keep_checkpoints=20), echo=_quiet)
    per_epoch = json.loads((run / "config.json").read_text())["steps_per_epoch"]
    assert per_epoch < 5 and 5 % per_epoch  # epoch ends that are not on the cadence
    epoch_ends = set(range(per_epoch, 12, per_epoch))
    assert [int(p.stem.split("step")[1]) for p in list_checkpoints(run)] == sorted(epoch_ends | {5, 10, 11})
    assert toy.figures == [5, 10, 11]


def test_gradients_are_clipped_to_the_method_limit(toy, shards, tmp_path, monkeypatch):
    seen = []
    real_step = torch.optim.AdamW.step

    def step_recording_norm(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_recording_norm)
    run = tmp_path / "toy"
    trainer.train(_toy_config(shards, run, noise=5.0), echo=_quiet)
    logged = [r["grad_norm"] for r in read_metrics(run / "metrics.jsonl")]
    assert len(seen) == 4 and all(norm <= CLIP * (1 + 1e-5) for norm in seen)
    assert max(logged) > CLIP  # the norms before clipping were above the limit


def test_a_second_method_resumes_exactly(toy, shards, tmp_path, monkeypatch):
    straight = trainer.train(_toy_config(shards, tmp_path / "straight"), echo=_quiet)
    real_save = run_state.save_checkpoint

    def save_then_interrupt(run_dir, step, state, keep):
        path = real_save(run_dir, step, state, keep)
        if step == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(run_state, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(_toy_config(shards, tmp_path / "split"), echo=_quiet)
    monkeypatch.setattr(run_state, "save_checkpoint", real_save)
    torch.manual_seed(99)
    resumed = trainer.train(_toy_config(shards, tmp_path / "split"), resume=True, echo=_quiet)
    assert resumed.counters == straight.counters == {"rows": 32}
    a = torch.load(list_checkpoints(tmp_path / "straight")[-1], weights_only=True)
    b = torch.load(list_checkpoints(tmp_path / "split")[-1], weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    ra, rb = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("straight", "split"))
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb] and [r["worst"] for r in ra] == [r["worst"] for r in rb]


def test_export_dispatches_to_the_run_method(toy, shards, tmp_path):
    run = tmp_path / "toy"
    trainer.train(_toy_config(shards, run), echo=_quiet)
    used, description, step = export_run(run, tmp_path / "toy.pt")
    assert description == "toy bottleneck" and step == 4 and used == latest_checkpoint(run)
    exported, metadata = read_weights(tmp_path / "toy.pt")  # safetensors, the default format
    assert metadata["method"] == "toy" and metadata["step"] == "4"
    assert list(exported) == ["first.weight"] and exported["first.weight"].shape == (3, 3)


def _one_error_line(result, code):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_resuming_a_run_of_another_method_names_the_command(toy, shards, tmp_path):
    toy_run = tmp_path / "toy"
    trainer.train(_toy_config(shards, toy_run), echo=_quiet)
    line = _one_error_line(CliRunner().invoke(main, ["--out", str(toy_run), "--resume"]), 2)
    assert f"is a toy run, not contrastive; continue it with: sslfer-train toy --out {toy_run} --resume" in line
    line = _one_error_line(CliRunner().invoke(main, ["contrastive", "--out", str(toy_run), "--resume"]), 2)
    assert f"sslfer-train toy --out {toy_run} --resume" in line

    contrastive_run = tmp_path / "contrastive"
    result = CliRunner().invoke(main, ["--shards", str(shards), "--out", str(contrastive_run), *TINY_TRAIN,
                                       "--steps", "1"])
    assert result.exit_code == 0, result.output
    with pytest.raises(TrainingError, match=f"is a contrastive run, not toy; continue it with: "
                                            f"sslfer-train --out {contrastive_run} --resume"):
        trainer.train(_toy_config(shards, contrastive_run), resume=True, echo=_quiet)


def test_batch_size_the_ranks_cannot_share_is_one_line_naming_a_multiple(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "init_distributed", lambda device: DistContext(rank=0, world_size=4))
    monkeypatch.setattr(trainer, "shutdown", lambda ctx: None)
    monkeypatch.setattr(trainer, "barrier", lambda ctx: None)
    result = CliRunner().invoke(main, ["--shards", str(shards), "--out", str(tmp_path / "run"), *TINY_TRAIN,
                                       "--steps", "1"])  # TINY_TRAIN: --batch-size 6
    line = _one_error_line(result, 1)
    assert "--batch-size 6 is not divisible by the 4 ranks; give a multiple of 4 (e.g. 4 or 8)" in line
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(main, ["--shards", str(shards), "--out", str(tmp_path / "run"), *TINY_TRAIN,
                                       "--batch-size", "3", "--steps", "1"])
    assert "give a multiple of 4 (e.g. 4)" in _one_error_line(result, 1)


def test_unknown_method_in_a_checkpoint_is_an_export_error(shards, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["--shards", str(shards), "--out", str(run), *TINY_TRAIN, "--steps", "1"])
    assert result.exit_code == 0, result.output
    checkpoint = latest_checkpoint(run)
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["method"] = "nonesuch"
    torch.save(state, checkpoint)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "method": "nonesuch"}))  # the run's method, too
    line = _one_error_line(CliRunner().invoke(main, ["export", str(run), "-o", str(tmp_path / "b.pt")]), 1)
    assert "unknown method 'nonesuch'; known: contrastive" in line
