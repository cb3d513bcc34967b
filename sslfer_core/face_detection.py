"""Face detection (dlib HOG, optional MMOD CNN fallback) with 68 landmarks, and a tracker for video."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import dlib
import numpy as np

from sslfer_core.dlib_models import DlibModelFiles
from sslfer_core.face_alignment import (
    MEAN_SHAPE,
    RIGID_POINTS,
    alignment_matrix,
    as_rgb_uint8,
    interocular_distance,
    similarity_matrix,
    transform_points,
)

# dlib's frontal HOG detector scans an 80x80 window: smaller faces need the image upsampled.
HOG_WINDOW_PX = 80
SHRINK_BELOW = 0.8  # a downscale factor at or above this is not applied: the image keeps its full size
# A second face at least this fraction of the chosen face's area makes the choice ambiguous.
AMBIGUOUS_AREA_RATIO = 0.6


@dataclass
class FaceObservation:
    landmarks: np.ndarray  # (68, 2) float32, source-pixel coordinates
    box: tuple[int, int, int, int]  # (left, top, right, bottom)
    score: float  # detected: HOG/CNN detector score; tracked: fit quality in [0, 1]
    ambiguous: bool  # several faces of similar size were present at the last detection
    detected: bool  # False when the landmarks came from the tracker (no detector run)
    n_faces: int = 1  # faces found by the last detection


def as_gray_uint8(image: np.ndarray) -> np.ndarray:
    """HxW uint8 from gray (HxW, HxWx1), RGB (HxWx3) or RGBA (HxWx4); ValueError otherwise."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        gray = image
    elif image.ndim == 3 and image.shape[2] == 3:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif image.ndim == 3 and image.shape[2] == 4:
        gray = cv2.cvtColor(image, cv2.COLOR_RGBA2GRAY)
    else:
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}")
    if gray.size == 0:
        raise ValueError("empty image")
    return np.ascontiguousarray(gray)


def shape_residual(landmarks: np.ndarray) -> float:
    """Mean distance, in inter-ocular units, between the landmarks and the best similarity fit of the mean shape.

    dlib's fits on real frames of the test clips stay below ~0.18; a drifting or collapsed fit goes higher.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    iod = interocular_distance(pts)
    if not np.isfinite(iod) or iod < 1.0:
        return float("inf")
    fitted = transform_points(similarity_matrix(MEAN_SHAPE, pts), MEAN_SHAPE)
    return float(np.mean(np.hypot(*(fitted - pts).T)) / iod)


def appearance_signature(gray: np.ndarray, landmarks: np.ndarray, size: int = 32) -> np.ndarray:
    """Zero-mean, unit-norm gray aligned crop: the dot product of two is their normalised cross-correlation."""
    crop = cv2.warpAffine(gray, alignment_matrix(landmarks, size), (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    crop = crop.astype(np.float32)
    crop -= crop.mean()
    return crop / max(float(np.linalg.norm(crop)), 1e-6)


def choose_face(boxes: list[tuple[int, int, int, int]], image_shape: tuple[int, ...]) -> tuple[int, bool]:
    """Index of the largest, most central box, and whether another box is of similar size."""
    height, width = image_shape[:2]
    half_diagonal = 0.5 * math.hypot(width, height)
    areas = [max(r - l, 0) * max(b - t, 0) for l, t, r, b in boxes]
    weights = []
    for (l, t, r, b), area in zip(boxes, areas):
        offset = math.hypot((l + r) / 2 - width / 2, (t + b) / 2 - height / 2) / half_diagonal
        weights.append(area * (1.0 - 0.5 * min(offset, 1.0)))
    best = int(np.argmax(weights))
    ambiguous = any(i != best and areas[i] >= AMBIGUOUS_AREA_RATIO * areas[best] for i in range(len(boxes)))
    return best, ambiguous


class FaceDetector:
    """Finds the main face in one image and fits dlib's 68-point shape predictor to it."""

    def __init__(self, models: DlibModelFiles, *, min_face_px: int = 40, use_cnn_fallback: bool = False):
        if min_face_px < 10:
            raise ValueError(f"min_face_px must be >= 10, got {min_face_px}")
        self.models = models
        self.min_face_px = min_face_px
        self._hog = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(models.shape_predictor))
        self._cnn = None
        if use_cnn_fallback:
            if models.cnn_detector is None:
                raise ValueError("use_cnn_fallback needs mmod_human_face_detector.dat, which was not found")
            self._cnn = dlib.cnn_face_detection_model_v1(str(models.cnn_detector))
        # Scale so that a face of min_face_px reaches the 80 px window: upsample (doubling) for small
        # faces; for large expected faces shrink the image instead, which makes HOG much cheaper.
        factor = HOG_WINDOW_PX / min_face_px
        self.upsample = max(0, math.ceil(math.log2(factor) - 1e-9)) if factor > 1 else 0
        self.downscale = factor * 1.1 if factor * 1.1 < SHRINK_BELOW else 1.0

    def detect(self, image_rgb: np.ndarray) -> FaceObservation | None:
        """The largest/most central face, or None when there is none (an all-black frame included)."""
        return self.detect_gray(as_gray_uint8(image_rgb), image_rgb)

    def detect_gray(self, gray: np.ndarray, image_for_cnn: np.ndarray | None = None) -> FaceObservation | None:
        """detect() on an already converted HxW uint8 image; the CNN fallback, if on, uses `image_for_cnn` (colour)."""
        boxes, scores = self._run_hog(gray)
        if not boxes and self._cnn is not None:
            boxes, scores = self._run_cnn(as_rgb_uint8(gray if image_for_cnn is None else image_for_cnn))
        if not boxes:
            return None
        best, ambiguous = choose_face(boxes, gray.shape)
        landmarks = self.landmarks_in_box(gray, boxes[best])
        return FaceObservation(landmarks, boxes[best], float(scores[best]), ambiguous, True, len(boxes))

    def landmarks_in_box(self, gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        shape = self._predictor(gray, dlib.rectangle(*(int(v) for v in box)))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def _run_hog(self, gray: np.ndarray) -> tuple[list[tuple[int, int, int, int]], list[float]]:
        scaled = gray
        if self.downscale < 1.0:
            size = (max(1, round(gray.shape[1] * self.downscale)), max(1, round(gray.shape[0] * self.downscale)))
            scaled = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        rects, scores, _ = self._hog.run(scaled, self.upsample, 0.0)
        inv = 1.0 / self.downscale
        boxes = [(round(r.left() * inv), round(r.top() * inv), round(r.right() * inv), round(r.bottom() * inv)) for r in rects]
        return boxes, list(scores)

    def _run_cnn(self, image: np.ndarray) -> tuple[list[tuple[int, int, int, int]], list[float]]:
        found = self._cnn(image, self.upsample)
        boxes = [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()) for d in found]
        return boxes, [float(d.confidence) for d in found]


class FaceTracker:
    """Video: fits the predictor in a box derived from the previous landmarks and runs the detector
    only every `redetect_every` frames, or sooner when the fit degrades.

    Fit-quality check (cheap, ~0.1 ms): the gray-level contrast in the box (a black or flat frame
    fails), the shape residual against the mean face, the jump of scale and position relative to the
    previous frame, and the appearance: normalised cross-correlation of a 32x32 gray aligned crop
    with the previous frame's. The shape predictor returns a face-like shape wherever it is run, so
    after a cut only the appearance test notices (consecutive real frames: >= 0.67, cuts between
    different clips: 99th percentile 0.52). A failed check triggers a full detection on the same frame.
    """

    def __init__(
        self,
        detector: FaceDetector,
        *,
        redetect_every: int = 10,
        max_residual: float = 0.25,
        max_jump: float = 0.35,
        max_scale_change: float = 1.25,
        min_contrast: float = 8.0,
        min_appearance: float = 0.6,
    ):
        if redetect_every < 1:
            raise ValueError(f"redetect_every must be >= 1, got {redetect_every}")
        self.detector = detector
        self.redetect_every = redetect_every
        self.max_residual = max_residual
        self.max_jump = max_jump
        self.max_scale_change = max_scale_change
        self.min_contrast = min_contrast
        self.min_appearance = min_appearance
        self.reset()

    def reset(self) -> None:
        self._previous: FaceObservation | None = None
        self._box_offset: np.ndarray | None = None  # detector box relative to the landmarks, in IOD units
        self._since_detection = 0
        self._appearance: np.ndarray | None = None

    def update(self, image_rgb: np.ndarray) -> FaceObservation | None:
        gray = as_gray_uint8(image_rgb)
        if self._previous is not None and self._since_detection < self.redetect_every:
            tracked, appearance = self._track(gray)
            if tracked is not None:
                self._appearance = appearance
                self._previous = tracked
                self._since_detection += 1
                return tracked
        detected = self.detector.detect_gray(gray, image_rgb)
        if detected is None:
            self.reset()
            return None
        centre, iod = self._frame_of(detected.landmarks)
        l, t, r, b = detected.box
        self._box_offset = np.array([((l + r) / 2 - centre[0]) / iod, ((t + b) / 2 - centre[1]) / iod, (r - l) / iod, (b - t) / iod])
        self._previous = detected
        self._since_detection = 1
        self._appearance = appearance_signature(gray, detected.landmarks)
        return detected

    @staticmethod
    def _frame_of(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
        return landmarks[RIGID_POINTS].astype(np.float64).mean(axis=0), max(interocular_distance(landmarks), 1e-6)

    def _box_for(self, landmarks: np.ndarray) -> tuple[int, int, int, int]:
        centre, iod = self._frame_of(landmarks)
        dx, dy, w, h = self._box_offset * iod
        cx, cy = centre[0] + dx, centre[1] + dy
        return (round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2))

    def _track(self, gray: np.ndarray) -> tuple[FaceObservation | None, np.ndarray | None]:
        previous = self._previous
        box = self._box_for(previous.landmarks)
        if self._contrast(gray, box) < self.min_contrast:
            return None, None
        landmarks = self.detector.landmarks_in_box(gray, box)
        quality = self.fit_quality(landmarks, previous.landmarks)
        if quality <= 0.0:
            return None, None
        appearance = appearance_signature(gray, landmarks)
        if float(np.sum(appearance * self._appearance)) < self.min_appearance:
            return None, None
        return FaceObservation(landmarks, self._box_for(landmarks), quality, previous.ambiguous, False, previous.n_faces), appearance

    def fit_quality(self, landmarks: np.ndarray, previous: np.ndarray) -> float:
        """1 for a perfect mean-shape fit, down to 0 at max_residual; 0 also on a jump in scale or position."""
        iod, previous_iod = interocular_distance(landmarks), interocular_distance(previous)
        if not previous_iod > 0 or not iod > 0:
            return 0.0
        if max(iod, previous_iod) / min(iod, previous_iod) > self.max_scale_change:
            return 0.0
        jump = float(np.mean(np.hypot(*(landmarks - previous).T))) / previous_iod
        if jump > self.max_jump:
            return 0.0
        return max(0.0, 1.0 - shape_residual(landmarks) / self.max_residual)

    @staticmethod
    def _contrast(gray: np.ndarray, box: tuple[int, int, int, int]) -> float:
        l, t, r, b = box
        h, w = gray.shape
        patch = gray[max(t, 0):min(b, h):2, max(l, 0):min(r, w):2]
        return float(patch.std()) if patch.size else 0.0
