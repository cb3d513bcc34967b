"""Image decoding and the evaluation input pipeline: crop, optional alignment, resize, 3 channels, ImageNet norm."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import click
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from train.evaluation.datasets import ImageRecord

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_IMAGE_SIZE = 112  # input side when neither --image-size nor the backbone says
IMAGE_SIZE_RANGE = (16, 1024)  # of --image-size, and of a backbone's recorded input_size
# Larger images are not decoded (counted as "image too large"): 8192^2 RGB is 200 MB, faces need far less.
MAX_IMAGE_PIXELS = 8192 * 8192
CROP_SCALE_RANGE = (0.8, 1.0)  # fine-tuning augmentation: random square crop of 80-100 % of the side


@dataclass(frozen=True)
class Preprocessing:
    image_size: int = 112
    align: bool = False
    normalisation: str = "imagenet"
    # central fraction of the aligned face the network sees (aligned images only; others are used as found)
    face_crop: float = 1.0

    def as_dict(self) -> dict:
        return asdict(self)


def preprocessing_for(trained: dict, image_size: int | None, align: bool,
                      face_crop: float | None) -> tuple[Preprocessing, dict]:
    """The preprocessing to apply to a backbone whose training recorded `trained` (train/weights_file.py
    keys, strings), with explicit options (None: not given) taking precedence; and a record of it for
    results.json: the settings plus, per setting, "option", "backbone" or "default"."""
    sources = {}

    def number(key: str, kind, low, high, option: str):
        """The recorded value of `key` when it is a number in [low, high]; None when not recorded. The
        metadata comes from a file another lab may have written: anything else is refused, naming the
        option that replaces it."""
        if key not in trained:
            return None
        text = str(trained[key]).strip()
        try:
            value = kind(text)
        except (ValueError, OverflowError):
            value = None
        if value is None or not math.isfinite(value) or not low <= value <= high:
            raise click.ClickException(f"the backbone's metadata gives {key} {text[:40]!r}, not a number in "
                                       f"[{low}, {high}]; give {option} to evaluate it")
        return value

    trained_size = number("input_size", int, *IMAGE_SIZE_RANGE, "--image-size") if image_size is None else None
    if image_size is not None:
        size, sources["image_size"] = image_size, "option"
    elif trained_size is not None:
        size, sources["image_size"] = trained_size, "backbone"
    else:
        size, sources["image_size"] = DEFAULT_IMAGE_SIZE, "default"
    # The network saw the central face_crop of the aligned face, resized to `resize`, through an
    # input_size window: a central face_crop * input_size / resize of the face on average.
    uses_trained_crop = align and face_crop is None
    trained_crop = number("face_crop", float, 0.01, 1.0, "--face-crop") if uses_trained_crop else None
    resize = number("resize", int, 1, 65536, "--face-crop") if uses_trained_crop else None
    if not align:
        fraction, sources["face_crop"] = 1.0, "not aligned"
    elif face_crop is not None:
        fraction, sources["face_crop"] = face_crop, "option"
    elif trained_crop is not None and resize and trained_size:
        fraction, sources["face_crop"] = min(1.0, trained_crop * trained_size / resize), "backbone"
    else:
        fraction, sources["face_crop"] = 1.0, "default"
    normalisation = trained.get("normalisation", "imagenet")
    if normalisation != "imagenet":
        raise click.ClickException(f"the backbone was trained with {normalisation!r} normalisation; "
                                   "sslfer-eval applies 'imagenet' only")
    preprocessing = Preprocessing(size, align, "imagenet", round(fraction, 6))
    return preprocessing, {**preprocessing.as_dict(), "from": sources}


def image_too_large(path: str) -> str | None:
    """'30000 x 30000 pixels' when the image file's header declares more than MAX_IMAGE_PIXELS, else None
    (also for what the header reader does not know: OpenCV then decides, under its own 2^30 limit). A
    small compressed file can declare a huge image (an 875 KB PNG of 30,000^2 pixels took 6.2 GB to
    decode), so the header is read before the pixels."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:  # PIL's own limit, far above ours
        return str(error).split(" pixels")[0].replace("Image size (", "") + " pixels"
    except Exception:  # PIL raises several types for what it cannot read
        return None
    return f"{width} x {height} pixels" if width * height > MAX_IMAGE_PIXELS else None


def read_rgb(record: ImageRecord) -> np.ndarray | None:
    """HxWx3 uint8 RGB (gray replicated), cropped to the record's face box; None when undecodable or
    larger than MAX_IMAGE_PIXELS."""
    if record.pixels is not None:
        image = np.repeat(record.pixels[:, :, None], 3, axis=2)
    else:
        if not os.path.isfile(record.source) or image_too_large(record.source):
            return None
        data = np.fromfile(record.source, dtype=np.uint8)
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


def aligned_side(preprocessing: Preprocessing) -> int:
    """Side to align at so that its central face_crop is image_size pixels (no resampling after the warp)."""
    return max(preprocessing.image_size, int(round(preprocessing.image_size / preprocessing.face_crop)))


def centre_square(image: np.ndarray, side: int) -> np.ndarray:
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    return np.ascontiguousarray(image[top:top + side, left:left + side])


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

            self._aligner = FaceAligner(aligned_side(self.preprocessing), self.dlib_model_dir)
        aligned = self._aligner(image_rgb)
        return None if aligned is None else centre_square(aligned, self.preprocessing.image_size)

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
