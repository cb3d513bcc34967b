"""The embedded demo sample: synthetic talking-face clips of two public-domain portraits.

NASA's portrait of Eileen Collins ships with scikit-image and the US Navy's portrait of Grace Hopper with
matplotlib; both are public domain. Clips are written in VoxCeleb2's layout so `sslfer-prep voxceleb` reads
them unchanged, and a held-out probe set of aligned frames carries the known expression parameters as labels.
"""
from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sslfer_core.synthetic_faces import ExpressionParams, render_expression, smooth_schedule

CLIP_FPS = 10.0
CLIP_SIDE = 256


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


def write_demo_sample(out: Path, detector, *, clips_per_identity: int = 4, seconds: float = 12.0,
                      probe_clips_per_identity: int = 2, probe_seconds: float | None = None, probe_every: int = 2,
                      seed: int = 0) -> dict:
    """Write training clips (VoxCeleb2 layout) and a labelled probe set into `out`. Returns counts.

    `probe_seconds` (default: `seconds`) lets short training clips keep a full-length probe; zero clips of
    either kind are allowed (probe only, or training clips with an empty probe.csv).
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
                aligned = align_face(frame, lms, 128)
                name = f"{portrait.identity}_probe{clip}_{t:04d}.png"
                cv2.imwrite(str(probe_dir / name), cv2.cvtColor(aligned.image, cv2.COLOR_RGB2BGR))
                rows.append({"path": f"probe/{name}", "label": params.label(), "valence": f"{params.smile:.4f}",
                             "arousal": f"{max(params.mouth_open, params.brow_raise):.4f}", "subject": portrait.identity})
    with open(out / "probe.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "valence", "arousal", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    counts["probe_images"] = len(rows)
    return counts
