"""Speed of the ResNet-18 eye+mouth descriptor on every device here, on the patches a shard set holds (not a test).

No dlib is needed, so this runs where prep cannot (a GPU machine with the shards copied to it). For each
device and precision: frames/s end to end through ResNet18PatchDescriptor.describe (uint8 patches in host
memory to normalised 1024-d rows in host memory, both patches of a frame counted as one frame), best of
--repeats, and how far each reduced precision's top-1/top-5 neighbours agree with fp32 on the same device.
The weights are a seeded random stand-in (benchmarks/descriptor_bench.py).

    python benchmarks/bench_descriptors.py --shards SHARDS [--frames 8192] [--batch 256] [--devices cpu cuda]
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from sslfer_core.shard_format import ShardReader  # noqa: E402
from descriptor_bench import neighbour_agreement, write_stand_in_weights  # noqa: E402
from train.shard_set import open_shard_set  # noqa: E402


def shard_patches(root: Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Eye and mouth patches of the first `limit` frames of the shard set, decoded."""
    index, _ = open_shard_set(root)
    eyes, mouth = [], []
    for path in index.paths:
        if limit <= 0:
            break
        with ShardReader(path) as reader:
            take = min(limit, reader.num_frames)
            eyes.append(reader.read_images("eyes", slice(0, take)))
            mouth.append(reader.read_images("mouth", slice(0, take)))
        limit -= take
    return np.concatenate(eyes), np.concatenate(mouth)


def time_describe(descriptor, eyes: np.ndarray, mouth: np.ndarray, repeats: int) -> float:
    """Best frames/s of `repeats` full passes, after one untimed warm-up pass (cuDNN autotuning, allocator)."""
    import torch

    descriptor.describe(eyes[: descriptor.batch_size], mouth[: descriptor.batch_size])
    best = float("inf")
    for _ in range(repeats):
        if descriptor.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        descriptor.describe(eyes, mouth)  # returns host arrays, so the device work is finished
        best = min(best, time.perf_counter() - start)
    return len(eyes) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=8192, help="frames per timed pass (shard frames repeated)")
    parser.add_argument("--batch", type=int, default=256, help="frames per forward pass (2 patches each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", nargs="*", default=None, help="default: cpu, and cuda when present")
    args = parser.parse_args()

    import torch

    from sslfer_core.descriptors import ResNet18PatchDescriptor

    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        raise SystemExit("--devices names cuda, but torch sees no CUDA device here")
    eyes, mouth = shard_patches(args.shards, args.frames)
    real = len(eyes)
    reps = -(-args.frames // real)
    big_eyes, big_mouth = np.tile(eyes, (reps, 1, 1, 1))[: args.frames], np.tile(mouth, (reps, 1, 1, 1))[: args.frames]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {gpu}; {real} real frames of {eyes.shape[1]} px patches, "
          f"timed passes of {args.frames} frames in batches of {args.batch}", flush=True)
    lines = ["| device | precision | frames/s | top-1 / top-5 agreement with fp32 |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as torch_home:
        write_stand_in_weights(Path(torch_home))
        for device in devices:
            reference = None
            for quantized in (False, True):
                descriptor = ResNet18PatchDescriptor(device=device, batch_size=args.batch, quantized=quantized)
                rate = time_describe(descriptor, big_eyes, big_mouth, args.repeats)
                rows = descriptor.describe(eyes, mouth)
                if reference is None:
                    reference, agree = rows, "(reference)"
                else:
                    agree = f"{neighbour_agreement(reference, rows, 1):.3f} / {neighbour_agreement(reference, rows, 5):.3f}"
                lines.append(f"| {device} | {descriptor.precision} | {rate:,.0f} | {agree} |")
                print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
