"""sslfer-eval: downstream evaluation of pretrained backbones.

  sslfer-eval linear    frozen backbone, cached features, linear head selected on validation
  sslfer-eval finetune  whole network with an MLP head (companion protocol by default)
  sslfer-eval identity  1-nearest-neighbour identity accuracy on an LFW-style folder
  sslfer-eval saliency  Grad-CAM grid (image | overlay) as one PNG
  sslfer-eval compare   results.json files side by side as a Markdown table
  sslfer-eval dfer      dynamic FER on video datasets (UAR / WAR): linear, finetune, compare
"""
from __future__ import annotations

import math
from pathlib import Path

import click
import cv2
import numpy as np
import torch

from sslfer_core.atomic_files import write_bytes_atomic
from sslfer_core.models import ARCHS
from train.evaluation import session
from train.evaluation.backbones import load_backbone, load_backbones
from train.evaluation.datasets import FORMATS, load_dataset
from train.evaluation.figures import plot_compared, plot_options, write_confusion_figures
from train.evaluation.finetune import SCHEDULES, FinetuneConfig, make_finetune_fit
from train.evaluation.identity_probe import identity_run
from train.evaluation.images import DEFAULT_IMAGE_SIZE, IMAGE_SIZE_RANGE, Preprocessing, RecordImages, preprocessing_for
from train.evaluation.linear_probe import LOSSES, SELECT_METRICS, LinearProbeConfig, make_linear_fit
from train.evaluation.option_group import option_group
from train.evaluation.protocol import TASK_CHOICES, backbone_entry, results_payload, run_backbone, tasks_for
from train.evaluation.results import (COLUMNS, code_version, compare_markdown, load_results, now_utc, output_write,
                                      render_table,
                                      summarise, table_rows, write_results)
from train.evaluation.saliency import LinearHead, class_target, display_rgb, feature_norm_target, grad_cam, saliency_grid
from train.precision import PRECISIONS, uses_bf16
from train.tensorboard_log import tensorboard_available, write_curves
from train.weights_file import WeightsFileError


def _floats(text: str, name: str = "grid") -> tuple[float, ...]:
    """A non-empty grid of finite, non-negative numbers (weight decays, ridge alphas)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}", param_hint=name) from None
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise click.BadParameter(f"expected one or more finite numbers >= 0, got {text!r}", param_hint=name)
    return values


def _finite_positive(ctx, param, value: float) -> float:
    if not (math.isfinite(value) and value > 0 if param.name == "lr" else math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"must be a finite number {'> 0' if param.name == 'lr' else '>= 0'}, got {value}")
    return value


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}")


backbone_options = option_group(
    click.option("--backbone", "backbones", multiple=True, required=True,
                 help="Exported backbone .pt, training run folder, 'random' ('random:N' for init seed N) or 'imagenet'. "
                      "Repeat for more rows."),
    click.option("--arch", type=click.Choice(ARCHS), default=ARCHS[0], show_default=True,
                 help="Architecture for 'random' and 'imagenet' (files and runs carry their own)."),
)
input_options = option_group(
    click.option("--data", required=True, type=click.Path(exists=True), help="Dataset folder or CSV file."),
    click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True),
    click.option("--classes", default=None, help="Comma-separated class names (order = class index); others are unknown."),
    click.option("--image-root", type=click.Path(file_okay=False), default=None,
                 help="Folder that CSV image paths are relative to (default: the CSV's folder)."),
    click.option("--image-size", type=click.IntRange(*IMAGE_SIZE_RANGE), default=None,
                 help=f"Input side in pixels [default: the backbone's recorded training size, else {DEFAULT_IMAGE_SIZE}]."),
    click.option("--align", is_flag=True, help="Align faces with dlib landmarks first, cropped as the backbone's "
                                               "training did (failures stay unaligned)."),
    click.option("--face-crop", type=click.FloatRange(0, 1, min_open=True), default=None,
                 help="With --align: central fraction of the aligned face the network sees [default: the backbone's "
                      "training view (its --face-crop x crop/resize), else 1]."),
    click.option("--dlib-models", type=click.Path(file_okay=False), default=None, help="Folder with dlib model files."),
)
protocol_options = option_group(
    click.option("--seeds", type=click.IntRange(1), default=1, show_default=True, help="Runs with seeds 0..N-1; mean ± std."),
    click.option("--folds", type=click.IntRange(2), default=None, help="K-fold protocol over all images (e.g. CK+, JAFFE)."),
    click.option("--group", type=click.Choice(["subject", "none"]), default="subject", show_default=True,
                 help="With --folds: keep each subject in one fold (needs a 'subject' column)."),
    click.option("--val-fraction", type=click.FloatRange(0.01, 0.5), default=0.1, show_default=True,
                 help="Validation carved from train (stratified) when the dataset has none."),
    click.option("--test-fraction", type=click.FloatRange(0.01, 0.5), default=0.2, show_default=True,
                 help="Test carved from all images when the dataset has no splits and no --folds."),
    click.option("--max-per-split", type=click.IntRange(1), default=None,
                 help="Use at most ~N images per split (stratified, fixed seed) for quick runs."),
    click.option("--task", type=click.Choice(TASK_CHOICES), default="auto", show_default=True,
                 help="auto = every task the labels allow (classes and/or valence-arousal)."),
)
precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
    help="Feature extraction under bf16 autocast: auto = on CUDA only; bf16 pays on CPUs with AVX512-BF16/AMX.")
run_options = option_group(
    click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
                 help="Write results.json (and predictions) here."),
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Feature cache (default ~/.cache/sslfer/features)."),
    click.option("--no-cache", is_flag=True, help="Neither read nor write cached features."),
    click.option("--workers", type=click.IntRange(0), default=None, help="Image-loading processes (default by cores)."),
    click.option("--threads", type=click.IntRange(1), default=None, help="Torch CPU threads (default: available cores)."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
)


def _finish(payload: dict, dataset, out_dir: str | None, table_keys=tuple(c[0] for c in COLUMNS)) -> None:
    session.report_problems(dataset)
    click.echo(render_table(table_rows(payload), table_keys, markdown=False))
    if out_dir:
        path = write_results(Path(out_dir), payload)
        click.echo(f"results: {path}", err=True)
        for picture in write_confusion_figures(Path(out_dir), payload):
            click.echo(f"confusion matrix: {picture}", err=True)


def _setup(params: dict) -> tuple[session.DataSetup, torch.device, int]:
    session.check_output(params["out_dir"])
    device = session.configure_torch(params["threads"], params["device"])
    setup = session.prepare_data(params["data"], params["fmt"], params["classes"], params["image_root"],
                                 params["max_per_split"], params["seeds"], params["folds"], params["group"],
                                 params["val_fraction"], params["test_fraction"])
    if params["align"]:
        from train.evaluation.alignment import FaceAligner

        FaceAligner(params["image_size"] or DEFAULT_IMAGE_SIZE, params["dlib_models"])  # fail now, not in a worker
    workers = session.default_workers() if params["workers"] is None else params["workers"]
    return setup, device, workers


@click.group(help=__doc__.split("\n\n")[0])
def main():
    pass


@main.command(help="Linear probe: frozen backbone features (cached), linear head chosen on validation, test once.")
@backbone_options
@input_options
@protocol_options
@run_options
@precision_option
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True, help="Feature extraction batch.")
@click.option("--weight-decays", default="0,1e-4,1e-3,1e-2,1e-1", show_default=True, help="Grid searched on validation.")
@click.option("--max-iterations", type=click.IntRange(1), default=LinearProbeConfig.max_iterations, show_default=True,
              help="L-BFGS iterations per weight decay (FER2013 converged by ~260).")
@click.option("--loss", type=click.Choice(LOSSES), default=LinearProbeConfig.loss, show_default=True)
@click.option("--select-metric", type=click.Choice(SELECT_METRICS),
              default=LinearProbeConfig.select_metric, show_default=True)
@click.option("--ridge-alphas", default="1e-3,1e-2,1e-1,1,10,100", show_default=True, help="Valence/arousal ridge grid.")
def linear(**params):
    setup, device, workers = _setup(params)
    dataset = setup.dataset
    tasks = tasks_for(dataset, params["task"])
    config = LinearProbeConfig(weight_decays=_floats(params["weight_decays"], "--weight-decays"),
                               max_iterations=params["max_iterations"], loss=params["loss"],
                               select_metric=params["select_metric"],
                               ridge_alphas=_floats(params["ridge_alphas"], "--ridge-alphas"))
    cache_dir = session.resolve_cache_dir(params["cache_dir"], params["no_cache"])
    bf16 = uses_bf16(params["precision"], device)
    reported: set = set()
    entries = []
    for backbone in load_backbones(list(params["backbones"]), params["arch"]):
        applied_pre, applied = preprocessing_for(backbone.trained_preprocessing, params["image_size"],
                                                   params["align"], params["face_crop"])
        table, bad, extraction = session.backbone_features(
            backbone, dataset, applied_pre, cache_dir=cache_dir, batch_size=params["batch_size"], workers=workers,
            device=device, dlib_model_dir=params["dlib_models"], reported=reported, bf16=bf16)
        plans = session.usable_plans(setup.plans, bad, dataset.path, dataset)
        heads_dir = Path(params["out_dir"]) / "heads" / backbone.name.replace("/", "_") if params["out_dir"] else None
        fit = make_linear_fit(dataset, table.features, tasks, config, heads_dir, backbone.sha256, applied_pre.image_size)
        runs = run_backbone(backbone, dataset, plans, tasks, fit, params["out_dir"])
        entries.append(backbone_entry(backbone, runs, features=extraction, preprocessing=applied))
    # what each backbone got is in its entry ("preprocessing"); params hold the options as given
    config_record = {**params, "tasks": tasks, "notes": setup.notes,
                     "probe": vars(config)}
    _finish(results_payload("linear", config_record, dataset, setup.plans, entries), dataset, params["out_dir"])


@main.command(help="Fine-tune the whole network with an MLP head; epoch chosen on validation, test once.")
@backbone_options
@input_options
@protocol_options
@run_options
@click.option("--epochs", type=click.IntRange(1), default=FinetuneConfig.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=FinetuneConfig.batch_size, show_default=True,
              help="Training images per step (at least 2: BatchNorm needs two to normalise).")
@click.option("--lr", type=float, default=FinetuneConfig.learning_rate, show_default=True, callback=_finite_positive,
              help="Adam learning rate.")
@click.option("--weight-decay", type=float, default=FinetuneConfig.weight_decay, show_default=True,
              callback=_finite_positive)
@click.option("--head-dims", default="1024,512", show_default=True, help="Hidden widths of the MLP head ('' = linear).")
@click.option("--dropout", type=click.FloatRange(0.0, 0.95), default=FinetuneConfig.dropout, show_default=True)
@click.option("--loss", type=click.Choice(LOSSES), default=FinetuneConfig.loss, show_default=True)
@click.option("--schedule", type=click.Choice(SCHEDULES), default=FinetuneConfig.schedule, show_default=True)
@click.option("--no-augment", is_flag=True, help="No random crop / flip during training.")
@click.option("--select-metric", type=click.Choice(SELECT_METRICS),
              default=FinetuneConfig.select_metric, show_default=True)
@click.option("--tensorboard/--no-tensorboard", default=tensorboard_available,
              help="With --out: the training curves as TensorBoard event files there [default: on when installed].")
def finetune(**params):
    setup, device, workers = _setup(params)
    dataset = setup.dataset
    tasks = tasks_for(dataset, params["task"])
    config = FinetuneConfig(epochs=params["epochs"], batch_size=params["batch_size"], learning_rate=params["lr"],
                            weight_decay=params["weight_decay"], head_dims=_ints(params["head_dims"]),
                            dropout=params["dropout"], loss=params["loss"], schedule=params["schedule"],
                            augment=not params["no_augment"], workers=workers, select_metric=params["select_metric"])
    reported: set = set()
    entries = []
    for backbone in load_backbones(list(params["backbones"]), params["arch"]):
        applied_pre, applied = preprocessing_for(backbone.trained_preprocessing, params["image_size"],
                                                   params["align"], params["face_crop"])
        fit, finetuner = make_finetune_fit(backbone, dataset, tasks, applied_pre, config, device, params["dlib_models"])
        runs = run_backbone(backbone, dataset, setup.plans, tasks, fit, params["out_dir"])
        session.record_unreadable(dataset, sorted(finetuner.undecodable), reported)
        entries.append(backbone_entry(backbone, runs, undecodable=len(finetuner.undecodable), preprocessing=applied))
    if params["out_dir"] and params["tensorboard"]:
        write_curves(Path(params["out_dir"]), {e["backbone"]["name"]: e["runs"] for e in entries})
    # what each backbone got is in its entry ("preprocessing"); params hold the options as given
    config_record = {**params, "tasks": tasks, "notes": setup.notes,
                     "finetune": vars(config), "device_used": str(device)}
    _finish(results_payload("finetune", config_record, dataset, setup.plans, entries), dataset, params["out_dir"])


@main.command(help="Identity 1-NN accuracy and macro F1 on a folder with one sub-folder per person.")
@backbone_options
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--image-size", type=click.IntRange(*IMAGE_SIZE_RANGE), default=None,
              help=f"[default: the backbone's recorded training size, else {DEFAULT_IMAGE_SIZE}]")
@click.option("--align", is_flag=True, help="Align faces first, cropped as the backbone's training did.")
@click.option("--face-crop", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="With --align: central fraction of the aligned face the network sees [default: the backbone's].")
@click.option("--dlib-models", type=click.Path(file_okay=False), default=None)
@click.option("--gallery-fraction", type=click.FloatRange(0.01, 0.99), default=0.5, show_default=True)
@click.option("--seeds", type=click.IntRange(1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@run_options
@precision_option
def identity(**params):
    session.check_output(params["out_dir"])
    device = session.configure_torch(params["threads"], params["device"])
    dataset = load_dataset(params["data"], "folder")
    if dataset.has_splits:
        raise click.ClickException(f"{params['data']}: expected one sub-folder per person, found split folders")
    workers = session.default_workers() if params["workers"] is None else params["workers"]
    cache_dir = session.resolve_cache_dir(params["cache_dir"], params["no_cache"])
    bf16 = uses_bf16(params["precision"], device)
    reported: set = set()
    entries = []
    for backbone in load_backbones(list(params["backbones"]), params["arch"]):
        applied_pre, applied = preprocessing_for(backbone.trained_preprocessing, params["image_size"],
                                                 params["align"], params["face_crop"])
        table, bad, extraction = session.backbone_features(
            backbone, dataset, applied_pre, cache_dir=cache_dir, batch_size=params["batch_size"], workers=workers,
            device=device, dlib_model_dir=params["dlib_models"], reported=reported, bf16=bf16)
        good = np.flatnonzero(table.ok)
        runs = []
        for seed in range(params["seeds"]):
            run = identity_run(table.features[good], dataset.labels()[good], seed, params["gallery_fraction"])
            if run["test"] is None:
                raise click.ClickException(f"{params['data']}: no identity has two or more usable images")
            runs.append({"name": f"seed{seed}", "seed": seed, **run})
        entries.append({"backbone": backbone.describe(), "runs": runs, "features": extraction,
                        "preprocessing": applied, "summary": summarise([r["test"] for r in runs])})
    payload = {"command": "identity", "created": now_utc(), "code_version": code_version(),
               "config": params,
               "dataset": {"path": dataset.path, "format": "folder", "identities": len(dataset.class_names),
                           "images": len(dataset.records), "problems": dataset.problems.as_dict()},
               "backbones": entries}
    _finish(payload, dataset, params["out_dir"], ("accuracy", "macro_f1"))


@main.command(help="Grad-CAM (layer4) of one backbone for N images, written as a PNG grid of (image | overlay).")
@click.option("--backbone", required=True, help="Exported backbone .pt, run folder, 'random' or 'imagenet'.")
@click.option("--arch", type=click.Choice(["resnet18", "resnet50"]), default="resnet18", show_default=True)
@click.option("--data", required=True, type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--split", type=click.Choice(["train", "val", "test", "any"]), default="test", show_default=True)
@click.option("--count", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--image-size", type=click.IntRange(*IMAGE_SIZE_RANGE), default=112, show_default=True)
@click.option("--head", "head_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Linear head .pt written by `linear --out` (heads/...); target = a class logit.")
@click.option("--target-class", default=None, help="Class name for the head target (default: predicted class).")
@click.option("--columns", type=click.IntRange(1), default=4, show_default=True, help="(image | overlay) pairs per row.")
@click.option("--tile", type=click.IntRange(32, 1024), default=160, show_default=True, help="Tile side in the PNG.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
def saliency(backbone, arch, data, fmt, split, count, image_size, head_path, target_class, columns, tile, seed, out_path):
    session.check_output(out_path, is_file=True)
    session.configure_torch(None, "cpu")
    loaded = load_backbone(backbone, arch)
    dataset = load_dataset(data, fmt)
    splits = dataset.split_of()
    pool = np.arange(len(dataset.records)) if split == "any" else np.flatnonzero(splits == split)
    if len(pool) == 0:
        raise click.ClickException(f"split '{split}' is empty in {data}")
    chosen = _spread_over_classes(dataset.labels()[pool], pool, count, seed)
    images = RecordImages([dataset.records[i] for i in chosen], Preprocessing(image_size))
    batch = [images[i] for i in range(len(chosen))]
    usable = [item for item in batch if item[1]]
    if not usable:
        raise click.ClickException("none of the chosen images could be decoded")
    tensors = torch.stack([item[0] for item in usable])
    names = dataset.class_names
    captions = [names[dataset.labels()[chosen[item[3]]]] if names else "" for item in usable]
    if head_path:
        try:
            head = LinearHead.load(head_path)
        except WeightsFileError as error:
            raise click.ClickException(str(error)) from None
        if head.feature_dim != loaded.feature_dim:
            raise click.ClickException(f"--head {head_path} takes {head.feature_dim}-d features, but {loaded.name} "
                                       f"({loaded.arch}) gives {loaded.feature_dim}-d; give the head that "
                                       "`sslfer-eval linear` wrote for this backbone")
        with torch.no_grad():
            predicted = head.logits(loaded.model(tensors)).argmax(dim=1)
        if target_class is not None:
            if target_class not in head.class_names:
                raise click.ClickException(f"--target-class {target_class!r} not in {', '.join(head.class_names)}")
            predicted = torch.full_like(predicted, head.class_names.index(target_class))
        target = class_target(head, predicted)
        captions = [f"{c} -> {head.class_names[p]}" for c, p in zip(captions, predicted.tolist())]
    else:
        target = feature_norm_target
    cams = grad_cam(loaded.model, tensors, target)
    grid = saliency_grid(display_rgb(tensors), cams, tile=tile, columns=columns, captions=captions)
    encoded, png = cv2.imencode(".png", grid)
    if not encoded:
        raise click.ClickException("PNG encoding failed")
    with output_write(out_path):
        write_bytes_atomic(out_path, png.tobytes())
    click.echo(f"saliency grid of {len(usable)} images ({loaded.name}): {out_path}", err=True)


def _spread_over_classes(labels: np.ndarray, pool: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` records drawn round-robin over classes (seeded), so a grid shows several expressions."""
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(pool[labels == c])) for c in np.unique(labels)]
    chosen = []
    while len(chosen) < min(count, len(pool)):
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop())
    return np.array(chosen, dtype=np.int64)


@main.command(help="Print results.json files side by side as a Markdown table (rows = backbone/method).")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Also write the table here.")
@plot_options(tuple(c[0] for c in COLUMNS), "macro_f1")
def compare(files, out_path, plot_path, metric):
    session.check_output(out_path, is_file=True)
    session.check_output(plot_path, "--plot", is_file=True)
    table = compare_markdown([Path(f) for f in files])
    click.echo(table)
    if out_path:
        with output_write(out_path):
            write_bytes_atomic(out_path, (table + "\n").encode())
    rows = [row for f in files for row in table_rows(load_results(Path(f)), label_with_method=True)]
    plot_compared(plot_path, rows, metric, next(c[2] for c in COLUMNS if c[0] == metric))


from train.evaluation.dfer_cli import dfer  # noqa: E402  (video commands live in their own module)

main.add_command(dfer)

if __name__ == "__main__":
    main()
