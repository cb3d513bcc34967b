"""sslfer-train: contrastive pretraining on sslfer shards, and export of the trained backbone.

    sslfer-train --shards SHARDS --out RUN [--timeaug --hardneg --faceswap|--cutmix --maskfn] ...
    torchrun --nproc-per-node G -m train.cli --shards SHARDS --out RUN ...
    sslfer-train --out RUN --resume
    sslfer-train export RUN -o backbone.pt
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from sslfer_core import __version__
from train.checkpoints import CheckpointWriteError
from train.distributed import cores_per_local_rank
from train.export import ExportError, export_backbone
from train.precision import PRECISIONS
from train.run_config import ARCHS, MASKFN_MODES, RUNTIME_KEYS, RunConfig
from train.shard_set import ShardSetError
from train.trainer import TrainingError, read_run_config, train

DEFAULT_EPOCHS = 100


class _TrainByDefault(click.Group):
    """`sslfer-train --shards ...` means `sslfer-train train --shards ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_TrainByDefault, help=__doc__.split("\n\n")[0],
             epilog="Without a command, the options are those of `train` (see `sslfer-train train --help`).")
@click.version_option(__version__, prog_name="sslfer-train")
def main():
    pass


def _default_workers() -> int:
    # Leave a core for the training process itself; per rank when torchrun starts several.
    return max(1, min(8, cores_per_local_rank() - 1))


@main.command("train")
@click.option("--shards", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Shard folder with manifest.json (made by sslfer-prep). Required unless --resume.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: config.json, metrics.jsonl, checkpoints/.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its newest checkpoint.")
@click.option("--arch", type=click.Choice(ARCHS), default="resnet50", show_default=True)
@click.option("--timeaug", is_flag=True, help="Positive = a frame 0.5-1.5 s away (else a second augmentation).")
@click.option("--hardneg", is_flag=True, help="Add a frame >= 3 s away (and its own positive) as extra negative rows.")
@click.option("--faceswap", is_flag=True, help="Positive replaced by its stored face swap with probability --swap-p.")
@click.option("--cutmix", is_flag=True, help="Positive's inner-face box pasted on another identity's frame (ablation).")
@click.option("--maskfn", is_flag=True, help="Treat the most descriptor-similar samples as false negatives.")
@click.option("--maskfn-mode", type=click.Choice(MASKFN_MODES), default="positive", show_default=True)
@click.option("--maskfn-k", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--maskfn-lambda", type=click.FloatRange(min=0, min_open=True), default=0.8, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.07, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=256, show_default=True,
              help="Anchors per step over all ranks; each adds 2 rows (4 with --hardneg).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help=f"Passes over every frame as anchor [default: {DEFAULT_EPOCHS} unless --steps].")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Total optimiser steps instead of --epochs.")
@click.option("--warmup-steps", type=click.IntRange(min=0), default=None,
              help="Linear warm-up steps [default: 5% of the steps, at most 1000].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=3e-4, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=1e-4, show_default=True)
@click.option("--resize", type=click.IntRange(min=8), default=128, show_default=True, help="Faces are resized to this first.")
@click.option("--crop", type=click.IntRange(min=8), default=112, show_default=True, help="Random crop side (network input).")
@click.option("--face-crop", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Central fraction of the stored aligned face kept before --resize (e.g. 0.72 for tight crops "
                   "like FER2013's).")
@click.option("--crop-area", type=(float, float), default=None, metavar="LO HI",
              help="Random-resized crop: a box of LO..HI of the face's area (aspect 3/4..4/3) resized to --crop "
                   "[default: a fixed --crop window of the --resize face].")
@click.option("--swap-p", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Probability that a positive is its FaceSwap (or CutMix) version.")
@click.option("--pool-videos", type=click.IntRange(min=1), default=64, show_default=True,
              help="Videos each loader worker keeps open to mix into batches.")
@click.option("--workers", type=click.IntRange(min=0), default=_default_workers, show_default="cores - 1, at most 8",
              help="DataLoader worker processes per rank.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--ckpt-every", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Checkpoint every N steps (and at every epoch end).")
@click.option("--keep-checkpoints", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="bf16 autocast for the network: auto = on CUDA only; bf16 on CPU pays off where the CPU has "
                   "AVX512-BF16 or AMX (1.3-1.5x for ResNet-18 at 48-64 px here).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--sync-bn", is_flag=True, help="Synchronise BatchNorm statistics across ranks (CUDA).")
@click.option("--verify", is_flag=True, help="Hash every shard against the manifest before training (slow).")
@click.pass_context
def train_command(ctx: click.Context, resume: bool, compile_: bool, **params):
    """Contrastive pretraining (SimCLR, TimeAug, HardNeg, FaceSwap, CutMix, MaskFN)."""
    params["compile"] = compile_
    sources = {name: ctx.get_parameter_source("compile_" if name == "compile" else name) for name in params}
    given = {name for name, source in sources.items() if source == click.core.ParameterSource.COMMANDLINE}
    cfg = _resumed_config(params, given) if resume else _fresh_config(params)
    try:
        summary = train(cfg, resume=resume, echo=lambda text: click.echo(text, err=True))
    except (ShardSetError, TrainingError, CheckpointWriteError) as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; continue with: sslfer-train --out {cfg.out} --resume", err=True)
        raise SystemExit(130) from None
    if summary.checkpoint is not None:
        click.echo(f"newest checkpoint: {summary.checkpoint}", err=True)


def _fresh_config(params: dict) -> RunConfig:
    if params["shards"] is None:
        raise click.UsageError("--shards is required (unless --resume)")
    if params["steps"] is None and params["epochs"] is None:
        params["epochs"] = DEFAULT_EPOCHS
    try:
        return RunConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in params.items()})
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def _resumed_config(params: dict, given: set[str]) -> RunConfig:
    try:
        saved = RunConfig.from_json(read_run_config(params["out"]))
    except (TrainingError, ValueError, TypeError) as error:
        raise click.UsageError(f"cannot resume {params['out']}: {error}") from None
    conflicts = []
    for name in sorted(given - RUNTIME_KEYS):
        value = params[name]
        if value != getattr(saved, name):
            conflicts.append(f"--{name.replace('_', '-')} (run: {getattr(saved, name)}, now: {value})")
    if conflicts:
        raise click.UsageError(f"{params['out']} was started with other settings: {'; '.join(conflicts)}; "
                               "a resumed run keeps its settings")
    runtime = {k: str(params[k]) if isinstance(params[k], Path) else params[k] for k in given & RUNTIME_KEYS if k != "out"}
    return dataclasses.replace(saved, **runtime, out=str(params["out"]))


@main.command("export")
@click.argument("run", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the backbone state_dict (torchvision ResNet keys, no fc).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A specific checkpoint instead of the run's newest.")
def export_command(run: Path, output: Path, checkpoint: Path | None):
    """Write the backbone of RUN's newest checkpoint as a plain torchvision state_dict."""
    try:
        used, arch, step = export_backbone(run, output, checkpoint)
    except ExportError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{output}: {arch} backbone from {used.name} (step {step})", err=True)


if __name__ == "__main__":
    main()
