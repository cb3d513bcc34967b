"""The training loop: set-up (shards, run folder, model, optimiser, resume), steps, logging, checkpoints.

Reproducibility: the data of (epoch, batch) and the augmentation of (rank, step) are pure functions of the
seed, and a checkpoint stores model, optimiser, scheduler, sampler position and RNG states, so a resumed
run reaches the same weights as an uninterrupted one (tests/test_trainer_resume.py).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from sslfer_core.atomic_files import write_json_atomic
from sslfer_core.models import ContrastiveModel
from train.batch_builder import MaskFNConfig, similarity_stats
from train.checkpoints import latest_checkpoint
from train.contrastive_step import ContrastiveStep, StepResult, batch_to_device, step_generator
from train.distributed import DistContext, barrier, cores_per_local_rank, init_distributed, shutdown, sum_across
from train.epoch_plan import FALLBACK_KINDS, PlanConfig
from train.loss_watch import LossWatch, NonFiniteLoss, settles_each_step
from train.lr_schedule import default_warmup, make_scheduler
from train.metrics_log import IntervalMeter, MetricsLog
from train.progress_bar import TrainProgress
from train.run_config import RunConfig, code_version
from train.run_state import RunState
from train.shard_index import ShardIndex
from train.shard_set import check_ablation, open_shard_set
from train.shard_stream import ShardStream, make_loader

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"


class TrainingError(RuntimeError):
    """A run cannot start or had to stop; the message is one line for the user."""


@dataclass
class TrainSummary:
    run_dir: Path
    steps: int
    epoch: int
    last_loss: float
    fallbacks: dict[str, int] = field(default_factory=dict)
    checkpoint: Path | None = None
    seconds: float = 0.0


@dataclass
class _Data:
    index: ShardIndex
    manifest_sha256: str
    stream: ShardStream
    workers: int
    total_steps: int
    warmup_steps: int

    @property
    def steps_per_epoch(self) -> int:
        return self.stream.steps


def read_run_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"{run_dir}: no {CONFIG_NAME}; nothing to resume") from None
    except (OSError, json.JSONDecodeError) as error:
        raise TrainingError(f"{path}: unreadable ({error})") from None


def _check_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None for a fresh run)."""
    newest = latest_checkpoint(run_dir)
    if resume:
        if newest is None:
            raise TrainingError(f"{run_dir}: no checkpoint to resume from")
        return newest
    if newest is not None or (run_dir / CONFIG_NAME).exists():
        raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    return None


def _prepare_data(cfg: RunConfig, ctx: DistContext, echo) -> _Data:
    # Hashing every byte once is enough: the other ranks check sizes and headers only.
    index, manifest_sha256 = open_shard_set(Path(cfg.shards), full_verify=cfg.verify and ctx.is_main, warn=echo)
    world = ctx.world_size
    if cfg.batch_size % world:
        raise TrainingError(f"--batch-size {cfg.batch_size} is not divisible by the {world} ranks")
    check_ablation(index, Path(cfg.shards), faceswap=cfg.faceswap, maskfn=cfg.maskfn, global_batch=cfg.batch_size)
    if index.num_videos < world:
        raise TrainingError(f"the shards hold {index.num_videos} videos, fewer than the {world} ranks")
    # Every (rank, worker) unit needs at least one video of its own.
    workers = max(0, min(cfg.workers, index.num_videos // world))
    plan = PlanConfig(seed=cfg.seed, batch_size=cfg.batch_size // world, timeaug=cfg.timeaug, hardneg=cfg.hardneg,
                      faceswap=cfg.faceswap, cutmix=cfg.cutmix, swap_p=cfg.swap_p, pool_videos=cfg.pool_videos)
    stream = ShardStream(index, plan, rank=ctx.rank, world_size=world, num_workers=workers,
                         with_descriptors=cfg.maskfn)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * stream.steps
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else default_warmup(total)
    return _Data(index, manifest_sha256, stream, workers, total, warmup)


def _cpu_threads(ctx: DistContext, workers: int) -> int:
    """On CPU, torch threads = this rank's cores minus its loader workers: oversubscribed cores were 2-3x
    slower per step here. An explicit OMP_NUM_THREADS wins."""
    if ctx.device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    torch.set_num_threads(max(1, cores_per_local_rank() - workers))
    return torch.get_num_threads()


def _record_config(cfg: RunConfig, ctx: DistContext, data: _Data, run_dir: Path, resuming: bool,
                   bf16: bool) -> None:
    """Write config.json for a new run; for a resumed one, refuse different shards."""
    if resuming:
        if read_run_config(run_dir).get("manifest_sha256") != data.manifest_sha256:
            raise TrainingError(f"the shards in {cfg.shards} differ from those {run_dir} was started on "
                                "(manifest sha256 changed); resume with the same data")
        return
    if ctx.is_main:
        write_json_atomic(run_dir / CONFIG_NAME, dict(
            cfg.to_json(), ablation=cfg.ablation, code_version=code_version(), manifest_sha256=data.manifest_sha256,
            world_size=ctx.world_size, workers_used=data.workers, device_used=str(ctx.device),
            bf16_used=bf16,
            steps_per_epoch=data.steps_per_epoch, total_steps=data.total_steps,
            warmup_steps_used=data.warmup_steps, frames=data.index.num_frames, videos=data.index.num_videos,
            torch_version=torch.__version__))


def _build_state(cfg: RunConfig, ctx: DistContext, data: _Data, channels_last: bool) -> RunState:
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = ContrastiveModel(cfg.arch, cfg.proj_dim).to(ctx.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # fused: Adam's update in one kernel per parameter instead of several; on one CPU core 29-30 ms instead of
    # 54-59 ms per ResNet-18 step (docs/training.md).
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    return RunState(model, optimizer, make_scheduler(optimizer, data.warmup_steps, data.total_steps), cfg.seed)


def _wrap(model: torch.nn.Module, cfg: RunConfig, ctx: DistContext) -> torch.nn.Module:
    net = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return torch.compile(net) if cfg.compile else net


def train(cfg: RunConfig, *, resume: bool = False, echo: Callable[[str], None] = print,
          progress: bool | None = None) -> TrainSummary:
    """Run (or continue) training as configured; raises TrainingError / ShardSetError with a one-line reason."""
    try:
        ctx = init_distributed(cfg.device)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    threads_before, autotune_before = torch.get_num_threads(), torch.backends.cudnn.benchmark
    # A run's input shapes never change, so cuDNN's per-shape algorithm search is paid once. On an H200
    # three comparisons gave +12 %, -4 % and +3.5 % (docs/training.md): no loss seen, the GPU figures used it.
    torch.backends.cudnn.benchmark = ctx.device.type == "cuda" or autotune_before
    try:
        return _train(cfg, ctx, resume, echo if ctx.is_main else (lambda text: None), progress)
    finally:
        torch.set_num_threads(threads_before)
        torch.backends.cudnn.benchmark = autotune_before
        shutdown(ctx)


def _train(cfg: RunConfig, ctx: DistContext, resume: bool, echo, progress) -> TrainSummary:
    started = time.monotonic()
    run_dir = Path(cfg.out)
    resume_from = _check_run_dir(run_dir, resume)
    barrier(ctx)  # every rank has looked before rank 0 writes config.json
    data = _prepare_data(cfg, ctx, echo)
    threads = _cpu_threads(ctx, data.workers)
    views = data.stream.config.num_views
    objective = ContrastiveStep(ctx, batch_size=cfg.batch_size // ctx.world_size, num_views=views,
                                resize=cfg.resize, crop=cfg.crop, temperature=cfg.temperature,
                                face_crop=cfg.face_crop, crop_area=cfg.crop_area, precision=cfg.precision,
                                maskfn=MaskFNConfig(cfg.maskfn_mode, cfg.maskfn_k, cfg.maskfn_lambda)
                                if cfg.maskfn else None)
    _record_config(cfg, ctx, data, run_dir, resume_from is not None, objective.bf16)
    state = _build_state(cfg, ctx, data, objective.channels_last)
    if resume_from is not None:
        state.restore(resume_from)
        echo(f"resuming {run_dir} from {resume_from.name} (step {state.step}, epoch {state.epoch})")
    net = _wrap(state.model, cfg, ctx)
    echo(f"{cfg.ablation}, {cfg.arch}, seed {cfg.seed}: {data.index.num_videos} videos / {data.index.num_frames} "
         f"frames in {len(data.index.paths)} shards; {ctx.world_size} rank(s) x {data.workers} loader worker(s) "
         f"on {ctx.device} ({threads} torch threads{', bf16' if objective.bf16 else ''}); "
         f"{cfg.batch_size} anchors x {views} views per step; {data.steps_per_epoch} steps/epoch, "
         f"{data.total_steps} steps")
    metrics = (MetricsLog(run_dir / METRICS_NAME, resume_step=state.step if resume_from else None)
               if ctx.is_main else None)
    bar = TrainProgress(data.total_steps, state.step, enabled=progress if ctx.is_main else False)
    try:
        last_loss, last_checkpoint = _loop(cfg, ctx, data, state, net, objective, metrics, bar, run_dir,
                                           resume_from)
    finally:
        bar.close()
        data.stream.close()
        if metrics is not None:
            metrics.close()
    counts = state.fallback_counts()
    if math.isnan(last_loss):
        echo(f"nothing to do: {run_dir} already reached its {data.total_steps} steps")
    else:
        echo(f"done: {state.step} steps, epoch {state.epoch}, last loss {last_loss:.4f}; samples that fell back: "
             + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return TrainSummary(run_dir, state.step, state.epoch, last_loss, counts, last_checkpoint,
                        time.monotonic() - started)


def _loop(cfg: RunConfig, ctx: DistContext, data: _Data, state: RunState, net, objective: ContrastiveStep,
          metrics: MetricsLog | None, bar: TrainProgress, run_dir: Path, last_checkpoint: Path | None):
    """Train to the last step; returns (last loss, newest checkpoint)."""
    meter = IntervalMeter(rows_per_step=cfg.batch_size * objective.num_views)  # .last: the newest loss read
    loader = make_loader(data.stream, data.workers, pin_memory=ctx.device.type == "cuda")
    # Losses and fallback counts stay on the device between sync points (loss_watch.py says why).
    losses, check_each_step = LossWatch(), settles_each_step(ctx.device)
    fallbacks = torch.zeros(len(FALLBACK_KINDS), dtype=torch.int64, device=ctx.device)
    while state.step < data.total_steps:
        data.stream.set_epoch(state.epoch, state.batch_in_epoch)
        for batch in loader:
            if int(batch["batch_index"]) != state.batch_in_epoch:
                raise TrainingError(f"data order broke: got batch {int(batch['batch_index'])}, "
                                    f"expected {state.batch_in_epoch} of epoch {state.epoch}")
            batch = batch_to_device(batch, ctx.device)
            net.train()
            x = objective.views(batch, step_generator(cfg.seed, ctx.rank, state.step, ctx.device))
            result = objective.loss(net, x, batch)
            losses.add(state.step + 1, state.epoch, result.loss)
            if check_each_step:
                _settle(losses, meter, state, last_checkpoint, applied=False)
            lr = state.optimizer.param_groups[0]["lr"]
            state.optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            state.optimizer.step()
            state.scheduler.step()
            epoch_of_step = state.epoch
            epoch_end = state.advance(data.steps_per_epoch)
            fallbacks += batch["fallbacks"]
            final = state.step == data.total_steps
            log_now = state.step % cfg.log_every == 0 or final or epoch_end
            save_now = state.step % cfg.ckpt_every == 0 or epoch_end or final
            if not (log_now or save_now):
                continue
            # Settled before anything is written, so no log line or checkpoint follows a non-finite loss.
            _settle(losses, meter, state, last_checkpoint, applied=True)
            state.fallbacks += sum_across(fallbacks, ctx).cpu().numpy()
            fallbacks.zero_()
            if log_now:
                _log(metrics, bar, meter, state, result, lr, epoch_of_step)
            if save_now:
                if ctx.is_main:
                    last_checkpoint = state.save(run_dir, cfg.to_json(), code_version(), cfg.keep_checkpoints)
                barrier(ctx)
            if epoch_end or final:
                break
    return meter.last, last_checkpoint


def _settle(losses: LossWatch, meter: IntervalMeter, state: RunState, last_checkpoint: Path | None, *,
            applied: bool) -> None:
    """Read the pending losses into the meter."""
    try:
        values = losses.settle()
    except NonFiniteLoss as bad:
        where = last_checkpoint if last_checkpoint is not None else "none written yet"
        stopped = (f"stopped at step {state.step} without writing anything after step {bad.step - 1}" if applied
                   else "stopped before applying it")
        raise TrainingError(f"loss became {bad.value} at step {bad.step} (epoch {bad.epoch}); {stopped}; "
                            f"last good checkpoint: {where}") from None
    for value in values:
        meter.add(value)


def _log(metrics: MetricsLog | None, bar: TrainProgress, meter: IntervalMeter, state: RunState,
         result: StepResult, lr: float, epoch: int) -> None:
    loss, images_per_s = meter.take()
    pos_cos, neg_cos = similarity_stats(result.embeddings, result.inputs.positive_index[:, 0], result.inputs.row_valid)
    if metrics is not None:
        metrics.write({"step": state.step, "epoch": epoch, "loss": loss, "loss_last": meter.last, "lr": lr,
                       "images_per_s": images_per_s, "pos_cos": pos_cos, "neg_cos": neg_cos,
                       "false_negatives": result.inputs.false_negatives, "fallbacks": state.fallback_counts()})
    bar.update(state.step, loss, images_per_s)
