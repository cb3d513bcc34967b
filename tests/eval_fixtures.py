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


# val of write_skewed_folder, in file order: a = 2 X + 8 Y, b = 1 X, c = 1 Z
SKEWED_VAL_TRUTH = ["a"] * 10 + ["b", "c"]


def write_skewed_folder(root: Path) -> Path:
    """Three fixed images X, Y, Z. train: class a = 8 X + 32 Y, class b = 4 X, class c = 4 Z.
    For X, a is the more frequent label (8 against 4), but X is 1/5 of a and all of b: plain cross-entropy
    predicts a for X (log-odds log 2), balanced softmax, which removes the class prior, predicts b (log 5).
    val: a = 2 X + 8 Y, b = 1 X, c = 1 Z; test: a = 2 X + 2 Y, b = 2 X, c = 2 Z."""
    rng = np.random.default_rng(3)
    x, y, z = (pattern_image(kind, rng) for kind in ("horizontal", "vertical", "checker"))
    layout = {"train": [("a", x, 8), ("a", y, 32), ("b", x, 4), ("c", z, 4)],
              "val": [("a", x, 2), ("a", y, 8), ("b", x, 1), ("c", z, 1)],
              "test": [("a", x, 2), ("a", y, 2), ("b", x, 2), ("c", z, 2)]}
    for split, counts in layout.items():
        for label, image, count in counts:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            start = len(list(folder.glob("*.png")))
            for i in range(start, start + count):
                cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return root


def macro_f1(truth: list, predicted: list) -> float:
    """Mean over the true classes of 2TP / (2TP + FP + FN), written out independently of sslfer_core.metrics."""
    scores = []
    for label in sorted(set(truth)):
        tp = sum(t == p == label for t, p in zip(truth, predicted))
        fp = sum(p == label != t for t, p in zip(truth, predicted))
        fn = sum(t == label != p for t, p in zip(truth, predicted))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores)
