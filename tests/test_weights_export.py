"""safetensors / torch exports with metadata, read back by sslfer-eval, which applies the recorded crop."""
import json

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from safetensors import safe_open

from eval_fixtures import write_pattern_folder
from sslfer_core.file_hash import file_sha256
from train.checkpoints import latest_checkpoint
from train.cli import main as train_main
from train.evaluation import alignment
from train.evaluation.backbones import load_backbone
from train.evaluation.cli import main as eval_main
from train.evaluation.datasets import ImageRecord
from train.evaluation.images import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, RecordImages
from train.weights_file import WeightsFileError, read_weights
from train_fixtures import TINY_TRAIN, make_train_shards

# TINY_TRAIN trains at --resize 36 --crop 32
FACE_CROP, RESIZE, CROP = 0.72, 36, 32
EVAL_FAST = ["--max-iterations", "20", "--weight-decays", "0", "--workers", "0", "--threads", "1", "--no-cache"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    shards = make_train_shards(root / "shards", shards=1, videos=3, frames=20)
    result = CliRunner().invoke(train_main, ["--shards", str(shards), "--out", str(root / "run"), *TINY_TRAIN,
                                             "--face-crop", str(FACE_CROP), "--steps", "1", "--ckpt-every", "1"])
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture(scope="module")
def exported(run_dir):
    out = run_dir.parent / "backbone.safetensors"
    result = CliRunner().invoke(train_main, ["export", str(run_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_safetensors_export_round_trips_with_metadata(run_dir, exported):
    checkpoint = latest_checkpoint(run_dir)
    with safe_open(str(exported), framework="pt") as handle:
        metadata = handle.metadata()
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    assert metadata["arch"] == "resnet18" and metadata["method"] == "contrastive"
    assert metadata["input_size"] == "32" and metadata["resize"] == "36" and metadata["face_crop"] == "0.72"
    assert metadata["crop_convention"] == "centre" and metadata["normalisation"] == "imagenet"
    assert metadata["source_sha256"] == file_sha256(checkpoint) and metadata["step"] == "1"
    assert metadata["code_version"].startswith("0.")
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    trained = torch.load(checkpoint, weights_only=True)["model"]
    for key, value in state.items():
        assert torch.equal(value, trained["backbone." + key])


@pytest.mark.parametrize("name", ["backbone.pt", "backbone.PTH"])
def test_a_torch_name_gets_a_torch_file_that_torch_load_reads(run_dir, tmp_path, name):
    out = tmp_path / name
    result = CliRunner().invoke(train_main, ["export", str(run_dir), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "torch format" in result.output
    state = torch.load(out, weights_only=True)  # a safetensors file here fails with a pickle error
    assert sorted(torchvision.models.resnet18().load_state_dict(state, strict=False).missing_keys) == \
        ["fc.bias", "fc.weight"]


@pytest.mark.parametrize("name, fmt, expected", [("backbone.bin", "torch", "torch"),
                                                  ("backbone.bin", None, "safetensors"),
                                                  ("backbone.safetensors", "safetensors", "safetensors")])
def test_format_follows_the_option_where_the_name_does_not_say(run_dir, tmp_path, name, fmt, expected):
    out = tmp_path / name
    result = CliRunner().invoke(train_main, ["export", str(run_dir), "-o", str(out)] + (["--format", fmt] if fmt else []))
    assert result.exit_code == 0, result.output
    if expected == "torch":
        assert isinstance(torch.load(out, weights_only=True), dict)
    else:
        with safe_open(str(out), framework="pt") as handle:
            assert "conv1.weight" in handle.keys()


@pytest.mark.parametrize("name, fmt", [("backbone.pt", "safetensors"), ("backbone.pth", "safetensors"),
                                       ("backbone.safetensors", "torch")])
def test_a_format_that_contradicts_the_name_is_refused_in_one_line(run_dir, tmp_path, name, fmt):
    out = tmp_path / name
    result = CliRunner().invoke(train_main, ["export", str(run_dir), "-o", str(out), "--format", fmt])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert f"{name} names a" in line and f"--format {fmt}" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_torch_format_keeps_a_plain_state_dict_and_metadata_beside_it(run_dir, exported, tmp_path):
    out = tmp_path / "backbone.pt"
    result = CliRunner().invoke(train_main, ["export", str(run_dir), "-o", str(out), "--format", "torch"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "backbone.pt.json").read_text())["face_crop"] == "0.72"
    from_torch, from_safetensors = load_backbone(str(out)), load_backbone(str(exported))
    for backbone in (from_torch, from_safetensors):
        assert backbone.arch == "resnet18"
        assert backbone.trained_preprocessing == {"input_size": "32", "face_crop": "0.72", "resize": "36",
                                                  "crop_convention": "centre", "normalisation": "imagenet"}
    a, b = from_torch.model.state_dict(), from_safetensors.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert load_backbone(str(run_dir)).trained_preprocessing["face_crop"] == "0.72"


def test_a_pickle_that_is_not_plain_weights_is_refused(tmp_path):
    code = tmp_path / "model.pt"
    torch.save({"net": torch.nn.Linear(2, 2)}, code)  # unpickling it would construct objects: code
    with pytest.raises(WeightsFileError, match="refused"):
        read_weights(code)
    data = write_pattern_folder(tmp_path / "patterns", {"train": 3, "val": 2, "test": 2})
    result = CliRunner().invoke(eval_main, ["linear", "--backbone", str(code), "--data", str(data), *EVAL_FAST])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [
        f"Error: {code}: refused: this pickle holds more than tensors (torch.nn.modules.linear.Linear; loading it "
        "would run code); give a safetensors file or a plain state_dict"]
    checkpointish = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, checkpointish)
    with pytest.raises(WeightsFileError, match="expected a plain weights file"):
        read_weights(checkpointish)


class _FakeAligner:
    """Stands in for dlib: returns a side x side face whose central half is white, the rest black."""
    sides: list = []

    def __init__(self, side, model_dir=None):
        self.side = side
        _FakeAligner.sides.append(side)

    def __call__(self, image_rgb):
        face = np.zeros((self.side, self.side, 3), np.uint8)
        quarter = self.side // 4
        face[quarter:self.side - quarter, quarter:self.side - quarter] = 255
        return face


def test_aligned_images_keep_the_central_fraction(monkeypatch):
    monkeypatch.setattr(alignment, "FaceAligner", _FakeAligner)
    record = ImageRecord(source="inline", label=0, split="train", pixels=np.full((20, 20), 90, np.uint8))
    tensor, ok, aligned, _ = RecordImages([record], Preprocessing(16, True, face_crop=0.5))[0]
    assert ok and aligned and tensor.shape == (3, 16, 16) and _FakeAligner.sides[-1] == 32
    white = (1.0 - IMAGENET_MEAN) / IMAGENET_STD  # the central half of the 32 px face, nothing else
    assert np.allclose(tensor.numpy(), white[:, None, None], atol=1e-5)


def test_eval_align_applies_the_training_crop_and_records_it(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(alignment, "FaceAligner", _FakeAligner)
    data = write_pattern_folder(tmp_path / "patterns", {"train": 3, "val": 2, "test": 2})
    recorded = {}
    for name, extra in (("default", []), ("override", ["--face-crop", "0.9", "--image-size", "24"]),
                        ("unaligned", None)):
        out = tmp_path / name
        args = ["linear", "--backbone", str(exported), "--data", str(data), "--out", str(out), *EVAL_FAST]
        args += ["--align", *extra] if extra is not None else []
        result = CliRunner().invoke(eval_main, args)
        assert result.exit_code == 0, result.output
        recorded[name] = json.loads((out / "results.json").read_text())["backbones"][0]["preprocessing"]
    # trained view: the central 0.72 of the aligned face, resized to 36, seen through a 32 px window
    assert recorded["default"]["face_crop"] == pytest.approx(FACE_CROP * CROP / RESIZE)  # 0.64
    assert recorded["default"]["image_size"] == 32 and recorded["default"]["align"] is True
    assert recorded["default"]["from"] == {"image_size": "backbone", "face_crop": "backbone"}
    assert recorded["override"]["face_crop"] == 0.9 and recorded["override"]["image_size"] == 24
    assert recorded["override"]["from"] == {"image_size": "option", "face_crop": "option"}
    assert recorded["unaligned"]["face_crop"] == 1.0 and recorded["unaligned"]["align"] is False
    assert round(32 / 0.64) in _FakeAligner.sides  # aligned at 50 px so that its central 32 px are the view


def test_a_payload_with_a_state_dict_round_trips_in_both_formats(tmp_path):
    from train.weights_file import read_payload, write_weights

    payload = {"format": "x", "input_size": 16, "clip": {"frames": 8}, "state_dict": {"w": torch.arange(6.0)}}
    for fmt in ("safetensors", "torch"):
        path = write_weights(tmp_path / f"e.{fmt}", payload, {"method": "m"}, fmt)
        back = read_payload(path)
        assert back["format"] == "x" and back["input_size"] == 16 and back["clip"] == {"frames": 8}
        assert torch.equal(back["state_dict"]["w"], torch.arange(6.0))
