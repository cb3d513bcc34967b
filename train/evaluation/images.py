"""Image decoding and the evaluation input pipeline: crop, optional alignment, resize, 3 channels, ImageNet norm."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from train.evaluation.datasets import ImageRecord

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CROP_SCALE_RANGE = (0.8, 1.0)  # fine-tuning augmentation: random square crop of 80-100 % of the side


@dataclass(frozen=True)
class Preprocessing:
    image_size: int = 112
    align: bool = False
    normalisation: str = "imagenet"

    def as_dict(self) -> dict:
        return asdict(self)


def read_rgb(record: ImageRecord) -> np.ndarray | None:
    """HxWx3 uint8 RGB (gray replicated), cropped to the record's face box; None when undecodable."""
    if record.pixels is not None:
        image = np.repeat(record.pixels[:, :, None], 3, axis=2)
    else:
        data = np.fromfile(record.source, dtype=np.uint8) if os.path.isfile(record.source) else None
        decoded = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
        if decoded is None:
            return None
        image = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    if record.box is not None:
        left, top, width, height = record.box
        crop = image[max(top, 0):max(top + height, 0), max(left, 0):max(left + width, 0)]
        image = crop if crop.size else image
    return np.ascontiguousarray(image)


def normalise(image_rgb: np.ndarray, size: int) -> torch.Tensor:
    """uint8 RGB -> float tensor (3, size, size) with ImageNet mean/std."""
    if image_rgb.shape[:2] != (size, size):
        shrinking = image_rgb.shape[0] > size
        image_rgb = cv2.resize(image_rgb, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    array = (image_rgb.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def random_crop_flip(image_rgb: np.ndarray) -> np.ndarray:
    """Training augmentation drawn from torch's RNG (seeded per DataLoader worker, unlike numpy's)."""
    height, width = image_rgb.shape[:2]
    scale = CROP_SCALE_RANGE[0] + (CROP_SCALE_RANGE[1] - CROP_SCALE_RANGE[0]) * torch.rand(()).item()
    side = max(1, int(round(scale * min(height, width))))
    top = int(torch.randint(0, height - side + 1, ()).item())
    left = int(torch.randint(0, width - side + 1, ()).item())
    image_rgb = image_rgb[top:top + side, left:left + side]
    if torch.rand(()).item() < 0.5:
        image_rgb = image_rgb[:, ::-1]
    return np.ascontiguousarray(image_rgb)


class RecordImages(Dataset):
    """Items: (tensor, ok, aligned, index). An undecodable image gives a zero tensor and ok=False, so a
    batch never fails on one bad file; callers drop or mask those samples and report them."""

    def __init__(self, records: list[ImageRecord], preprocessing: Preprocessing, *, augment: bool = False,
                 dlib_model_dir: str | None = None) -> None:
        self.records = records
        self.preprocessing = preprocessing
        self.augment = augment
        self.dlib_model_dir = dlib_model_dir
        self._aligner = None  # built lazily inside each worker process

    def __len__(self) -> int:
        return len(self.records)

    def _aligned(self, image_rgb: np.ndarray) -> np.ndarray | None:
        if self._aligner is None:
            from train.evaluation.alignment import FaceAligner

            self._aligner = FaceAligner(self.preprocessing.image_size, self.dlib_model_dir)
        return self._aligner(image_rgb)

    def __getitem__(self, index: int):
        size = self.preprocessing.image_size
        image = read_rgb(self.records[index])
        if image is None:
            return torch.zeros(3, size, size), False, False, index
        aligned = False
        if self.preprocessing.align:
            warped = self._aligned(image)
            if warped is not None:
                image, aligned = warped, True
        if self.augment:
            image = random_crop_flip(image)
        return normalise(image, size), True, aligned, index
