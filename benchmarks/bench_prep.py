"""End-to-end speed of sslfer-prep on the voxceleb_mini clips, beside a naive pipeline measured in the same run.

    .venv/bin/python benchmarks/bench_prep.py [--data ../shared/data/voxceleb_mini] [--jobs 2] [--json out.json]

1. sslfer-prep as a user runs it (a subprocess: startup, imports, model loading, all three phases, manifest)
   over every clip: stored frames per second of wall time, and CPU-ms per stored frame from the CPU time of
   the command and all its worker processes (getrusage of reaped children).
2. Stage breakdown: the same code in this process with --jobs 1 on a subset of the clips, with each stage
   wrapped by a CPU timer (decode, detect/track, align, patches, descriptor, swap, work files, shard write).
3. Naive pipeline, the reference's approach, on the same clips with the same number of worker processes:
   every kept frame decoded and searched at full resolution with dlib HOG upsampled once (no tracking, no
   downscaling), landmarks per frame, descriptor per frame, and for every swap the donor's face detected and
   its landmarks fitted again on the donor's full frame. Only the first --naive-samples kept frames of each
   clip are processed (it is slow); its figures are per stored frame, so the cap does not favour either side.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- 1. sslfer-prep end to end

def run_cli(data: Path, out: Path, jobs: int) -> dict:
    from data_manifest.manifest import load_manifest

    command = [sys.executable, "-c", "from preprocess.cli import main; main()", "voxceleb", str(data),
               "--out", str(out), "--jobs", str(jobs), "--force"]
    cpu0, wall0 = children_cpu(), time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall0, children_cpu() - cpu0
    if done.returncode != 0:
        raise SystemExit(f"sslfer-prep failed ({done.returncode}):\n{done.stderr[-2000:]}")
    manifest = load_manifest(out)
    frames = manifest.totals()["frames"]
    return {"frames": frames, "videos": manifest.totals()["videos"], "wall_s": wall, "cpu_s": cpu,
            "frames_per_s": frames / wall, "cpu_ms_per_frame": 1000 * cpu / frames,
            "descriptor": manifest.descriptor_kind, "summary": done.stdout}


# ----------------------------------------------------------------------------- 2. stage breakdown

class StageClock:
    def __init__(self):
        self.cpu = defaultdict(float)

    @contextlib.contextmanager
    def wrap(self, owner, name: str, stage: str):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.cpu[stage] += time.process_time() - start

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)

    @contextlib.contextmanager
    def wrap_generator(self, owner, name: str, stage: str):
        original = getattr(owner, name)
        clock = self

        def timed(*args, **kwargs):
            iterator = original(*args, **kwargs)
            while True:
                start = time.process_time()
                try:
                    item = next(iterator)
                except StopIteration:
                    clock.cpu[stage] += time.process_time() - start
                    return
                clock.cpu[stage] += time.process_time() - start
                yield item

        setattr(owner, name, timed)
        try:
            yield
        finally:
            setattr(owner, name, original)


def stage_breakdown(data: Path, out: Path, every: int) -> dict:
    import preprocess.phase_tasks as phase_tasks
    import preprocess.video_decode as video_decode
    import preprocess.video_pipeline as video_pipeline
    import sslfer_core.face_alignment as face_alignment
    import sslfer_core.face_detection as face_detection
    import sslfer_core.face_patches as face_patches
    import sslfer_core.face_swap as face_swap
    import sslfer_core.shard_format as shard_format
    from preprocess.cli import _resolve_config
    from preprocess.runner import RunOptions, run_prep
    from preprocess.sources import discover_voxceleb

    sources = discover_voxceleb(data)[::every]
    params = {"dlib_models": None, "descriptor": "auto", "device": "cpu", "fps": 5.0, "size": 128, "min_frames": 5, "min_face_px": 80,
              "redetect_every": 10, "smooth": 0.6, "cnn_fallback": False, "swaps": 1, "seed": 0,
              "pool_per_identity": 8, "swap_attempts": 3, "codec": "jpeg:90"}
    config = _resolve_config("voxceleb", params)
    clock = StageClock()
    wraps = [
        clock.wrap_generator(video_decode.ClipReader, "frames", "decode"),
        clock.wrap(face_detection.FaceTracker, "update", "detect/track"),
        clock.wrap(face_alignment, "alignment_matrix", "align"),
        clock.wrap(face_alignment, "align_with_matrix", "align"),
        clock.wrap(face_patches, "eye_mouth_patches", "patches"),
        clock.wrap(video_pipeline, "describe_in_batches", "descriptor"),
        clock.wrap(face_swap, "swap_face", "swap"),
        clock.wrap(phase_tasks, "save_npz", "work files"),
        clock.wrap(phase_tasks, "load_npz", "work files"),
        clock.wrap(shard_format.ShardWriter, "add_video", "shard write"),
        clock.wrap(shard_format.ShardWriter, "close", "shard write"),
    ]
    with contextlib.ExitStack() as stack:
        for item in wraps:
            stack.enter_context(item)
        # Models load outside the timed run, as in a worker that has already processed a clip.
        phase_tasks.face_models(phase_tasks.model_spec(config))
        cpu0 = time.process_time()
        summary = run_prep(sources, config, RunOptions(out=out, jobs=1, force=True), echo=lambda text: None)
        total = time.process_time() - cpu0
    frames = summary.frames_kept
    stages = {k: 1000 * v / frames for k, v in clock.cpu.items()}
    stages["other (pool, plan, manifest, bookkeeping)"] = 1000 * (total - sum(clock.cpu.values())) / frames
    return {"clips": len(sources), "frames": frames, "cpu_ms_per_frame": 1000 * total / frames, "stages": stages}


# ----------------------------------------------------------------------------- 3. naive pipeline

_naive_models = {}


def _naive_tools(descriptor_kind: str):
    if not _naive_models:
        import dlib

        from sslfer_core.descriptors import make_descriptor
        from sslfer_core.dlib_models import locate_dlib_models

        cv2.setNumThreads(1)
        _naive_models["hog"] = dlib.get_frontal_face_detector()
        _naive_models["predictor"] = dlib.shape_predictor(str(locate_dlib_models().shape_predictor))
        _naive_models["descriptor"] = make_descriptor(descriptor_kind, device="cpu")
    return _naive_models


def _naive_landmarks(tools, rgb: np.ndarray) -> np.ndarray | None:
    import dlib

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rects = tools["hog"](gray, 1)  # full resolution, upsampled once
    if not rects:
        return None
    rect = max(rects, key=lambda r: r.width() * r.height())
    shape = tools["predictor"](gray, dlib.rectangle(rect.left(), rect.top(), rect.right(), rect.bottom()))
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def naive_clip(path: str, donor_path: str, video_id: str, identity: str, samples: int, descriptor_kind: str,
               header, out: str) -> dict:
    from preprocess.video_decode import keep_frame
    from preprocess.work_files import video_key
    from sslfer_core.face_alignment import align_face
    from sslfer_core.face_patches import eye_mouth_patches
    from sslfer_core.face_swap import swap_face
    from sslfer_core.shard_format import VideoFrames, write_shard

    cpu0 = time.process_time()
    tools = _naive_tools(descriptor_kind)
    capture = cv2.VideoCapture(donor_path)
    donor_rgb = cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB)
    capture.release()
    capture = cv2.VideoCapture(path)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    rows = defaultdict(list)
    index = 0
    while len(rows["faces"]) < samples:
        ok, bgr = capture.read()  # every frame decoded and converted
        if not ok:
            break
        index += 1
        if not keep_frame(index - 1, fps, 5.0):
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        landmarks = _naive_landmarks(tools, rgb)
        if landmarks is None:
            continue
        aligned = align_face(rgb, landmarks, header.image_size)
        eyes, mouth = eye_mouth_patches(aligned.image, aligned.landmarks, header.patch_size)
        descriptor = tools["descriptor"].describe(eyes[None], mouth[None], aligned.landmarks[None])[0]
        donor_landmarks = _naive_landmarks(tools, donor_rgb)  # re-detected for every sample
        donor = align_face(donor_rgb, donor_landmarks, header.image_size)
        swap = swap_face(aligned.image, aligned.landmarks, donor.image, donor.landmarks)
        for name, value in (("faces", aligned.image), ("landmarks", aligned.landmarks), ("eyes", eyes),
                            ("mouth", mouth), ("timestamps", (index - 1) / fps), ("frame_index", index - 1),
                            ("descriptors", descriptor), ("swap_ok", [swap.ok]),
                            ("swaps", [swap.image if swap.ok else np.zeros_like(aligned.image)])):
            rows[name].append(value)
    capture.release()
    count = len(rows["faces"])
    if count:
        write_shard(Path(out) / f"naive-{video_key(video_id)}.h5", header, [VideoFrames(
            video_id=video_id, identity=identity, source_path=path, source_fps=fps,
            faces=np.stack(rows["faces"]), landmarks=np.stack(rows["landmarks"]), eyes=np.stack(rows["eyes"]),
            mouth=np.stack(rows["mouth"]), timestamps=np.array(rows["timestamps"]),
            frame_index=np.array(rows["frame_index"]), det_score=np.ones(count, np.float32),
            swaps=np.stack(rows["swaps"]), swap_ok=np.array(rows["swap_ok"]),
            descriptors=np.stack(rows["descriptors"]), has_descriptor=np.ones(count, bool))])
    return {"frames": count, "cpu_s": time.process_time() - cpu0}


def run_naive(data: Path, out: Path, jobs: int, samples: int, descriptor_kind: str, header) -> dict:
    import joblib

    from preprocess.sources import discover_voxceleb

    sources = discover_voxceleb(data)
    donors = [next(d for d in sources[i + 1:] + sources[:i] if d.identity != s.identity) for i, s in enumerate(sources)]
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    results = joblib.Parallel(n_jobs=jobs)(
        joblib.delayed(naive_clip)(s.path, d.path, s.video_id, s.identity, samples, descriptor_kind, header, str(out))
        for s, d in zip(sources, donors))
    wall = time.perf_counter() - wall0
    frames = sum(r["frames"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    return {"frames": frames, "wall_s": wall, "cpu_s": cpu, "frames_per_s": frames / wall,
            "cpu_ms_per_frame": 1000 * cpu / frames}


# ----------------------------------------------------------------------------- report

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "voxceleb_mini")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--naive-samples", type=int, default=4, help="kept frames per clip for the naive pipeline")
    parser.add_argument("--stage-every", type=int, default=3, help="stage breakdown on every N-th clip")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if not (args.data / "mp4").is_dir():
        raise SystemExit(f"{args.data}: voxceleb_mini not found (pass --data)")

    with tempfile.TemporaryDirectory(prefix="bench_prep_") as tmp:
        tmp = Path(tmp)
        load = os.getloadavg()
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"load average {load[0]:.2f} at start; jobs {args.jobs}", flush=True)
        fast = run_cli(args.data, tmp / "fast", args.jobs)
        print(f"sslfer-prep end to end: {fast['frames']} frames of {fast['videos']} clips in {fast['wall_s']:.1f} s "
              f"= {fast['frames_per_s']:.1f} stored frames/s; {fast['cpu_ms_per_frame']:.1f} CPU-ms/frame "
              f"(descriptor {fast['descriptor']})", flush=True)
        stages = stage_breakdown(args.data, tmp / "stages", args.stage_every)
        print(f"stage breakdown (--jobs 1, {stages['clips']} clips, {stages['frames']} frames, models preloaded): "
              f"{stages['cpu_ms_per_frame']:.1f} CPU-ms/frame", flush=True)
        for name, value in stages["stages"].items():
            print(f"  {name:44s} {value:7.2f} ms")
        from sslfer_core.shard_format import read_shard_header

        header = read_shard_header(next((tmp / "fast").glob("*.h5")))
        naive = run_naive(args.data, tmp / "naive", args.jobs, args.naive_samples, fast["descriptor"], header)
        print(f"naive pipeline: {naive['frames']} frames in {naive['wall_s']:.1f} s = {naive['frames_per_s']:.1f} "
              f"stored frames/s; {naive['cpu_ms_per_frame']:.1f} CPU-ms/frame", flush=True)
        speedup = fast["frames_per_s"] / naive["frames_per_s"]
        cpu_ratio = naive["cpu_ms_per_frame"] / fast["cpu_ms_per_frame"]
        print(f"sslfer-prep vs naive: {speedup:.1f}x stored frames/s, {cpu_ratio:.1f}x less CPU per frame; "
              f"load average {os.getloadavg()[0]:.2f} at end")
        if args.json:
            fast.pop("summary")
            args.json.write_text(json.dumps({"prep": fast, "stages": stages, "naive": naive, "jobs": args.jobs,
                                             "load_start": load, "load_end": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
