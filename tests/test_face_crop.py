"""--face-crop: the central part of the aligned face, with landmarks that still point at the same pixels."""
import pytest
import torch

from train.methods.contrastive import ContrastiveConfig as RunConfig
from train.methods.contrastive.step import centre_crop


def test_centre_crop_keeps_pixels_under_landmarks():
    images = torch.randint(0, 256, (3, 128, 128, 3), dtype=torch.uint8)
    landmarks = torch.tensor([[[40.0, 50.0], [90.0, 100.0]]]).repeat(3, 1, 1)
    cropped, moved = centre_crop(images, landmarks, 0.72)
    margin = 18  # round(128 * 0.28 / 2)
    assert cropped.shape == (3, 128 - 2 * margin, 128 - 2 * margin, 3)
    for (x, y), (cx, cy) in zip(landmarks[0].long().tolist(), moved[0].long().tolist()):
        assert torch.equal(images[:, y, x], cropped[:, cy, cx])
    same, unmoved = centre_crop(images, landmarks, 1.0)
    assert same is images and unmoved is landmarks


def test_face_crop_is_validated():
    with pytest.raises(ValueError, match="face-crop"):
        RunConfig(shards="s", out="o", steps=1, face_crop=0.0)
    assert RunConfig.from_json({"shards": "s", "out": "o", "steps": 1}).face_crop == 1.0  # older runs


def test_crop_area_is_validated_and_survives_config_json():
    with pytest.raises(ValueError, match="crop-area"):
        RunConfig(shards="s", out="o", steps=1, crop_area=(0.9, 0.2))
    cfg = RunConfig(shards="s", out="o", steps=1, crop_area=[0.25, 1])  # as read back from config.json
    assert cfg.crop_area == (0.25, 1.0)
    assert RunConfig.from_json(cfg.to_json()).differences(cfg) == []
    assert RunConfig.from_json({"shards": "s", "out": "o", "steps": 1}).crop_area is None  # older runs
