"""Grad-CAM of a backbone's last convolutional block (layer4), drawn as a PNG grid of (image | overlay) pairs.

Target: the L2 norm of the pooled feature (what the backbone responds to at all), or one class logit of a linear
head saved by `sslfer-eval linear` (what it uses for that expression).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslfer_core.finite import describe_non_finite, non_finite_names
from train.evaluation.images import IMAGENET_MEAN, IMAGENET_STD
from train.weights_file import WeightsFileError, load_torch_file

HEAD_KEYS = ("weight", "bias", "mean", "std", "class_names")  # what train/evaluation/linear_probe.py saves
OVERLAY_WEIGHT = 0.45  # share of the heat map in the blended overlay
GRID_GAP_PX = 4


@dataclass
class LinearHead:
    weight: torch.Tensor  # (C, D)
    bias: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    class_names: list[str]

    @classmethod
    def load(cls, path) -> "LinearHead":
        """A head written by `sslfer-eval linear --out`; anything else (a backbone file, a damaged or
        foreign file) raises WeightsFileError with one line."""
        head = load_torch_file(path)
        if not isinstance(head, dict) or not all(key in head for key in HEAD_KEYS):
            found = ", ".join(sorted(map(str, head))[:5]) if isinstance(head, dict) else type(head).__name__
            raise WeightsFileError(f"{path}: not a linear head of `sslfer-eval linear --out` (it needs "
                                   f"{', '.join(HEAD_KEYS)}; found {found or 'nothing'})")
        weight, bias, mean, std, names = (head[key] for key in HEAD_KEYS)
        tensors = {"weight": weight, "bias": bias, "mean": mean, "std": std}
        if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors.values()):
            raise WeightsFileError(f"{path}: weight, bias, mean and std of a head are float tensors")
        if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
            raise WeightsFileError(f"{path}: class_names of a head is a list of names")
        classes, width = (weight.shape if weight.dim() == 2 else (-1, -1))
        if weight.dim() != 2 or tuple(bias.shape) != (classes,) or tuple(mean.shape) != (width,) \
                or tuple(std.shape) != (width,) or len(names) != classes:
            raise WeightsFileError(f"{path}: inconsistent head: weight {tuple(weight.shape)}, bias {tuple(bias.shape)}, "
                                   f"mean {tuple(mean.shape)}, std {tuple(std.shape)}, {len(names)} class names")
        bad = non_finite_names(tensors.items())
        if bad:
            raise WeightsFileError(f"{path}: refusing a head with {describe_non_finite(bad, 4)}")
        if not bool((std > 0).all()):
            raise WeightsFileError(f"{path}: its feature std holds zero or negative values")
        return cls(weight.float(), bias.float(), mean.float(), std.float(), list(names))

    @property
    def feature_dim(self) -> int:
        return int(self.weight.shape[1])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features - self.mean) / self.std) @ self.weight.T + self.bias


def grad_cam(model: nn.Module, images: torch.Tensor, target) -> np.ndarray:
    """(B, H, W) maps in [0, 1]. `target(features) -> (B,)` scores whose gradients weight the layer4 channels."""
    captured = {}
    hook = model.layer4.register_forward_hook(lambda module, args, output: captured.__setitem__("act", output))
    try:
        model.eval()
        with torch.enable_grad():
            images = images.detach().clone().requires_grad_(True)  # so layer4 joins the graph even if weights are frozen
            scores = target(model(images))
            activations = captured["act"]
            gradients, = torch.autograd.grad(scores.sum(), activations)
    finally:
        hook.remove()
    channel_weights = gradients.mean(dim=(2, 3), keepdim=True)
    cams = F.relu((channel_weights * activations).sum(dim=1, keepdim=True)).detach()
    cams = F.interpolate(cams, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cams.flatten(1).max(dim=1).values.clamp_min(1e-12)
    return (cams / peak[:, None, None]).cpu().numpy()


def feature_norm_target(features: torch.Tensor) -> torch.Tensor:
    return features.norm(dim=1)


def class_target(head: LinearHead, class_indices: torch.Tensor):
    def target(features: torch.Tensor) -> torch.Tensor:
        return head.logits(features).gather(1, class_indices[:, None])[:, 0]
    return target


def display_rgb(images: torch.Tensor) -> np.ndarray:
    """Undo ImageNet normalisation: (B, 3, H, W) tensor -> (B, H, W, 3) uint8 RGB."""
    array = images.detach().cpu().numpy().transpose(0, 2, 3, 1) * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)


def overlay(image_rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    heat_bgr = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)
    image_bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    return cv2.addWeighted(heat_bgr, OVERLAY_WEIGHT, image_bgr, 1.0 - OVERLAY_WEIGHT, 0)


def _caption(tile_bgr: np.ndarray, text: str) -> None:
    if not text:
        return
    scale = tile_bgr.shape[0] / 280.0
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    scale *= min(1.0, (tile_bgr.shape[1] - 6) / max(width, 1))  # shrink long captions to fit the tile
    origin = (3, tile_bgr.shape[0] - 5)
    cv2.putText(tile_bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile_bgr, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def saliency_grid(images_rgb: np.ndarray, cams: np.ndarray, *, tile: int = 160, columns: int = 4,
                  captions: list[str] | None = None) -> np.ndarray:
    """BGR uint8 grid; each cell is (image | overlay); `columns` cells per row."""
    count = len(images_rgb)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    cell_w = 2 * tile + GRID_GAP_PX
    grid = np.full((rows * (tile + GRID_GAP_PX) + GRID_GAP_PX, columns * (cell_w + GRID_GAP_PX) + GRID_GAP_PX, 3),
                   255, dtype=np.uint8)
    for i in range(count):
        image = cv2.resize(images_rgb[i], (tile, tile), interpolation=cv2.INTER_LINEAR)
        cam = cv2.resize(cams[i].astype(np.float32), (tile, tile), interpolation=cv2.INTER_LINEAR)
        left_tile = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        right_tile = overlay(image, cam)
        _caption(right_tile, captions[i] if captions else "")
        top = GRID_GAP_PX + (i // columns) * (tile + GRID_GAP_PX)
        left = GRID_GAP_PX + (i % columns) * (cell_w + GRID_GAP_PX)
        grid[top:top + tile, left:left + tile] = left_tile
        grid[top:top + tile, left + tile + GRID_GAP_PX:left + cell_w] = right_tile
    return grid
