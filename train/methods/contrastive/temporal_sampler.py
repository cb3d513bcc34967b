"""Which frames of one video form each training sample: anchor, TimeAug positive, HardNeg and its positive.

Rules (docs/training.md, "Sampling"):
- every frame of the video is an anchor once per draw, in a random order;
- TimeAug positive: a stored frame whose timestamp differs from the anchor's by d with
  positive_min <= |d| <= positive_max (either direction), chosen with probability proportional to 1/|d|;
- HardNeg: a frame at least hardneg_min from the anchor, uniform over the frames whose own TimeAug
  positive can also be chosen at least hardneg_min from the anchor; that positive is drawn as above among
  those candidates.
Frames are discrete, so the bounds are checked on the stored timestamps themselves with only
`tolerance` (1 microsecond) of floating-point slack; nothing is snapped or rounded.
Fallbacks: an anchor with no TimeAug candidate uses itself as positive (a SimCLR pair); an anchor with no
valid HardNeg pair gets hardneg = -1 and the caller masks those rows out of the loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HARDNEG_REJECTION_ROUNDS = 8  # then an exact scan for the few anchors still without a pair


@dataclass(frozen=True)
class OffsetRules:
    positive_min: float = 0.5
    positive_max: float = 1.5
    hardneg_min: float = 3.0
    tolerance: float = 1e-6

    def __post_init__(self):
        if not 0 < self.positive_min <= self.positive_max:
            raise ValueError(f"need 0 < positive_min <= positive_max, got {self.positive_min}, {self.positive_max}")
        if self.hardneg_min <= 0:
            raise ValueError(f"hardneg_min must be > 0, got {self.hardneg_min}")


@dataclass
class VideoDraws:
    """Rows are 0-based frame positions inside the video, one entry per sample (anchor order)."""

    anchor: np.ndarray
    positive: np.ndarray
    hardneg: np.ndarray  # -1 where the sample has no HardNeg pair (or HardNeg is off)
    hardneg_positive: np.ndarray
    timeaug_fallback: np.ndarray  # bool: TimeAug asked for but no frame in the window
    hardneg_fallback: np.ndarray  # bool: HardNeg asked for but no valid pair

    def __len__(self) -> int:
        return len(self.anchor)


def positive_candidates(timestamps: np.ndarray, rules: OffsetRules = OffsetRules()) -> tuple[np.ndarray, np.ndarray]:
    """(n, M) candidate frame positions for every frame's TimeAug positive (-1 padded) and their
    unnormalised weights 1/|d| (0 on padding). M is the largest candidate count in the video."""
    ts = np.asarray(timestamps, dtype=np.float64)
    n = len(ts)
    tol = rules.tolerance
    lo_f = np.searchsorted(ts, ts + rules.positive_min - tol, side="left")
    hi_f = np.searchsorted(ts, ts + rules.positive_max + tol, side="right")
    lo_b = np.searchsorted(ts, ts - rules.positive_max - tol, side="left")
    hi_b = np.searchsorted(ts, ts - rules.positive_min + tol, side="right")
    count_f = np.maximum(hi_f - lo_f, 0)
    count_b = np.maximum(hi_b - lo_b, 0)
    width = int((count_f + count_b).max()) if n else 0
    slot = np.arange(width)[None, :]
    index = np.where(slot < count_f[:, None], lo_f[:, None] + slot, lo_b[:, None] + slot - count_f[:, None])
    valid = slot < (count_f + count_b)[:, None]
    index = np.where(valid, index, -1)
    offset = np.abs(ts[np.clip(index, 0, max(n - 1, 0))] - ts[:, None]) if n else np.zeros((0, 0))
    weight = np.where(valid, 1.0 / np.maximum(offset, tol), 0.0)
    return index, weight


def _weighted_pick(index: np.ndarray, weight: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column per row with probability weight/sum; -1 for rows whose weights are all 0."""
    if index.shape[1] == 0:
        return np.full(index.shape[0], -1, dtype=np.int64)
    cumulative = np.cumsum(weight, axis=1)
    total = cumulative[:, -1]
    u = rng.random(len(index)) * total
    column = (cumulative > u[:, None]).argmax(axis=1)
    picked = index[np.arange(len(index)), column]
    return np.where(total > 0, picked, -1).astype(np.int64)


def _far_ranges(ts: np.ndarray, anchors: np.ndarray, rules: OffsetRules) -> tuple[np.ndarray, np.ndarray]:
    """Frames [0, left) and [right, n) lie at least hardneg_min from each anchor."""
    t = ts[anchors]
    left = np.searchsorted(ts, t - rules.hardneg_min + rules.tolerance, side="right")
    right = np.searchsorted(ts, t + rules.hardneg_min - rules.tolerance, side="left")
    return left, right


def _far_enough(ts: np.ndarray, anchor_time: np.ndarray, index: np.ndarray, rules: OffsetRules) -> np.ndarray:
    times = ts[np.clip(index, 0, len(ts) - 1)]
    return (index >= 0) & (np.abs(times - anchor_time[..., None]) >= rules.hardneg_min - rules.tolerance)


def draw_hardneg(ts: np.ndarray, anchors: np.ndarray, candidates: tuple[np.ndarray, np.ndarray] | None,
                 rng: np.random.Generator, rules: OffsetRules = OffsetRules()) -> tuple[np.ndarray, np.ndarray]:
    """(hardneg, hardneg_positive) per anchor, -1 where no valid pair exists. With candidates None
    (TimeAug off) the hardneg is its own positive."""
    n_anchor = len(anchors)
    hardneg = np.full(n_anchor, -1, dtype=np.int64)
    positive = np.full(n_anchor, -1, dtype=np.int64)
    if n_anchor == 0:
        return hardneg, positive
    n = len(ts)
    left, right = _far_ranges(ts, anchors, rules)
    far_count = left + (n - right)
    pending = np.flatnonzero(far_count > 0)
    for _ in range(HARDNEG_REJECTION_ROUNDS):
        if not len(pending):
            break
        k = (rng.random(len(pending)) * far_count[pending]).astype(np.int64)
        k = np.minimum(k, far_count[pending] - 1)
        h = np.where(k < left[pending], k, right[pending] + k - left[pending])
        if candidates is None:
            p = h
        else:
            index, weight = candidates[0][h], candidates[1][h]
            ok = _far_enough(ts, ts[anchors[pending]], index, rules)
            p = _weighted_pick(index, np.where(ok, weight, 0.0), rng)
        done = p >= 0
        hardneg[pending[done]] = h[done]
        positive[pending[done]] = p[done]
        pending = pending[~done]
    for i in pending:  # exact: uniform over the far frames that have a usable positive
        far = np.concatenate([np.arange(left[i]), np.arange(right[i], n)])
        index, weight = candidates[0][far], candidates[1][far]
        ok = _far_enough(ts, np.full(len(far), ts[anchors[i]]), index, rules)
        usable = np.flatnonzero((np.where(ok, weight, 0.0) > 0).any(axis=1))
        if not len(usable):
            continue
        j = usable[rng.integers(len(usable))]
        hardneg[i] = far[j]
        positive[i] = _weighted_pick(index[j:j + 1], np.where(ok[j:j + 1], weight[j:j + 1], 0.0), rng)[0]
    return hardneg, positive


def draw_video(timestamps: np.ndarray, rng: np.random.Generator, *, timeaug: bool, hardneg: bool,
               rules: OffsetRules = OffsetRules()) -> VideoDraws:
    """All samples of one video for one pass (each frame an anchor once, in random order)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    n = len(ts)
    anchor = rng.permutation(n).astype(np.int64)
    candidates = positive_candidates(ts, rules) if timeaug else None
    if timeaug:
        picked = _weighted_pick(candidates[0][anchor], candidates[1][anchor], rng)
        timeaug_fallback = picked < 0
        positive = np.where(timeaug_fallback, anchor, picked)
    else:
        timeaug_fallback = np.zeros(n, dtype=bool)
        positive = anchor.copy()
    if hardneg:
        hn, hn_positive = draw_hardneg(ts, anchor, candidates, rng, rules)
        hardneg_fallback = hn < 0
    else:
        hn = np.full(n, -1, dtype=np.int64)
        hn_positive = hn.copy()
        hardneg_fallback = np.zeros(n, dtype=bool)
    return VideoDraws(anchor, positive, hn, hn_positive, timeaug_fallback, hardneg_fallback)


def video_rng(seed: int, epoch: int, video_gid: int, cycle: int = 0) -> np.random.Generator:
    """The draws of one video depend only on (seed, epoch, video, cycle): not on ranks or workers."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(video_gid), int(cycle), 0x5A]))
