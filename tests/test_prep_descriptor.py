"""sslfer-prep's descriptor choice end to end: --descriptor auto says when it falls back to landmark geometry;
with (stand-in) ResNet-18 weights cached it stores 1024-d ResNet descriptors, and every shard header carries
the sha256 of the weights file."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

import prep_clips as clips
from data_manifest.manifest import load_manifest, shard_paths
from preprocess.cli import main
from sslfer_core.descriptors import GEOMETRY_KIND, RESNET18_KIND, ResNet18PatchDescriptor, resnet18_weights_path
from sslfer_core.shard_format import ShardReader

FALLBACK = "(ResNet-18 ImageNet weights not cached)"


@pytest.fixture(scope="module")
def clip_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    clips.face_clip(root / "id00001" / "clip0.mp4", "id00001", count=10)
    clips.face_clip(root / "id00002" / "clip0.mp4", "id00002", count=10)
    return root


def _prep(clip_root, out, *args):
    result = CliRunner().invoke(main, ["videos", str(clip_root), "--out", str(out), "--jobs", "1", "--swaps", "0",
                                       "--codec", "raw", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _headers(out):
    headers = []
    for path in shard_paths(out, load_manifest(out)):
        with ShardReader(path) as reader:
            headers.append(reader.header)
    return headers


def test_auto_without_cached_weights_falls_back_and_says_so(clip_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    result = _prep(clip_root, tmp_path / "out")
    assert f"descriptor {GEOMETRY_KIND} {FALLBACK}" in result.stderr
    assert load_manifest(tmp_path / "out").descriptor_kind == GEOMETRY_KIND
    assert all(h.descriptor_kind == GEOMETRY_KIND and not h.descriptor_weights_sha256 for h in _headers(tmp_path / "out"))
    # asked for by name, the same descriptor is no fallback, so nothing is said
    named = _prep(clip_root, tmp_path / "named", "--descriptor", GEOMETRY_KIND)
    assert f"descriptor {GEOMETRY_KIND};" in named.stderr and FALLBACK not in named.stderr


def test_auto_with_stand_in_weights_stores_resnet_descriptors_and_their_sha256(clip_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    weights = resnet18_weights_path()
    weights.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)  # random stand-in, same format
    expected_sha = hashlib.sha256(weights.read_bytes()).hexdigest()

    out = tmp_path / "out"
    result = _prep(clip_root, out)
    assert f"descriptor {RESNET18_KIND};" in result.stderr and FALLBACK not in result.stderr
    manifest = load_manifest(out)
    assert manifest.descriptor_kind == RESNET18_KIND and manifest.descriptor_weights_sha256 == expected_sha
    headers = _headers(out)
    assert headers and all(h.descriptor_weights_sha256 == expected_sha and h.descriptor_dim == 1024 for h in headers)

    # The stored rows are the descriptor of the stored patches (fp32 reference; prep may run it in bf16).
    reference = ResNet18PatchDescriptor(device="cpu", quantized=False)
    frames = 0
    for video in clips.shard_contents(out).values():
        assert video["descriptor"].shape[1] == 1024
        expected = reference.describe(video["eyes"], video["mouth"], video["landmarks"])
        assert np.sum(video["descriptor"] * expected, axis=1).min() > 0.999
        frames += len(expected)
    assert frames > 0
