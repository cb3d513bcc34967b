"""Tiny synthetic image datasets for the sslfer-eval tests (written to tmp_path, a few KB each)."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

PATTERNS = ("horizontal", "vertical", "checker")


def pattern_image(kind: str, rng: np.random.Generator, side: int = 32) -> np.ndarray:
    """Gray uint8 stripes / checkerboard with a random phase and noise: easy for a linear probe, never identical."""
    period = 8
    phase = int(rng.integers(0, period))
    y, x = np.mgrid[0:side, 0:side]
    if kind == "horizontal":
        on = ((y + phase) // (period // 2)) % 2
    elif kind == "vertical":
        on = ((x + phase) // (period // 2)) % 2
    else:
        on = (((x + phase) // (period // 2)) + ((y + phase) // (period // 2))) % 2
    image = 60 + 140 * on + rng.normal(0, 12, size=(side, side))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_pattern_folder(root: Path, per_class: dict[str, int], seed: int = 0,
                         classes: tuple[str, ...] = PATTERNS) -> Path:
    """<root>/<split>/<class>/<n>.png with the given number of images per class in each split."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for kind in classes:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                cv2.imwrite(str(folder / f"{i:03d}.png"), pattern_image(kind, rng))
    return root


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
