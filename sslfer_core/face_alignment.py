"""Similarity alignment of a face to a canonical 68-point template, with optional temporal smoothing."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Index groups of dlib's 68-point scheme.
JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
NOSE = np.arange(27, 36)
LEFT_EYE = np.arange(36, 42)  # image-left
RIGHT_EYE = np.arange(42, 48)
EYES = np.arange(36, 48)
MOUTH = np.arange(48, 68)
INNER_FACE = np.arange(17, 68)

# Points that barely move with expression (eyes, nose): the alignment is fitted on these only,
# so an opening mouth or raised brows do not shift or scale the crop.
RIGID_POINTS = np.concatenate([EYES, NOSE])

# Mean 68-point shape in inter-ocular units (eye centres at (-0.5, 0) and (0.5, 0)), estimated by
# generalised Procrustes analysis over 429 dlib fits on frames of the voxceleb_mini clips
# (see procrustes_mean_shape).
MEAN_SHAPE = np.array([
    (-1.130, 0.060), (-1.113, 0.356), (-1.075, 0.650), (-1.019, 0.941),
    (-0.923, 1.216), (-0.766, 1.458), (-0.552, 1.660), (-0.299, 1.814),
    (-0.008, 1.866), (0.284, 1.819), (0.544, 1.668), (0.768, 1.473),
    (0.935, 1.232), (1.039, 0.955), (1.098, 0.661), (1.140, 0.361),
    (1.161, 0.059), (-0.918, -0.212), (-0.789, -0.353), (-0.596, -0.407),
    (-0.392, -0.388), (-0.204, -0.310), (0.196, -0.318), (0.389, -0.398),
    (0.597, -0.416), (0.793, -0.358), (0.926, -0.214), (-0.003, -0.055),
    (-0.006, 0.130), (-0.009, 0.314), (-0.012, 0.504), (-0.225, 0.665),
    (-0.120, 0.699), (-0.009, 0.728), (0.104, 0.700), (0.210, 0.668),
    (-0.690, 0.006), (-0.571, -0.064), (-0.428, -0.065), (-0.302, 0.020),
    (-0.433, 0.051), (-0.576, 0.053), (0.302, 0.020), (0.428, -0.065),
    (0.570, -0.065), (0.690, 0.006), (0.576, 0.053), (0.434, 0.051),
    (-0.416, 1.107), (-0.271, 0.998), (-0.119, 0.944), (-0.011, 0.971),
    (0.100, 0.946), (0.256, 1.002), (0.408, 1.107), (0.262, 1.255),
    (0.109, 1.321), (-0.012, 1.333), (-0.130, 1.319), (-0.278, 1.253),
    (-0.344, 1.106), (-0.120, 1.053), (-0.011, 1.061), (0.101, 1.054),
    (0.335, 1.107), (0.103, 1.155), (-0.011, 1.167), (-0.122, 1.154),
], dtype=np.float64)

# Placement in the SxS crop: inter-ocular distance 0.26 S, eye line at 0.40 S. The chin lands near
# 0.89 S, the crop top ~1.5 inter-ocular distances above the eyes (forehead, hair) and the jaw
# leaves ~0.2 S of hair/background on each side: FaceSwap needs the surrounding head.
TEMPLATE_IOD_FRACTION = 0.26
TEMPLATE_EYE_LINE = 0.40


@dataclass
class AlignedFace:
    image: np.ndarray  # (S, S, 3) uint8 RGB
    landmarks: np.ndarray  # (68, 2) float32, crop coordinates
    matrix: np.ndarray  # (2, 3) float64, source pixels -> crop pixels


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB from HxW / HxWx1 gray, HxWx3 RGB or HxWx4 RGBA (alpha dropped); ValueError otherwise."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(landmarks, dtype=np.float64)
    return pts[LEFT_EYE].mean(axis=0), pts[RIGHT_EYE].mean(axis=0)


def interocular_distance(landmarks: np.ndarray) -> float:
    left, right = eye_centres(landmarks)
    return float(np.hypot(*(right - left)))


def template_landmarks(size: int = 128) -> np.ndarray:
    """The canonical 68 points in SxS crop coordinates."""
    scale = TEMPLATE_IOD_FRACTION * size
    return MEAN_SHAPE * scale + np.array([0.5 * size, TEMPLATE_EYE_LINE * size])


def similarity_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src onto dst, as 2x3."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    # As complex numbers the fit is dst ~ z * src with z = s * exp(i theta): a 1-D least squares.
    zs = (src[:, 0] - src_mean[0]) + 1j * (src[:, 1] - src_mean[1])
    zd = (dst[:, 0] - dst_mean[0]) + 1j * (dst[:, 1] - dst_mean[1])
    energy = float(np.vdot(zs, zs).real)
    if energy <= 1e-12:
        raise ValueError("similarity fit is degenerate: source points coincide")
    z = np.vdot(zs, zd) / energy
    a, b = z.real, z.imag
    rot = np.array([[a, -b], [b, a]])
    shift = dst_mean - rot @ src_mean
    return np.hstack([rot, shift[:, None]])


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    return pts @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def procrustes_mean_shape(landmark_sets: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Generalised Procrustes mean of (N, 68, 2) landmark sets, normalised like MEAN_SHAPE."""
    sets = np.asarray(landmark_sets, dtype=np.float64)
    mean = _normalise_shape(sets[0])
    for _ in range(iterations):
        fitted = np.stack([transform_points(similarity_matrix(shape, mean), shape) for shape in sets])
        mean = _normalise_shape(fitted.mean(axis=0))
    return mean


def _normalise_shape(shape: np.ndarray) -> np.ndarray:
    left, right = eye_centres(shape)
    target = np.array([[-0.5, 0.0], [0.5, 0.0]])
    return transform_points(similarity_matrix(np.stack([left, right]), target), shape)


def alignment_matrix(landmarks: np.ndarray, size: int = 128) -> np.ndarray:
    """2x3 similarity taking the source image to the SxS canonical crop, fitted on eyes and nose."""
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"expected finite (68, 2) landmarks, got shape {pts.shape}")
    return similarity_matrix(pts[RIGID_POINTS], template_landmarks(size)[RIGID_POINTS])


def align_with_matrix(image_rgb: np.ndarray, landmarks: np.ndarray, matrix: np.ndarray, size: int = 128) -> AlignedFace:
    """Warp with a given matrix (e.g. one from AlignmentSmoother)."""
    image = as_rgb_uint8(image_rgb)
    matrix = np.asarray(matrix, dtype=np.float64)
    # Replicated border: a face at the frame edge gets smeared edge pixels rather than a hard black
    # wedge that colour correction and the descriptors would react to.
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    crop_landmarks = transform_points(matrix, landmarks).astype(np.float32)
    return AlignedFace(image=crop, landmarks=crop_landmarks, matrix=matrix)


def align_face(image_rgb: np.ndarray, landmarks: np.ndarray, size: int = 128) -> AlignedFace:
    return align_with_matrix(image_rgb, landmarks, alignment_matrix(landmarks, size), size)


class AlignmentSmoother:
    """Exponential moving average of the similarity parameters (a, b, tx, ty) of successive alignments.

    alpha is the weight of the newest matrix (1.0 = no smoothing). Blending (a, b, tx, ty) linearly
    keeps the result a similarity. A jump of the face centre larger than `reset_jump` inter-ocular
    distances, or a scale change beyond `reset_scale`, restarts the average (a cut, or a
    re-detection that found another face) instead of sliding between two faces.
    """

    def __init__(self, alpha: float = 0.5, *, size: int = 128, reset_jump: float = 0.5, reset_scale: float = 1.3):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.size = size
        self.reset_jump = reset_jump
        self.reset_scale = reset_scale
        self._params: np.ndarray | None = None

    def reset(self) -> None:
        self._params = None

    @staticmethod
    def _to_params(matrix: np.ndarray) -> np.ndarray:
        m = np.asarray(matrix, dtype=np.float64)
        return np.array([(m[0, 0] + m[1, 1]) / 2, (m[1, 0] - m[0, 1]) / 2, m[0, 2], m[1, 2]])

    @staticmethod
    def _to_matrix(params: np.ndarray) -> np.ndarray:
        a, b, tx, ty = params
        return np.array([[a, -b, tx], [b, a, ty]])

    def _is_jump(self, new: np.ndarray) -> bool:
        old = self._params
        scale_old, scale_new = np.hypot(old[0], old[1]), np.hypot(new[0], new[1])
        if max(scale_old, scale_new) / max(min(scale_old, scale_new), 1e-12) > self.reset_scale:
            return True
        # Source-image position of the crop centre under each matrix, in source inter-ocular units.
        centre = np.full((1, 2), self.size / 2.0)
        source_old = transform_points(cv2.invertAffineTransform(self._to_matrix(old)), centre)
        source_new = transform_points(cv2.invertAffineTransform(self._to_matrix(new)), centre)
        source_iod = TEMPLATE_IOD_FRACTION * self.size / scale_old
        return float(np.hypot(*(source_new - source_old)[0])) > self.reset_jump * source_iod

    def smooth(self, matrix: np.ndarray) -> np.ndarray:
        new = self._to_params(matrix)
        if self._params is None or self._is_jump(new):
            self._params = new
        else:
            self._params = self.alpha * new + (1.0 - self.alpha) * self._params
        return self._to_matrix(self._params)
