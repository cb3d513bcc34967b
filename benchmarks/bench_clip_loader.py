"""Clip-loader throughput for video MAE pretraining: ClipStream + make_clip_loader over real shards, with
0, 1 and 2 worker processes, side by side with the same loader over an in-memory source (the frames of
every usable video decoded beforehand), which shows the ceiling of the loader machinery itself.

    .venv/bin/python benchmarks/bench_clip_loader.py --shards /tmp/clipshards [--workers 0 1 2]
        [--batch-size 8] [--frames 16 --stride 4] [--clips-per-video 8] [--rounds 3] [--json out.json]

Each round iterates one whole epoch of every configuration in turn (interleaved, since other processes
share the CPU), timing from batch workers * prefetch + 1 to the last, so worker start-up and the batches
prefetched meanwhile are left out; the best round of each configuration is kept. Workers persist across rounds, as in
training. Prints clips/s, frames/s and the ratio to the in-memory figure with the same worker count,
then the time of augment_clips (crop, resize, normalisation) on one loaded batch per output size.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sslfer_core.clip_augment import ClipAugmentConfig, augment_clips  # noqa: E402
from train.methods.mae.clip_plan import ClipConfig  # noqa: E402
from train.methods.mae.clip_stream import IMAGE_FIELD, PREFETCH_BATCHES, ClipStream, make_clip_loader  # noqa: E402
from train.shard_index import build_shard_index  # noqa: E402


class MemoryClipStream(ClipStream):
    """The same plan and batches, with frames sliced out of decoded arrays instead of read from shards."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frames_of: dict[int, np.ndarray] = {}
        for video in self.catalogue.usable.tolist():
            first = int(self.index.video_first_row[video])
            rows = slice(first, first + int(self.index.video_frames[video]))
            self.frames_of[video] = self._reader(int(self.index.video_shard[video])).read_images(IMAGE_FIELD, rows)
        self.close()  # no HDF5 handle crosses the fork

    def read_clip(self, video: int, start: int) -> np.ndarray:
        stride = self.catalogue.stride
        return self.frames_of[video][start: start + (self.cfg.frames - 1) * stride + 1: stride]


def time_epoch(loader, stream, epoch: int, warm: int) -> tuple[float, int]:
    """Seconds from batch `warm` to the last of one epoch, and the clips in between: the batches before
    `warm` may have been prefetched while the pool started, and would count as free."""
    stream.set_epoch(epoch)
    clips, start = 0, None
    for number, batch in enumerate(loader):
        if number == warm:
            start = time.perf_counter()
        elif number > warm:
            clips += batch["clips"].shape[0]
    if start is None:
        raise SystemExit(f"error: an epoch has only {len(loader)} batches; raise --clips-per-video above the "
                         f"{warm + 2} batches the timing needs")
    return time.perf_counter() - start, clips


def _timed(func) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=Path, required=True, help="folder of *.h5 shards")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--stride", type=int, default=4, help="frames at 25 fps")
    ap.add_argument("--clips-per-video", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--augment-sizes", type=int, nargs="*", default=[160, 64],
                    help="also time augment_clips on one loaded batch for each output size (CPU, this process)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    paths = sorted(args.shards.glob("*.h5"))
    if not paths:
        print(f"error: no *.h5 shards in {args.shards}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    index = build_shard_index(paths)
    cfg = ClipConfig(frames=args.frames, stride_frames=args.stride, clips_per_video=args.clips_per_video)
    common = dict(seed=0, batch_size=args.batch_size)
    probe = ClipStream(index, cfg, **common)
    cat = probe.catalogue
    codec = index.headers[0].codecs["face"].to_json()
    print(f"shards: {len(paths)} files, {index.num_videos} videos, {index.num_frames} frames at {cat.fps:g} fps, "
          f"{index.image_size} px, face codec {codec}")
    print(f"clips: {cfg.frames} frames at stride {cat.stride} rows ({cfg.span_seconds:.2f} s); usable videos "
          f"{len(cat.usable)}, skipped {cat.skipped_short} short + {cat.skipped_timing} whose rows never keep "
          f"the stride in time; "
          f"{probe.steps} batches of {args.batch_size} per epoch")
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())} (shared machine)")

    # Single-process cost of one clip read (HDF5 + decode), for reference.
    plan = probe.plan(0)
    t0 = time.perf_counter()
    n_read = 0
    for b in range(min(probe.steps, 8)):
        for video, start in zip(plan.video[b], plan.start[b]):
            probe.read_clip(int(video), int(start))
            n_read += 1
    per_clip = (time.perf_counter() - t0) / n_read
    probe.close()
    print(f"one clip read+decode in this process: {per_clip * 1e3:.1f} ms ({1 / per_clip:.1f} clips/s, one core)")

    configs = []
    for workers in args.workers:
        for source in ("shards", "memory"):
            stream = (ClipStream if source == "shards" else MemoryClipStream)(index, cfg, **common)
            loader = make_clip_loader(stream, workers, pin_memory=False)
            configs.append({"source": source, "workers": workers, "stream": stream, "loader": loader, "best": None})
    for row in configs:  # start the worker pools before timing
        row["warm"] = max(1, row["workers"] * PREFETCH_BATCHES + 1)
        time_epoch(row["loader"], row["stream"], 0, row["warm"])
    for r in range(args.rounds):
        for row in configs:
            seconds, clips = time_epoch(row["loader"], row["stream"], r + 1, row["warm"])
            rate = clips / seconds
            row["best"] = rate if row["best"] is None else max(row["best"], rate)
    print()
    print(f"{'source':8} {'workers':>7} {'clips/s':>9} {'frames/s':>10} {'vs memory':>10}")
    results = []
    for row in configs:
        memory = next(r["best"] for r in configs if r["source"] == "memory" and r["workers"] == row["workers"])
        frames = row["best"] * cfg.frames
        print(f"{row['source']:8} {row['workers']:>7} {row['best']:>9.1f} {frames:>10.0f} "
              f"{row['best'] / memory:>10.2f}")
        results.append({"source": row["source"], "workers": row["workers"], "clips_per_s": row["best"],
                        "frames_per_s": frames})
    augment = []
    if args.augment_sizes:
        batch = next(iter(make_clip_loader(ClipStream(index, cfg, **common), 0, pin_memory=False)))["clips"]
        torch.set_num_threads(os.cpu_count() or 1)
        print()
        print(f"augment_clips on one batch {tuple(batch.shape)}, {torch.get_num_threads()} torch threads:")
        for size in args.augment_sizes:
            aug = ClipAugmentConfig(size=size)
            generator = torch.Generator().manual_seed(0)
            augment_clips(batch, aug, generator)
            best = min(_timed(lambda: augment_clips(batch, aug, generator)) for _ in range(3))
            print(f"  {index.image_size} -> {size} px: {best * 1e3:.0f} ms per batch "
                  f"({batch.shape[0] / best:.0f} clips/s)")
            augment.append({"size": size, "ms_per_batch": best * 1e3})
    if args.json:
        args.json.write_text(json.dumps({
            "shards": str(args.shards), "fps": cat.fps, "image_size": index.image_size, "codec": codec,
            "frames": cfg.frames, "stride_rows": cat.stride, "batch_size": args.batch_size,
            "usable_videos": int(len(cat.usable)), "per_clip_read_ms": per_clip * 1e3,
            "load_average": os.getloadavg(), "results": results, "augment": augment}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
