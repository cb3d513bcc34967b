"""Synthetic talking-face frames from one still photo, driven by known expression parameters.

The demo needs video the project may legally carry. We warp a public-domain portrait with a thin-plate
spline that moves its 68 landmarks (open the mouth, smile, raise the brows, turn the head), so every
frame comes with exact expression parameters that double as probe labels. This is a stand-in for real
video, not a face model: identities are few and motion is simple.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PARAM_NAMES = ("mouth_open", "smile", "brow_raise", "yaw")
EXPRESSION_CLASSES = ("neutral", "mouth_open", "smile", "brow_raise")

JAW = slice(0, 17)
BROWS = slice(17, 27)
NOSE = slice(27, 36)
UPPER_LIDS = [37, 38, 43, 44]
MOUTH_CORNERS = [48, 54, 60, 64]
LOWER_LIP = [55, 56, 57, 58, 59, 65, 66, 67]
UPPER_INNER_LIP = [61, 62, 63]
CHIN = list(range(5, 12))
INNER_LIP_RING = list(range(60, 68))


@dataclass(frozen=True)
class ExpressionParams:
    mouth_open: float = 0.0  # 0..1
    smile: float = 0.0  # 0..1
    brow_raise: float = 0.0  # 0..1
    yaw: float = 0.0  # -1..1, head turn

    @classmethod
    def from_array(cls, values) -> "ExpressionParams":
        return cls(*(float(v) for v in values))

    def label(self, threshold: float = 0.35) -> str:
        """The dominant expression, or neutral when none is pronounced."""
        strengths = (self.mouth_open, self.smile, self.brow_raise)
        best = int(np.argmax(strengths))
        return EXPRESSION_CLASSES[best + 1] if strengths[best] >= threshold else "neutral"


def expression_landmarks(base: np.ndarray, params: ExpressionParams) -> np.ndarray:
    """Move the 68 landmarks of a neutral face to show `params`. Displacements scale with face size."""
    lms = np.asarray(base, np.float64).copy()
    mouth_width = np.linalg.norm(lms[54] - lms[48])
    eye_distance = np.linalg.norm(lms[36:42].mean(0) - lms[42:48].mean(0))
    face_width = np.linalg.norm(lms[16] - lms[0])

    drop = params.mouth_open * 0.35 * mouth_width
    lms[LOWER_LIP, 1] += drop
    lms[CHIN, 1] += 0.6 * drop
    lms[UPPER_INNER_LIP, 1] -= 0.1 * drop

    centre_x = lms[48:68, 0].mean()
    for idx in MOUTH_CORNERS:
        side = np.sign(lms[idx, 0] - centre_x)
        lms[idx, 0] += side * params.smile * 0.18 * mouth_width
        lms[idx, 1] -= params.smile * 0.16 * mouth_width

    lms[BROWS, 1] -= params.brow_raise * 0.22 * eye_distance
    lms[UPPER_LIDS, 1] -= params.brow_raise * 0.05 * eye_distance

    # Head turn: inner features slide sideways, the nose most; the far jaw line compresses.
    lms[17:68, 0] += params.yaw * 0.07 * face_width
    lms[NOSE, 0] += params.yaw * 0.05 * face_width
    jaw_centre = lms[8, 0]
    lms[JAW, 0] = jaw_centre + (lms[JAW, 0] - jaw_centre) * (1 - 0.12 * params.yaw * np.sign(lms[JAW, 0] - jaw_centre))
    return lms.astype(np.float32)


def _tps_kernel(r2: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r2 > 0, r2 * np.log(r2), 0.0)


def thin_plate_backward_map(src_points: np.ndarray, dst_points: np.ndarray, shape: tuple[int, int]):
    """Maps for cv2.remap so that output pixel dst_points[i] samples input pixel src_points[i]."""
    dst = np.asarray(dst_points, np.float64)
    src = np.asarray(src_points, np.float64)
    n = len(dst)
    d2 = ((dst[:, None, :] - dst[None, :, :]) ** 2).sum(-1)
    system = np.zeros((n + 3, n + 3))
    system[:n, :n] = _tps_kernel(d2) + 1e-6 * np.eye(n)  # tiny regulariser keeps the solve stable
    system[:n, n] = 1
    system[:n, n + 1:] = dst
    system[n, :n] = 1
    system[n + 1:, :n] = dst.T
    rhs = np.zeros((n + 3, 2))
    rhs[:n] = src
    coeffs = np.linalg.solve(system, rhs)
    h, w = shape
    # The spline is smooth: evaluate it on a coarse grid and interpolate (16x fewer kernel evaluations).
    step = 4
    ys, xs = np.mgrid[0:h + step:step, 0:w + step:step].astype(np.float64)
    grid = np.stack([xs.ravel(), ys.ravel()], 1)
    kernel = _tps_kernel(((grid[:, None, :] - dst[None, :, :]) ** 2).sum(-1))
    mapped = (kernel @ coeffs[:n] + coeffs[n] + grid @ coeffs[n + 1:]).reshape(xs.shape + (2,)).astype(np.float32)
    # Bilinear upsampling of the coarse map; coarse node i sits at full-resolution pixel i * step.
    fine_y, fine_x = np.mgrid[0:h, 0:w].astype(np.float32) / step
    map_x = cv2.remap(mapped[..., 0], fine_x, fine_y, cv2.INTER_LINEAR)
    map_y = cv2.remap(mapped[..., 1], fine_x, fine_y, cv2.INTER_LINEAR)
    return map_x, map_y


def _anchor_points(shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
    # Fixed points on the border and on a ring around the head keep the background still.
    h, w = shape
    border = [(x, y) for x in (0, w / 2, w - 1) for y in (0, h / 2, h - 1) if (x, y) != (w / 2, h / 2)]
    centre = landmarks.mean(0)
    radius = 1.5 * np.linalg.norm(landmarks - centre, axis=1).max()
    ring = [centre + radius * np.array([np.cos(a), np.sin(a)]) for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)]
    return np.concatenate([np.array(border, np.float64), np.array(ring)])


def render_expression(photo: np.ndarray, landmarks: np.ndarray, params: ExpressionParams) -> tuple[np.ndarray, np.ndarray]:
    """Warp `photo` (RGB) so its landmarks move to show `params`. Returns the frame and its landmarks."""
    base = np.asarray(landmarks, np.float64)
    target = expression_landmarks(base, params).astype(np.float64)
    anchors = _anchor_points(photo.shape[:2], base)
    map_x, map_y = thin_plate_backward_map(
        np.concatenate([base, anchors]), np.concatenate([target, anchors]), photo.shape[:2]
    )
    frame = cv2.remap(photo, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if params.mouth_open > 0.05:
        # The photo has no mouth interior: paint one inside the opened inner lips.
        cavity = np.zeros(photo.shape[:2], np.uint8)
        cv2.fillPoly(cavity, [np.round(target[INNER_LIP_RING]).astype(np.int32)], 255)
        cavity = cv2.GaussianBlur(cavity, (5, 5), 0).astype(np.float32)[..., None] / 255.0
        dark = np.array([60, 20, 25], np.float32)
        frame = np.clip(frame * (1 - cavity) + dark * cavity, 0, 255).astype(np.uint8)
    return frame, target.astype(np.float32)


def smooth_schedule(rng: np.random.Generator, num_frames: int, fps: float) -> np.ndarray:
    """(T, 4) expression parameters that drift smoothly, with episodes of each expression."""
    t = np.arange(num_frames) / fps
    params = np.zeros((num_frames, 4))
    for j in range(3):
        # Sum of slow sines, rectified: expressions come and go every few seconds.
        wave = sum(rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * rng.uniform(0.08, 0.35) * t + rng.uniform(0, 2 * np.pi))
                   for _ in range(2))
        params[:, j] = np.clip(wave * 0.8, 0, 1)
    params[:, 3] = 0.6 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t + rng.uniform(0, 2 * np.pi))
    return params
