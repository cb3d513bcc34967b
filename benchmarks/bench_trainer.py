"""Trainer throughput, measured (not a test).

(a) Loader only: training images per second out of ShardStream + DataLoader (every view of every sample
    counted, JPEG decoding included) for a raw-codec and a JPEG shard set.
(b) Step efficiency: images/s of full training steps fed by the real loader, divided by images/s of the
    same steps on one pre-made in-memory batch of the same shape (1.0 = the loader costs nothing).
    ResNet-18 on CPU; ResNet-50 at 112 px with bf16 autocast on CUDA when a GPU is present.

    python benchmarks/bench_trainer.py --raw RAW_SHARDS --jpeg JPEG_SHARDS [--only loader|step]

(a) also reports images per CPU-second of the loader processes, which changes less than images/s when other
jobs share the cores. Results: docs/training.md, "Measurements".
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import torch

from sslfer_core.models import ContrastiveModel
from train.distributed import DistContext
from train.methods.contrastive.batch_builder import MaskFNConfig
from train.methods.contrastive.epoch_plan import PlanConfig
from train.methods.contrastive.shard_stream import ShardStream, make_loader
from train.methods.contrastive.step import ContrastiveStep, batch_to_device, step_generator
from train.shard_set import open_shard_set

ABLATION = dict(timeaug=True, hardneg=True, faceswap=True)  # the heaviest input: 4 views, swaps read


def _stream(root: Path, batch: int, workers: int, maskfn: bool = True) -> ShardStream:
    index, _ = open_shard_set(root)
    return ShardStream(index, PlanConfig(seed=0, batch_size=batch, **ABLATION), num_workers=workers,
                       with_descriptors=maskfn)


def _batches(stream: ShardStream, workers: int, pin: bool):
    """Endless batches, epoch after epoch."""
    loader = make_loader(stream, workers, pin_memory=pin)
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from loader
        epoch += 1


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process and of `pids` (its loader workers), from /proc."""
    total = time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def loader_throughput(root: Path, batch: int, workers: int, seconds: float) -> tuple[float, float]:
    """(training images/s, images per CPU-second of main process + workers) over `seconds` of batches."""
    before = {p.pid for p in multiprocessing.active_children()}
    stream = _stream(root, batch, workers)
    batches = _batches(stream, workers, pin=False)
    images = next(batches)["images"].shape[0]  # first batch: worker start-up, not counted
    pids = [p.pid for p in multiprocessing.active_children() if p.pid not in before]
    count, cpu, start = 0, _cpu_seconds(pids), time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(batches)
        count += 1
    wall, cpu = time.perf_counter() - start, _cpu_seconds(pids) - cpu
    batches.close()  # shuts the workers down before the next measurement starts
    return count * images / wall, count * images / cpu


def step_throughput(source, step: ContrastiveStep, model, optimizer, device, steps: int, warmup: int = 2) -> float:
    """images/s of `steps` optimiser steps after `warmup` untimed ones; `source` yields CPU batches."""
    rows = 0
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        batch = batch_to_device(next(source), device)
        x = step.views(batch, step_generator(0, 0, i, device))
        loss = step.loss(model, x, batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            rows += x.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return rows / (time.perf_counter() - start)


def _training_parts(arch: str, device: torch.device, batch: int, resize: int, crop: int):
    """(model, optimizer, ContrastiveStep) as the trainer builds them for 4-view batches with MaskFN."""
    torch.manual_seed(0)
    model = ContrastiveModel(arch).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-4, fused=True)  # as sslfer-train
    step = ContrastiveStep(DistContext(device=device), batch_size=batch, num_views=4, resize=resize, crop=crop,
                           maskfn=MaskFNConfig())
    return model, optimizer, step


def _same_batch(root: Path, batch: int, pinned: bool):
    """One real batch, made in this process, yielded for ever."""
    first = _batches(_stream(root, batch, 0), 0, False)
    fixed = next(first)
    first.close()
    if pinned:
        fixed = {k: v.pin_memory() for k, v in fixed.items()}
    while True:
        yield fixed


def cudnn_autotune_ab(root: Path, arch: str, batch: int, resize: int, crop: int, steps: int,
                      rounds: int) -> dict[bool, list[float]]:
    """In-memory images/s on CUDA with cuDNN's algorithm autotuning (torch.backends.cudnn.benchmark) off and
    on, alternating (ABBA). The trainer turns it on for CUDA; three such comparisons on an H200 gave +12 %,
    -4 % and +3.5 %, inside the spread between runs (docs/training.md)."""
    device = torch.device("cuda")
    model, optimizer, step = _training_parts(arch, device, batch, resize, crop)
    source = _same_batch(root, batch, True)
    rates: dict[bool, list[float]] = {False: [], True: []}
    before = torch.backends.cudnn.benchmark
    for r in range(rounds):
        for autotune in ((False, True) if r % 2 == 0 else (True, False)):
            torch.backends.cudnn.benchmark = autotune
            rates[autotune].append(step_throughput(source, step, model, optimizer, device, steps, warmup=3))
    torch.backends.cudnn.benchmark = before
    return rates


def step_efficiency(root: Path, arch: str, device: torch.device, batch: int, resize: int, crop: int,
                    workers: int, steps: int, rounds: int, pinned: bool) -> list[tuple[float, float]]:
    """(real-loader images/s, in-memory images/s) per round; the two alternate so that changing load from
    other processes hits both alike. Between blocks the loader's queue is full, as in steady training, and
    it refills that queue during the real block."""
    model, optimizer, step = _training_parts(arch, device, batch, resize, crop)
    real_source = _batches(_stream(root, batch, workers), workers, pinned)
    memory_source = _same_batch(root, batch, pinned)
    for source in (real_source, memory_source):  # warm both once (allocator, first worker batches)
        step_throughput(source, step, model, optimizer, device, steps=1, warmup=1)
    results = []
    for r in range(rounds):
        # ABBA order: a load that drifts during a round hits both sources alike.
        if r % 2 == 0:
            real = step_throughput(real_source, step, model, optimizer, device, steps, warmup=0)
            memory = step_throughput(memory_source, step, model, optimizer, device, steps, warmup=0)
        else:
            memory = step_throughput(memory_source, step, model, optimizer, device, steps, warmup=0)
            real = step_throughput(real_source, step, model, optimizer, device, steps, warmup=0)
        results.append((real, memory))
    real_source.close()
    return results


def _spread(values: list[float], digits: int = 0) -> str:
    values = sorted(values)
    fmt = f",.{digits}f"
    return (f"median {statistics.median(values):{fmt}} (min {values[0]:{fmt}}, max {values[-1]:{fmt}}, "
            f"n={len(values)})")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, required=True, help="shard folder written with --codec raw")
    parser.add_argument("--jpeg", type=Path, required=True, help="shard folder written with --codec jpeg")
    parser.add_argument("--workers", type=int, default=2, help="loader workers for (a)")
    parser.add_argument("--batch", type=int, default=64, help="anchors per batch in (a)")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per loader measurement")
    parser.add_argument("--cpu-batch", type=int, default=16, help="anchors per step for ResNet-18 on CPU")
    parser.add_argument("--cpu-size", type=int, default=64, help="crop side for ResNet-18 on CPU (resize +8)")
    parser.add_argument("--cpu-steps", type=int, default=3, help="timed steps per source and round on CPU")
    parser.add_argument("--rounds", type=int, default=6, help="alternating repetitions of each measurement")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) - 1),
                        help="torch threads for (b) (default: cores minus the one loader worker of the CPU case)")
    parser.add_argument("--only", choices=["loader", "step"], help="run only (a) or only (b)")
    parser.add_argument("--cuda-only", action="store_true", help="in (b), skip the ResNet-18 CPU case")
    parser.add_argument("--cuda-batch", type=int, nargs="+", default=[64],
                        help="anchors per step for ResNet-50 on CUDA; several values give one case each")
    parser.add_argument("--cuda-workers", type=int, nargs="+", default=[max(1, (os.cpu_count() or 2) - 2)],
                        help="loader workers for the CUDA cases (default cores - 2); several values, one case each")
    parser.add_argument("--cuda-unpinned", action="store_true",
                        help="also run each CUDA case with unpinned batches (no pin-memory thread)")
    parser.add_argument("--no-autotune-ab", action="store_true", help="skip the cuDNN autotuning off/on comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {_cpu_model()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} torch threads; "
          f"load average (1 min) {os.getloadavg()[0]:.1f} at start")

    if args.only != "step":
        loader_rounds(args)
    if args.only != "loader":
        step_rounds(args)
    print(f"load average (1 min) {os.getloadavg()[0]:.1f} at the end")


def loader_rounds(args) -> None:
    print(f"(a) loader only, TimeAug+HardNeg+FaceSwap+MaskFN inputs, {args.batch} anchors x 4 views, "
          f"{args.workers} workers; {args.rounds} alternating rounds of {args.seconds:g} s")
    rates, per_cpu = {"raw": [], "jpeg": []}, {"raw": [], "jpeg": []}
    for _ in range(args.rounds):
        for name, root in (("raw", args.raw), ("jpeg", args.jpeg)):
            rate, cpu_rate = loader_throughput(root, args.batch, args.workers, args.seconds)
            rates[name].append(rate)
            per_cpu[name].append(cpu_rate)
    for name in rates:
        print(f"    {name:5s} training images/s: {_spread(rates[name])}")
        print(f"    {name:5s} images per CPU-second (main + workers): {_spread(per_cpu[name])}")
    print(f"    load average (1 min) {os.getloadavg()[0]:.1f} after (a)")


def step_rounds(args) -> None:
    print("(b) step efficiency = real-loader throughput / in-memory-batch throughput (same steps, same shape), "
          "per round, alternating")
    cases = [] if args.cuda_only else [("resnet18 cpu fp32", torch.device("cpu"), "resnet18", args.cpu_batch,
                                        args.cpu_size, 1, args.cpu_steps, False)]
    if torch.cuda.is_available():
        cases += [("resnet50 cuda bf16", torch.device("cuda"), "resnet50", batch, 112, workers, 20, pinned)
                  for batch in args.cuda_batch for workers in args.cuda_workers
                  for pinned in ((True, False) if args.cuda_unpinned else (True,))]
        print(f"    GPU: {torch.cuda.get_device_name(0)}")
    if torch.cuda.is_available() and not args.no_autotune_ab:
        rates = cudnn_autotune_ab(args.jpeg, "resnet50", 64, 128, 112, 20, 4)
        print(f"    resnet50 cuda bf16 112px in-memory img/s, cuDNN autotuning off: {_spread(rates[False], 1)}; "
              f"on: {_spread(rates[True], 1)}")
    for name, device, arch, batch, size, workers, steps, pinned in cases:
        pairs = step_efficiency(args.jpeg, arch, device, batch, size + 16 if device.type == "cuda" else size + 8,
                                size, workers, steps, args.rounds, pinned)
        print(f"    {name:18s} {size}px, {batch} anchors x 4 views, {workers} loader worker(s)"
              f"{', pinned' if pinned else ''}")
        print(f"        real      img/s: {_spread([r for r, _ in pairs], 1)}")
        print(f"        in-memory img/s: {_spread([m for _, m in pairs], 1)}")
        print(f"        efficiency     : {_spread([r / m for r, m in pairs], 3)}")
    if not torch.cuda.is_available():
        print("    resnet50 cuda bf16 112px: no CUDA")


if __name__ == "__main__":
    main()
