"""Pretraining methods behind one training loop (train/trainer.py), after solo-learn's BaseMethod without
Lightning. The loop owns distributed set-up, the run folder, RunState, LossWatch, checkpoints and resume,
metrics.jsonl, progress, torch.compile and DDP; a Method supplies everything that depends on what is
learnt: its config and CLI options, the shard check, data stream and loader, model, optimiser and schedule,
one step's loss, its counters, its per-method metrics, checkpoint hooks and its export.

A method is a subclass of Method registered under its name in METHOD_MODULES; `sslfer-train NAME ...` then
offers it, with the options its config class and cli_options() declare (docs/training.md, "Methods").
"""
from __future__ import annotations

import importlib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Iterable, Protocol

import click
import torch
from torch import Tensor, nn

from train.distributed import DistContext
from train.lr_schedule import default_warmup, make_scheduler
from train.run_config import DEFAULT_METHOD, TrainConfig
from train.shard_index import ShardIndex

# name -> module defining (and registering) the method; imported on first use.
METHOD_MODULES = {
    "contrastive": "train.methods.contrastive",
    "mae": "train.methods.mae",
    "byol": "train.methods.byol",
    "moco": "train.methods.moco",
}
_REGISTERED: dict[str, type["Method"]] = {}


class ExportError(ValueError):
    """The run folder or checkpoint cannot be exported."""


class BatchStream(Protocol):
    """A method's data over the shard index for one rank, one epoch at a time (contrastive/shard_stream.py
    and mae/clip_stream.py are two). Its batches are dicts of tensors that include "batch_index" (int64
    scalar: the batch's number within the epoch), which the loop checks against the run's position."""

    steps: int  # batches per epoch for this rank; the same on every rank

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None: ...

    def close(self) -> None: ...


@dataclass
class Exported:
    payload: dict  # what the export file holds: tensor name -> tensor (safetensors or a torch state_dict)
    description: str  # for the CLI line "OUT: <description> from ckpt-... (step N)", e.g. "resnet18 backbone"
    # header metadata (values become strings): "arch" or "preset", and the input preprocessing the weights
    # were trained with (train/weights_file.py PREPROCESSING_KEYS); export_run adds method, source, version
    metadata: dict = field(default_factory=dict)


class Method:
    """One pretraining method. The loop makes one instance per run and process, after the process group
    is set up and the batch is known to divide among the ranks, and calls it in this order: index_options
    (the index is read with them), check_shards,
    loader_workers, make_stream, default_warmup, config_record, [RNGs seeded] build_model, build_optimizer,
    build_scheduler, [checkpoint restored, DDP/compile] title, batch_description, make_loader; then per
    step: step -> backward -> [clip to grad_clip] -> optimiser and scheduler step -> after_optimizer_step ->
    counts; at log lines log_record (every rank), after each checkpoint on_checkpoint (rank 0 only; PNGs it
    returns also go to TensorBoard); before the first step start_images (rank 0, TensorBoard on);
    final_summary at the end.
    Per-rank batch size: cfg.batch_size // ctx.world_size."""

    name: ClassVar[str]
    config_class: ClassVar[type[TrainConfig]]
    help: ClassVar[str] = ""  # the subcommand's help text
    counter_names: ClassVar[tuple[str, ...]] = ()  # running totals over all ranks, kept in RunState.counters
    rate_unit: ClassVar[str] = "images"  # metrics.jsonl's "<unit>_per_s" counts rows_per_step per step
    option_help: ClassVar[dict[str, str]] = {}  # help text for shared options (by field name), if different
    user_errors: ClassVar[tuple[type[Exception], ...]] = ()  # raised for user mistakes: one-line messages

    def __init__(self, cfg: TrainConfig, ctx: DistContext):
        self.cfg, self.ctx = cfg, ctx

    # -- command line
    @classmethod
    def cli_options(cls) -> list[click.Option]:
        """Options for the fields config_class adds (defaults read from it with field_default). An option
        named like a shared one (e.g. batch_size) replaces the shared one."""
        return []

    def init_weights(self, model: nn.Module, path: Path) -> dict:
        """Load published weights into the freshly built model (`--init FILE`); returns what config.json records
        under "init" (path, sha256, kind, summary). Raises ValueError with one line."""
        raise ValueError(f"--init is not available for the {self.name} method")

    # -- data
    def index_options(self) -> dict:
        """Keyword arguments for reading the shard index (train/shard_set.py open_shard_set): whether it
        keeps every timestamp, and a ShardHook that derives what the method needs per shard instead."""
        return {}

    def check_shards(self, index: ShardIndex, shards: Path) -> None:
        """Refuse shards this run cannot use (raise one of user_errors or train.shard_set.ShardSetError)."""

    def loader_workers(self, index: ShardIndex, requested: int) -> int:
        """Loader worker processes per rank; by default each (rank, worker) needs a video of its own."""
        return max(0, min(requested, index.num_videos // self.ctx.world_size))

    def make_stream(self, index: ShardIndex, workers: int) -> BatchStream:
        raise NotImplementedError

    def make_loader(self, stream: BatchStream, workers: int, pin_memory: bool) -> Iterable[dict[str, Tensor]]:
        """An iterable the loop re-iterates once per epoch after stream.set_epoch()."""
        raise NotImplementedError

    # -- model and optimisation
    @property
    def bf16(self) -> bool:
        """Whether step() runs the network under bf16 autocast (recorded in config.json, echoed)."""
        return False

    @property
    def rows_per_step(self) -> int:
        """Units of rate_unit per optimiser step over all ranks."""
        return self.cfg.batch_size

    def build_model(self) -> nn.Module:
        """The model on self.ctx.device, not wrapped (the loop adds DDP and compile). The loop seeds
        python, numpy and torch with the run's seed just before."""
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        raise NotImplementedError

    def default_warmup(self, total_steps: int, steps_per_epoch: int) -> int:
        """Warm-up steps when --warmup-steps is not given."""
        return default_warmup(total_steps)

    def build_scheduler(self, optimizer: torch.optim.Optimizer, warmup_steps: int,
                        total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        """Stepped once per optimiser step; its state_dict goes into checkpoints, so a LambdaLR needs a
        callable object, not a lambda."""
        return make_scheduler(optimizer, warmup_steps, total_steps)

    @property
    def grad_clip(self) -> float | None:
        """Max gradient norm: the loop clips before each optimiser step and logs grad_norm; None = neither."""
        return None

    # -- one step
    def step(self, net: nn.Module, batch: dict[str, Tensor],
             generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss (a scalar to backpropagate) and tensors for counts() and log_record(). `net` is the wrapped
        model (DDP / compile), in train mode; `batch` is on the device; `generator` (on the device) is a
        pure function of (seed, rank, step), so every random draw made from it is the same after a resume.
        Keep results on the device: the loop reads the loss only at its sync points."""
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """After the optimiser and scheduler applied step `step` (1-based) of `total_steps`, on every rank:
        e.g. a momentum (EMA) target follows the trained weights. `model` is the unwrapped model; what this
        changes in it must live in its parameters or buffers, so that checkpoints and resume carry it."""

    def counts(self, batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> Tensor | None:
        """int64 (len(counter_names),) of this step on this rank, on the device; None when there are none."""
        return None

    # -- reporting
    @property
    def title(self) -> str:
        """Start of the run's first log line, e.g. "TimeAug+HardNeg, resnet18"."""
        return self.name

    @property
    def batch_description(self) -> str:
        """What one step trains on, e.g. "256 anchors x 4 views per step"."""
        return f"{self.cfg.batch_size} samples per step"

    def config_record(self) -> dict:
        """Entries config.json gets besides the config's fields and the loop's own."""
        return {}

    def log_record(self, outputs: dict[str, Tensor], counters: dict[str, int]) -> dict:
        """Per-method entries of a metrics.jsonl line, from the newest step's outputs and the running
        counters. Called on every rank at the same steps (collectives are allowed); rank 0 writes it. For
        means over the logging interval, accumulate on the device in step() and read them here."""
        return {}

    def final_summary(self, counters: dict[str, int]) -> str:
        """Appended to the run's last log line ("done: ... last loss X<summary>")."""
        return ""

    def start_images(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Images for TensorBoard from the run's first batch (rank 0 only, no collectives, no global RNGs):
        name -> (N, 3, H, W) floats in [0, 1], e.g. a few augmented views."""
        return {}

    def on_checkpoint(self, model: nn.Module, run_dir: Path, step: int, batch: dict[str, Tensor]) -> list[Path]:
        """After the checkpoint of every `--ckpt-every` steps and of the last step (not those of the other
        epoch ends), on rank 0 only (no collectives): e.g. a figure from the newest device batch with the
        unwrapped model. Returns the files written. Must not draw from the global RNGs (use a generator
        of its own), so that training continues as without it."""
        return []

    # -- export
    @classmethod
    def export(cls, state: dict, source: Path) -> Exported:
        """What `sslfer-train export` writes for a checkpoint `state` (loaded from `source`) of this method;
        raises ExportError when the weights do not fit."""
        raise ExportError(f"{source}: the {cls.name} method has no export")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method known by its name."""
    shared = {f.name for f in fields(TrainConfig)}
    assert cls.config_class.method == cls.name, f"{cls.config_class.__name__}.method must be {cls.name!r}"
    for option in cls.cli_options():
        assert option.name in {f.name for f in fields(cls.config_class)}, f"--{option.name}: no config field"
    assert shared <= {f.name for f in fields(cls.config_class)}
    _REGISTERED[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    return tuple(METHOD_MODULES)


def get_method(name: str | None) -> type[Method]:
    """The method registered as `name` (None: runs made before methods existed, i.e. contrastive);
    raises ValueError naming the known ones."""
    name = DEFAULT_METHOD if name is None else name
    if name not in METHOD_MODULES:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHOD_MODULES)}")
    if name not in _REGISTERED:
        importlib.import_module(METHOD_MODULES[name])
    return _REGISTERED[name]


def config_option(config_class: type, name: str, **kwargs) -> click.Option:
    """--NAME for config_class.NAME, its default read from the dataclass."""
    kwargs.setdefault("default", field_default(config_class, name))
    kwargs.setdefault("show_default", kwargs["default"] is not None and not kwargs.get("is_flag"))
    return click.Option(["--" + name.replace("_", "-")], **kwargs)


def field_default(config_class: type, name: str):
    """A config field's default, for the CLI option that sets it (the dataclass is the one source)."""
    for f in fields(config_class):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            return None
    raise KeyError(f"{config_class.__name__} has no field {name!r}")

