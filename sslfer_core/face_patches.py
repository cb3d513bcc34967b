"""Eye and mouth patches of an aligned face (MaskFN's descriptor input)."""
from __future__ import annotations

import cv2
import numpy as np

from sslfer_core.face_alignment import EYES, MOUTH

# Horizontal margin around each landmark box, as a fraction of its width. The square is then
# padded vertically to the width, so the eye patch takes in the brows and the mouth patch the
# lips' surroundings (nasolabial folds, upper chin).
EYES_MARGIN = 0.08
MOUTH_MARGIN = 0.15


def _square_patch(image: np.ndarray, points: np.ndarray, margin: float, patch_size: int) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    if not np.isfinite(side) or side < 2.0:
        raise ValueError(f"landmark box too small for a patch ({side:.2f} px)")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    scale = patch_size / side
    # One affine warp does crop, square padding and resize, with a replicated border when the square
    # leaves the image; INTER_AREA when shrinking avoids aliasing.
    matrix = np.array([[scale, 0.0, patch_size / 2 - scale * cx], [0.0, scale, patch_size / 2 - scale * cy]])
    flags = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.warpAffine(image, matrix, (patch_size, patch_size), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def eye_mouth_patches(aligned_image: np.ndarray, aligned_landmarks: np.ndarray, patch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(eyes, mouth): square-padded boxes of landmarks 36-47 and 48-67, as patch_size^2 uint8 RGB."""
    image = np.asarray(aligned_image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (S, S, 3) uint8 aligned face, got {image.dtype} {image.shape}")
    landmarks = np.asarray(aligned_landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {landmarks.shape}")
    eyes = _square_patch(image, landmarks[EYES], EYES_MARGIN, patch_size)
    mouth = _square_patch(image, landmarks[MOUTH], MOUTH_MARGIN, patch_size)
    return eyes, mouth
