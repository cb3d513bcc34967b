"""Zero-phase temporal smoothing of a video's alignment transforms, for video (motion) use.

Each frame's similarity transform is written as parameters (a, b, tx, ty) of [[a, -b, tx], [b, a, ty]];
blending them linearly keeps a similarity. The smoothed value of frame i is the value at i of a straight
line fitted by weighted least squares to the frames i-R..i+R of its segment, with Gaussian weights of
standard deviation `sigma` frames (R = ceil(3 sigma)). Inside a segment the window is symmetric and the
result is the Gaussian average (no lag, unlike a causal average); at a segment's ends the line keeps a
moving face from being pulled back towards where it was.

A segment ends at a dropped frame (the caller says so) and at a jump of the transform (a cut, or a
re-detection that found another face): frames on either side of a jump are never mixed, so a step stays
a step. StreamingTrackSmoother gives exactly smooth_track's result while holding only R frames of
look-ahead, so a long video does not have to sit in memory.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterable

import cv2
import numpy as np

from sslfer_core.face_alignment import TEMPLATE_IOD_FRACTION, transform_points

# A jump: the crop centre moves by more than RESET_JUMP source inter-ocular distances between
# neighbouring frames, or the scale changes by more than RESET_SCALE (the values AlignmentSmoother uses).
RESET_JUMP = 0.5
RESET_SCALE = 1.3


def similarity_params(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    return np.array([(m[0, 0] + m[1, 1]) / 2, (m[1, 0] - m[0, 1]) / 2, m[0, 2], m[1, 2]])


def params_matrix(params: np.ndarray) -> np.ndarray:
    a, b, tx, ty = np.asarray(params, dtype=np.float64)
    return np.array([[a, -b, tx], [b, a, ty]])


def window_radius(sigma: float) -> int:
    return int(math.ceil(3.0 * sigma))


def is_jump(old: np.ndarray, new: np.ndarray, size: int, *, reset_jump: float = RESET_JUMP,
            reset_scale: float = RESET_SCALE) -> bool:
    """True when two successive alignments (parameters) cannot belong to one continuous shot."""
    scale_old, scale_new = np.hypot(old[0], old[1]), np.hypot(new[0], new[1])
    if max(scale_old, scale_new) / max(min(scale_old, scale_new), 1e-12) > reset_scale:
        return True
    centre = np.full((1, 2), size / 2.0)
    source_old = transform_points(cv2.invertAffineTransform(params_matrix(old)), centre)
    source_new = transform_points(cv2.invertAffineTransform(params_matrix(new)), centre)
    source_iod = TEMPLATE_IOD_FRACTION * size / scale_old
    return float(np.hypot(*(source_new - source_old)[0])) > reset_jump * source_iod


def _local_linear(window: np.ndarray, centre: int, sigma: float) -> np.ndarray:
    """Value at row `centre` of the Gaussian-weighted straight-line fit to the rows of `window` (K, 4)."""
    offsets = np.arange(len(window), dtype=np.float64) - centre
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    s0, s1, s2 = weights.sum(), (weights * offsets).sum(), (weights * offsets ** 2).sum()
    t0 = weights @ window
    t1 = (weights * offsets) @ window
    det = s0 * s2 - s1 * s1
    if det <= 1e-9 * max(s0 * s2, 1e-300):  # one frame, or all weight on one frame
        return t0 / s0
    return (s2 * t0 - s1 * t1) / det


def segment_starts(params: np.ndarray, size: int, breaks: Iterable[int] = ()) -> np.ndarray:
    """Start indices of the segments of a track: 0, every index in `breaks` (e.g. after a dropped frame),
    and every frame that jumps from its predecessor."""
    params = np.asarray(params, dtype=np.float64)
    starts = {0} | {int(b) for b in breaks if 0 < int(b) < len(params)}
    starts |= {i for i in range(1, len(params)) if is_jump(params[i - 1], params[i], size)}
    return np.array(sorted(starts), dtype=np.int64)


def smooth_track(params: np.ndarray, sigma: float, size: int, breaks: Iterable[int] = ()) -> np.ndarray:
    """Zero-phase smoothed (N, 4) similarity parameters of a track; sigma 0 returns them unchanged."""
    params = np.asarray(params, dtype=np.float64)
    if sigma <= 0 or len(params) == 0:
        return params.copy()
    radius = window_radius(sigma)
    out = np.empty_like(params)
    bounds = list(segment_starts(params, size, breaks)) + [len(params)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        for i in range(start, stop):
            lo, hi = max(start, i - radius), min(stop, i + radius + 1)
            out[i] = _local_linear(params[lo:hi], i - lo, sigma)
    return out


class StreamingTrackSmoother:
    """smooth_track, frame by frame: push each frame's parameters with a payload (e.g. the source image);
    get back (payload, smoothed parameters) once R later frames of its segment, or its segment's end,
    are known. Call end_segment() at a dropped frame and flush() at the end of the video."""

    def __init__(self, sigma: float, size: int):
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        self.size = size
        self.radius = window_radius(sigma)
        self._params: deque[np.ndarray] = deque()  # the segment's parameters still needed: <= 2R + 1 + pending
        self._first = 0  # segment index of self._params[0]
        self._pending: deque[tuple[int, Any]] = deque()  # (segment index, payload) not yet returned
        self._count = 0  # frames pushed in this segment

    def push(self, params: np.ndarray, payload: Any) -> list[tuple[Any, np.ndarray]]:
        params = np.asarray(params, dtype=np.float64)
        ready: list[tuple[Any, np.ndarray]] = []
        if self._count and is_jump(self._params[-1], params, self.size):
            ready = self.end_segment()
        self._params.append(params)
        self._pending.append((self._count, payload))
        self._count += 1
        while self._pending and self._pending[0][0] + self.radius < self._count:
            ready.append(self._emit(self._count))
        return ready

    def end_segment(self) -> list[tuple[Any, np.ndarray]]:
        ready = [self._emit(self._count) for _ in range(len(self._pending))]
        self._params.clear()
        self._first = self._count = 0
        return ready

    flush = end_segment

    def _emit(self, known: int) -> tuple[Any, np.ndarray]:
        index, payload = self._pending.popleft()
        lo, hi = max(0, index - self.radius), min(known, index + self.radius + 1)
        window = np.stack([self._params[j - self._first] for j in range(lo, hi)])
        value = _local_linear(window, index - lo, self.sigma)
        # Parameters before the next pending frame's window are no longer needed.
        keep_from = max(0, (self._pending[0][0] if self._pending else known) - self.radius)
        while self._first < keep_from:
            self._params.popleft()
            self._first += 1
        return payload, value
