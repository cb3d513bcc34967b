"""MaskFN descriptors of eye and mouth patches: frozen ImageNet ResNet-18, or weight-free landmark geometry.

Both return L2-normalised float32 rows so that cosine similarity is a dot product; callers record
`.kind` (and `.weights_sha256`) next to the descriptors because the two kinds are not comparable.
torch is imported inside the ResNet code only, so the landmark kind works without paying for it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import numpy as np

from sslfer_core.cpu_cores import cpu_has_native_bf16
from sslfer_core.file_hash import file_sha256
from sslfer_core.face_alignment import BROWS, EYES, MEAN_SHAPE, MOUTH, RIGID_POINTS, similarity_matrix, transform_points

RESNET18_KIND = "resnet18-imagenet"
GEOMETRY_KIND = "landmark-geometry"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DescriptorWeightsMissing(FileNotFoundError):
    """The ImageNet ResNet-18 checkpoint is not in torch's cache and nothing may be downloaded."""


class PatchDescriptor(Protocol):
    kind: str
    dim: int
    weights_sha256: str | None

    def describe(self, eyes: np.ndarray, mouth: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(N, 64, 64, 3) uint8 eyes and mouth patches, (N, 68, 2) aligned landmarks -> (N, dim) float32, unit rows."""
        ...


def _imagenet_weights():
    from torchvision.models import ResNet18_Weights

    return ResNet18_Weights.IMAGENET1K_V1


RESNET18_FILE = "resnet18-f37072fd.pth"  # ResNet18_Weights.IMAGENET1K_V1's file name (a test checks it)


def torch_hub_dir() -> Path:
    """torch.hub.get_dir() without importing torch, which costs seconds per process: deciding `auto` must
    not pay for torch when the weights are absent. Same rules: $TORCH_HOME/hub, else
    $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub; torch's own answer once it is loaded."""
    if "torch.hub" in sys.modules:
        return Path(sys.modules["torch.hub"].get_dir())
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.environ.get("TORCH_HOME", os.path.join(cache, "torch"))
    return Path(os.path.expanduser(home)) / "hub"


def resnet18_weights_path() -> Path:
    """Where torchvision's weights API caches the checkpoint: $TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth."""
    return torch_hub_dir() / "checkpoints" / RESNET18_FILE


def imagenet_weights_file_name() -> str:
    """The file name torchvision's weights API uses (imports torchvision)."""
    return os.path.basename(urlparse(_imagenet_weights().url).path)


def download_resnet18_weights() -> Path:
    """Fetch the ImageNet checkpoint into the cache (online machines; run once, explicitly). Returns its path."""
    _imagenet_weights().get_state_dict(progress=True, check_hash=True)
    return resnet18_weights_path()


def _l2_normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def _check_patches(eyes: np.ndarray, mouth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eyes, mouth = np.asarray(eyes), np.asarray(mouth)
    if eyes.dtype != np.uint8 or mouth.dtype != np.uint8 or eyes.ndim != 4 or eyes.shape[-1] != 3 or eyes.shape != mouth.shape:
        raise ValueError(f"expected two (N, P, P, 3) uint8 patch arrays of equal shape, got {eyes.dtype} {eyes.shape} and {mouth.dtype} {mouth.shape}")
    return eyes, mouth


class ResNet18PatchDescriptor:
    """Frozen torchvision ResNet-18 (ImageNet), fc removed: 512-d per patch, eyes || mouth = 1024-d.

    Each half is L2-normalised before the concatenation (eyes and mouth weigh the same), then the whole.
    Both patches of a batch go through one forward pass. `quantized` selects the reduced-precision
    path: bf16 autocast on CPU (default where the CPU has native bf16), fp16 autocast on CUDA (not by
    default). On CPU the BatchNorms are folded into the convolutions and activations are channels_last.
    Weights are never downloaded here: a missing cache file raises DescriptorWeightsMissing.
    """

    kind = RESNET18_KIND
    dim = 1024

    def __init__(self, device=None, batch_size: int = 256, quantized: bool | None = None):
        import torch
        import torchvision

        path = resnet18_weights_path()
        if not path.is_file():
            raise DescriptorWeightsMissing(
                f"ResNet-18 ImageNet weights not found: put resnet18-f37072fd.pth at {path} "
                f"(i.e. $TORCH_HOME/hub/checkpoints/), or run sslfer_core.descriptors.download_resnet18_weights() once on a machine with network"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.weights_path = path
        self.weights_sha256 = file_sha256(path)
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        on_cpu = self.device.type == "cpu"
        if quantized is None:
            quantized = on_cpu and cpu_has_native_bf16()
        self.precision = ("bf16" if on_cpu else "fp16") if quantized else "fp32"

        model = torchvision.models.resnet18(weights=None)
        # The cache file exists, so the weights API loads it and never touches the network.
        model.load_state_dict(_imagenet_weights().get_state_dict(progress=False, map_location="cpu", weights_only=True))
        model.fc = torch.nn.Identity()
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        if on_cpu:
            from torch.fx.experimental.optimization import fuse

            model = fuse(model)  # conv+BN folding: one pass less over every activation
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1) * 255.0
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1) * 255.0

    def input_tensor(self, patches: np.ndarray):
        """(N, P, P, 3) uint8 -> ImageNet-normalised float (N, 3, P, P) channels_last tensor on the device."""
        import torch

        # NHWC uint8 -> NCHW view whose memory is already channels_last.
        x = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device).permute(0, 3, 1, 2).float()
        return ((x - self._mean) / self._std).contiguous(memory_format=torch.channels_last)

    def _forward(self, patches: np.ndarray) -> np.ndarray:
        import torch

        x = self.input_tensor(patches)
        if self.precision == "fp32":
            features = self.model(x)
        else:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(self.device.type, dtype=dtype):
                features = self.model(x)
        return features.float().cpu().numpy()

    def describe(self, eyes: np.ndarray, mouth: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        import torch

        eyes, mouth = _check_patches(eyes, mouth)
        n = len(eyes)
        out = np.empty((n, self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                features = self._forward(np.concatenate([eyes[start:stop], mouth[start:stop]]))
                count = stop - start
                halves = np.hstack([_l2_normalise(features[:count]), _l2_normalise(features[count:])])
                out[start:stop] = halves / np.sqrt(2.0, dtype=np.float32)
        return out


class LandmarkGeometryDescriptor:
    """Weight-free: eye, brow and mouth landmarks after a similarity fit (on eyes + nose) to the mean
    face, minus the mean face, L2-normalised. Subtracting the mean makes the cosine compare
    deviations (expression, identity shape) rather than the face shape everyone shares.
    """

    kind = GEOMETRY_KIND
    POINTS = np.concatenate([BROWS, EYES, MOUTH])
    dim = 2 * len(POINTS)
    weights_sha256 = None

    def describe(self, eyes: np.ndarray | None, mouth: np.ndarray | None, landmarks: np.ndarray) -> np.ndarray:
        sets = np.asarray(landmarks, dtype=np.float64)
        if sets.ndim != 3 or sets.shape[1:] != (68, 2):
            raise ValueError(f"expected (N, 68, 2) landmarks, got {sets.shape}")
        rows = np.empty((len(sets), self.dim), dtype=np.float64)
        for i, shape in enumerate(sets):
            normalised = transform_points(similarity_matrix(shape[RIGID_POINTS], MEAN_SHAPE[RIGID_POINTS]), shape)
            rows[i] = (normalised[self.POINTS] - MEAN_SHAPE[self.POINTS]).ravel()
        return _l2_normalise(rows)


def make_descriptor(kind: str = "auto", device=None) -> PatchDescriptor:
    """"auto": the ResNet-18 descriptor when its weights are cached, else landmark geometry."""
    if kind == "auto":
        kind = RESNET18_KIND if resnet18_weights_path().is_file() else GEOMETRY_KIND
    if kind == RESNET18_KIND:
        return ResNet18PatchDescriptor(device=device)
    if kind == GEOMETRY_KIND:
        return LandmarkGeometryDescriptor()
    raise ValueError(f"unknown descriptor kind {kind!r}; expected 'auto', {RESNET18_KIND!r} or {GEOMETRY_KIND!r}")
