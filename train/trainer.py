"""The training loop shared by every method (train/methods/): set-up (distributed, shards, run folder, model,
optimiser, resume), steps, logging, checkpoints. What is learnt and from which batches is the method's.

Reproducibility: the data of (epoch, batch) and the augmentation of (rank, step) are pure functions of the
seed, and a checkpoint stores model, optimiser, scheduler, sampler position and RNG states, so a resumed
run reaches the same weights as an uninterrupted one (tests/test_trainer_resume.py).
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from sslfer_core.atomic_files import writable_dir_problem, write_error_text, write_json_atomic
from sslfer_core.byte_sizes import human_bytes
from sslfer_core.finite import count_floating, describe_non_finite, non_finite_names
from sslfer_core.folder_lock import FolderLocked, folder_lock
from sslfer_core.progress import TrainProgress
from train.checkpoints import (CheckpointReadError, latest_checkpoint, newest_readable_checkpoint,
                               remove_stale_partials)
from train.distributed import DistContext, barrier, cores_per_local_rank, init_distributed, shutdown, sum_across
from train.loss_watch import LossWatch, NonFiniteLoss, settles_each_step
from train.methods import BatchStream, Method, get_method
from train.metrics_log import IntervalMeter, MetricsLog, MetricsWriteError
from train.run_config import (CONFIG_NAME, RunConfigError, TrainConfig, code_version, load_run_config,
                              method_of_config, resume_command)
from train.run_state import RunState
from train.shard_index import ShardIndex
from train.shard_set import open_shard_set
from train.step_io import batch_to_device, step_generator

METRICS_NAME = "metrics.jsonl"
LOCK_NAME = "train.lock"  # flock'ed by the run's rank 0 while it trains
UNUSABLE_SUFFIX = ".unusable"  # a checkpoint that does not read is renamed to this on resume, not deleted


class TrainingError(RuntimeError):
    """A run cannot start or had to stop; the message is one line for the user."""


class RunFolderUnwritable(TrainingError):
    """Nothing can be written to --out: a usage error, as an unwritable output is in sslfer-prep and sslfer-eval."""


@dataclass
class TrainSummary:
    run_dir: Path
    steps: int
    epoch: int
    last_loss: float
    counters: dict[str, int] = field(default_factory=dict)
    checkpoint: Path | None = None
    seconds: float = 0.0


@dataclass
class _Data:
    index: ShardIndex
    manifest_sha256: str
    stream: BatchStream
    workers: int
    total_steps: int
    warmup_steps: int

    @property
    def steps_per_epoch(self) -> int:
        return self.stream.steps


def read_run_config(run_dir: Path) -> dict:
    try:
        config = load_run_config(run_dir)
    except RunConfigError as error:
        raise TrainingError(str(error)) from None
    if config is None:
        raise TrainingError(f"{run_dir}: no {CONFIG_NAME}; nothing to resume")
    return config


def check_same_method(saved: dict, method: str, run_dir: Path) -> None:
    """Refuse to continue a run with another method than the one that made it."""
    made_by = method_of_config(saved)
    if made_by != method:
        raise TrainingError(f"{run_dir} is a {made_by} run, not {method}; continue it with: "
                            f"{resume_command(made_by, run_dir)}")


def check_batch_divides(batch_size: int, world_size: int) -> None:
    if batch_size % world_size:
        lower, upper = batch_size // world_size * world_size, (batch_size // world_size + 1) * world_size
        multiples = f"{lower} or {upper}" if lower else str(upper)
        raise TrainingError(f"--batch-size {batch_size} is not divisible by the {world_size} ranks; "
                            f"give a multiple of {world_size} (e.g. {multiples})")


@contextlib.contextmanager
def _hold_run_dir(run_dir: Path, ctx: DistContext, echo) -> Iterator[None]:
    """Rank 0 makes sure it can write the run folder and locks it for the run; every rank stops alike
    when it cannot. Holding the lock, it removes what killed writes left behind."""
    problem, unwritable = None, False
    with contextlib.ExitStack() as stack:
        if ctx.is_main:
            problem = writable_dir_problem(run_dir)
            unwritable = problem is not None
            if problem is None:
                try:
                    stack.enter_context(folder_lock(run_dir / LOCK_NAME, "sslfer-train"))
                except FolderLocked as locked:
                    problem = (f"{run_dir} is in use by another run ({locked.holder}); wait for it to end or "
                               "choose another --out")
                except OSError as error:
                    problem = f"cannot lock {run_dir / LOCK_NAME}: {error.strerror or error}"
        failed = problem is not None
        if ctx.distributed:
            failed = bool(sum_across(torch.tensor([int(failed)], device=ctx.device), ctx).item())
        if failed:
            if unwritable:
                raise RunFolderUnwritable(problem)
            raise TrainingError(problem or f"rank 0 cannot use {run_dir} (its error line says why)")
        if ctx.is_main:
            files, size = remove_stale_partials(run_dir, (CONFIG_NAME,))
            if files:
                echo(f"note: removed {files} temporary file(s) of interrupted writes ({human_bytes(size)})")
        yield


def _check_run_dir(run_dir: Path, resume: bool, method: str, ctx: DistContext,
                   echo) -> tuple[Path, dict] | None:
    """The checkpoint to resume from and its content (None for a fresh run). On resume, a newer checkpoint
    that does not read (truncated by a full disk or a copy) is set aside and an older one used."""
    if resume:
        # The run's config.json says which method and settings made it; a checkpoint of another run or
        # method (copied into the folder) is set aside like a damaged one.
        run_config = read_run_config(run_dir) if (run_dir / CONFIG_NAME).exists() else {"method": method}
        check_same_method(run_config, method, run_dir)
        if latest_checkpoint(run_dir) is None:
            raise TrainingError(f"{run_dir}: no checkpoint to resume from")

        def skipped(path: Path, error: CheckpointReadError) -> None:
            if ctx.is_main:  # one rank renames; the others find the file gone or unreadable alike
                path.replace(path.with_name(path.name + UNUSABLE_SUFFIX))
            echo(f"warning: {error}; renamed it to {path.name}{UNUSABLE_SUFFIX}, falling back to an older checkpoint")

        found = newest_readable_checkpoint(run_dir, skipped, run_config)
        if found is None:
            raise TrainingError(f"{run_dir}: no checkpoint reads (each was renamed to *{UNUSABLE_SUFFIX}); "
                                "start the run again with another --out")
        return found
    if latest_checkpoint(run_dir) is not None or (run_dir / CONFIG_NAME).exists():
        raise TrainingError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    return None


def _prepare_data(cfg: TrainConfig, ctx: DistContext, method: Method, echo) -> _Data:
    # Every rank joins: the ranks of each machine split the hashing (train/shard_set.py).
    index, manifest_sha256 = open_shard_set(Path(cfg.shards), full_verify=cfg.verify, warn=echo, ctx=ctx,
                                            **method.index_options())
    world = ctx.world_size
    method.check_shards(index, Path(cfg.shards))
    if index.num_videos < world:
        raise TrainingError(f"the shards hold {index.num_videos} videos, fewer than the {world} ranks")
    workers = method.loader_workers(index, cfg.workers)
    stream = method.make_stream(index, workers)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * stream.steps
    if cfg.warmup_steps is not None and cfg.warmup_steps > total:
        raise TrainingError(f"--warmup-steps {cfg.warmup_steps} is more than the run's {total} steps: the "
                            "learning rate would never reach --lr; give at most that")
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else method.default_warmup(total, stream.steps)
    return _Data(index, manifest_sha256, stream, workers, total, warmup)


def _cpu_threads(ctx: DistContext, workers: int, recorded: int | None = None) -> int:
    """On CPU, torch threads = this rank's cores minus its loader workers, since threads that share a core
    with a worker wait on each other (docs/training.md, "Torch threads"). A resumed run keeps the count
    its start recorded (`recorded`), whatever its workers now: the thread count changes how sums are
    split, and so the weights in their last bits. An explicit OMP_NUM_THREADS wins."""
    if ctx.device.type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    torch.set_num_threads(recorded if recorded is not None else max(1, cores_per_local_rank() - workers))
    return torch.get_num_threads()


def _initialise(cfg: TrainConfig, method: Method, state: RunState, resuming: bool, echo) -> dict | None:
    """--init: the method loads the published weights into the new model (a resumed run has its checkpoint)."""
    if not cfg.init or resuming:
        return None
    from train.weights_file import WeightsFileError

    try:
        record = method.init_weights(state.model, Path(cfg.init))
    except (ValueError, WeightsFileError) as error:
        raise TrainingError(f"--init {error}") from None
    echo(record["summary"])
    return record


def _recorded_threads(run_dir: Path, ctx: DistContext) -> int | None:
    """The CPU torch threads a run started with (config.json), for its resume on the same kind of device."""
    config = read_run_config(run_dir)
    value = config.get("torch_threads_used")
    started_on_cpu = str(config.get("device_used", "")).startswith("cpu")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1 and started_on_cpu:
        return value
    return None


def _record_config(cfg: TrainConfig, ctx: DistContext, method: Method, data: _Data, run_dir: Path,
                   resuming: bool, threads: int, init: dict | None = None) -> None:
    """Write config.json for a new run; for a resumed one, refuse different shards."""
    if resuming:
        if read_run_config(run_dir).get("manifest_sha256") != data.manifest_sha256:
            raise TrainingError(f"the shards in {cfg.shards} differ from those {run_dir} was started on "
                                "(manifest sha256 changed); resume with the same data")
        return
    if ctx.is_main:
        _write_config(run_dir, dict(
            cfg.to_json(), **method.config_record(), code_version=code_version(),
            manifest_sha256=data.manifest_sha256, world_size=ctx.world_size, workers_used=data.workers,
            device_used=str(ctx.device), torch_threads_used=threads, bf16_used=method.bf16,
            steps_per_epoch=data.steps_per_epoch, total_steps=data.total_steps,
            warmup_steps_used=data.warmup_steps, frames=data.index.num_frames, videos=data.index.num_videos,
            torch_version=torch.__version__, **({"init_weights": init} if init else {})))


def _write_config(run_dir: Path, record: dict) -> None:
    try:
        write_json_atomic(run_dir / CONFIG_NAME, record)
    except OSError as error:
        raise TrainingError(f"could not write {run_dir / CONFIG_NAME} ({write_error_text(error, run_dir)}); "
                            "nothing was trained") from None


def _build_state(cfg: TrainConfig, method: Method, data: _Data) -> RunState:
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = method.build_model()
    optimizer = method.build_optimizer(model)
    scheduler = method.build_scheduler(optimizer, data.warmup_steps, data.total_steps)
    return RunState(model, optimizer, scheduler, cfg.seed, counters=dict.fromkeys(method.counter_names, 0))


def _wrap(model: torch.nn.Module, cfg: TrainConfig, ctx: DistContext) -> torch.nn.Module:
    net = model
    if ctx.distributed:
        net = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return torch.compile(net) if cfg.compile else net


def train(cfg: TrainConfig, *, resume: bool = False, echo: Callable[[str], None] = print,
          progress: bool | None = None) -> TrainSummary:
    """Run (or continue) training as configured, with the method cfg belongs to; raises TrainingError /
    ShardSetError (or one of the method's user_errors) with a one-line reason."""
    try:
        ctx = init_distributed(cfg.device)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    threads_before, autotune_before = torch.get_num_threads(), torch.backends.cudnn.benchmark
    # A run's input shapes never change, so cuDNN's per-shape algorithm search is paid once and its
    # choice reused for every step (measurements: docs/training.md, "Measurements behind defaults").
    torch.backends.cudnn.benchmark = ctx.device.type == "cuda" or autotune_before
    try:
        return _train(cfg, ctx, resume, echo if ctx.is_main else (lambda text: None), progress)
    finally:
        torch.set_num_threads(threads_before)
        torch.backends.cudnn.benchmark = autotune_before
        shutdown(ctx)


def _train(cfg: TrainConfig, ctx: DistContext, resume: bool, echo, progress) -> TrainSummary:
    started = time.monotonic()
    run_dir = Path(cfg.out)
    try:
        check_batch_divides(cfg.batch_size, ctx.world_size)
    except TrainingError:
        barrier(ctx)  # every rank fails alike; all have joined the process group before any leaves it
        raise
    with _hold_run_dir(run_dir, ctx, echo):
        return _train_locked(cfg, ctx, resume, echo, progress, run_dir, started)


def _train_locked(cfg: TrainConfig, ctx: DistContext, resume: bool, echo, progress, run_dir: Path,
                  started: float) -> TrainSummary:
    found = _check_run_dir(run_dir, resume, cfg.method, ctx, echo)
    resume_from = found[0] if found is not None else None
    barrier(ctx)  # every rank has looked before rank 0 writes config.json
    method = get_method(cfg.method)(cfg, ctx)
    data = _prepare_data(cfg, ctx, method, echo)
    threads = _cpu_threads(ctx, data.workers, _recorded_threads(run_dir, ctx) if resume_from is not None else None)
    state = _build_state(cfg, method, data)
    init = _initialise(cfg, method, state, resume_from is not None, echo)
    _record_config(cfg, ctx, method, data, run_dir, resume_from is not None, threads, init)
    if resume_from is not None:
        try:
            state.restore(resume_from, found[1])
        except CheckpointReadError as error:
            raise TrainingError(f"{error}; move it out of {run_dir / 'checkpoints'} to resume from the one before"
                                ) from None
        echo(f"resuming {run_dir} from {resume_from.name} (step {state.step}, epoch {state.epoch})")
    net = _wrap(state.model, cfg, ctx)
    echo(f"{method.title}, seed {cfg.seed}: {data.index.num_videos} videos / {data.index.num_frames} "
         f"frames in {len(data.index.paths)} shards; {ctx.world_size} rank(s) x {data.workers} loader worker(s) "
         f"on {ctx.device} ({threads} torch threads{', bf16' if method.bf16 else ''}); "
         f"{method.batch_description}; {data.steps_per_epoch} steps/epoch, {data.total_steps} steps")
    try:
        metrics = (MetricsLog(run_dir / METRICS_NAME, resume_step=state.step if resume_from else None,
                              tensorboard=cfg.tensorboard, warn=echo) if ctx.is_main else None)
    except MetricsWriteError as error:
        raise TrainingError(str(error)) from None
    bar = TrainProgress(data.total_steps, state.step, enabled=progress if ctx.is_main else False,
                        unit=method.rate_unit)
    try:
        last_loss, last_checkpoint = _loop(cfg, ctx, data, state, net, method, metrics, bar, run_dir,
                                           resume_from)
    except MetricsWriteError as error:
        newest = latest_checkpoint(run_dir)
        raise TrainingError(f"{error}; stopped at step {state.step}; newest checkpoint: "
                            f"{newest.name if newest else 'none'}; free some space, then continue with: "
                            f"{resume_command(cfg.method, run_dir)}") from None
    finally:
        bar.close()
        data.stream.close()
        if metrics is not None:
            metrics.close()
    counters = dict(state.counters)
    if math.isnan(last_loss):
        echo(f"nothing to do: {run_dir} already reached its {data.total_steps} steps")
    else:
        echo(f"done: {state.step} steps, epoch {state.epoch}, last loss {last_loss:.4f}"
             + method.final_summary(counters))
    return TrainSummary(run_dir, state.step, state.epoch, last_loss, counters, last_checkpoint,
                        time.monotonic() - started)


def _loop(cfg: TrainConfig, ctx: DistContext, data: _Data, state: RunState, net, method: Method,
          metrics: MetricsLog | None, bar: TrainProgress, run_dir: Path, last_checkpoint: Path | None):
    """Train to the last step; returns (last loss, newest checkpoint)."""
    meter = IntervalMeter(rows_per_step=method.rows_per_step)  # .last: the newest loss read
    loader = method.make_loader(data.stream, data.workers, pin_memory=ctx.device.type == "cuda")
    # Losses and counts stay on the device between sync points (loss_watch.py says why).
    losses, check_each_step = LossWatch(), settles_each_step(ctx.device)
    counts = torch.zeros(len(state.counters), dtype=torch.int64, device=ctx.device)
    clip = method.grad_clip
    written = state.step  # the newest step whose log line or checkpoint was written (or the start)
    while state.step < data.total_steps:
        data.stream.set_epoch(state.epoch, state.batch_in_epoch)
        for batch in loader:
            if int(batch["batch_index"]) != state.batch_in_epoch:
                raise TrainingError(f"data order broke: got batch {int(batch['batch_index'])}, "
                                    f"expected {state.batch_in_epoch} of epoch {state.epoch}")
            batch = batch_to_device(batch, ctx.device)
            if metrics is not None and metrics.board is not None and state.step == 0:
                metrics.images(method.start_images(batch), state.step)
            net.train()
            loss, outputs = method.step(net, batch, step_generator(cfg.seed, ctx.rank, state.step, ctx.device))
            losses.add(state.step + 1, state.epoch, loss)
            if check_each_step:
                _settle(losses, meter, state, last_checkpoint, applied=False)
            lr = state.optimizer.param_groups[0]["lr"]
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = None if clip is None else torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip)
            state.optimizer.step()
            state.scheduler.step()
            method.after_optimizer_step(state.model, state.step + 1, data.total_steps)
            epoch_of_step = state.epoch
            epoch_end = state.advance(data.steps_per_epoch)
            step_counts = method.counts(batch, outputs)
            if step_counts is not None:
                counts += step_counts
            final = state.step == data.total_steps
            log_now = state.step % cfg.log_every == 0 or final or epoch_end
            on_cadence = state.step % cfg.ckpt_every == 0 or final
            save_now = on_cadence or epoch_end
            if not (log_now or save_now):
                continue
            # Settled before anything is written, so no log line or checkpoint follows a non-finite loss.
            _settle(losses, meter, state, last_checkpoint, applied=True)
            # A method's loss may hide a non-finite embedding (rows it skips): its outputs and the gradient
            # norm, small, are checked at every sync point; weights and optimiser state (a pass over all of
            # them) where a checkpoint follows.
            checked = [*outputs.items(), *([("grad_norm", grad_norm)] if grad_norm is not None else [])]
            _stop_if_non_finite(ctx, state, written, last_checkpoint, "the step's outputs",
                                non_finite_names(checked), len(checked))
            if save_now:
                _stop_if_non_finite(ctx, state, written, last_checkpoint, "the model or optimiser state",
                                    *_non_finite_state(state))
            if state.counters:
                state.add_counts(sum_across(counts, ctx).tolist())
                counts.zero_()
            if log_now:
                _log(metrics, bar, meter, state, method, outputs, grad_norm, lr, epoch_of_step)
            if save_now:
                if ctx.is_main:
                    last_checkpoint = state.save(run_dir, cfg.to_json(), code_version(), cfg.keep_checkpoints)
                    # Not at the other epoch ends: on a small shard set an epoch is a few steps, and a
                    # figure costs more than those steps.
                    if on_cadence:
                        metrics.figures(method.on_checkpoint(state.model, run_dir, state.step, batch),
                                        state.step)
                barrier(ctx)
            written = state.step
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


def _non_finite_state(state: RunState) -> tuple[list[str], int]:
    """Names of the model's parameters and buffers (BatchNorm statistics too) and optimiser state entries
    that hold NaN or infinite values, and how many tensors were looked at."""
    named = list(state.model.state_dict().items())
    names = {param: name for name, param in state.model.named_parameters()}
    for param, entries in state.optimizer.state.items():
        named += [(f"optimiser {key} of {names.get(param, 'a parameter')}", value) for key, value in entries.items()]
    return non_finite_names(named), count_floating(value for _, value in named)


def _stop_if_non_finite(ctx: DistContext, state: RunState, written: int, last_checkpoint: Path | None, what: str,
                        bad: list[str], total: int) -> None:
    """Stop the run, on every rank alike, when any rank found non-finite tensors."""
    found = len(bad)
    if ctx.distributed:
        found = int(sum_across(torch.tensor([found], device=ctx.device), ctx).item())
    if not found:
        return
    where = last_checkpoint if last_checkpoint is not None else "none written yet"
    detail = describe_non_finite(bad, total) if bad else "on another rank"
    raise TrainingError(f"training diverged: {what} became non-finite by step {state.step} ({detail}); stopped "
                        f"without writing anything after step {written}; last good checkpoint: {where}")


def _log(metrics: MetricsLog | None, bar: TrainProgress, meter: IntervalMeter, state: RunState, method: Method,
         outputs: dict[str, Tensor], grad_norm: Tensor | None, lr: float, epoch: int) -> None:
    loss, rate = meter.take()
    record = {"step": state.step, "epoch": epoch, "loss": loss, "loss_last": meter.last, "lr": lr,
              f"{method.rate_unit}_per_s": rate}
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    record.update(method.log_record(outputs, dict(state.counters)))
    if metrics is not None:
        metrics.write(record)
    bar.update(state.step, loss, rate)
