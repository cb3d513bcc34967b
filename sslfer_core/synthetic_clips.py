"""Labelled clips of expression changes for dynamic-FER tests and benchmarks, rendered without any data.

Each subject is a drawn face (skin, eyes, brows, nose, lips placed on the alignment template's 68 landmarks,
with its own colours, size and position). A clip starts neutral and, from a random onset, ramps one expression
(sslfer_core.synthetic_faces: smile, mouth open, brow raise) to a random peak, warped by the same thin-plate
spline the demo uses. The label is the expression that changes, so it shows in the motion, not in the first
frame. This is a stand-in for DFEW-like data: faces are cartoons and motion is simple.
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from sslfer_core.face_alignment import template_landmarks
from sslfer_core.synthetic_faces import ExpressionParams, render_expression

CHANGE_CLASSES = ("smile", "mouth_open", "brow_raise")  # ExpressionParams fields, one per class
PEAK_RANGE = (0.6, 1.0)  # expression strength reached at the end of the ramp
RAMP_FRACTION = (0.3, 0.6)  # ramp length as a fraction of the clip
YAW_JITTER = 0.1


def drawn_face(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image (size, size, 3), its 68 landmarks (68, 2) float32): a cartoon face of random colours,
    scale and position."""
    scale = rng.uniform(0.85, 1.05)
    centre = np.array([size / 2, size / 2])
    landmarks = (template_landmarks(size) - centre) * scale + centre + rng.uniform(-0.04, 0.04, 2) * size
    background = rng.integers(30, 220, 3)
    skin = rng.integers(120, 240, 3)
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    image = np.ascontiguousarray(image + rng.integers(-12, 13, image.shape), dtype=np.int32).clip(0, 255).astype(np.uint8)
    jaw = landmarks[0:17]
    top = landmarks[17:27].min(axis=0)[1]
    face_centre = (float(jaw[:, 0].mean()), float((top + jaw[:, 1].max()) / 2))
    axes = (float((jaw[:, 0].max() - jaw[:, 0].min()) / 2 * 1.05), float((jaw[:, 1].max() - top) / 2 * 1.25))
    cv2.ellipse(image, (int(face_centre[0]), int(face_centre[1])), (int(axes[0]), int(axes[1])), 0, 0, 360,
                tuple(int(v) for v in skin), -1, cv2.LINE_AA)
    dark = tuple(int(v) for v in rng.integers(10, 60, 3))
    line = max(1, size // 48)
    pts = lambda idx: np.round(landmarks[idx]).astype(np.int32)
    for brow in (slice(17, 22), slice(22, 27)):
        cv2.polylines(image, [pts(brow)], False, dark, line + 1, cv2.LINE_AA)
    for eye in (slice(36, 42), slice(42, 48)):
        cv2.fillPoly(image, [pts(eye)], (245, 245, 245), cv2.LINE_AA)
        centre_eye = landmarks[eye].mean(axis=0)
        cv2.circle(image, (int(centre_eye[0]), int(centre_eye[1])), max(1, size // 40), dark, -1, cv2.LINE_AA)
    cv2.polylines(image, [pts(slice(27, 31))], False, tuple(int(v * 0.7) for v in skin), line, cv2.LINE_AA)
    lips = tuple(int(v) for v in (rng.integers(150, 220), rng.integers(30, 80), rng.integers(40, 90)))
    cv2.fillPoly(image, [pts(slice(48, 60))], lips, cv2.LINE_AA)
    return image, landmarks.astype(np.float32)


def expression_schedule(rng: np.random.Generator, kind: str, frames: int) -> list[ExpressionParams]:
    """Neutral, then `kind` ramping linearly to a random peak from a random onset; small random head turn."""
    if kind not in CHANGE_CLASSES:
        raise ValueError(f"unknown expression change {kind!r}; use one of {', '.join(CHANGE_CLASSES)}")
    peak = rng.uniform(*PEAK_RANGE)
    ramp = max(1, int(round(rng.uniform(*RAMP_FRACTION) * frames)))
    onset = int(rng.integers(0, max(1, frames - ramp)))
    yaw = rng.uniform(-YAW_JITTER, YAW_JITTER)
    schedule = []
    for t in range(frames):
        strength = peak * float(np.clip((t - onset + 1) / ramp, 0.0, 1.0))
        schedule.append(ExpressionParams(**{kind: strength, "yaw": yaw}))
    return schedule


def expression_clip(face: np.ndarray, landmarks: np.ndarray, kind: str, frames: int,
                    rng: np.random.Generator) -> np.ndarray:
    """(frames, H, W, 3) uint8 RGB: the face changing to `kind`."""
    return np.stack([render_expression(face, landmarks, params)[0]
                     for params in expression_schedule(rng, kind, frames)])


def write_expression_clips(root: Path, *, subjects: int = 4, clips_per_class: int = 1, frames: int = 12,
                           size: int = 64, seed: int = 0, classes=CHANGE_CLASSES) -> Path:
    """Frame folders root/s{subject}_{class}_{k}/000.png.. and root/clips.csv (path,label,subject), the generic
    video CSV `sslfer-eval dfer --format video-csv` reads. Returns the CSV's path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(subjects):
        rng = np.random.default_rng([seed, s])
        face, landmarks = drawn_face(rng, size)
        for kind in classes:
            for k in range(clips_per_class):
                name = f"s{s:02d}_{kind}_{k}"
                folder = root / name
                folder.mkdir(exist_ok=True)
                for t, frame in enumerate(expression_clip(face, landmarks, kind, frames, rng)):
                    cv2.imwrite(str(folder / f"{t:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                rows.append({"path": name, "label": kind, "subject": f"s{s:02d}"})
    path = root / "clips.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    return path


__all__ = ["CHANGE_CLASSES", "drawn_face", "expression_schedule", "expression_clip", "write_expression_clips"]
