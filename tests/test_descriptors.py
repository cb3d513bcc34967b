import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from face_clip_frames import dlib_models_or_skip, one_clip_per_identity, read_frames
from sslfer_core import descriptors
from sslfer_core.descriptors import (
    GEOMETRY_KIND,
    RESNET18_KIND,
    DescriptorWeightsMissing,
    LandmarkGeometryDescriptor,
    ResNet18PatchDescriptor,
    make_descriptor,
    resnet18_weights_path,
)
from sslfer_core.face_alignment import align_face, transform_points
from sslfer_core.face_detection import FaceDetector
from sslfer_core.face_patches import eye_mouth_patches


@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory):
    """A randomly initialised resnet18 state_dict saved where the ImageNet checkpoint would be cached."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        path = resnet18_weights_path()
        path.parent.mkdir(parents=True)
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
        yield path


@pytest.fixture(scope="module")
def fp32_descriptor(stand_in_weights):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(stand_in_weights.parents[2]))
        return ResNet18PatchDescriptor(device="cpu", batch_size=3, quantized=False)


@pytest.fixture(scope="module")
def frame_pairs(voxceleb_mini):
    """For eight identities: (eyes, mouth, landmarks) of two frames of one clip 0.5 s apart."""
    detector = FaceDetector(dlib_models_or_skip())
    pairs = []
    for row in one_clip_per_identity(voxceleb_mini)[::4][:8]:
        gap = int(round(0.5 * float(row["fps"])))
        items = []
        for frame in read_frames(voxceleb_mini / row["path"], [20, 20 + gap]):
            face = detector.detect(frame)
            aligned = align_face(frame, face.landmarks)
            items.append((*eye_mouth_patches(aligned.image, aligned.landmarks), aligned.landmarks))
        pairs.append(items)
    return pairs


def _batch(items):
    return tuple(np.stack(column) for column in zip(*items))


def _same_versus_different(descriptor, pairs):
    first = descriptor.describe(*_batch([p[0] for p in pairs]))
    second = descriptor.describe(*_batch([p[1] for p in pairs]))
    same = np.sum(first * second, axis=1)
    cross = first @ first.T
    different = cross[~np.eye(len(pairs), dtype=bool)]
    return float(same.mean()), float(different.mean())


def test_missing_weights_fail_fast_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(DescriptorWeightsMissing) as caught:
        ResNet18PatchDescriptor()
    message = str(caught.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert isinstance(make_descriptor("auto"), LandmarkGeometryDescriptor)
    with pytest.raises(DescriptorWeightsMissing):
        make_descriptor(RESNET18_KIND)
    with pytest.raises(ValueError, match="unknown descriptor kind"):
        make_descriptor("sift")


def test_resnet_descriptor_is_the_loaded_network(stand_in_weights, fp32_descriptor, frame_pairs, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(stand_in_weights.parents[2]))
    fp32 = fp32_descriptor
    assert fp32.kind == RESNET18_KIND and fp32.dim == 1024 and fp32.precision == "fp32"
    assert fp32.weights_sha256 == hashlib.sha256(stand_in_weights.read_bytes()).hexdigest()
    eyes, mouth, landmarks = _batch([p[0] for p in frame_pairs])
    rows = fp32.describe(eyes, mouth, landmarks)
    assert rows.shape == (len(eyes), 1024) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    # Reference: plain torchvision ResNet-18 with the same file, fc removed, halves normalised.
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(torch.load(stand_in_weights, weights_only=True))
    reference.fc = torch.nn.Identity()
    reference.eval()
    mean = torch.tensor(descriptors.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(descriptors.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.inference_mode():
        halves = [
            torch.nn.functional.normalize(reference((torch.from_numpy(p).permute(0, 3, 1, 2).float() / 255 - mean) / std), dim=1)
            for p in (eyes, mouth)
        ]
    expected = torch.nn.functional.normalize(torch.cat(halves, dim=1), dim=1).numpy()
    assert np.abs(rows - expected).max() < 1e-4
    # Batch size does not change the result; the reduced-precision path stays close.
    fp32.batch_size = 256
    try:
        assert np.abs(fp32.describe(eyes, mouth) - rows).max() < 1e-5
    finally:
        fp32.batch_size = 3
    reduced = make_descriptor("auto", device="cpu")  # weights cached: the ResNet kind, bf16 on this CPU
    assert reduced.kind == RESNET18_KIND
    reduced = reduced if reduced.precision == "bf16" else ResNet18PatchDescriptor(device="cpu", quantized=True)
    assert reduced.precision == "bf16"
    assert np.sum(reduced.describe(eyes, mouth) * rows, axis=1).min() > 0.999


def test_resnet_descriptor_with_stand_in_weights_prefers_the_same_clip(fp32_descriptor, frame_pairs):
    # Only random stand-in weights exist here; ImageNet weights should separate at least as well.
    same, different = _same_versus_different(fp32_descriptor, frame_pairs)
    assert same > different


def test_geometry_descriptor_prefers_the_same_clip(frame_pairs):
    descriptor = LandmarkGeometryDescriptor()
    assert descriptor.kind == GEOMETRY_KIND and descriptor.weights_sha256 is None
    same, different = _same_versus_different(descriptor, frame_pairs)
    assert same > different


def test_geometry_descriptor_ignores_pose_and_scale(frame_pairs):
    descriptor = LandmarkGeometryDescriptor()
    landmarks = np.stack([p[0][2] for p in frame_pairs])
    a = np.deg2rad(25)
    moved = np.stack([transform_points(np.array([[2 * np.cos(a), -2 * np.sin(a), 40], [2 * np.sin(a), 2 * np.cos(a), -7]]), lm) for lm in landmarks])
    rows = descriptor.describe(None, None, landmarks)
    assert rows.shape == (len(landmarks), descriptor.dim) and rows.dtype == np.float32
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert np.allclose(descriptor.describe(None, None, moved), rows, atol=1e-5)
    # An opened mouth changes it.
    opened = landmarks.copy()
    opened[:, 57:60, 1] += 8.0
    assert np.sum(descriptor.describe(None, None, opened) * rows, axis=1).max() < 0.999


def test_patch_arrays_are_validated(fp32_descriptor):
    descriptor = fp32_descriptor
    with pytest.raises(ValueError):
        descriptor.describe(np.zeros((2, 64, 64, 3), np.float32), np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError):
        descriptor.describe(np.zeros((2, 64, 64, 3), np.uint8), np.zeros((3, 64, 64, 3), np.uint8))


def test_weights_path_without_torch_matches_torch_hub(tmp_path, monkeypatch):
    """`auto` decides from the path without importing torch; the path must be the one torch would use."""
    import subprocess
    import sys

    import torch

    from sslfer_core.descriptors import RESNET18_FILE, imagenet_weights_file_name

    assert imagenet_weights_file_name() == RESNET18_FILE
    probe = ("import sys; from sslfer_core.descriptors import resnet18_weights_path; "
             "print(resnet18_weights_path()); print('torch' in sys.modules)")
    for env in ({"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {}):
        for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
        assert out == [str(Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE), "False"]
