"""The training loop: set-up (shards, run folder, model, optimiser, resume), steps, logging, checkpoints.

Reproducibility: the data of (epoch, batch) and the augmentation of (rank, step) are pure functions of the
seed, and a checkpoint stores model, optimiser, scheduler, sampler position and RNG states, so a resumed
run reaches the same weights as an uninterrupted one (tests/test_trainer_resume.py).
"""
from __future__ import annotations

import json
import math
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
from train.checkpoints import latest_checkpoint, load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from train.contrastive_step import ContrastiveStep, batch_to_device, step_generator
from train.distributed import DistContext, barrier, init_distributed, shutdown, sum_across
from train.epoch_plan import FALLBACK_KINDS, PlanConfig
from train.lr_schedule import default_warmup, make_scheduler
from train.metrics_log import MetricsLog
from train.progress_bar import TrainProgress
from train.run_config import RunConfig, code_version
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


def _workers_for(cfg: RunConfig, num_videos: int, world: int) -> int:
    # Every (rank, worker) unit needs at least one video of its own.
    if num_videos < world:
        raise TrainingError(f"the shards hold {num_videos} videos, fewer than the {world} ranks")
    return max(0, min(cfg.workers, num_videos // world))


def train(cfg: RunConfig, *, resume: bool = False, echo: Callable[[str], None] = print,
          progress: bool | None = None) -> TrainSummary:
    """Run (or continue) training as configured; raises TrainingError / ShardSetError with a one-line reason."""
    try:
        ctx = init_distributed(cfg.device)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    try:
        return _train(cfg, ctx, resume, echo if ctx.is_main else (lambda text: None), progress)
    finally:
        shutdown(ctx)


def _train(cfg: RunConfig, ctx: DistContext, resume: bool, echo, progress) -> TrainSummary:
    started = time.monotonic()
    run_dir = Path(cfg.out)
    resume_from = _check_run_dir(run_dir, resume)
    barrier(ctx)  # every rank has looked before rank 0 writes config.json
    # Hashing every byte once is enough: the other ranks check sizes and headers only.
    index, manifest_sha256 = open_shard_set(Path(cfg.shards), full_verify=cfg.verify and ctx.is_main, warn=echo)
    world = ctx.world_size
    if cfg.batch_size % world:
        raise TrainingError(f"--batch-size {cfg.batch_size} is not divisible by the {world} ranks")
    local_batch = cfg.batch_size // world
    check_ablation(index, Path(cfg.shards), faceswap=cfg.faceswap, maskfn=cfg.maskfn, global_batch=cfg.batch_size)
    workers = _workers_for(cfg, index.num_videos, world)
    plan = PlanConfig(seed=cfg.seed, batch_size=local_batch, timeaug=cfg.timeaug, hardneg=cfg.hardneg,
                      faceswap=cfg.faceswap, cutmix=cfg.cutmix, swap_p=cfg.swap_p, pool_videos=cfg.pool_videos)
    stream = ShardStream(index, plan, rank=ctx.rank, world_size=world, num_workers=workers,
                         with_descriptors=cfg.maskfn)
    steps_per_epoch = stream.steps
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else default_warmup(total)

    if resume_from is not None:
        saved = read_run_config(run_dir)
        if saved.get("manifest_sha256") != manifest_sha256:
            raise TrainingError(f"the shards in {cfg.shards} differ from those {run_dir} was started on "
                                "(manifest sha256 changed); resume with the same data")
    elif ctx.is_main:
        record = dict(cfg.to_json(), ablation=cfg.ablation, code_version=code_version(),
                      manifest_sha256=manifest_sha256, world_size=world, workers_used=workers,
                      device_used=str(ctx.device), steps_per_epoch=steps_per_epoch, total_steps=total,
                      warmup_steps_used=warmup, frames=index.num_frames, videos=index.num_videos,
                      torch_version=torch.__version__)
        write_json_atomic(run_dir / CONFIG_NAME, record)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = ContrastiveModel(cfg.arch, cfg.proj_dim).to(ctx.device)
    if ctx.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and ctx.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, warmup, total)
    step, epoch, batch_in_epoch = 0, 0, 0
    fallbacks = np.zeros(len(FALLBACK_KINDS), np.int64)
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng_states(state["rng"])
        step, epoch = int(state["step"]), int(state["epoch"])
        batch_in_epoch = int(state["sampler"]["batch_in_epoch"])
        fallbacks = np.asarray(state["sampler"].get("fallbacks", fallbacks), np.int64)
        echo(f"resuming {run_dir} from {resume_from.name} (step {step}, epoch {epoch})")
    net = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    echo(f"{cfg.ablation}, {cfg.arch}, seed {cfg.seed}: {index.num_videos} videos / {index.num_frames} frames in "
         f"{len(index.paths)} shards; {world} rank(s) x {workers} loader worker(s) on {ctx.device}; "
         f"{cfg.batch_size} anchors x {plan.num_views} views per step; {steps_per_epoch} steps/epoch, {total} steps")
    objective = ContrastiveStep(ctx, batch_size=local_batch, num_views=plan.num_views, resize=cfg.resize,
                                crop=cfg.crop, temperature=cfg.temperature,
                                maskfn=MaskFNConfig(cfg.maskfn_mode, cfg.maskfn_k, cfg.maskfn_lambda)
                                if cfg.maskfn else None)
    metrics = MetricsLog(run_dir / METRICS_NAME, resume_step=step if resume_from else None) if ctx.is_main else None
    bar = TrainProgress(total, step, enabled=progress if ctx.is_main else False)
    rows_per_step = cfg.batch_size * plan.num_views
    last_checkpoint = resume_from
    interval_losses: list[float] = []
    interval_start, interval_steps = time.monotonic(), 0
    last_loss = float("nan")

    def checkpoint() -> None:
        nonlocal last_checkpoint
        if ctx.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": rng_states(), "config": cfg.to_json(),
                     "step": step, "epoch": epoch, "code_version": code_version(),
                     "sampler": {"seed": cfg.seed, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                                 "fallbacks": fallbacks.tolist()}}
            last_checkpoint = save_checkpoint(run_dir, step, state, cfg.keep_checkpoints)
        barrier(ctx)

    loader = make_loader(stream, workers, pin_memory=ctx.device.type == "cuda")
    try:
        while step < total:
            stream.set_epoch(epoch, batch_in_epoch)
            for batch in loader:
                if int(batch["batch_index"]) != batch_in_epoch:
                    raise TrainingError(f"data order broke: got batch {int(batch['batch_index'])}, "
                                        f"expected {batch_in_epoch} of epoch {epoch}")
                batch = batch_to_device(batch, ctx.device)
                net.train()
                x = objective.views(batch, step_generator(cfg.seed, ctx.rank, step, ctx.device))
                result = objective.loss(net, x, batch)
                loss_value = float(result.loss.detach())
                if not math.isfinite(loss_value):
                    where = last_checkpoint if last_checkpoint is not None else "none written yet"
                    raise TrainingError(f"loss became {loss_value} at step {step + 1} (epoch {epoch}); stopped "
                                        f"before applying it; last good checkpoint: {where}")
                lr = optimizer.param_groups[0]["lr"]
                optimizer.zero_grad(set_to_none=True)
                result.loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                batch_in_epoch += 1
                fallbacks += sum_across(batch["fallbacks"], ctx).cpu().numpy()
                last_loss = loss_value
                interval_losses.append(loss_value)
                interval_steps += 1
                epoch_end = batch_in_epoch == steps_per_epoch
                if epoch_end:
                    epoch, batch_in_epoch = epoch + 1, 0
                if step % cfg.log_every == 0 or step == total or epoch_end:
                    elapsed = time.monotonic() - interval_start
                    images_per_s = rows_per_step * interval_steps / max(elapsed, 1e-9)
                    pos_cos, neg_cos = similarity_stats(result.embeddings, result.inputs.positive_index[:, 0],
                                                        result.inputs.row_valid)
                    if metrics is not None:
                        metrics.write({"step": step, "epoch": epoch if not epoch_end else epoch - 1,
                                       "loss": float(np.mean(interval_losses)), "loss_last": loss_value, "lr": lr,
                                       "images_per_s": images_per_s, "pos_cos": pos_cos, "neg_cos": neg_cos,
                                       "false_negatives": result.inputs.false_negatives,
                                       "fallbacks": dict(zip(FALLBACK_KINDS, fallbacks.tolist()))})
                    bar.update(step, float(np.mean(interval_losses)), images_per_s)
                    interval_losses, interval_start, interval_steps = [], time.monotonic(), 0
                if step % cfg.ckpt_every == 0 or epoch_end or step == total:
                    checkpoint()
                if epoch_end or step >= total:
                    break
    finally:
        bar.close()
        stream.close()
        if metrics is not None:
            metrics.close()
    counts = dict(zip(FALLBACK_KINDS, fallbacks.tolist()))
    if not interval_steps and math.isnan(last_loss):
        echo(f"nothing to do: {run_dir} already reached its {total} steps")
        return TrainSummary(run_dir, step, epoch, last_loss, counts, last_checkpoint, time.monotonic() - started)
    echo(f"done: {step} steps, epoch {epoch}, last loss {last_loss:.4f}; samples that fell back: "
         + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return TrainSummary(run_dir, step, epoch, last_loss, counts, last_checkpoint, time.monotonic() - started)
