"""Backbone loading: exported files, run folders (newest step), random, imagenet-from-cache only."""
import json

import click
import pytest
import torch
import torchvision

from sslfer_core.models import ContrastiveModel
from train.checkpoints import checkpoint_path
from train.evaluation.backbones import IMAGENET_FILES, file_sha256, load_backbone, load_backbones


def _resnet18_state(seed: int, with_fc: bool = False) -> dict:
    torch.manual_seed(seed)
    state = torchvision.models.resnet18().state_dict()
    return state if with_fc else {k: v for k, v in state.items() if not k.startswith("fc.")}


def test_exported_backbone_file(tmp_path):
    state = _resnet18_state(1)
    path = tmp_path / "ssl_backbone.pt"
    torch.save(state, path)
    backbone = load_backbone(str(path))
    assert backbone.arch == "resnet18" and backbone.feature_dim == 512 and backbone.name == "ssl_backbone"
    assert backbone.sha256 == file_sha256(path)
    assert torch.equal(backbone.model.state_dict()["layer4.1.bn2.weight"], state["layer4.1.bn2.weight"])
    assert backbone.model(torch.zeros(2, 3, 32, 32)).shape == (2, 512)


def test_resnet50_is_inferred_from_keys(tmp_path):
    state = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    assert "layer1.0.conv3.weight" in state
    path = tmp_path / "r50.pt"
    torch.save(state, path)
    backbone = load_backbone(str(path), arch="resnet18")  # --arch does not override a file's own architecture
    assert backbone.arch == "resnet50" and backbone.feature_dim == 2048


def _save_run_checkpoint(run, step: int, config: dict, seed: int) -> dict:
    """A checkpoint as sslfer-train writes it (model and config), of a contrastive resnet18; returns its model."""
    torch.manual_seed(seed)
    model = ContrastiveModel("resnet18", proj_dim=8).state_dict()
    torch.save({"model": model, "config": config, "step": step}, checkpoint_path(run, step))
    return model


def test_run_folder_is_its_newest_checkpoint_through_the_methods_export(tmp_path):
    run = tmp_path / "run1"
    (run / "checkpoints").mkdir(parents=True)
    config = {"arch": "resnet18", "proj_dim": 8, "face_crop": 0.72}  # no "method": a run from before methods
    (run / "config.json").write_text(json.dumps(config))
    models = {step: _save_run_checkpoint(run, step, config, seed) for step, seed in ((20, 2), (100, 3))}
    backbone = load_backbone(str(run))
    assert backbone.name == "run1@step100" and backbone.trained_preprocessing["face_crop"] == "0.72"
    assert torch.equal(backbone.model.state_dict()["conv1.weight"], models[100]["backbone.conv1.weight"])


def test_run_folder_errors_are_one_line(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(click.ClickException, match="no checkpoint to export"):
        load_backbone(str(run))
    _save_run_checkpoint(run, 1, {"arch": "resnet50", "proj_dim": 8}, 0)  # resnet18 weights, config says resnet50
    with pytest.raises(click.ClickException, match="weights do not fit resnet50"):
        load_backbone(str(run))
    _save_run_checkpoint(run, 2, {"method": "mae", "preset": "tiny"}, 0)
    with pytest.raises(click.ClickException, match="not a video MAE config|do not fit"):
        load_backbone(str(run))


def test_random_is_fixed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = load_backbone("random")
    assert torch.equal(torch.rand(1), expected_next)
    second = load_backbone("random")
    assert first.sha256 == second.sha256
    assert torch.equal(first.model.conv1.weight, second.model.conv1.weight)


def test_random_with_seed_is_another_fixed_initialisation():
    default, seeded, again = load_backbone("random"), load_backbone("random:3"), load_backbone("random:3")
    assert seeded.name == "random3-resnet18" and seeded.sha256 == again.sha256
    assert seeded.sha256 != default.sha256
    assert not torch.equal(seeded.model.conv1.weight, default.model.conv1.weight)
    with pytest.raises(click.ClickException, match="not a file, a run folder"):
        load_backbone("random:x")


def test_imagenet_requires_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(click.ClickException) as error:
        load_backbone("imagenet")
    assert IMAGENET_FILES["resnet18"] in str(error.value) and str(tmp_path) in str(error.value)
    cached = tmp_path / "hub" / "checkpoints" / IMAGENET_FILES["resnet18"]
    cached.parent.mkdir(parents=True)
    torch.save(_resnet18_state(5, with_fc=True), cached)  # torchvision's file includes fc.*
    backbone = load_backbone("imagenet")
    assert backbone.name == "imagenet-resnet18" and backbone.sha256 == file_sha256(cached)


def test_bad_specs_are_click_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(click.ClickException, match="cannot read weights"):
        load_backbone(str(junk))
    with pytest.raises(click.ClickException, match="not a file, a run folder"):
        load_backbone(str(tmp_path / "absent.pt"))


def test_duplicate_names_get_suffixes():
    names = [b.name for b in load_backbones(["random", "random"], "resnet18")]
    assert names == ["random-resnet18", "random-resnet18#2"]
