"""The embedded demo sample: synthetic talking-face clips of two public-domain portraits.

NASA's portrait of Eileen Collins ships with scikit-image and the US Navy's portrait of Grace Hopper with
matplotlib; both are public domain. Clips are written in VoxCeleb2's layout so `sslfer-prep voxceleb` reads
them unchanged. Two held-out probe sets carry the known expression parameters as labels: aligned frames
(probe.csv, for the image commands) and short aligned clips that each show one expression (video-probe.csv,
for `sslfer-eval dfer`).
"""
from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sslfer_core.synthetic_faces import (
    EXPRESSION_CLASSES, PARAM_NAMES, ExpressionParams, render_expression, smooth_schedule,
)

CLIP_FPS = 10.0
CLIP_SIDE = 256
PROBE_SIDE = 128  # aligned probe images and clips, as sslfer-prep stores faces
# Video probe clips per (identity, expression): the first ones train the head, then one validation, one test.
VIDEO_PROBE_SPLITS = ("train", "train", "val", "test")


@dataclass(frozen=True)
class Portrait:
    identity: str
    image: np.ndarray  # RGB, CLIP_SIDE square, face roughly centred
    landmarks: np.ndarray  # (68,2) in that image


def _load_photos() -> dict[str, np.ndarray]:
    import matplotlib.cbook
    import skimage.data

    hopper_path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    hopper = cv2.cvtColor(cv2.imread(str(hopper_path)), cv2.COLOR_BGR2RGB)
    return {"id00001": skimage.data.astronaut(), "id00002": hopper}


def _centre_on_face(photo: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Scale so the face is ~100 px wide (VoxCeleb-like framing) and centre it in a CLIP_SIDE square.
    face_width = np.linalg.norm(landmarks[16] - landmarks[0])
    scale = 100.0 / face_width
    centre = landmarks.mean(0)
    matrix = np.array([[scale, 0, CLIP_SIDE / 2 - scale * centre[0]], [0, scale, CLIP_SIDE / 2 - scale * centre[1]]])
    image = cv2.warpAffine(photo, matrix, (CLIP_SIDE, CLIP_SIDE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    moved = landmarks @ matrix[:, :2].T + matrix[:, 2]
    return image, moved.astype(np.float32)


def load_portraits(detector) -> list[Portrait]:
    """`detector` is a sslfer_core FaceDetector; the portraits' landmarks come from it, not from a table."""
    portraits = []
    for identity, photo in _load_photos().items():
        found = detector.detect(photo)
        if found is None:
            raise RuntimeError(f"no face found in the {identity} portrait; the installed photo differs from the expected one")
        image, landmarks = _centre_on_face(photo, found.landmarks)
        portraits.append(Portrait(identity, image, landmarks))
    return portraits


def write_clip(path: Path, portrait: Portrait, schedule: np.ndarray) -> list[np.ndarray]:
    """Render and write one clip; returns the per-frame landmarks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".partial-" + path.name)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, (CLIP_SIDE, CLIP_SIDE))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4 files here (no mp4v encoder)")
    landmarks = []
    try:
        for values in schedule:
            frame, lms = render_expression(portrait.image, portrait.landmarks, ExpressionParams.from_array(values))
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            landmarks.append(lms)
    finally:
        writer.release()
    tmp.replace(path)
    return landmarks


def expression_clip_schedule(rng: np.random.Generator, label: str, num_frames: int) -> np.ndarray:
    """(T, 4) parameters of a clip that shows one expression: it rises from near neutral to an apex within
    the first third and holds there, while the other expressions stay below the labelling threshold and
    the head turns a little. `ExpressionParams.label` gives `label` for every frame after the rise."""
    params = np.zeros((num_frames, len(PARAM_NAMES)))
    params[:, :3] = rng.uniform(0.0, 0.15, size=3)  # low background activity, constant over the clip
    if label != "neutral":
        column = PARAM_NAMES.index(label)
        rise = max(1, num_frames // 3)
        ramp = np.minimum(np.arange(num_frames) / rise, 1.0)
        params[:, column] = params[0, column] + ramp * (rng.uniform(0.6, 1.0) - params[0, column])
    phase = rng.uniform(0, 2 * np.pi)
    params[:, 3] = 0.3 * np.sin(phase + np.linspace(0, np.pi, num_frames))
    return params


def write_aligned_clip(path: Path, portrait: Portrait, schedule: np.ndarray) -> None:
    """Render a clip, align every frame with its known landmarks and write it as an mp4 of aligned faces."""
    from sslfer_core.face_alignment import align_face

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(".partial-" + path.name)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), CLIP_FPS, (PROBE_SIDE, PROBE_SIDE))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write mp4 files here (no mp4v encoder)")
    try:
        for values in schedule:
            frame, lms = render_expression(portrait.image, portrait.landmarks, ExpressionParams.from_array(values))
            writer.write(cv2.cvtColor(align_face(frame, lms, PROBE_SIDE).image, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    tmp.replace(path)


def write_video_probe(out: Path, portraits: list[Portrait], *, seconds: float, seed: int) -> int:
    """Labelled aligned clips, len(VIDEO_PROBE_SPLITS) per (identity, expression), listed in video-probe.csv
    (path,label,split) with their split; returns the number of clips."""
    num_frames = int(round(seconds * CLIP_FPS))
    rows = []
    for portrait in portraits:
        for label in EXPRESSION_CLASSES:
            for number, split in enumerate(VIDEO_PROBE_SPLITS):
                rng = np.random.default_rng([seed + 2000, zlib.crc32(portrait.identity.encode()),
                                             zlib.crc32(label.encode()), number])
                name = f"video-probe/{portrait.identity}_{label}_{number}.mp4"
                write_aligned_clip(out / name, portrait, expression_clip_schedule(rng, label, num_frames))
                rows.append({"path": name, "label": label, "split": split})
    with open(out / "video-probe.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def write_demo_sample(out: Path, detector, *, clips_per_identity: int = 4, seconds: float = 12.0,
                      probe_clips_per_identity: int = 2, probe_seconds: float | None = None, probe_every: int = 2,
                      video_probe_seconds: float = 0.0, seed: int = 0) -> dict:
    """Write training clips (VoxCeleb2 layout) and labelled probe sets into `out`. Returns counts.

    `probe_seconds` (default: `seconds`) lets short training clips keep a full-length probe; zero clips of
    either kind are allowed (probe only, or training clips with an empty probe.csv). `video_probe_seconds`
    > 0 also writes the labelled video probe (video-probe.csv) with clips of that length.
    """
    from sslfer_core.face_alignment import align_face

    out = Path(out)
    portraits = load_portraits(detector)
    num_frames = int(seconds * CLIP_FPS)
    probe_frames = int((seconds if probe_seconds is None else probe_seconds) * CLIP_FPS)
    counts = {"train_clips": 0, "probe_images": 0}
    for portrait in portraits:
        for clip in range(clips_per_identity):
            rng = np.random.default_rng([seed, zlib.crc32(portrait.identity.encode()), clip])
            write_clip(out / "mp4" / portrait.identity / f"synth{clip:02d}" / "00001.mp4", portrait,
                       smooth_schedule(rng, num_frames, CLIP_FPS))
            counts["train_clips"] += 1
    probe_dir = out / "probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for portrait in portraits:
        for clip in range(probe_clips_per_identity):
            # Probe clips use their own seeds: no probe frame appears in the training clips.
            rng = np.random.default_rng([seed + 1000, zlib.crc32(portrait.identity.encode()), clip])
            schedule = smooth_schedule(rng, probe_frames, CLIP_FPS)
            for t in range(0, probe_frames, probe_every):
                params = ExpressionParams.from_array(schedule[t])
                frame, lms = render_expression(portrait.image, portrait.landmarks, params)
                aligned = align_face(frame, lms, PROBE_SIDE)
                name = f"{portrait.identity}_probe{clip}_{t:04d}.png"
                cv2.imwrite(str(probe_dir / name), cv2.cvtColor(aligned.image, cv2.COLOR_RGB2BGR))
                rows.append({"path": f"probe/{name}", "label": params.label(), "valence": f"{params.smile:.4f}",
                             "arousal": f"{max(params.mouth_open, params.brow_raise):.4f}", "subject": portrait.identity})
    with open(out / "probe.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "valence", "arousal", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    counts["probe_images"] = len(rows)
    counts["video_probe_clips"] = write_video_probe(out, portraits, seconds=video_probe_seconds, seed=seed) \
        if video_probe_seconds > 0 else 0
    return counts
