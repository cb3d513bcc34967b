"""Small readers of the voxceleb_mini clips for the face-toolkit tests (a few frames each, kept cheap)."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from needs import dlib_models


def dlib_models_or_skip():
    """The dlib models; a failure when the installed package's lookup breaks (needs.dlib_models)."""
    return dlib_models()


def clip_rows(root: Path) -> list[dict]:
    with open(root / "SOURCES.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def read_frames(path: Path, indices) -> list[np.ndarray]:
    """RGB frames at the given (sorted-able) indices, decoded sequentially up to the last one."""
    wanted = sorted(set(int(i) for i in indices))
    capture = cv2.VideoCapture(str(path))
    frames, index = {}, 0
    while index <= wanted[-1]:
        ok, frame = capture.read()
        if not ok:
            break
        if index in wanted:
            frames[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        index += 1
    capture.release()
    return [frames[i] for i in wanted if i in frames]


def one_clip_per_identity(root: Path) -> list[dict]:
    seen, rows = set(), []
    for row in clip_rows(root):
        if row["identity"] not in seen:
            seen.add(row["identity"])
            rows.append(row)
    return rows
