"""Index-level plan of one epoch of video clips for masked-autoencoder pretraining (docs/video-data.md).

A clip is `frames` stored frames of one video taken every `stride` rows from its contiguous, time-sorted
rows. The stride is given in seconds, or in frames at `frame_rate` (the reference: 4 frames at 25 fps), and
is resolved against the frame rate the shards were prepared at (`sslfer-prep --fps`); shards whose rate
cannot give it as a whole number of rows are refused. A start is valid only when every step of the clip
spans the stride in time as well (within `timing_tolerance` row periods, half by default), so a clip
never crosses a dropped frame, nor takes unevenly spaced rows (a source whose frame rate the prep fps does
not divide, e.g. 30 fps video kept at 25 fps, or one slower than the prep fps).

Every epoch redraws, from (seed, epoch) alone, `clips_per_video` uniform starts per usable video and one
global order of those clips (shuffled within random groups of `shard_group` shards, for reader
locality); global batch g is clips [g*W*B, (g+1)*W*B) of that order, and rank r takes its r-th block
of B. The plan is therefore the same whatever the number of loader workers, ranks partition every
global batch disjointly, and a resumed run re-plans the epoch and skips batches for free. Planning
touches no image data. Pure numpy.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from train.shard_index import ShardIndex

REFERENCE_FPS = 25.0  # VoxCeleb2's frame rate, at which the reference counts its stride of 4 frames
STRIDE_TOLERANCE = 0.01  # rows: how far stride_seconds * fps may be from a whole number
PREP_FPS_OPTION = "sslfer-prep --fps"


class ClipConfigError(ValueError):
    """The requested clips cannot be cut from these shards; the message names the fix."""


@dataclass(frozen=True)
class ClipConfig:
    frames: int = 16
    stride_frames: int | None = 4  # frames at frame_rate between consecutive clip frames
    stride_seconds: float | None = None  # or the stride in seconds (then stride_frames must be None)
    frame_rate: float = REFERENCE_FPS  # the rate stride_frames counts at
    clips_per_video: int = 1  # clips drawn per usable video per epoch (the reference draws one)
    # How far each clip step may last from stride / fps, in row periods: below 1, a dropped frame never passes.
    timing_tolerance: float = 0.5
    # The epoch's order visits the shards in random groups of this many, each group's clips shuffled
    # together, so a loader worker keeps reading from a few open shards (train/methods/mae/clip_stream.py keeps at most
    # MAX_OPEN_SHARDS open). With no more shards than this, the order is one plain shuffle.
    shard_group: int = 32

    def __post_init__(self):
        if self.frames < 1:
            raise ClipConfigError(f"a clip needs at least 1 frame, got frames={self.frames}")
        if (self.stride_frames is None) == (self.stride_seconds is None):
            raise ClipConfigError("give the clip stride either in frames or in seconds, not both or neither")
        if self.stride_frames is not None and self.stride_frames < 1:
            raise ClipConfigError(f"the clip stride must be at least 1 frame, got {self.stride_frames}")
        if self.stride_seconds is not None and not self.stride_seconds > 0:
            raise ClipConfigError(f"the clip stride must be positive, got {self.stride_seconds} s")
        if not self.frame_rate > 0:
            raise ClipConfigError(f"frame_rate must be positive, got {self.frame_rate}")
        if self.clips_per_video < 1:
            raise ClipConfigError(f"clips_per_video must be at least 1, got {self.clips_per_video}")
        if self.shard_group < 1:
            raise ClipConfigError(f"shard_group must be at least 1, got {self.shard_group}")
        if not 0 <= self.timing_tolerance < 1:
            raise ClipConfigError(f"timing_tolerance must be in [0, 1) row periods, got {self.timing_tolerance}")

    @property
    def seconds_per_step(self) -> float:
        if self.stride_seconds is not None:
            return float(self.stride_seconds)
        return self.stride_frames / self.frame_rate

    @property
    def span_seconds(self) -> float:
        """Time a clip covers, each frame's own period included: 16 x 0.16 s = 2.56 s for the reference."""
        return self.frames * self.seconds_per_step

    def describe_stride(self) -> str:
        if self.stride_seconds is not None:
            return f"{self.stride_seconds:g} s"
        return f"{self.seconds_per_step:g} s ({self.stride_frames} frames at {self.frame_rate:g} fps)"


def shard_fps(index: ShardIndex) -> float:
    """The frame rate all shards were prepared at (their header's prep config)."""
    rates = []
    for path, header in zip(index.paths, index.headers):
        fps = header.prep_config.get("fps")
        if fps is None:
            raise ClipConfigError(f"{path}: shard header states no prep fps; prepare the shards again with "
                                  f"`{PREP_FPS_OPTION} {REFERENCE_FPS:g}`")
        rates.append(float(fps))
    distinct = sorted(set(rates))
    if len(distinct) > 1:
        raise ClipConfigError(f"shards were prepared at different frame rates ({', '.join(f'{r:g}' for r in distinct)} "
                              f"fps); train on one set prepared with a single `{PREP_FPS_OPTION}`")
    return distinct[0]


def clip_stride_frames(index_fps: float, cfg: ClipConfig) -> int:
    """The stride in stored rows at `index_fps`; ClipConfigError when it is not a whole number >= 1."""
    step = cfg.seconds_per_step
    rows = step * float(index_fps)
    whole = round(rows)
    if whole >= 1 and abs(rows - whole) <= STRIDE_TOLERANCE:
        return int(whole)
    base = 1.0 / step  # every multiple of this rate gives a whole number of rows
    suggestion = cfg.frame_rate if cfg.stride_frames is not None else base * max(1, math.ceil(index_fps / base))
    raise ClipConfigError(
        f"shards prepared at {index_fps:g} fps cannot give a clip stride of {cfg.describe_stride()}: it would be "
        f"{rows:.3g} stored frames; prepare them with `{PREP_FPS_OPTION} F` where F is a multiple of {base:g} "
        f"(e.g. --fps {suggestion:g}), or choose another stride")


@dataclass
class ClipCatalogue:
    """Every valid clip start of every video for one (frames, stride); computed once, reused every epoch.
    Valid starts are kept as runs of consecutive starts (a gap-free video has one run)."""

    frames: int
    stride: int  # rows between consecutive clip frames
    fps: float
    span_rows: int  # rows from a clip's first frame to its last, both included
    run_video: np.ndarray  # (R,) video of each run of valid starts, ascending
    run_start: np.ndarray  # (R,) first valid start (position inside the video) of the run
    run_length: np.ndarray  # (R,) number of valid starts in the run
    usable: np.ndarray  # (U,) videos with at least one valid start, ascending
    video_shard: np.ndarray  # (V,) shard of every video
    skipped_short: int  # videos with fewer rows than the span
    skipped_timing: int  # videos long enough in rows without a window that keeps the stride in time

    @property
    def clip_positions(self) -> np.ndarray:
        """(T,) row offsets of a clip's frames from its start."""
        return np.arange(self.frames, dtype=np.int64) * self.stride


def valid_starts(timestamps: np.ndarray, frames: int, stride: int, fps: float, tolerance: float = 0.5) -> np.ndarray:
    """Boolean (n,): a clip may start at row i, i.e. rows i, i+stride, ... exist and each step spans
    stride / fps seconds within `tolerance` row periods."""
    ts = np.asarray(timestamps, dtype=np.float64)
    n = len(ts)
    span = (frames - 1) * stride + 1
    ok = np.zeros(n, bool)
    if n < span:
        return ok
    if frames == 1:
        ok[:] = True
        return ok
    period = 1.0 / fps
    bad = np.ones(n, np.int64)  # bad[i]: the step from row i to row i+stride is off (or leaves the video)
    bad[: n - stride] = np.abs(ts[stride:] - ts[:-stride] - stride * period) > tolerance * period + 1e-9
    # count[i] = bad[i] + bad[i - stride] + ...: a cumulative sum within each residue class mod stride.
    padded = np.concatenate([bad, np.zeros(-n % stride, np.int64)])
    count = np.cumsum(padded.reshape(-1, stride), axis=0).reshape(-1)[:n]
    starts = np.arange(n - span + 1)
    last_step = starts + (frames - 2) * stride
    before = np.where(starts >= stride, count[np.maximum(starts - stride, 0)], 0)
    ok[: n - span + 1] = count[last_step] - before == 0
    return ok


def _chunk_runs(ts: np.ndarray, counts: np.ndarray, frames: int, stride: int, fps: float,
                tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """valid_starts for a run of whole videos whose timestamps lie back to back in `ts` (`counts` rows
    each), at once: (run_video, run_start, run_length, usable) with videos numbered from 0 in the chunk.
    Every comparison is valid_starts' own, element for element, so the runs equal a per-video scan."""
    n = len(ts)
    video_end = np.repeat(np.cumsum(counts), counts)  # (n,) end row of each row's video
    video_begin = video_end - np.repeat(counts, counts)
    span = (frames - 1) * stride + 1
    if frames == 1:
        ok = np.ones(n, bool)
    else:
        period = 1.0 / fps
        bad = np.ones(n, np.int64)  # the step from row i to row i+stride is off, or leaves the video
        bad[: n - stride] = np.abs(ts[stride:] - ts[:-stride] - stride * period) > tolerance * period + 1e-9
        bad[np.arange(n) + stride >= video_end] = 1
        # count[i] = bad[i] + bad[i - stride] + ...: a cumulative sum within each residue class mod stride.
        padded = np.concatenate([bad, np.ones((frames - 1) * stride + (-n % stride), np.int64)])
        count = np.cumsum(padded.reshape(-1, stride), axis=0).reshape(-1)
        starts = np.arange(n)
        before = np.where(starts >= stride, count[np.maximum(starts - stride, 0)], 0)
        ok = count[starts + (frames - 2) * stride] - before == 0
    ok &= np.arange(n) + span <= video_end
    run_first = ok.copy()
    run_first[1:] &= ~ok[:-1] | (video_begin[1:] == np.arange(1, n))  # a run never continues into the next video
    begins = np.flatnonzero(run_first)
    run_id = np.cumsum(run_first) - 1
    lengths = np.bincount(run_id[ok], minlength=len(begins)).astype(np.int64)
    video_of_row = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    run_video = video_of_row[begins]
    return run_video, begins - video_begin[begins], lengths, np.unique(run_video)


# What a CatalogueBuilder keeps per shard: the runs of valid starts, and the videos that have one.
_RUNS = ("run_video", "run_start", "run_length", "usable")
_VIDEO_NUMBERS = ("run_video", "usable")  # the ones that count videos, shifted when shares are joined


class CatalogueBuilder:
    """Builds the clip catalogue shard by shard while the index is read (a train/shard_index.py ShardHook),
    so the MAE never holds every timestamp of the set (216 M at VoxCeleb2 scale). finish() gives what
    build_catalogue would, and raises its errors. It is a train/index_cache.py CachedHook: what it found is
    kept per clip configuration, and a later start restores it without the timestamps."""

    def __init__(self, cfg: ClipConfig):
        self.cfg = cfg
        self._reset()

    @property
    def cache_name(self) -> str:
        """What _chunk_runs depends on besides the shards (not the epoch's draw: clips_per_video, shard_group)."""
        c = self.cfg
        fields = [c.frames, c.stride_frames, c.stride_seconds, c.frame_rate, c.timing_tolerance]
        return "mae-clips-" + hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]

    def cache_arrays(self) -> dict[str, np.ndarray] | None:
        if not self._complete or self._stride is None or not self._parts:
            return None  # finish() refuses these shards; a start reads them again to say so
        return {**dict(zip(_RUNS, self._runs())),
                "counts": np.array([self._videos, self._short, self._long, self._stride], np.int64),
                "fps": np.array([self._fps], np.float64)}

    @staticmethod
    def combine(parts: list[dict[str, np.ndarray]], video_offsets: list[int]) -> dict[str, np.ndarray] | None:
        if len({float(p["fps"][0]) for p in parts}) != 1 or len({int(p["counts"][3]) for p in parts}) != 1:
            return None  # shares at different rates: finish() refuses them after reading every shard
        joined = {key: np.concatenate([p[key] + (offset if key in _VIDEO_NUMBERS else 0)
                                       for p, offset in zip(parts, video_offsets)])
                  for key in _RUNS}
        counts = np.sum([p["counts"][:3] for p in parts], axis=0)
        return {**joined, "counts": np.append(counts, parts[0]["counts"][3]).astype(np.int64), "fps": parts[0]["fps"]}

    def restore(self, paths: list[Path], arrays: dict[str, np.ndarray]) -> None:
        self._reset()
        self.paths = [Path(p) for p in paths]
        self._videos, self._short, self._long, self._stride = (int(x) for x in arrays["counts"])
        self._fps = float(arrays["fps"][0])
        self._parts = [tuple(arrays[k] for k in _RUNS)]

    def _reset(self) -> None:
        self.paths: list[Path] = []
        self._fps: float | None = None
        self._stride: int | None = None
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._videos = 0
        self._short = self._long = 0
        self._complete = True  # every shard was worked through (none skipped for its fps)

    def __call__(self, shard: int, path: Path, header, timestamps: np.ndarray, counts: np.ndarray) -> None:
        if shard == 0:  # an index is read (again) from its first shard
            self._reset()
        self.paths.append(Path(path))
        base, self._videos = self._videos, self._videos + len(counts)
        fps = header.prep_config.get("fps")
        if self._fps is None and fps is not None:
            self._fps = float(fps)
            try:
                self._stride = clip_stride_frames(self._fps, self.cfg)
            except ClipConfigError:
                self._stride = None  # finish() raises it, after the checks that come first
        if self._stride is None or fps is None or float(fps) != self._fps:
            self._complete = False
            return  # finish() refuses these shards; nothing more to compute
        span = (self.cfg.frames - 1) * self._stride + 1
        self._short += int(np.count_nonzero(counts < span))
        self._long += int(np.count_nonzero(counts >= span))
        run_video, run_start, run_length, usable = _chunk_runs(timestamps, counts, self.cfg.frames, self._stride,
                                                               self._fps, self.cfg.timing_tolerance)
        self._parts.append((run_video + base, run_start, run_length, usable + base))

    def _runs(self) -> tuple[np.ndarray, ...]:
        """The _RUNS arrays of every shard seen, joined. One part (a restored catalogue) is used as it is:
        a read-only mapping the ranks share."""
        parts = list(zip(*self._parts)) or [[np.zeros(0, np.int64)]] * len(_RUNS)
        return tuple((p[0] if len(p) == 1 else np.concatenate(p)).astype(np.int64, copy=False) for p in parts)

    def covers(self, index: ShardIndex) -> bool:
        return self.paths == [Path(p) for p in index.paths]

    def finish(self, index: ShardIndex) -> ClipCatalogue:
        """The catalogue of `index`, which must be the index this builder watched being read."""
        if not self.covers(index):
            raise ValueError("the catalogue builder watched another index being read")
        fps = shard_fps(index)
        stride = clip_stride_frames(fps, self.cfg)
        run_video, run_start, run_length, usable = self._runs()
        return _catalogue(index, self.cfg, fps, stride, run_video, run_start, run_length, usable,
                          self._short, self._long - len(usable))


def build_catalogue(index: ShardIndex, cfg: ClipConfig) -> ClipCatalogue:
    """Resolve the stride against the shards' fps and find every video's valid starts. Raises
    ClipConfigError when no video can give a clip."""
    fps = shard_fps(index)
    stride = clip_stride_frames(fps, cfg)
    if index.timestamps is None:
        raise ValueError("this index was read without timestamps; build the catalogue while reading it "
                         "(CatalogueBuilder)")
    span = (cfg.frames - 1) * stride + 1
    frames = np.asarray(index.video_frames, np.int64)
    run_video, run_start, run_length, usable = _chunk_runs(index.timestamps.values, frames, cfg.frames, stride,
                                                           fps, cfg.timing_tolerance)
    short = int(np.count_nonzero(frames < span))
    return _catalogue(index, cfg, fps, stride, run_video, run_start, run_length, usable, short,
                      index.num_videos - short - len(usable))


def _catalogue(index: ShardIndex, cfg: ClipConfig, fps: float, stride: int, run_video, run_start, run_length,
               usable, short: int, mistimed: int) -> ClipCatalogue:
    span = (cfg.frames - 1) * stride + 1
    if not len(usable):
        longest = int(index.video_frames.max()) if index.num_videos else 0
        why = (f"the longest video has {longest} frames ({longest / fps:.2f} s at {fps:g} fps)" if not mistimed else
               f"{short} videos are shorter and the other {mistimed} never keep the stride in time over a whole clip "
               f"(dropped frames, or source video at another rate than {fps:g} fps)")
        raise ClipConfigError(
            f"a clip of {cfg.frames} frames at stride {stride} spans {span} stored frames ({cfg.span_seconds:.2f} s) "
            f"but {why}; use fewer frames, a shorter stride, or longer videos")
    return ClipCatalogue(
        frames=cfg.frames, stride=stride, fps=fps, span_rows=span,
        run_video=run_video, run_start=run_start, run_length=run_length, usable=usable,
        video_shard=np.asarray(index.video_shard, np.int64),
        skipped_short=short, skipped_timing=mistimed,
    )


@dataclass
class EpochClipPlan:
    """One rank's clips of one epoch: batch i holds clips video[i], starting at row position start[i] of
    each video (0-based inside the video); frames are start + k * stride."""

    epoch: int
    rank: int
    world_size: int
    batch_size: int  # clips per rank per batch
    stride: int
    frames: int
    video: np.ndarray  # (steps, B) int64 global video ids
    start: np.ndarray  # (steps, B) int64 first frame position inside the video
    num_clips: int  # clips drawn this epoch over all ranks
    dropped: int  # clips of the last, incomplete global batch (not used)
    skipped_short: int  # videos shorter than the clip span (never used)
    skipped_timing: int  # videos without a window that keeps the stride in time (never used)

    @property
    def steps(self) -> int:
        return int(self.video.shape[0])

    def rows(self, batch: int) -> np.ndarray:
        """(B, T) frame positions inside each clip's video."""
        return self.start[batch][:, None] + np.arange(self.frames, dtype=np.int64) * self.stride


def clip_steps(catalogue: ClipCatalogue, cfg: ClipConfig, batch_size: int, world_size: int = 1) -> int:
    """Batches per epoch and rank (the same every epoch); ClipConfigError when not even one fits."""
    if batch_size < 1 or world_size < 1:
        raise ClipConfigError(f"need batch_size >= 1 and world_size >= 1, got {batch_size}, {world_size}")
    total = len(catalogue.usable) * cfg.clips_per_video
    steps = total // (batch_size * world_size)
    if steps == 0:
        raise ClipConfigError(
            f"{total} clips per epoch ({len(catalogue.usable)} usable videos x {cfg.clips_per_video}) do not fill "
            f"one global batch of {world_size} x {batch_size}; lower the batch size or raise clips per video")
    return steps


def draw_epoch_clips(catalogue: ClipCatalogue, cfg: ClipConfig, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(video, start) of every clip of the epoch, in the epoch's global order: a function of (seed, epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0xC11D]))
    # Valid starts per video, and where each video's runs begin in the flat run arrays.
    starts_per_video = np.bincount(catalogue.run_video, weights=catalogue.run_length).astype(np.int64)
    run_end = np.cumsum(catalogue.run_length)  # cumulative valid starts over all runs
    run_begin = run_end - catalogue.run_length
    video_base = np.zeros(len(starts_per_video), np.int64)
    first_run = np.searchsorted(catalogue.run_video, np.arange(len(starts_per_video)), side="left")
    has_runs = first_run < len(catalogue.run_video)
    video_base[has_runs] = run_begin[first_run[has_runs]]
    video = np.repeat(catalogue.usable, cfg.clips_per_video)
    pick = np.floor(rng.random(len(video)) * starts_per_video[video]).astype(np.int64)
    pick = np.minimum(pick, starts_per_video[video] - 1)
    flat = video_base[video] + pick
    run = np.searchsorted(run_end, flat, side="right")
    start = catalogue.run_start[run] + (flat - run_begin[run])
    order = rng.permutation(len(video))
    shards = int(catalogue.video_shard.max()) + 1
    if shards > cfg.shard_group:
        group = np.empty(shards, np.int64)
        group[rng.permutation(shards)] = np.arange(shards) // cfg.shard_group
        order = order[np.argsort(group[catalogue.video_shard[video[order]]], kind="stable")]
    return video[order], start[order]


def plan_epoch_clips(index: ShardIndex, cfg: ClipConfig, seed: int, epoch: int, batch_size: int, rank: int = 0,
                     world_size: int = 1, *, catalogue: ClipCatalogue | None = None) -> EpochClipPlan:
    """Rank `rank`'s batches of epoch `epoch`. Pass the catalogue built once (build_catalogue) to skip
    re-scanning the timestamps every epoch."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    catalogue = catalogue if catalogue is not None else build_catalogue(index, cfg)
    if catalogue.frames != cfg.frames or catalogue.stride != clip_stride_frames(catalogue.fps, cfg):
        raise ValueError("the catalogue was built for another clip length or stride than the config's")
    steps = clip_steps(catalogue, cfg, batch_size, world_size)
    video, start = draw_epoch_clips(catalogue, cfg, seed, epoch)
    used = steps * world_size * batch_size
    return EpochClipPlan(
        epoch=int(epoch), rank=rank, world_size=world_size, batch_size=batch_size, stride=catalogue.stride,
        frames=cfg.frames,
        video=video[:used].reshape(steps, world_size, batch_size)[:, rank].copy(),
        start=start[:used].reshape(steps, world_size, batch_size)[:, rank].copy(),
        num_clips=len(video), dropped=len(video) - used,
        skipped_short=catalogue.skipped_short, skipped_timing=catalogue.skipped_timing,
    )


def worker_batches(steps: int, num_slots: int, worker: int, skip: int = 0) -> range:
    """Rank-local batch numbers a loader worker serves: the DataLoader asks workers round-robin starting at
    worker 0, so after skipping `skip` batches worker w serves skip + w, skip + w + num_slots, ..."""
    return range(skip + worker, steps, max(1, num_slots))
