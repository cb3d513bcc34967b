"""Shard read throughput for each codec, compression and chunk shape, measured side by side in one run.

    .venv/bin/python benchmarks/bench_shard_read.py [--data ../shared/data] [--json results.json]

Face crops come from the voxceleb_mini clips (one dlib HOG detection per clip, the square around it
resized to 112/128 px) so that JPEG and deflate see real image statistics; without the clips, smooth
synthetic faces are used and the report says so. Only the `face` dataset is read: `swaps` has the same
layout with a K axis, and the non-image fields are a few bytes per frame.

Patterns (images/s, higher is better):
  sequential     32 consecutive rows per call, front to back
  random-frame   one random row per call (a DataLoader __getitem__ per sample)
  random-window  8 consecutive rows of a random video per call (TimeAug / clip sampling)
  random-batch   16 random rows of the shard in one read_images call (a batch sampler reading per shard)
  batch-by-row   the same 16 rows read in ascending order, one single-row slice per call
Each variant is timed in several interleaved rounds and its best round kept (other processes share the
CPU). Rows with chunk "N*" use ShardWriter's own default chunking. Files sit in the page cache (just
written), so this measures HDF5 + decode cost, not the disk. A second table gives the time to open a
10,000-frame shard for several rows-per-chunk of the small per-frame fields.

--compare-readers (quick) skips both tables and times the row reads of the current ShardReader against
the previous one (a dataset lookup per call, h5py fancy indexing for scattered rows) on the default
raw and JPEG shards, interleaved in the same rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402

from sslfer_core.shard_format import ImageCodec, ShardHeader, ShardReader, VideoFrames, write_shard  # noqa: E402

PATCH = 64
WINDOW = 8
SEQ_BATCH = 32
BATCH = 16
SOURCE_FPS = 25.0
KEPT_FPS = 5.0
PATTERNS = ("sequential", "random-frame", "random-window", "random-batch", "batch-by-row")


@dataclass
class Clip:
    video_id: str
    identity: str
    faces: np.ndarray  # (N, S, S, 3) uint8 RGB at the largest benchmarked size


# ----------------------------------------------------------------------------- content

def face_box(frame_rgb: np.ndarray, detector) -> tuple[int, int, int]:
    """(cx, cy, side) of a square around the main face, or the central square when none is found."""
    h, w = frame_rgb.shape[:2]
    scale = min(1.0, 320 / max(h, w))
    small = cv2.resize(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY), None, fx=scale, fy=scale)
    rects = detector(small, 1) if detector is not None else []
    if not rects:
        return w // 2, h // 2, min(h, w)
    r = max(rects, key=lambda r: r.width() * r.height())
    side = int(1.6 * max(r.width(), r.height()) / scale)  # face plus hair and chin, like an aligned crop
    return int((r.left() + r.right()) / 2 / scale), int((r.top() + r.bottom()) / 2 / scale), side


def crop_square(frame: np.ndarray, cx: int, cy: int, side: int, size: int) -> np.ndarray:
    scale = size / side
    matrix = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]])
    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def real_clips(data_root: Path, size: int, clips: int, frames: int) -> list[Clip]:
    try:
        import dlib
        detector = dlib.get_frontal_face_detector()
    except ImportError:
        detector = None
    files = sorted((data_root / "voxceleb_mini" / "mp4").glob("*/*/*.mp4"))[:clips]
    out = []
    for path in files:
        capture = cv2.VideoCapture(str(path))
        stride = max(1, round((capture.get(cv2.CAP_PROP_FPS) or SOURCE_FPS) / KEPT_FPS))
        faces, box, index = [], None, 0
        while len(faces) < frames:
            ok, frame = capture.read()
            if not ok:
                break
            if index % stride == 0:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                box = box or face_box(rgb, detector)
                faces.append(crop_square(rgb, *box, size))
            index += 1
        capture.release()
        if faces:
            out.append(Clip(path.parent.name, path.parent.parent.name, np.stack(faces)))
    return out


def synthetic_clips(size: int, clips: int, frames: int, seed: int = 0) -> list[Clip]:
    """Smooth blobs with mild noise: compresses like a photo, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for c in range(clips):
        base = np.stack([np.exp(-((xx - 0.5) ** 2 / 0.08 + (yy - 0.45) ** 2 / 0.12))] * 3, -1)
        tint = rng.uniform(80, 220, 3)
        faces = []
        for f in range(frames):
            shift = 0.03 * np.sin(f / 4)
            mouth = np.exp(-((xx - 0.5) ** 2 / 0.01 + (yy - 0.7 - shift) ** 2 / 0.002))[..., None]
            img = base * tint + 20 * np.sin(6 * xx + c)[..., None] - 60 * mouth + rng.normal(0, 3, (size, size, 3))
            faces.append(np.clip(img, 0, 255).astype(np.uint8))
        out.append(Clip(f"synthetic{c:02d}", f"idsyn{c:02d}", np.stack(faces)))
    return out


def resized(clips: list[Clip], size: int) -> list[Clip]:
    if clips[0].faces.shape[1] == size:
        return clips
    return [Clip(c.video_id, c.identity, np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                                                   for f in c.faces])) for c in clips]


def video_frames(clip: Clip, size: int) -> VideoFrames:
    n = len(clip.faces)
    centre = slice(size // 4, size // 4 + PATCH // 2)
    patch = np.stack([cv2.resize(f[centre, centre], (PATCH, PATCH)) for f in clip.faces])
    return VideoFrames(
        video_id=clip.video_id, identity=clip.identity, source_path=f"{clip.identity}/{clip.video_id}/00001.mp4",
        source_fps=SOURCE_FPS, faces=clip.faces, landmarks=np.zeros((n, 68, 2), np.float32), eyes=patch,
        mouth=patch, timestamps=np.arange(n) / KEPT_FPS, frame_index=np.arange(n) * 5,
        det_score=np.ones(n, np.float32),
    )


# ----------------------------------------------------------------------------- shards

def write_variant(path: Path, clips: list[Clip], size: int, codec: str, chunk: int | None,
                  compression: str | None) -> float:
    """Write one shard with the writer's own chunking (chunk=None), or rewrite its face dataset with the
    given rows per chunk and filter. Returns the seconds taken."""
    header = ShardHeader(image_size=size, patch_size=PATCH, swaps_per_frame=0, descriptor_kind="none",
                         descriptor_dim=0, codecs={f: ImageCodec.parse(codec) for f in ("face", "eyes", "mouth")})
    start = time.perf_counter()
    write_shard(path, header, [video_frames(c, size) for c in clips])
    if chunk is not None:
        rewrite_datasets(path, ["face"], chunk, compression)
    return time.perf_counter() - start


def rewrite_datasets(path: Path, names: list[str], chunk: int, compression: str | None = None) -> None:
    """Give the named frames/ datasets another chunk shape and filter (h5py cannot change them in place)."""
    opts = {"gzip": {"compression": "gzip", "compression_opts": 4}, "lzf": {"compression": "lzf"}}
    with h5py.File(path, "r+") as h5:
        for name in names:
            old = h5["frames"][name]
            data, dtype = old[()], old.dtype
            del h5["frames"][name]
            h5["frames"].create_dataset(name, data=data, dtype=dtype, chunks=(chunk,) + data.shape[1:],
                                        maxshape=(None,) + data.shape[1:], **opts.get(compression, {}))
    # Deleting a dataset leaves its space behind: repack so that file sizes are honest.
    packed = path.with_suffix(".packed.h5")
    with h5py.File(path, "r") as src, h5py.File(packed, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        for name in src:
            src.copy(src[name], dst, name=name)
    packed.replace(path)


def open_ms(path: Path, repeats: int = 3) -> float:
    """Best time to construct a ShardReader (reads the header, video table, timestamps and video rows)."""
    best = float("inf")
    for _ in range(repeats):
        begin = time.perf_counter()
        ShardReader(path).close()
        best = min(best, time.perf_counter() - begin)
    return 1000 * best


def open_table(workdir: Path, frames: int, rows_list: list[int]) -> list[dict]:
    """ShardReader open time of a `frames`-frame shard for several rows-per-chunk of its small fields.

    Opening reads every timestamp and video row, so one chunk per frame makes it slow. Images are 16 px
    here: only the small fields matter.
    """
    header = ShardHeader(image_size=16, patch_size=8, swaps_per_frame=0, descriptor_kind="none", descriptor_dim=0)
    per_video = 250
    rng = np.random.default_rng(1)
    videos = []
    for v in range(max(1, frames // per_video)):
        faces = rng.integers(0, 256, (per_video, 16, 16, 3), dtype=np.uint8)
        clip = Clip(f"v{v:04d}", f"id{v % 50:03d}", faces)
        video = video_frames(clip, 16)
        video.eyes = video.mouth = faces[:, :8, :8]
        videos.append(video)
    out = []
    for rows in [None] + rows_list:
        path = workdir / f"open-{rows}.h5"
        write_shard(path, header, videos)
        with h5py.File(path, "r") as h5:
            small = [n for n in h5["frames"] if n not in ("face", "eyes", "mouth", "swaps")]
            used = h5["frames/timestamp"].chunks[0]
        if rows is not None:
            rewrite_datasets(path, small, rows)
        out.append({"frames": len(videos) * per_video, "small_field_rows": f"{used}*" if rows is None else str(rows),
                    "open_ms": round(open_ms(path, 5), 2), "file_bytes": path.stat().st_size})
        path.unlink()
    return out


def face_bytes_per_frame(path: Path) -> float:
    with h5py.File(path, "r") as h5:
        ds = h5["frames/face"]
        if h5py.check_vlen_dtype(ds.dtype) is not None:
            return float(sum(int(b.size) for b in ds[()]) / ds.shape[0] + 16)  # payload + 16 B heap reference
        return ds.id.get_storage_size() / ds.shape[0]


def measure(path: Path, pattern: str, seconds: float, rng: np.random.Generator,
            reader_class: type[ShardReader] = ShardReader) -> float:
    """Images per second for one access pattern over at least `seconds` (and at least one call)."""
    reader = reader_class(path)
    reader.read_images("face", slice(0, 1))  # open the handle outside the timed loop
    n = reader.num_frames
    starts, counts = reader.videos.first_row, reader.videos.row_count
    images, calls, cursor = 0, 0, 0
    begin = time.perf_counter()
    while calls < 1 or time.perf_counter() - begin < seconds:
        if pattern == "sequential":
            rows = slice(cursor, min(cursor + SEQ_BATCH, n))
            cursor = 0 if rows.stop >= n else rows.stop
        elif pattern == "random-frame":
            rows = [int(rng.integers(n))]
        elif pattern == "random-batch":
            rows = rng.integers(n, size=BATCH)
        elif pattern == "batch-by-row":  # the same request, one sorted row per call: what a reader could do instead
            for row in np.sort(rng.integers(n, size=BATCH)):
                images += len(reader.read_images("face", slice(int(row), int(row) + 1)))
            calls += 1
            continue
        else:
            v = int(rng.integers(len(starts)))
            first = int(starts[v] + rng.integers(max(1, counts[v] - WINDOW + 1)))
            rows = slice(first, min(first + WINDOW, int(starts[v] + counts[v])))
        images += len(reader.read_images("face", rows))
        calls += 1
    elapsed = time.perf_counter() - begin
    reader.close()
    return images / elapsed


# ----------------------------------------------------------------------------- previous reader

class PreviousReader(ShardReader):
    """ShardReader's row reads before the run-slice change, kept only to compare against: the dataset is
    looked up by name on every call and scattered rows go through h5py's fancy indexing."""

    def read_array(self, name: str, rows) -> np.ndarray:
        dataset = self._file()["frames"][name]
        if isinstance(rows, slice):
            return dataset[rows]
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return dataset[0:0]
        unique, inverse = np.unique(rows, return_inverse=True)
        if unique[-1] - unique[0] + 1 <= 2 * unique.size:
            return dataset[int(unique[0]): int(unique[-1]) + 1][rows - unique[0]]
        return dataset[unique][inverse]


READERS = {"previous": PreviousReader, "current": ShardReader}
READER_PATTERNS = ("random-frame", "random-window", "random-batch")


def compare_readers(workdir: Path, clips: list[Clip], sizes: list[int], rounds: int, seconds: float,
                    rng: np.random.Generator) -> list[dict]:
    """Images/s of both readers on ShardWriter's default raw and JPEG shards, best of interleaved rounds."""
    rows = []
    for size in sizes:
        for codec in ("raw", "jpeg:90"):
            row = make_row(workdir, resized(clips, size), size, codec, None, None)
            for reader in READERS:
                rows.append({**row, "reader": reader})
    for _ in range(rounds):
        for index in rng.permutation(len(rows)):
            row = rows[index]
            for pattern in READER_PATTERNS:
                speed = round(measure(row["path"], pattern, seconds, rng, READERS[row["reader"]]))
                row[pattern] = max(row.get(pattern, 0), speed)
    for row in rows:
        row["path"].unlink(missing_ok=True)
        row.pop("path")
    return rows


# ----------------------------------------------------------------------------- main

def variants(chunks: list[int]) -> list[tuple[str, str | None, int | None]]:
    """(codec, filter, rows per chunk); chunk None = whatever ShardWriter chooses by default."""
    out = [("raw", None, None), ("jpeg:90", None, None)]
    for compression in (None, "lzf", "gzip"):
        out += [("raw", compression, c) for c in chunks]
    out += [("jpeg:90", None, c) for c in chunks]
    return out


def machine() -> dict:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "opencv": cv2.__version__,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "SSLFER_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 128])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--frames-per-clip", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=0.1, help="timing per pattern, variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--open-frames", type=int, default=10000, help="shard size for the open-time table")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--compare-readers", action="store_true",
                        help="only compare the current and the previous reader's row reads (quick)")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)

    info = machine()
    top = max(args.sizes)
    have_clips = (args.data / "voxceleb_mini").is_dir()
    clips = real_clips(args.data, top, args.clips, args.frames_per_clip) if have_clips else []
    info["content"] = f"voxceleb_mini face crops ({len(clips)} clips)" if clips else "synthetic smooth faces"
    clips = clips or synthetic_clips(top, args.clips, args.frames_per_clip)
    info["frames_per_shard"] = int(sum(len(c.faces) for c in clips))
    print(f"# {info}", file=sys.stderr)
    if args.compare_readers:
        return reader_comparison(args, info, clips, rng)

    print(f"{'size':>4} {'codec':8} {'filter':6} {'chunk':>6} {'face B/frame':>12} "
          f"{'sequential':>10} {'rand-frame':>10} {'rand-window':>11} {'rand-batch':>10} {'by-row':>7}  "
          f"(images/s, best of {args.rounds})")
    results = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        for size in args.sizes:
            rows = [make_row(workdir, resized(clips, size), size, *variant) for variant in variants(args.chunks)]
            # Interleave the variants and keep each one's best round, so that a burst of load from
            # other processes does not land on one variant only.
            for _ in range(args.rounds):
                for index in rng.permutation(len(rows)):
                    row = rows[index]
                    for pattern in PATTERNS:
                        speed = round(measure(row["path"], pattern, args.seconds, rng))
                        row[pattern] = max(row.get(pattern, 0), speed)
            for row in rows:
                row.pop("path").unlink()
                print(f"{size:>4} {row['codec']:8} {row['filter']:6} {row['chunk']:>6} "
                      f"{row['face_bytes_per_frame']:>12,} {row['sequential']:>10,} "
                      f"{row['random-frame']:>10,} {row['random-window']:>11,} {row['random-batch']:>10,} "
                      f"{row['batch-by-row']:>7,}", flush=True)
            results += rows
        opens = open_table(workdir, args.open_frames, [1, 8, 128, 1024, 8192])
        print(f"\n{'frames':>6} {'small-field rows/chunk':>22} {'open ms':>8} {'file bytes':>11}")
        for row in opens:
            print(f"{row['frames']:>6} {row['small_field_rows']:>22} {row['open_ms']:>8.1f} {row['file_bytes']:>11,}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"# load average start {info['loadavg_start']} end {info['loadavg_end']} on {info['cores']} cores",
          file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results, "open": opens}, indent=2) + "\n")
    return 0


def reader_comparison(args, info: dict, clips: list[Clip], rng: np.random.Generator) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-readers-"))
    try:
        rows = compare_readers(workdir, clips, args.sizes, args.rounds, args.seconds, rng)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'size':>4} {'codec':8} {'chunk':>6} {'reader':9} {'rand-frame':>10} {'us/call':>8} "
          f"{'rand-window':>11} {'rand-batch':>10}  (images/s, best of {args.rounds})")
    for row in rows:
        print(f"{row['size']:>4} {row['codec']:8} {row['chunk']:>6} {row['reader']:9} {row['random-frame']:>10,} "
              f"{1e6 / row['random-frame']:>8.0f} {row['random-window']:>11,} {row['random-batch']:>10,}")
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"# load average start {info['loadavg_start']} end {info['loadavg_end']} on {info['cores']} cores",
          file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "readers": rows}, indent=2) + "\n")
    return 0


def make_row(workdir: Path, clips: list[Clip], size: int, codec: str, compression: str | None,
             chunk: int | None) -> dict:
    path = workdir / f"{size}-{codec.replace(':', '')}-{compression}-{chunk}.h5"
    write_s = write_variant(path, clips, size, codec, chunk, compression)
    with h5py.File(path, "r") as h5:
        used = h5["frames/face"].chunks[0]
    return {
        "size": size, "codec": codec, "filter": compression or "none",
        "chunk": f"{used}*" if chunk is None else str(chunk), "path": path,
        "face_bytes_per_frame": round(face_bytes_per_frame(path)), "file_bytes": path.stat().st_size,
        "write_s": round(write_s, 2), "open_ms": round(open_ms(path), 2),
    }


if __name__ == "__main__":
    sys.exit(main())
