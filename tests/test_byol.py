"""BYOL: its loss against the written-out formula, the EMA target against a loop, exact resume, the
strategies it accepts and refuses, and its export (the online ResNet, not the target)."""
import math

import pytest
import torch
import torchvision
from click.testing import CliRunner

from train.checkpoints import list_checkpoints
from train.cli import main
from train.methods.byol import BYOLModel
from train.methods.byol.loss import byol_loss
from train.methods.momentum import cosine_momentum, ema_update
from train.metrics_log import read_metrics
from train.weights_file import read_weights
from train_fixtures import TINY_TRAIN, interrupt_after_checkpoint
from train_fixtures import two_shards as shards  # noqa: F401 (a fixture)

STEPS = ["--steps", "4", "--ckpt-every", "2", "--warmup-steps", "1"]


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_loss_is_the_symmetric_2_minus_2_cos_written_out():
    torch.manual_seed(0)
    b, d = 3, 5
    p, z = torch.randn(2 * b, d), torch.randn(2 * b, d)

    def cos(u, v):
        dot = sum(float(x) * float(y) for x, y in zip(u, v))
        return dot / (math.sqrt(sum(float(x) ** 2 for x in u)) * math.sqrt(sum(float(y) ** 2 for y in v)))

    # view 1's prediction against view 2's target and view 2's against view 1's, summed, mean over samples
    want = sum((2 - 2 * cos(p[i], z[b + i])) + (2 - 2 * cos(p[b + i], z[i])) for i in range(b)) / b
    assert float(byol_loss(p, z)) == pytest.approx(want, rel=1e-6)
    assert float(byol_loss(z, z.roll(b, dims=0))) == pytest.approx(0.0, abs=1e-6)  # perfect predictions


def test_loss_sends_no_gradient_to_the_target():
    p = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None
    with pytest.raises(ValueError, match="2B, D"):
        byol_loss(torch.randn(3, 2), torch.randn(3, 2))


def test_ema_update_matches_a_loop_over_parameters_and_leaves_buffers():
    torch.manual_seed(0)
    model = BYOLModel("resnet18", proj_hidden=16, proj_dim=8, pred_hidden=16)
    with torch.no_grad():
        for param in model.backbone.parameters():
            param.add_(torch.randn_like(param))  # online and target now differ
    expected = [t.detach().clone() * 0.9 + o.detach() * (1 - 0.9)
                for t, o in zip(model.target_backbone.parameters(), model.backbone.parameters())]
    buffers = {k: v.clone() for k, v in model.target_backbone.named_buffers()}
    model.update_target(0.9)
    for got, want in zip(model.target_backbone.parameters(), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    for name, value in model.target_backbone.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert not any(p.requires_grad for p in model.target_projector.parameters())
    with pytest.raises(ValueError, match="target parameters"):
        ema_update(model.target_backbone, model.projector, 0.5)


def test_momentum_rises_from_its_base_to_one_on_a_half_cosine():
    assert cosine_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 50, 100) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 100, 100) == pytest.approx(1.0)


def test_interrupted_and_resumed_run_matches_straight_run(shards, tmp_path, monkeypatch):
    common = ["byol", "--shards", shards, *TINY_TRAIN, "--timeaug", "--faceswap", *STEPS]
    assert _invoke([*common, "--out", tmp_path / "straight"]).exit_code == 0
    restore_saving = interrupt_after_checkpoint(monkeypatch, step=2)
    assert _invoke([*common, "--out", tmp_path / "split"]).exit_code == 130
    restore_saving()
    torch.manual_seed(1234)
    second = _invoke(["byol", "--out", tmp_path / "split", "--resume"])
    assert second.exit_code == 0, second.output
    a, b = (torch.load(list_checkpoints(tmp_path / name)[-1], weights_only=True) for name in ("straight", "split"))
    assert a["step"] == b["step"] == 4
    assert any(key.startswith("target_backbone.") for key in a["model"])
    for key in a["model"]:  # the online network and the EMA target
        assert torch.equal(a["model"][key], b["model"][key]), key
    ra, rb = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("straight", "split"))
    assert [(r["loss"], r["tau"]) for r in ra] == [(r["loss"], r["tau"]) for r in rb]
    # the target moved by EMA only: it differs from the online network, and from its initial copy
    assert not torch.equal(a["model"]["target_backbone.conv1.weight"], a["model"]["backbone.conv1.weight"])


@pytest.mark.parametrize("flag", ["--hardneg", "--maskfn"])
def test_strategies_on_negatives_are_refused_in_one_line(shards, tmp_path, flag):
    result = _invoke(["byol", "--shards", shards, "--out", tmp_path / "r", *TINY_TRAIN, "--steps", "1", flag])
    assert result.exit_code == 2
    assert f"{flag} acts on negatives and BYOL has none" in result.output
    assert "Traceback" not in result.output


def test_export_is_the_online_resnet_as_torchvision_keys(shards, tmp_path):
    run = tmp_path / "run"
    assert _invoke(["byol", "--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "2", "--cutmix"]).exit_code == 0
    out = tmp_path / "byol.safetensors"
    result = _invoke(["export", run, "-o", out])
    assert result.exit_code == 0, result.output
    state, metadata = read_weights(out)
    assert metadata["method"] == "byol" and metadata["arch"] == "resnet18" and metadata["input_size"] == "32"
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    model = torch.load(list_checkpoints(run)[-1], weights_only=True)["model"]
    assert torch.equal(state["conv1.weight"], model["backbone.conv1.weight"])
    assert not torch.equal(state["conv1.weight"], model["target_backbone.conv1.weight"])
