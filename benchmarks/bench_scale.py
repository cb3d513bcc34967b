"""Start-up at VoxCeleb2 scale, measured on synthetic sets with its counts and 4 px images (not a test).

VoxCeleb2 dev holds 1,092,009 utterance clips of 145,569 YouTube videos of 5,994 identities: 43 M stored
frames in the contrastive profile (5 fps, 6,556 shards) and 216 M in the video profile (25 fps, 2,255
shards). `generate` writes a set of N clips with those ratios (frames per clip, clips per shard, clips per
identity; 1 % of the clips miss one frame), through the shard writer, one write per field and shard, with
4 x 4 px faces (the images do not matter for start-up; everything else is stored as sslfer-prep stores it).
`--sparse` stores the (all-zero) landmarks deflated, so that 1.1 M clips fit a small disk (_SparseWriter).

`measure` then times, for the set's method (video profile: mae, contrastive profile: contrastive):
  - sslfer-manifest build and full verify with -j (the cores), and the bytes they hash;
  - the start-up phases in one process (manifest, quick check, index [+ clip catalogue] read from the
    shards and then from the index cache, epoch plan), the index's bytes and the process's RSS;
  - sslfer-train to its first step at 1 and 2 ranks (torchrun, gloo, CPU) in three states: a new machine
    (no hash record, no index cache), then the record and index cache filled (a later start), then the
    record filled without an index cache (the first start after `sslfer-manifest verify`): seconds from
    process start to the first metrics line, the bytes and seconds each rank spent hashing, each rank's
    peak RSS and its PSS at exit (pages shared by the ranks, such as the mapped index, split among them).
One JSON line per set is appended to --results. `report` fits every figure against the clip count over
all measured sizes, and extrapolates to 1.09 M clips and 8 ranks (`--markdown`: the docs' tables).
`first-step` repeats the filled start a few times, one line each, to show the spread under the load.

    python benchmarks/bench_scale.py generate --profile video --clips 300000 --out /scratch/v300k --sparse
    python benchmarks/bench_scale.py measure /scratch/v300k --results scale.jsonl
    python benchmarks/bench_scale.py report scale.jsonl --markdown
    python benchmarks/bench_scale.py first-step /scratch/v300k --repeat 3

Results: docs/training.md, "At VoxCeleb2 scale".
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_manifest.manifest import (  # noqa: E402
    MANIFEST_NAME, build_manifest, find_shard_files, load_manifest_and_digest, save_manifest,
)
from data_manifest.verify import verify_shards  # noqa: E402
from sslfer_core.cpu_cores import available_cores  # noqa: E402
from sslfer_core.shard_format import ImageCodec, ShardHeader, ShardWriter, VideoFrames  # noqa: E402

VOX2_CLIPS = 1_092_009
VOX2_IDENTITIES = 5_994
VOX2_VIDEOS = 145_569
PROFILES = {
    # frames per clip and clips per shard of the real set in each profile
    "contrastive": dict(fps=5.0, frames=43.0e6 / VOX2_CLIPS, clips_per_shard=VOX2_CLIPS / 6_556, method="contrastive"),
    "video": dict(fps=25.0, frames=216.0e6 / VOX2_CLIPS, clips_per_shard=VOX2_CLIPS / 2_255, method="mae"),
}
SIDE = 4  # px: start-up does not look at the images
GAP_SHARE = 0.01  # clips that miss one frame (a dropped detection)
TRAIN_ARGS = {
    "contrastive": ["--arch", "resnet18", "--resize", "36", "--crop", "32", "--batch-size", "8"],
    "mae": ["mae", "--preset", "tiny", "--frames", "4", "--stride", "2", "--batch-size", "2", "--precision", "fp32",
            "--min-lr", "0"],
}
TARGET_CLIPS, TARGET_RANKS = VOX2_CLIPS, 8

# Run inside each rank by `measure`: counts the bytes and seconds this rank spends hashing shards at start-up
# and leaves them, with the peak RSS, beside the run folder when the rank exits.
_COUNTING_TRAINER = """
import atexit, json, os, resource, sys, time
import train.shard_set as shard_set
real, spent = shard_set.file_sha256, {"bytes": 0, "seconds": 0.0, "files": 0}
def counted(path, *args, **kwargs):
    t = time.perf_counter()
    digest = real(path, *args, **kwargs)
    spent["seconds"] += time.perf_counter() - t
    spent["bytes"] += os.path.getsize(path)
    spent["files"] += 1
    return digest
shard_set.file_sha256 = counted
def report():
    spent["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with open("/proc/self/smaps_rollup") as rollup:  # Pss: shared pages (the mapped index) split between ranks
        spent["pss_bytes"] = next(int(l.split()[1]) * 1024 for l in rollup if l.startswith("Pss:"))
    with open(os.environ["SCALE_REPORT"] + ".rank" + os.environ.get("RANK", "0") + ".json", "w") as handle:
        json.dump(spent, handle)
atexit.register(report)
from train.cli import main
sys.argv[0] = "sslfer-train"
main()
"""


# ----------------------------------------------------------------------------- generate
def generate(out: Path, profile: str, clips: int, seed: int = 0, sparse: bool = False) -> dict:
    """Write `clips` clips in the profile's shard layout below `out` (no manifest: `measure` builds it).
    sparse: leave the landmarks unwritten (see _SparseWriter)."""
    p = PROFILES[profile]
    rng = np.random.default_rng(seed)
    mean = p["frames"]
    lengths = rng.integers(max(1, round(0.5 * mean)), round(1.5 * mean) + 1, size=clips)
    gaps = rng.random(clips) < GAP_SHARE
    shards = max(1, round(clips / p["clips_per_shard"]))
    bounds = np.linspace(0, clips, shards + 1).round().astype(int)
    codecs = {name: ImageCodec() for name in ("face", "eyes", "mouth", "swaps")}
    header = ShardHeader(image_size=SIDE, patch_size=0, swaps_per_frame=0, descriptor_kind="none",
                         descriptor_dim=0, codecs=codecs, prep_config={"fps": p["fps"], "size": SIDE, "synthetic": True})
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for s in range(shards):
        first, last = bounds[s], bounds[s + 1]
        _write_shard(out / f"shard-{s:05d}.h5", header, rng, np.arange(first, last), lengths[first:last],
                     gaps[first:last], p["fps"], _SparseWriter if sparse else ShardWriter)
    return dict(shards=shards, clips=clips, frames=int(lengths.sum() - gaps.sum()), sparse=sparse,
                seconds=time.perf_counter() - started)


class _SparseWriter(ShardWriter):
    """Stores the landmarks (all zero here) deflated, the one filter h5py offers everywhere, so a 1.1 M-clip
    set fits this disk: raw, they are 544 of the 616 bytes of a 4 px frame, and start-up never reads them.
    Everything else is laid out as ShardWriter lays it out; only the bytes on disk (and so the hashing
    figures) are smaller than a written set's."""

    def _append(self, name: str, data: np.ndarray, dtype, *, raw_image: bool = False) -> None:
        if name == "landmarks" and name not in self._frames:
            rows = self.chunk_rows(int(np.prod(data.shape[1:])) * np.dtype(dtype).itemsize, raw_image=False)
            self._frames.create_dataset(name, shape=(0,) + data.shape[1:], maxshape=(None,) + data.shape[1:],
                                        dtype=dtype, chunks=(rows,) + data.shape[1:], compression="gzip",
                                        compression_opts=1)
        super()._append(name, data, dtype, raw_image=raw_image)


def _write_shard(path: Path, header: ShardHeader, rng, clip_ids, lengths, gaps, fps: float, writer_class) -> None:
    """One add_video for all rows of the shard (one write per field), then the real per-clip video table,
    row owners and timestamps: what sslfer-prep writes clip by clip, at a fraction of the cost."""
    times, counts = [], []
    for n, gap in zip(lengths, gaps):
        t = np.arange(n) / fps
        if gap and n > 2:
            t = np.delete(t, n // 2)  # the middle frame was not kept
        times.append(t)
        counts.append(len(t))
    rows = int(sum(counts))
    ts = np.concatenate(times)
    ident = clip_ids * VOX2_IDENTITIES // VOX2_CLIPS
    youtube = clip_ids * VOX2_VIDEOS // VOX2_CLIPS
    names = [f"id{i:05d}/yt{y:09d}/{c:07d}" for i, y, c in zip(ident, youtube, clip_ids)]
    block = VideoFrames(
        video_id="all", identity="all", source_path="all", source_fps=25.0,
        faces=rng.integers(0, 256, (rows, SIDE, SIDE, 3), dtype=np.uint8),
        landmarks=np.zeros((rows, 68, 2), np.float32), eyes=None, mouth=None,
        timestamps=np.arange(rows, dtype=np.float64), frame_index=np.rint(ts * 25).astype(np.int64),
        det_score=np.ones(rows, np.float32))
    with writer_class(path, header) as writer:
        writer.add_video(block)
        frames = writer._frames
        frames["timestamp"][:] = ts
        frames["video_row"][:] = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        writer._videos = [dict(video_id=name, identity=f"id{i:05d}", source_path=f"{name}.mp4", source_fps=25.0,
                               first_row=int(f), row_count=int(n), status="ok")
                          for name, i, f, n in zip(names, ident, starts, counts)]


# ----------------------------------------------------------------------------- measure
def _rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(root: Path, ranks: list[int], skip_build: bool = False) -> dict:
    jobs = available_cores()
    files = find_shard_files(root)
    total_bytes = sum(f.stat().st_size for f in files)
    result: dict = dict(root=str(root), shards=len(files), bytes=total_bytes, jobs=jobs, load_before=_load())
    with tempfile.TemporaryDirectory(prefix="scale-") as scratch:
        scratch = Path(scratch)
        os.environ["SSLFER_HASH_CACHE"] = str(scratch / "record-build.json")
        if not (skip_build and (root / MANIFEST_NAME).exists()):
            t = time.perf_counter()
            save_manifest(root, build_manifest(root, files, jobs=jobs))
            result["build_s"] = time.perf_counter() - t
        t = time.perf_counter()
        problems = verify_shards(root, jobs=jobs)
        result["verify_s"] = time.perf_counter() - t
        if problems:
            raise SystemExit(f"{root}: verify found {problems[0]}")
        manifest, _ = load_manifest_and_digest(root)
        result["clips"] = sum(e.videos for e in manifest.shards)
        result["frames"] = sum(e.frames for e in manifest.shards)
        method = _method_of(manifest)
        result["method"] = method
        result["phases"] = _phases(root, method)
        for world in ranks:
            for record in ("fresh", "filled", "uncached"):
                cache = scratch / f"record-{world}.json"
                if record == "fresh":  # a new machine: no hash record, no index cache
                    for stale in scratch.glob(f"record-{world}.json*"):
                        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
                if record == "uncached":  # every shard hashed, but no start has cached the index
                    shutil.rmtree(cache.with_name(cache.name + ".index"))
                result[f"train_{world}_{record}"] = _first_step(root, method, world, cache, scratch / f"run-{world}-{record}")
    result["load_after"] = _load()
    return result


def _method_of(manifest) -> str:
    fps = float(manifest.prep_config.get("fps", 5.0))
    return "mae" if fps == PROFILES["video"]["fps"] else "contrastive"


def _phases(root: Path, method: str) -> dict:
    """The start-up steps of one rank with the hash record filled, one by one, in this process."""
    from train.distributed import DistContext
    from train.shard_set import open_shard_set

    phases: dict = {"rss_start_bytes": _rss_bytes()}
    t = time.perf_counter()
    load_manifest_and_digest(root)
    phases["manifest_s"] = time.perf_counter() - t
    t = time.perf_counter()
    verify_shards(root, quick=True)
    phases["quick_check_s"] = time.perf_counter() - t
    from train import index_cache
    if method == "mae":
        from train.methods.mae.clip_plan import CatalogueBuilder, ClipConfig, clip_steps, plan_epoch_clips
        cfg = ClipConfig(frames=4, stride_frames=2)
        for key in ("open_and_index_s", "open_cached_s"):  # from the shards (writing the cache), then from it
            if key == "open_and_index_s":
                index_cache.drop_set(load_manifest_and_digest(root)[1])
            builder = CatalogueBuilder(cfg)
            t = time.perf_counter()
            index, _ = open_shard_set(root, ctx=DistContext(), keep_timestamps=False, on_shard=builder)
            catalogue = builder.finish(index)
            phases[key] = time.perf_counter() - t
        t = time.perf_counter()
        plan_epoch_clips(index, cfg, 0, 0, 2, catalogue=catalogue)
        clip_steps(catalogue, cfg, 2)
        phases["plan_s"] = time.perf_counter() - t
        phases["catalogue_bytes"] = sum(getattr(catalogue, k).nbytes for k in
                                        ("run_video", "run_start", "run_length", "usable", "video_shard"))
    else:
        from train.methods.contrastive.epoch_plan import PlanConfig, assign_videos, plan_unit, steps_per_epoch, unit_batches
        for key in ("open_and_index_s", "open_cached_s"):
            if key == "open_and_index_s":
                index_cache.drop_set(load_manifest_and_digest(root)[1])
            t = time.perf_counter()
            index, _ = open_shard_set(root, ctx=DistContext())
            phases[key] = time.perf_counter() - t
        t = time.perf_counter()
        videos = assign_videos(index, 1, 0, 0)[0]
        steps = steps_per_epoch(index.num_frames, 1, 8)
        next(iter(plan_unit(index, videos, PlanConfig(seed=0, batch_size=8), 0, 0, unit_batches(steps, 1, 0))))
        phases["plan_s"] = time.perf_counter() - t
    phases["index_bytes"] = index.nbytes
    phases["timestamps_bytes"] = index.timestamps.nbytes if index.timestamps is not None else 0
    phases["rss_bytes"] = _rss_bytes()
    return phases


def _first_step(root: Path, method: str, world: int, record: Path, run: Path) -> dict:
    """sslfer-train under torchrun to its first step (and one checkpoint): seconds from launch to the first
    metrics line, and per rank the hashing it did and its peak RSS."""
    script = run.with_suffix(".py")
    script.write_text(_COUNTING_TRAINER)
    env = {**os.environ, "SSLFER_HASH_CACHE": str(record), "SCALE_REPORT": str(run), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world),
               str(script), *TRAIN_ARGS[method], "--shards", str(root), "--out", str(run), "--device", "cpu",
               "--steps", "1", "--workers", "0", "--log-every", "1"]
    started = time.time()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode != 0:
        raise SystemExit(f"sslfer-train failed ({done.returncode}): {done.stderr[-2000:]}")
    first_step = (run / "metrics.jsonl").stat().st_mtime - started
    per_rank = [json.loads(Path(f"{run}.rank{r}.json").read_text()) for r in range(world)]
    shutil.rmtree(run, ignore_errors=True)
    return dict(first_step_s=first_step, wall_s=wall, ranks=per_rank)


def first_steps(root: Path, ranks: list[int], repeat: int) -> None:
    """The first step with the hash record and the index cache filled (one start fills them), `repeat`
    times per rank count, one line each: the spread under this machine's load."""
    manifest, _ = load_manifest_and_digest(root)
    method = _method_of(manifest)
    with tempfile.TemporaryDirectory(prefix="scale-") as scratch:
        scratch = Path(scratch)
        for world in ranks:
            record = scratch / f"record-{world}.json"
            _first_step(root, method, world, record, scratch / "fill")
            for n in range(repeat):
                load = _load()
                done = _first_step(root, method, world, record, scratch / f"run-{n}")
                print(f"{method} {manifest.totals()['videos']:,} clips, {world} rank(s), record and index cache "
                      f"filled: first step {done['first_step_s']:.2f} s, peak RSS per rank "
                      f"{max(r['max_rss_bytes'] for r in done['ranks']) / 1e6:,.0f} MB, PSS at exit "
                      f"{max(r['pss_bytes'] for r in done['ranks']) / 1e6:,.0f} MB ({load} before)", flush=True)


# ----------------------------------------------------------------------------- report
def _linear(xs, ys) -> tuple[float, float] | None:
    """(a, b) of y = a + b * x by least squares; None with fewer than 2 points."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if len(pts) < 2:
        return None
    b, a = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
    return float(a), float(b)


def _exponent(xs, ys) -> float | None:
    """Growth exponent of the part that grows: the log-log slope of y - a over the sizes, with a the
    linear fit's intercept (the fixed cost: imports, model); 1 = linear, 2 = quadratic."""
    fit = _linear(xs, ys)
    if fit is None:
        return None
    pts = [(x, y - fit[0]) for x, y in zip(xs, ys) if y is not None and y - fit[0] > 0]
    if len(pts) < 2:
        return None
    return float(np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)[0])


def _figures(row: dict) -> dict:
    ph = row["phases"]
    out = {
        "build_s": row.get("build_s"), "verify_s": row["verify_s"], "manifest_s": ph["manifest_s"],
        "quick_check_s": ph["quick_check_s"], "open_and_index_s": ph["open_and_index_s"], "plan_s": ph["plan_s"],
        "open_cached_s": ph.get("open_cached_s"),
        "index_MB": ph["index_bytes"] / 1e6, "timestamps_MB": ph["timestamps_bytes"] / 1e6,
        "catalogue_MB": ph.get("catalogue_bytes", 0) / 1e6, "set_GB": row["bytes"] / 1e9,
        "startup_rss_growth_MB": (ph["rss_bytes"] - ph["rss_start_bytes"]) / 1e6,  # what reading the set added
    }
    for key, value in row.items():
        if key.startswith("train_"):
            world, record = key.split("_")[1:]
            out[f"first_step_{world}r_{record}_s"] = value["first_step_s"]
            out[f"rss_{world}r_{record}_MB"] = max(r["max_rss_bytes"] for r in value["ranks"]) / 1e6
            if "pss_bytes" in value["ranks"][0]:
                out[f"pss_end_{world}r_{record}_MB"] = max(r["pss_bytes"] for r in value["ranks"]) / 1e6
            if record == "fresh":
                out[f"hashed_{world}r_GB_max_rank"] = max(r["bytes"] for r in value["ranks"]) / 1e9
                out[f"hashed_{world}r_GB_all_ranks"] = sum(r["bytes"] for r in value["ranks"]) / 1e9
                out[f"hash_{world}r_s_max_rank"] = max(r["seconds"] for r in value["ranks"])
    return out


# Rows of the docs' tables (report --markdown): figure key, label. Times in s, sizes as named.
MARKDOWN_ROWS = [
    ("shards", "shards"), ("set_GB", "set (4 px, landmarks deflated), GB"),
    ("build_s", "`sslfer-manifest build -j 2`, s"), ("verify_s", "`verify -j 2`, s"),
    ("first_step_1r_filled_s", "**first step, 1 rank, record and index cache filled, s**"),
    ("first_step_2r_filled_s", "**first step, 2 ranks, record and index cache filled, s**"),
    ("first_step_1r_uncached_s", "first step, 1 rank, record filled, no index cache, s"),
    ("first_step_2r_uncached_s", "first step, 2 ranks, record filled, no index cache, s"),
    ("first_step_1r_fresh_s", "first step, 1 rank, new machine, s"),
    ("first_step_2r_fresh_s", "first step, 2 ranks, new machine, s"),
    ("manifest_s", "start: manifest read and parsed, s"),
    ("open_and_index_s", "start: checks + index from the shards, s"),
    ("open_cached_s", "start: checks + index from the cache, s"),
    ("plan_s", "start: first epoch plan, s"),
    ("index_MB", "index arrays, MB"), ("timestamps_MB", "of them timestamps, MB"),
    ("catalogue_MB", "clip catalogue, MB"),
    ("hashed_2r_GB_max_rank", "new machine, 2 ranks: hashed by the busier rank, GB"),
    ("hashed_2r_GB_all_ranks", "new machine, 2 ranks: hashed by both together, GB"),
    ("hash_1r_s_max_rank", "hashing time, 1 rank, s"), ("hash_2r_s_max_rank", "hashing time, 2 ranks (slower rank), s"),
    ("rss_1r_filled_MB", "peak RSS per rank, 1 rank, filled, MB"),
    ("rss_2r_filled_MB", "peak RSS per rank, 2 ranks, filled, MB"),
    ("pss_end_2r_filled_MB", "PSS per rank at exit, 2 ranks, filled, MB"),
    ("rss_2r_uncached_MB", "peak RSS per rank, 2 ranks, no index cache, MB"),
]


def _markdown(method: str, mine: list[dict], figures: list[dict]) -> None:
    clips = [r["clips"] for r in mine]
    print(f"\n**{method}**; 1-minute load before each size: " + ", ".join(r["load_before"].split()[2].rstrip(",")
                                                                     for r in mine) + "\n")
    print("| clips | " + " | ".join(f"{c:,}" for c in clips) + " | growth exponent |")
    print("|---" * (len(clips) + 2) + "|")
    for key, label in MARKDOWN_ROWS:
        ys = [r["shards"] if key == "shards" else f.get(key) for r, f in zip(mine, figures)]
        if all(y is None for y in ys):
            continue
        growth = _exponent(clips, ys)
        cells = " | ".join("–" if y is None else (f"{y:,.0f}" if abs(y) >= 100 else f"{y:.3g}") for y in ys)
        print(f"| {label} | {cells} | {'–' if growth is None else f'{growth:.2f}'} |")


def report(results: Path, markdown: bool = False) -> None:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    for method in sorted({r["method"] for r in rows}):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["clips"])
        figures = [_figures(r) for r in mine]
        clips = [r["clips"] for r in mine]
        if markdown:
            _markdown(method, mine, figures)
            continue
        print(f"\n{method}: {len(mine)} sizes; {'; '.join(r['load_before'] for r in mine)} (before each)")
        print(f"{'figure':28s}" + "".join(f"{c:>11,}" for c in clips) + f"{'exponent':>9s}{'at 1.09M':>11s}")
        for key in sorted({k for f in figures for k in f}):
            ys = [f.get(key) for f in figures]
            fit, growth = _linear(clips, ys), _exponent(clips, ys)
            cells = "".join(f"{y:11.2f}" if y is not None else f"{'-':>11s}" for y in ys)
            tail = (f"{growth:9.2f}" if growth is not None else f"{'-':>9s}") + (
                f"{fit[0] + fit[1] * TARGET_CLIPS:11.1f}" if fit else "")
            print(f"{key:28s}{cells}{tail}")
        big = figures[-1]
        rate = big["hashed_1r_GB_max_rank"] / big["hash_1r_s_max_rank"] if big.get("hash_1r_s_max_rank") else None
        set_fit = _linear(clips, [f["set_GB"] for f in figures])
        if rate and set_fit:
            full = set_fit[0] + set_fit[1] * TARGET_CLIPS
            print(f"hashing at {TARGET_CLIPS:,} clips: {full:.1f} GB of 4 px shards; at {rate:.2f} GB/s per rank "
                  f"(measured, 1 rank) that is {full / rate:.0f} s on 1 rank, {full / TARGET_RANKS / rate:.0f} s per rank "
                  f"with {TARGET_RANKS} ranks each reading 1/{TARGET_RANKS} (if the file system gives "
                  f"{TARGET_RANKS * rate:.1f} GB/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--profile", choices=sorted(PROFILES), required=True)
    g.add_argument("--clips", type=int, required=True)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--sparse", action="store_true", help="leave the landmarks unwritten (a set 8x smaller on disk)")
    m = sub.add_parser("measure")
    m.add_argument("root", type=Path)
    m.add_argument("--results", type=Path, required=True)
    m.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    m.add_argument("--skip-build", action="store_true", help="keep an existing manifest.json")
    f = sub.add_parser("first-step", help="repeat the first step with the record and index cache filled")
    f.add_argument("root", type=Path)
    f.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    f.add_argument("--repeat", type=int, default=3)
    r = sub.add_parser("report")
    r.add_argument("results", type=Path)
    r.add_argument("--markdown", action="store_true", help="the tables of docs/training.md")
    args = parser.parse_args()
    if args.command == "generate":
        if args.out.exists() and any(args.out.iterdir()):
            raise SystemExit(f"{args.out} is not empty")
        print(json.dumps(generate(args.out, args.profile, args.clips, args.seed, args.sparse)))
    elif args.command == "measure":
        row = measure(args.root, args.ranks, args.skip_build)
        with open(args.results, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row, indent=1))
    elif args.command == "first-step":
        first_steps(args.root, args.ranks, args.repeat)
    else:
        report(args.results, args.markdown)


if __name__ == "__main__":
    main()
