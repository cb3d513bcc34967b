"""sslfer-train export: the newest checkpoint's backbone loads into an unmodified torchvision ResNet."""
import pytest
import torch
import torchvision
from click.testing import CliRunner

from sslfer_core.models import infer_arch
from train.checkpoints import latest_checkpoint
from train.cli import main
from train_fixtures import TINY_TRAIN, make_train_shards


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    shards = make_train_shards(root / "shards", shards=1, videos=3, frames=20)
    result = CliRunner().invoke(main, ["--shards", str(shards), "--out", str(root / "run"), *TINY_TRAIN,
                                       "--steps", "2", "--ckpt-every", "1", "--keep-checkpoints", "2"])
    assert result.exit_code == 0, result.output
    return root / "run"


def test_export_loads_into_torchvision_with_only_fc_missing(run_dir, tmp_path):
    out = tmp_path / "backbone.pt"
    result = CliRunner().invoke(main, ["export", str(run_dir), "-o", str(out), "--format", "torch"])
    assert result.exit_code == 0, result.output
    assert "step 2" in result.output
    state = torch.load(out, weights_only=True)
    assert infer_arch(state) == "resnet18"
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    # The step-2 checkpoint's weights, named by path (not by the lookup export itself uses), and not step 1's.
    newest = torch.load(run_dir / "checkpoints" / "ckpt-step00000002.pt", weights_only=True)["model"]
    older = torch.load(run_dir / "checkpoints" / "ckpt-step00000001.pt", weights_only=True)["model"]
    for key, value in state.items():
        assert torch.equal(value, newest["backbone." + key]), key
    assert not torch.equal(state["conv1.weight"], older["backbone.conv1.weight"])


def test_export_of_a_folder_without_checkpoints_is_one_error_line(tmp_path):
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "b.pt")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no checkpoint to export" in result.output and not (tmp_path / "b.pt").exists()


def test_export_of_a_corrupt_checkpoint_is_one_error_line(run_dir, tmp_path):
    bad = tmp_path / "ckpt-step00000009.pt"
    bad.write_bytes(latest_checkpoint(run_dir).read_bytes()[:1000])
    result = CliRunner().invoke(main, ["export", str(run_dir), "--checkpoint", str(bad), "-o", str(tmp_path / "b.pt")])
    assert result.exit_code == 1 and "unreadable checkpoint" in result.output and "Traceback" not in result.output
