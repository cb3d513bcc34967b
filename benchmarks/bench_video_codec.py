"""Bytes per hour of video and loader-side decode speed of each shard codec, for the video profile.

    .venv/bin/python benchmarks/bench_video_codec.py [--data ../shared/data/voxceleb_mini] [--work DIR]
        [--jobs 2] [--clips-per-round 100] [--rounds 3] [--json out.json]

1. `sslfer-prep voxceleb DATA --profile video --codec raw` (25 fps, 160 px, faces only) into WORK/raw
   (kept when it is already there, unless --fresh).
2. The same stored frames are written once per codec (raw, jpeg:90, jpeg:75, h264 at CRF 18/23/28 in
   streams of 32 frames, h264:23 in streams of 16) into one shard each with ShardWriter, as sslfer-prep
   would; the size of each whole shard and of its face field alone, per hour of stored video (frames / 25),
   the PSNR of the decoded faces against the raw ones, and the encode time are measured.
3. Loader speed, one process: ShardReader.read_images of 16-frame clips at random positions of random
   videos, contiguous (16 rows) and at stride 4 (16 of 61 rows, the MAE reference sampling), a fresh
   reader per round and codec, rounds interleaved over the codecs; best round in frames/s.
4. The source mp4 bytes per hour of the same clips, and the extrapolation of every figure to VoxCeleb2
   dev (~2,400 hours).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402

VOXCELEB2_DEV_HOURS = 2400
FPS = 25.0
CODECS = (("raw", 32), ("jpeg:90", 32), ("jpeg:75", 32), ("h264:18", 32), ("h264:23", 32), ("h264:28", 32),
          ("h264:23", 16))
CLIP_FRAMES = 16
PATTERNS = (("contiguous", 1), ("stride 4", 4))


def codec_label(codec: str, chunk: int) -> str:
    return f"{codec} /{chunk}" if codec.startswith("h264") else codec


def prep_raw(data: Path, out: Path, jobs: int, fresh: bool, limit: int | None) -> float:
    if (out / "manifest.json").is_file() and not fresh:
        return 0.0
    started = time.time()
    subprocess.run([sys.executable, "-m", "preprocess.cli", "voxceleb", str(data), "--out", str(out), "--profile",
                    "video", "--codec", "raw", "-j", str(jobs), "--force"]
                   + (["--limit", str(limit)] if limit else []), check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
    return time.time() - started


def load_videos(root: Path):
    from data_manifest.manifest import load_manifest, shard_paths
    from sslfer_core.shard_format import ShardReader, VideoFrames

    videos, header = [], None
    for path in shard_paths(root, load_manifest(root)):
        with ShardReader(path) as reader:
            header = reader.header
            for v in range(len(reader.videos)):
                rows = reader.video_rows(v)
                videos.append(VideoFrames(
                    video_id=str(reader.videos.video_id[v]), identity=str(reader.videos.identity[v]),
                    source_path=str(reader.videos.source_path[v]), source_fps=float(reader.videos.source_fps[v]),
                    faces=reader.read_images("face", rows), landmarks=reader.read_array("landmarks", rows),
                    eyes=None, mouth=None, timestamps=reader.read_array("timestamp", rows),
                    frame_index=reader.read_array("frame_index", rows), det_score=reader.read_array("det_score", rows),
                ))
    return videos, header


def face_bytes(path: Path) -> int:
    with h5py.File(path, "r") as h5:
        if "streams" in h5 and "face" in h5["streams"]:
            data = h5["streams/face/data"]
            return int(sum(int(b.size) for b in data[()])) + int(data.id.get_storage_size())
        ds = h5["frames/face"]
        if h5py.check_vlen_dtype(ds.dtype) is not None:
            return int(sum(int(b.size) for b in ds[()])) + int(ds.id.get_storage_size())
        return int(ds.id.get_storage_size())


def source_bytes_per_hour(data: Path, videos) -> tuple[float, float]:
    total_bytes = total_seconds = 0.0
    for video in videos:
        path = data / video.source_path
        capture = cv2.VideoCapture(str(path))
        frames, fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
        capture.release()
        total_bytes += path.stat().st_size
        total_seconds += frames / fps
    return total_bytes / (total_seconds / 3600), total_seconds / 3600


def clip_starts(videos, span: int, count: int, rng) -> list[tuple[int, int]]:
    firsts = np.cumsum([0] + [len(v) for v in videos])[:-1]
    usable = [i for i, v in enumerate(videos) if len(v) >= span]
    picks = rng.choice(usable, count)
    return [(int(firsts[i]), int(rng.integers(0, len(videos[i]) - span + 1))) for i in picks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "voxceleb_mini")
    parser.add_argument("--work", type=Path, default=None, help="folder for the shards (default: a temporary one)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="re-run sslfer-prep even if WORK/raw exists")
    parser.add_argument("--limit", type=int, default=None, help="first N clips only (default: all)")
    parser.add_argument("--clips-per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from sslfer_core.shard_format import ImageCodec, ShardHeader, ShardReader, write_shard
    from sslfer_core.video_codec import psnr

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-video-codec-"))
    work.mkdir(parents=True, exist_ok=True)
    load0, started = os.getloadavg()[0], time.time()
    prep_s = prep_raw(args.data, work / "raw", args.jobs, args.fresh, args.limit)
    videos, raw_header = load_videos(work / "raw")
    raw_faces = np.concatenate([v.faces for v in videos])
    frames = len(raw_faces)
    hours = frames / FPS / 3600
    src_bph, src_hours = source_bytes_per_hour(args.data, videos)

    rows = []
    for codec, chunk in CODECS:
        label = codec_label(codec, chunk)
        parsed = ImageCodec.parse(codec)
        if parsed.is_stream:
            parsed = ImageCodec(parsed.name, parsed.quality, chunk)
        header = ShardHeader(image_size=raw_header.image_size, patch_size=0, swaps_per_frame=0,
                             descriptor_kind="none", descriptor_dim=0, codecs={"face": parsed},
                             prep_config={**raw_header.prep_config, "codec": codec},
                             dlib_model_sha256=raw_header.dlib_model_sha256)
        path = work / f"{label.replace(':', '-').replace(' /', '-c')}.h5"
        tick = time.process_time()
        write_shard(path, header, videos)
        encode_s = time.process_time() - tick
        with ShardReader(path) as reader:
            decoded = reader.read_images("face", slice(None))
        rows.append({"codec": label, "file_bytes": path.stat().st_size, "face_bytes": face_bytes(path),
                     "psnr_db": psnr(decoded, raw_faces), "encode_ms_per_frame": 1000 * encode_s / frames,
                     "path": path})
        del decoded
        print(f"{label}: written ({time.time() - started:.0f} s)", file=sys.stderr)

    rng = np.random.default_rng(0)
    plans = {name: [clip_starts(videos, (CLIP_FRAMES - 1) * stride + 1, args.clips_per_round, rng)
                    for _ in range(args.rounds)] for name, stride in PATTERNS}
    speeds = {(r["codec"], name): [] for r in rows for name, _ in PATTERNS}
    for round_ in range(args.rounds):
        for name, stride in PATTERNS:
            for r in rows:
                offsets = np.arange(CLIP_FRAMES) * stride
                with ShardReader(r["path"]) as reader:
                    reader.read_images("face", [0])  # open the file and the stream index outside the timing
                    reader._streams = type(reader._streams)()
                    tick = time.perf_counter()
                    for first, start in plans[name][round_]:
                        reader.read_images("face", first + start + offsets)
                    seconds = time.perf_counter() - tick
                speeds[(r["codec"], name)].append(CLIP_FRAMES * args.clips_per_round / seconds)
    for r in rows:
        for name, _ in PATTERNS:
            r[f"frames_per_s_{name}"] = max(speeds[(r["codec"], name)])
        r["bytes_per_hour"] = r["file_bytes"] / hours
        r["face_bytes_per_hour"] = r["face_bytes"] / hours
        r["voxceleb2_dev_tb"] = r["bytes_per_hour"] * VOXCELEB2_DEV_HOURS / 1e12
        r["ratio_to_mp4"] = r["bytes_per_hour"] / src_bph
        r["path"] = str(r["path"])

    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"h5py {h5py.__version__}, OpenCV {cv2.__version__}, PyAV {__import__('av').__version__}; "
               f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; "
               f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.time() - started:.0f} s "
               f"(sslfer-prep {prep_s:.0f} s)")
    print(f"{len(videos)} videos, {frames} stored frames = {hours * 60:.2f} min at {FPS:.0f} fps, "
          f"{raw_header.image_size} px; {machine}")
    print(f"source mp4s: {src_bph / 1e6:.1f} MB per hour ({src_hours * 60:.2f} min of source video); "
          f"VoxCeleb2 dev at that rate: {src_bph * VOXCELEB2_DEV_HOURS / 1e12:.2f} TB")
    print("| codec | shard GB/hour | face GB/hour | VoxCeleb2 dev TB | x source mp4 | PSNR dB | encode ms/frame | "
          "decode frames/s, 16 contiguous | 16 at stride 4 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['codec']} | {r['bytes_per_hour'] / 1e9:.3f} | {r['face_bytes_per_hour'] / 1e9:.3f} | "
              f"{r['voxceleb2_dev_tb']:.2f} | {r['ratio_to_mp4']:.2f} | {r['psnr_db']:.2f} | "
              f"{r['encode_ms_per_frame']:.2f} | {r['frames_per_s_contiguous']:,.0f} | {r['frames_per_s_stride 4']:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "frames": frames, "hours": hours,
                                         "source_bytes_per_hour": src_bph, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
