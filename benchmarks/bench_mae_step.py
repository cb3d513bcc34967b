"""Step efficiency of video MAE pretraining: training steps fed by the real clip loader (ClipStream over
shards, decoding in worker processes) against the same steps on a batch already in memory on the device.
Efficiency = time per in-memory step / time per real-data step (1.0: the loader costs the step nothing).

    .venv/bin/python benchmarks/bench_mae_step.py --shards /tmp/maerun/shards            # CPU, tiny preset
    .venv/bin/python benchmarks/bench_mae_step.py --shards SHARDS_160PX --cuda           # GPU, full preset, bf16
        [--preset P] [--batch-size B] [--workers W] [--steps 10] [--rounds 3] [--json out.json]

A step is what the trainer does (train/trainer.py): batch to the device, MAE.step (augmentation,
mask, forward, targets, loss) with the step's generator, backward, AdamW step; on the CPU the loss is read
every step as the trainer does there, on CUDA only at the end of a block. Real and in-memory blocks of
--steps steps alternate for --rounds rounds after one warm-up block of each (other processes share the
machine, so interleaving spreads their load over both); the ratio of the summed times is printed, with
the per-round ratios. Torch threads on the CPU are the trainer's rule: cores minus loader workers.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from train.distributed import DistContext, cores_per_local_rank  # noqa: E402
from train.methods import get_method  # noqa: E402
from train.shard_set import open_shard_set  # noqa: E402
from train.step_io import batch_to_device, step_generator  # noqa: E402

SEED = 0


def batches_forever(stream, loader):
    epoch = 0
    while True:
        stream.set_epoch(epoch)
        yield from loader
        epoch += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True, type=Path)
    ap.add_argument("--cuda", action="store_true", help="GPU mode: full preset, bf16 autocast, pinned batches.")
    ap.add_argument("--preset", default=None, help="default: tiny on the CPU, full with --cuda")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 8 on the CPU, 32 with --cuda")
    ap.add_argument("--workers", type=int, default=None, help="loader workers [default: 1 on the CPU, 8 on CUDA]")
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    device = torch.device("cuda" if args.cuda else "cpu")
    if args.cuda and not torch.cuda.is_available():
        print("--cuda: no CUDA device here", file=sys.stderr)
        return 2
    preset = args.preset or ("full" if args.cuda else "tiny")
    batch = args.batch_size or (32 if args.cuda else 8)
    workers = args.workers if args.workers is not None else (min(8, max(1, (os.cpu_count() or 2) - 1)) if args.cuda
                                                               else 1)
    method_cls = get_method("mae")
    cfg = method_cls.config_class(shards=str(args.shards), out="/nonexistent", preset=preset, clip_frames=args.frames,
                                  batch_size=batch, steps=1, lr=1e-3, min_lr=0.0, precision=args.precision,
                                  clips_per_video=1000)
    ctx = DistContext(device=device)
    if device.type == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, cores_per_local_rank() - workers))  # the trainer's rule
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    method = method_cls(cfg, ctx)
    index, _ = open_shard_set(args.shards, full_verify=False, warn=lambda text: print(text, file=sys.stderr))
    method.check_shards(index, args.shards)
    stream = method.make_stream(index, workers)
    loader = method.make_loader(stream, workers, pin_memory=device.type == "cuda")
    torch.manual_seed(SEED)
    model = method.build_model()
    optimizer = method.build_optimizer(model)
    model.train()
    real = batches_forever(stream, loader)
    memory_batch = batch_to_device(next(real), device)
    step_number = [0]

    def train_step(b):
        b = batch_to_device(b, device)
        generator = step_generator(SEED, 0, step_number[0], device)
        loss, _ = method.step(model, b, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_number[0] += 1
        if device.type == "cpu":
            float(loss.detach())
        return loss

    def block(source) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = None
        for _ in range(args.steps):
            loss = train_step(next(source) if source is real else memory_batch)
        float(loss.detach())
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    load_before = os.getloadavg()
    block(real), block(None)  # warm-up: worker start, allocator, autotuning
    real_times, memory_times = [], []
    for _ in range(args.rounds):
        real_times.append(block(real))
        memory_times.append(block(None))
    load_after = os.getloadavg()
    stream.close()

    per_round = [m / r for m, r in zip(memory_times, real_times)]
    clips = batch * args.steps * args.rounds
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "preset": preset, "batch_size": batch, "frames": args.frames, "workers": workers,
        "torch_threads": torch.get_num_threads(), "bf16": method.bf16, "steps_per_block": args.steps,
        "rounds": args.rounds, "real_clips_per_s": clips / sum(real_times),
        "memory_clips_per_s": clips / sum(memory_times), "efficiency": sum(memory_times) / sum(real_times),
        "efficiency_per_round": per_round, "shard_image_size": index.image_size,
        "loadavg_before": load_before, "loadavg_after": load_after, "torch": torch.__version__,
    }
    print(f"{preset} preset, {batch} clips x {args.frames} frames per step on {result['device']} "
          f"({result['torch_threads']} torch threads{', bf16' if method.bf16 else ''}), {workers} loader worker(s), "
          f"{args.rounds} rounds of {args.steps} steps each way")
    print(f"  real data:  {result['real_clips_per_s']:.2f} clips/s ({sum(real_times) / (args.steps * args.rounds):.3f} s/step)")
    print(f"  in memory:  {result['memory_clips_per_s']:.2f} clips/s ({sum(memory_times) / (args.steps * args.rounds):.3f} s/step)")
    print(f"  step efficiency {result['efficiency']:.3f} (per round: {', '.join(f'{r:.3f}' for r in per_round)}); "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
