"""FaceSwap positive: one frame's inner face (expression) pasted onto another identity's head (donor).

Lineage: the "Switching Eds" Procrustes + convex-hull + Gaussian colour-correction recipe, with its
known problems fixed: the mask edge is feathered, values are clipped to 0..255 before the cast (no
uint8 wrap-around), everything is RGB, pixels outside the mask are left bit-identical, and a swap that
cannot be done well returns ok=False with a reason instead of an image.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sslfer_core.face_alignment import BROWS, EYES, INNER_FACE, MOUTH, NOSE, as_rgb_uint8, interocular_distance, similarity_matrix, transform_points

# Points the similarity is fitted on: brows, eyes, nose, mouth (the jaw line belongs to the donor's head).
FIT_POINTS = INNER_FACE
# The pasted region: union of the hulls {eyes + brows} and {nose + mouth}, of both faces.
HULL_GROUPS = (np.concatenate([BROWS, EYES]), np.concatenate([NOSE, MOUTH]))
# Colour-correction blur, as a fraction of the donor's inter-ocular distance (eye centres).
COLOUR_BLUR_FRACTION = 0.6
# Mask feathering width (dilation + blur), as a fraction of the inter-ocular distance.
FEATHER_FRACTION = 0.3
# Beyond these the two faces are not the same kind of thing (or a fit went wrong): refuse.
MAX_FIT_RESIDUAL = 0.3  # mean point distance after the fit, in donor inter-ocular units
SCALE_RANGE = (0.5, 2.0)
MIN_IOD_PX = 6.0


@dataclass
class SwapResult:
    image: np.ndarray | None  # donor-sized uint8 RGB, or None when ok is False
    ok: bool
    reason: str  # "ok", or why the swap was refused
    mask: np.ndarray | None  # float32 0..1 feathered mask in donor coordinates; 0 = pixel untouched


def _odd(value: float, minimum: int = 3) -> int:
    k = max(minimum, int(round(value)))
    return k if k % 2 else k + 1


def _failed(reason: str) -> SwapResult:
    return SwapResult(image=None, ok=False, reason=reason, mask=None)


def _inside(points: np.ndarray, shape: tuple[int, ...]) -> bool:
    height, width = shape[:2]
    return bool(np.all(points[:, 0] >= 0) and np.all(points[:, 0] <= width - 1) and np.all(points[:, 1] >= 0) and np.all(points[:, 1] <= height - 1))


def feathered_hull_mask(landmark_sets: list[np.ndarray], shape: tuple[int, ...], feather_px: int) -> np.ndarray:
    """Union of the HULL_GROUPS hulls of every landmark set, grown by feather_px/2 and then blurred over feather_px.

    Growing first keeps the hull interior at exactly 1; the blur's finite (square) support keeps
    everything farther than (1 + sqrt 2) / 2 * feather_px (about 1.21x) from the hull at exactly 0.
    """
    binary = np.zeros(shape[:2], dtype=np.uint8)
    for landmarks in landmark_sets:
        for group in HULL_GROUPS:
            hull = cv2.convexHull(np.round(landmarks[group]).astype(np.int32))
            cv2.fillConvexPoly(binary, hull, 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (feather_px, feather_px))
    grown = cv2.dilate(binary, kernel)
    mask = cv2.GaussianBlur(grown.astype(np.float32), (feather_px, feather_px), 0)
    mask[binary > 0] = 1.0
    return mask


def swap_face(
    expression_image: np.ndarray,
    expression_landmarks: np.ndarray,
    donor_image: np.ndarray,
    donor_landmarks: np.ndarray,
    *,
    seed: int = 0,
) -> SwapResult:
    """Paste the expression face's inner region onto the donor, in the donor's geometry and colours.

    Meant for aligned crops (both SxS, landmarks in crop coordinates) but works on any pair of frames.
    The recipe has no random step: the same inputs give bit-identical output whatever `seed` is; the
    argument exists so callers can record it alongside the pair choice they drew with it.
    """
    del seed
    expression = as_rgb_uint8(expression_image)
    donor = as_rgb_uint8(donor_image)
    expr_pts = np.asarray(expression_landmarks, dtype=np.float64)
    donor_pts = np.asarray(donor_landmarks, dtype=np.float64)
    if expr_pts.shape != (68, 2) or donor_pts.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {expr_pts.shape} and {donor_pts.shape}")
    if not (np.all(np.isfinite(expr_pts)) and np.all(np.isfinite(donor_pts))):
        return _failed("landmarks not finite")
    if not _inside(expr_pts[INNER_FACE], expression.shape):
        return _failed("expression landmarks out of frame")
    if not _inside(donor_pts[INNER_FACE], donor.shape):
        return _failed("donor landmarks out of frame")
    donor_iod, expr_iod = interocular_distance(donor_pts), interocular_distance(expr_pts)
    if min(donor_iod, expr_iod) < MIN_IOD_PX:
        return _failed(f"face too small (inter-ocular {min(donor_iod, expr_iod):.1f} px)")

    try:
        matrix = similarity_matrix(expr_pts[FIT_POINTS], donor_pts[FIT_POINTS])
    except ValueError:
        return _failed("degenerate fit (coincident landmarks)")
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    warped_pts = transform_points(matrix, expr_pts)
    residual = float(np.mean(np.hypot(*(warped_pts[FIT_POINTS] - donor_pts[FIT_POINTS]).T))) / donor_iod
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return _failed(f"degenerate fit (scale {scale:.2f})")
    if residual > MAX_FIT_RESIDUAL:
        return _failed(f"degenerate fit (residual {residual:.2f} inter-ocular)")
    if not _inside(warped_pts[INNER_FACE], donor.shape):
        return _failed("warped expression face leaves the donor frame")

    mask = feathered_hull_mask([warped_pts, donor_pts], donor.shape, _odd(FEATHER_FRACTION * donor_iod))
    touched = mask > 0
    if not touched.any():
        return _failed("empty mask")

    # Work only on the mask's bounding box, padded by the colour blur's reach.
    blur = _odd(COLOUR_BLUR_FRACTION * donor_iod)
    ys, xs = np.nonzero(touched)
    pad = blur // 2 + 1
    top, bottom = max(ys.min() - pad, 0), min(ys.max() + pad + 1, donor.shape[0])
    left, right = max(xs.min() - pad, 0), min(xs.max() + pad + 1, donor.shape[1])
    # Translating the matrix warps only the box instead of the whole donor-sized frame.
    roi_matrix = matrix.copy()
    roi_matrix[:, 2] -= (left, top)
    warped = cv2.warpAffine(expression, roi_matrix, (right - left, bottom - top), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
    donor_roi = donor[top:bottom, left:right].astype(np.float32)

    donor_blur = cv2.GaussianBlur(donor_roi, (blur, blur), 0)
    warped_blur = cv2.GaussianBlur(warped, (blur, blur), 0)
    corrected = warped * (donor_blur / np.maximum(warped_blur, 1.0))

    alpha = mask[top:bottom, left:right, None]
    blended = np.clip(np.rint(donor_roi * (1.0 - alpha) + corrected * alpha), 0, 255).astype(np.uint8)
    result = donor.copy()
    roi_touched = touched[top:bottom, left:right]
    result[top:bottom, left:right][roi_touched] = blended[roi_touched]
    return SwapResult(image=result, ok=True, reason="ok", mask=mask)
