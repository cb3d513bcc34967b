"""Speed of the face toolkit on the real voxceleb_mini clips, descriptor neighbour agreement across precisions, descriptor sanity.

    .venv/bin/python benchmarks/bench_face_toolkit.py [--data ../shared/data/voxceleb_mini] [--int8]

Face ops run on one thread (torch and OpenCV), frames resized to 256x256. Descriptors run on two
threads. ImageNet weights cannot be downloaded here: the descriptor uses a randomly initialised
ResNet-18 saved as a stand-in checkpoint in a temporary TORCH_HOME. Speed does not depend on the
weight values; the neighbour agreement figures are for those random weights.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sslfer_core.dlib_models import locate_dlib_models  # noqa: E402
from sslfer_core.face_alignment import align_face  # noqa: E402
from sslfer_core.face_detection import FaceDetector, FaceTracker  # noqa: E402
from sslfer_core.face_patches import eye_mouth_patches  # noqa: E402
from sslfer_core.face_swap import swap_face  # noqa: E402
from descriptor_bench import neighbour_agreement, write_stand_in_weights  # noqa: E402


def clip_table(root: Path) -> list[dict]:
    with open(root / "SOURCES.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def read_frames(path: Path, indices=None, limit: int | None = None, size: int | None = None) -> list[np.ndarray]:
    """RGB frames of a clip: the given frame indices, or the first `limit` frames; optionally resized to size^2."""
    capture = cv2.VideoCapture(str(path))
    wanted = None if indices is None else set(int(i) for i in indices)
    frames, index = [], 0
    while True:
        if limit is not None and len(frames) >= limit:
            break
        if wanted is not None and index > max(wanted):
            break
        ok, frame = capture.read()
        if not ok:
            break
        if wanted is None or index in wanted:
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            if size is not None and frame.shape[:2] != (size, size):
                frame = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
            frames.append(frame)
        index += 1
    capture.release()
    return frames


def aligned_crops(root: Path, detector: FaceDetector, per_clip: int, size: int = 128) -> list[tuple[str, str, object]]:
    """(identity, clip path, AlignedFace) for `per_clip` evenly spaced frames of every clip; prints the detection rate."""
    crops, sampled = [], 0
    for row in clip_table(root):
        count = int(row["frames"])
        for frame in read_frames(root / row["path"], indices=np.linspace(2, count - 3, per_clip).astype(int)):
            sampled += 1
            face = detector.detect(frame)
            if face is not None:
                crops.append((row["identity"], row["path"], align_face(frame, face.landmarks, size)))
    print(f"detection + landmarks on {len(crops)}/{sampled} sampled frames ({100 * len(crops) / sampled:.1f} %), "
          f"min_face_px={detector.min_face_px}")
    return crops


def bench_face_ops(root: Path, models, clips: int, frames_per_clip: int) -> None:
    detector = FaceDetector(models)
    rows = clip_table(root)[:: max(1, len(clip_table(root)) // clips)][:clips]
    sequences = [read_frames(root / row["path"], limit=frames_per_clip, size=256) for row in rows]
    for label, redetect_every in (("tracking (re-detect every 10)", 10), ("detection on every frame", 1)):
        elapsed, cpu, frames, detections, found = 0.0, 0.0, 0, 0, 0
        for sequence in sequences:
            tracker = FaceTracker(detector, redetect_every=redetect_every)
            start, start_cpu = time.perf_counter(), time.process_time()
            for frame in sequence:
                face = tracker.update(frame)
                if face is not None:
                    aligned = align_face(frame, face.landmarks)
                    eye_mouth_patches(aligned.image, aligned.landmarks)
                    found += 1
                    detections += face.detected
            elapsed += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
            frames += len(sequence)
        # Single-threaded, so CPU time is what the work costs when another process is not competing for the core.
        print(f"face ops, {label}: {1e3 * elapsed / frames:.2f} ms/frame wall, {1e3 * cpu / frames:.2f} ms/frame CPU, over "
              f"{frames} frames of {len(sequences)} clips at 256x256 (detect+landmarks+align+patches; detector ran on {detections}/{found} found faces)")


def bench_swap(crops, count: int) -> None:
    rng = np.random.default_rng(0)
    times, cpu = [], 0.0
    while len(times) < count:
        i, j = rng.choice(len(crops), 2, replace=False)
        if crops[i][0] == crops[j][0]:
            continue
        expression, donor = crops[i][2], crops[j][2]
        start, start_cpu = time.perf_counter(), time.process_time()
        swap_face(expression.image, expression.landmarks, donor.image, donor.landmarks)
        times.append(time.perf_counter() - start)
        cpu += time.process_time() - start_cpu
    print(f"swap at S=128: median {1e3 * np.median(times):.2f} ms, mean {1e3 * np.mean(times):.2f} ms wall, "
          f"mean {1e3 * cpu / count:.2f} ms CPU, over {count} swaps")


def int8_model(descriptor, calibration: np.ndarray):
    """Static int8 (FX, x86 backend) copy of the descriptor's fp32 network, calibrated on real patches."""
    import copy

    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    example = descriptor.input_tensor(calibration[:8])
    prepared = prepare_fx(copy.deepcopy(descriptor.model), get_default_qconfig_mapping("x86"), example_inputs=(example,))
    with torch.inference_mode():
        prepared(descriptor.input_tensor(calibration))
    return convert_fx(prepared)


def bench_descriptors(crops, batch_frames: int, with_int8: bool) -> None:
    import torch

    from sslfer_core.descriptors import ResNet18PatchDescriptor

    torch.set_num_threads(2)
    patches = [eye_mouth_patches(c[2].image, c[2].landmarks) for c in crops]
    eyes = np.stack([p[0] for p in patches])
    mouth = np.stack([p[1] for p in patches])
    reps = int(np.ceil(batch_frames / len(eyes)))
    big_eyes, big_mouth = np.tile(eyes, (reps, 1, 1, 1, ))[:batch_frames], np.tile(mouth, (reps, 1, 1, 1))[:batch_frames]
    outputs = {}
    for quantized in (False, True):
        descriptor = ResNet18PatchDescriptor(device="cpu", batch_size=batch_frames, quantized=quantized)
        descriptor.describe(big_eyes[:32], big_mouth[:32])
        times = []
        for _ in range(3):
            start = time.perf_counter()
            descriptor.describe(big_eyes, big_mouth)
            times.append(time.perf_counter() - start)
        outputs[descriptor.precision] = descriptor.describe(eyes, mouth)
        print(f"descriptors {descriptor.precision}: {batch_frames / min(times):.0f} frames/s (best of 3, batch {batch_frames} "
              f"frames = {2 * batch_frames} patches, 2 threads)")
    if with_int8:
        model = int8_model(descriptor, np.concatenate([eyes, mouth])[:256])
        batch = np.concatenate([big_eyes, big_mouth])
        with torch.inference_mode():
            model(descriptor.input_tensor(batch[:64]))
            times = []
            for _ in range(3):
                start = time.perf_counter()
                model(descriptor.input_tensor(batch))
                times.append(time.perf_counter() - start)
            features = model(descriptor.input_tensor(np.concatenate([eyes, mouth]))).numpy()
        n = len(eyes)
        norm = lambda f: f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)  # noqa: E731
        outputs["int8-static"] = norm(np.hstack([norm(features[:n]), norm(features[n:])]))
        print(f"descriptors int8-static: {batch_frames / min(times):.0f} frames/s (best of 3, batch {batch_frames}, 2 threads)")
    reference = outputs["fp32"]
    for name, rows in outputs.items():
        if name == "fp32":
            continue
        cosine = float(np.mean(np.sum(reference * rows, axis=1)))
        print(f"  {name} vs fp32 on {len(rows)} real frames: top-1 neighbour agreement {neighbour_agreement(reference, rows, 1):.3f}, "
              f"top-5 {neighbour_agreement(reference, rows, 5):.3f}, mean cosine to fp32 descriptor {cosine:.5f}")


def descriptor_sanity(root: Path, detector: FaceDetector) -> None:
    """Mean cosine of two frames of one clip 0.5 s apart vs of frames of different people, both kinds."""
    from sslfer_core.descriptors import LandmarkGeometryDescriptor, ResNet18PatchDescriptor

    first, second, seen = [], [], set()
    for row in clip_table(root):
        if row["identity"] in seen:
            continue
        seen.add(row["identity"])
        gap = int(round(0.5 * float(row["fps"])))
        for frame, bucket in zip(read_frames(root / row["path"], indices=[20, 20 + gap]), (first, second)):
            face = detector.detect(frame)
            aligned = align_face(frame, face.landmarks)
            bucket.append((*eye_mouth_patches(aligned.image, aligned.landmarks), aligned.landmarks))
    stacked = [tuple(np.stack(column) for column in zip(*items)) for items in (first, second)]
    for descriptor in (LandmarkGeometryDescriptor(), ResNet18PatchDescriptor(device="cpu", quantized=False)):
        a, b = descriptor.describe(*stacked[0]), descriptor.describe(*stacked[1])
        different = (a @ a.T)[~np.eye(len(a), dtype=bool)]
        print(f"sanity {descriptor.kind}: {len(a)} identities, same clip 0.5 s apart mean cosine {np.mean(np.sum(a * b, axis=1)):.3f}, "
              f"different people {different.mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "voxceleb_mini")
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--frames-per-clip", type=int, default=100)
    parser.add_argument("--int8", action="store_true", help="also measure static int8 quantisation")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} at {time.strftime('%Y-%m-%d %H:%M')}")
    models = locate_dlib_models()
    bench_face_ops(args.data, models, args.clips, args.frames_per_clip)
    crops = aligned_crops(args.data, FaceDetector(models), per_clip=8)
    bench_swap(crops, 200)
    with tempfile.TemporaryDirectory() as torch_home:
        write_stand_in_weights(Path(torch_home))
        bench_descriptors(crops, 256, args.int8)
        descriptor_sanity(args.data, FaceDetector(models))
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
