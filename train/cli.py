"""sslfer-train: pretraining on sslfer shards, one subcommand per method, and export of what a run learnt.

    sslfer-train --shards SHARDS --out RUN [--timeaug --hardneg --faceswap|--cutmix --maskfn] ...  (contrastive)
    sslfer-train contrastive --shards SHARDS --out RUN ...
    torchrun --nproc-per-node G -m train.cli --shards SHARDS --out RUN ...
    sslfer-train --out RUN --resume
    sslfer-train export RUN -o backbone.safetensors      (or -o backbone.pt: a torch file; the name sets the format)
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from sslfer_core import __version__
from sslfer_core.atomic_files import writable_dir_problem
from train.checkpoints import CheckpointWriteError
from train.distributed import cores_per_local_rank
from train.export import EXPORT_FORMATS, MAE_DFER_FORMAT, ExportError, export_run
from train.methods import Method, field_default, get_method, method_names
from train.precision import PRECISIONS
from train.run_config import DEFAULT_METHOD, LIMITS, TrainConfig, resume_command
from train.shard_set import ShardSetError
from train.trainer import RunFolderUnwritable, TrainingError, check_same_method, read_run_config, train
from train.weights_file import DEFAULT_FORMAT, format_for_path


class _ContrastiveByDefault(click.Group):
    """`sslfer-train --shards ...` means `sslfer-train contrastive --shards ...`."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [DEFAULT_METHOD, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ContrastiveByDefault, help=__doc__.split("\n\n")[0],
             epilog=f"Without a command, the options are those of `{DEFAULT_METHOD}` (see `sslfer-train "
                    f"{DEFAULT_METHOD} --help`); `train` is another name for it.")
@click.version_option(__version__, prog_name="sslfer-train")
def main():
    pass


def _default_workers() -> int:
    # Leave a core for the training process itself; per rank when torchrun starts several.
    return max(1, min(8, cores_per_local_rank() - 1))


def _limited(name: str) -> click.ParamType:
    """The option type of a shared numeric setting, from run_config.LIMITS (the config checks the same)."""
    low, high, low_open = LIMITS[name]
    if isinstance(low, float):
        return click.FloatRange(min=low, max=high, min_open=low_open)
    return click.IntRange(min=low, max=high, min_open=low_open)


def _shared_options(method: type[Method]) -> tuple[list[click.Option], list[click.Option]]:
    """Options of every method, defaults from its config class: (those listed first, the rest)."""
    config = method.config_class

    def option(name: str, *, help: str = "", **kwargs) -> click.Option:
        kwargs.setdefault("default", field_default(config, name))
        kwargs.setdefault("show_default", kwargs["default"] is not None and not kwargs.get("is_flag"))
        return click.Option(["--" + name.replace("_", "-")], help=method.option_help.get(name, help), **kwargs)

    first = [
        option("shards", type=click.Path(file_okay=False, path_type=Path), default=None,
               help="Shard folder with manifest.json (made by sslfer-prep). Required unless --resume."),
        option("out", required=True, type=click.Path(file_okay=False, path_type=Path), default=None,
               help="Run folder: config.json, metrics.jsonl, checkpoints/."),
        click.Option(["--resume"], is_flag=True, help="Continue the run in --out from its newest checkpoint."),
    ]
    rest = [
        option("batch_size", type=_limited("batch_size"), help="Samples per optimiser step over all ranks."),
        option("epochs", type=_limited("epochs"),
               help=f"Passes over the data [default: {config.default_epochs} unless --steps]."),
        option("steps", type=_limited("steps"), help="Total optimiser steps instead of --epochs."),
        option("warmup_steps", type=_limited("warmup_steps"),
               help="Learning-rate warm-up steps, at most the run's steps [default: the method's]."),
        option("lr", type=_limited("lr")),
        option("weight_decay", type=_limited("weight_decay")),
        option("workers", type=_limited("workers"), default=_default_workers, show_default="cores - 1, at most 8",
               help="DataLoader worker processes per rank."),
        option("seed", type=_limited("seed")),
        option("ckpt_every", type=_limited("ckpt_every"), help="Checkpoint every N steps (and at every epoch end)."),
        option("keep_checkpoints", type=_limited("keep_checkpoints")),
        option("log_every", type=_limited("log_every")),
        option("device", type=click.Choice(["auto", "cpu", "cuda"])),
        option("precision", type=click.Choice(PRECISIONS),
               help="bf16 autocast for the network (auto: the method's rule)."),
        click.Option(["--compile", "compile_"], is_flag=True, help="torch.compile the model."),
        option("verify", is_flag=True, help="Hash every shard against the manifest before training (slow)."),
        click.Option(["--tensorboard/--no-tensorboard"], default=field_default(config, "tensorboard"),
                     help="TensorBoard event files beside metrics.jsonl [default: on when tensorboard is installed]."),
        option("init", type=click.Path(dir_okay=False, exists=True), default=None,
               help="Start from published weights: a MAE-DFER / MAE-DFER-CA checkpoint (mae), an SSL-FER "
                    "checkpoint (contrastive); recorded with its sha256 in config.json."),
    ]
    return first, rest


def _method_command(method: type[Method], name: str, hidden: bool = False) -> click.Command:
    """The subcommand training with `method`: shared options plus the method's (a method option named like
    a shared one replaces it)."""
    first, rest = _shared_options(method)
    own = method.cli_options()
    replaced = {o.name for o in own}
    params = first + own + [o for o in rest if o.name not in replaced]

    def callback(resume: bool, compile_: bool, **params):
        _train_command(method, click.get_current_context(), resume, compile_, params)

    return click.Command(name, callback=callback, params=params, help=method.help, hidden=hidden)


def _train_command(method: type[Method], ctx: click.Context, resume: bool, compile_: bool, params: dict) -> None:
    params["compile"] = compile_
    sources = {name: ctx.get_parameter_source("compile_" if name == "compile" else name) for name in params}
    given = {name for name, source in sources.items() if source == click.core.ParameterSource.COMMANDLINE}
    cfg = _resumed_config(method, params, given) if resume else _fresh_config(method, params)
    try:
        summary = train(cfg, resume=resume, echo=lambda text: click.echo(text, err=True))
    except RunFolderUnwritable as error:
        raise click.UsageError(str(error)) from None
    except (ShardSetError, TrainingError, CheckpointWriteError, *method.user_errors) as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; continue with: {resume_command(method.name, cfg.out)}", err=True)
        raise SystemExit(130) from None
    if summary.checkpoint is not None:
        click.echo(f"newest checkpoint: {summary.checkpoint}", err=True)


def _check_writable(folder: Path) -> None:
    """An output folder nothing can be written to is a usage error, as in sslfer-prep and sslfer-eval."""
    problem = writable_dir_problem(folder)
    if problem:
        raise click.UsageError(problem)


def _fresh_config(method: type[Method], params: dict) -> TrainConfig:
    if params["shards"] is None:
        raise click.UsageError("--shards is required (unless --resume)")
    if params["steps"] is None and params["epochs"] is None:
        params["epochs"] = method.config_class.default_epochs
    try:
        return method.config_class(**{k: str(v) if isinstance(v, Path) else v for k, v in params.items()})
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def _resumed_config(method: type[Method], params: dict, given: set[str]) -> TrainConfig:
    try:
        recorded = read_run_config(params["out"])
        check_same_method(recorded, method.name, params["out"])
        saved = method.config_class.from_json(recorded)
    except (TrainingError, ValueError, TypeError) as error:
        raise click.UsageError(f"cannot resume {params['out']}: {error}") from None
    conflicts = []
    for name in sorted(given - saved.runtime_keys):
        value = params[name]
        if value != getattr(saved, name):
            conflicts.append(f"--{name.replace('_', '-')} (run: {getattr(saved, name)}, now: {value})")
    if conflicts:
        raise click.UsageError(f"{params['out']} was started with other settings: {'; '.join(conflicts)}; "
                               "a resumed run keeps its settings")
    runtime = {k: str(params[k]) if isinstance(params[k], Path) else params[k]
               for k in given & saved.runtime_keys if k != "out"}
    return dataclasses.replace(saved, **runtime, out=str(params["out"]))


for _name in method_names():
    main.add_command(_method_command(get_method(_name), _name))
main.add_command(_method_command(get_method(DEFAULT_METHOD), "train", hidden=True))


@main.command("export")
@click.argument("run", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the export (contrastive: the backbone state_dict, torchvision ResNet keys, no fc).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="A specific checkpoint instead of the run's newest.")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default=None,
              help="safetensors: tensors plus metadata in the header, no pickle; torch: a torch.save state_dict "
                   "(metadata in OUTPUT.json beside it); mae-dfer (video MAE runs): the encoder in MAE-DFER's "
                   "checkpoint layout, for the reference's fine-tuning script. [default: from OUTPUT's "
                   f"extension: .safetensors -> safetensors, .pt/.pth -> torch; {DEFAULT_FORMAT} for other names]")
def export_command(run: Path, output: Path, checkpoint: Path | None, fmt: str | None):
    """Write what RUN's newest checkpoint learnt, as its method exports it, in the format OUTPUT's name
    says (.safetensors, .pt, .pth) or --format gives."""
    try:
        fmt = fmt if fmt == MAE_DFER_FORMAT else format_for_path(output, fmt)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    _check_writable(output.parent)
    try:
        used, description, step = export_run(run, output, checkpoint, fmt,
                                              warn=lambda text: click.echo(text, err=True))
    except ExportError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{output}: {description} from {used.name} (step {step}), {fmt} format", err=True)


if __name__ == "__main__":
    main()
