"""Index-level plan of one epoch: which videos each data-loading unit owns, and which frames fill each batch.

A unit is one (rank, worker slot). It keeps a pool of up to `pool_videos` videos (drawn from all of its
shards) and fills every batch with anchors from distinct pool videos (whenever it owns at least a batch's
worth of videos), drawing videos in proportion to the anchors they have left. When its remaining videos
can no longer fill a batch from distinct videos it starts the next cycle over its videos (fresh draws),
so a long clip never ends up filling batches alone. Planning touches no image data, so a resumed run
re-plans the epoch and skips consumed batches for free.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from train.methods.contrastive.temporal_sampler import OffsetRules, VideoDraws, draw_video, video_rng
from train.shard_index import ShardIndex

ANCHOR, POSITIVE, HARDNEG, HARDNEG_POSITIVE = range(4)
POSITIVE_VIEWS = (POSITIVE, HARDNEG_POSITIVE)
FALLBACK_KINDS = ("timeaug", "hardneg", "faceswap", "cutmix")


DEFAULT_SWAP_P = 0.8  # probability that a positive view is replaced by its FaceSwap (or CutMix)


@dataclass(frozen=True)
class PlanConfig:
    seed: int
    batch_size: int  # anchors per rank
    timeaug: bool = False
    hardneg: bool = False
    faceswap: bool = False
    cutmix: bool = False
    swap_p: float = DEFAULT_SWAP_P
    pool_videos: int = 64
    rules: OffsetRules = OffsetRules()

    @property
    def num_views(self) -> int:
        return 4 if self.hardneg else 2


@dataclass
class BatchPlan:
    index: int  # rank-local batch number within the epoch
    video: np.ndarray  # (B,) global video id of each sample
    rows: np.ndarray  # (V, B) frame position inside the video for each view
    swap_u: np.ndarray  # (V, B) uniform: a positive view uses its swap when swap_u < swap_p
    swap_pick: np.ndarray  # (V, B) uniform: which of the frame's usable swaps
    cutmix_target: np.ndarray  # (V, B) slot whose anchor is the CutMix target, -1 for none
    hardneg_valid: np.ndarray  # (B,) False where the sample's HardNeg rows are masked out
    fallbacks: dict[str, int] = field(default_factory=dict)
    release: list[int] = field(default_factory=list)  # videos no later batch of this unit needs (until reloaded)


def steps_per_epoch(num_frames: int, world_size: int, batch_size: int) -> int:
    """Every frame is an anchor once per epoch; the remainder that does not fill a global batch is dropped."""
    return num_frames // (world_size * batch_size)


def unit_batches(steps: int, num_slots: int, slot: int) -> list[int]:
    """Rank-local batch numbers owned by worker slot `slot` (a DataLoader takes workers round-robin)."""
    return list(range(slot, steps, num_slots))


def assign_videos(index: ShardIndex, num_units: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Global video ids per unit, balanced by frame count (largest first onto the lightest unit).
    Whole shards are assigned when there are at least as many shards as units, so that every unit opens
    only its own files; otherwise videos are spread individually. Reshuffled every epoch."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0xA5]))
    by_shard = len(index.paths) >= num_units
    frames = np.asarray(index.video_frames, np.int64)
    if by_shard:
        # One stable sort instead of a scan per shard: linear in videos, not videos x shards.
        shards = np.asarray(index.video_shard, np.int64)
        per_shard = np.bincount(shards, minlength=len(index.paths))
        items = np.split(np.argsort(shards, kind="stable"), np.cumsum(per_shard)[:-1])
        sizes = np.bincount(shards, weights=frames, minlength=len(index.paths)).astype(np.int64)
    else:
        items = list(np.arange(index.num_videos, dtype=np.int64).reshape(-1, 1))
        sizes = frames.copy()
    order = rng.permutation(len(items))
    order = order[np.argsort(-sizes[order], kind="stable")]
    loads = np.zeros(num_units, np.int64)
    owned: list[list[np.ndarray]] = [[] for _ in range(num_units)]
    unit_label = rng.permutation(num_units)  # which unit gets the first (largest) item changes per epoch
    for item in order:
        u = int(np.argmin(loads[unit_label]))
        owned[unit_label[u]].append(items[item])
        loads[unit_label[u]] += sizes[item]
    return [np.sort(np.concatenate(o)) if o else np.zeros(0, np.int64) for o in owned]


class _PoolEntry:
    __slots__ = ("video", "draws", "extra", "next")

    def __init__(self, video: int, draws: VideoDraws, extra: np.ndarray):
        self.video, self.draws, self.extra, self.next = video, draws, extra, 0

    @property
    def remaining(self) -> int:
        return len(self.draws) - self.next


def plan_unit(index: ShardIndex, videos: np.ndarray, config: PlanConfig, epoch: int, unit_id: int,
              batch_numbers: list[int]) -> Iterator[BatchPlan]:
    """The unit's batches, in order, numbered by `batch_numbers`."""
    if not len(videos) and batch_numbers:
        raise ValueError(f"data unit {unit_id} owns no videos but must fill {len(batch_numbers)} batches")
    rng = np.random.default_rng(np.random.SeedSequence([int(config.seed), int(epoch), int(unit_id), 0xB0]))
    b = config.batch_size
    distinct_needed = min(b, len(videos))
    queue: deque[tuple[int, int]] = deque()  # (video, cycle) not yet in the pool
    cycle = -1
    pool: list[_PoolEntry] = []
    active: dict[int, int] = {}  # video -> entries in the pool

    def enter(video: int, cyc: int) -> None:
        vrng = video_rng(config.seed, epoch, video, cyc)
        draws = draw_video(index.timestamps[video], vrng, timeaug=config.timeaug, hardneg=config.hardneg,
                           rules=config.rules)
        pool.append(_PoolEntry(video, draws, vrng.random((len(draws), 2, 2))))
        active[video] = active.get(video, 0) + 1

    def next_inactive() -> int | None:
        for position, (video, _) in enumerate(queue):
            if video not in active:
                return position
        return None

    for number in batch_numbers:
        while True:
            enough = len(active) >= distinct_needed and sum(e.remaining for e in pool) >= b
            if enough and len(pool) >= config.pool_videos:
                break
            position = next_inactive()
            if position is not None:
                queue.rotate(-position)
                enter(*queue.popleft())
                queue.rotate(position)
            elif not enough and (len(active) < distinct_needed or not queue):
                # This cycle cannot fill a batch from distinct videos: every video again, fresh draws.
                cycle += 1
                queue.extend((int(v), cycle) for v in rng.permutation(videos))
            elif not enough:  # fewer videos than anchors per batch: a video may repeat
                enter(*queue.popleft())
            else:
                break
        picks = _pick_entries(pool, b, rng)
        plan = _fill_batch(number, pool, picks, config, index, rng)
        finished = [e for e in pool if e.remaining == 0]
        for entry in finished:
            pool.remove(entry)
            active[entry.video] -= 1
            if not active[entry.video]:
                del active[entry.video]
                plan.release.append(entry.video)
        yield plan


def _pick_entries(pool: list[_PoolEntry], b: int, rng: np.random.Generator) -> np.ndarray:
    """b pool positions: distinct while the pool allows, each drawn in proportion to anchors left."""
    remaining = np.array([e.remaining for e in pool], dtype=np.float64)
    if len(pool) >= b:
        return rng.choice(len(pool), size=b, replace=False, p=remaining / remaining.sum())
    picks = list(rng.permutation(len(pool)))
    left = remaining - 1
    for _ in range(b - len(pool)):
        k = int(rng.choice(len(pool), p=left / left.sum()))
        picks.append(k)
        left[k] -= 1
    return np.asarray(picks)


def _fill_batch(number: int, pool: list[_PoolEntry], picks: np.ndarray, config: PlanConfig, index: ShardIndex,
                rng: np.random.Generator) -> BatchPlan:
    b, views = config.batch_size, config.num_views
    video = np.empty(b, np.int64)
    rows = np.empty((views, b), np.int64)
    swap_u = np.ones((views, b))
    swap_pick = np.zeros((views, b))
    hardneg_valid = np.ones(b, bool)
    timeaug_fallback = 0
    for slot, k in enumerate(picks):
        entry = pool[k]
        i = entry.next
        entry.next += 1
        d = entry.draws
        video[slot] = entry.video
        rows[ANCHOR, slot], rows[POSITIVE, slot] = d.anchor[i], d.positive[i]
        swap_u[POSITIVE, slot], swap_pick[POSITIVE, slot] = entry.extra[i, 0]
        timeaug_fallback += bool(d.timeaug_fallback[i])
        if views == 4:
            if d.hardneg[i] >= 0:
                rows[HARDNEG, slot], rows[HARDNEG_POSITIVE, slot] = d.hardneg[i], d.hardneg_positive[i]
                swap_u[HARDNEG_POSITIVE, slot], swap_pick[HARDNEG_POSITIVE, slot] = entry.extra[i, 1]
            else:  # masked rows: reuse the anchor's frame so nothing extra is decoded
                rows[HARDNEG, slot] = rows[HARDNEG_POSITIVE, slot] = d.anchor[i]
                hardneg_valid[slot] = False
    cutmix_target = np.full((views, b), -1, np.int64)
    cutmix_fallback = 0
    if config.cutmix:
        identity = index.video_identity[video]
        for view in POSITIVE_VIEWS[: views // 2]:
            for slot in np.flatnonzero(swap_u[view] < config.swap_p):
                if view == HARDNEG_POSITIVE and not hardneg_valid[slot]:
                    continue
                others = np.flatnonzero(identity != identity[slot])
                if len(others):
                    cutmix_target[view, slot] = others[rng.integers(len(others))]
                else:
                    cutmix_fallback += 1
    fallbacks = {"timeaug": timeaug_fallback if config.timeaug else 0,
                 "hardneg": int((~hardneg_valid).sum()) if config.hardneg else 0,
                 "faceswap": 0, "cutmix": cutmix_fallback}
    return BatchPlan(number, video, rows, swap_u, swap_pick, cutmix_target, hardneg_valid, fallbacks)
