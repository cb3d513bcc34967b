"""sslfer-eval dfer: dynamic FER on video datasets, scored by UAR / WAR.

  sslfer-eval dfer linear    frozen clip features (mean of the 2 evaluation clips per video), linear head on val
  sslfer-eval dfer finetune  whole network (+ optional CA motion branch), epoch chosen on validation UAR
  sslfer-eval dfer test      a published fine-tuned MAE-DFER(-CA) model scored as it is on the test split
  sslfer-eval dfer compare   video results.json files as the reference's table (UAR, WAR)

Backbones: ResNet specs as for the image commands (file, run folder, random[:N], imagenet), used per frame and
averaged over the clip's frames; `mae:PRESET` = a random LGI-Former video encoder; an `sslfer-train export` file
(or run folder) of a video MAE run = its pretrained LGI-Former encoder; a published MAE-DFER(-CA) checkpoint = its
LGI-Former encoder (train/reference_weights.py).
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from sslfer_core import metrics
from sslfer_core.atomic_files import write_bytes_atomic
from sslfer_core.ca_branch import FUSIONS, MOTION_INPUTS
from sslfer_core.file_hash import file_sha256
from train.evaluation import session
from train.evaluation.datasets import split_counts
from train.evaluation.figures import plot_compared, plot_options, write_confusion_figures
from train.evaluation.dfer_finetune import DferFinetuneConfig, DferFinetuner
from train.evaluation.images import IMAGE_SIZE_RANGE
from train.evaluation.linear_probe import LOSSES, SELECT_METRICS, LinearProbeConfig, fit_classifier
from train.evaluation.option_group import option_group
from train.evaluation.protocol import Predictions, write_predictions
from train.evaluation.results import (_cell, code_version, load_results, now_utc, output_write, summarise,
                                      write_results)
from train.evaluation.splits import SPLITS
from train.evaluation.video_backbones import load_video_backbone, video_features
from train.evaluation.video_clips import ClipSampling, VideoClips
from train.evaluation.video_datasets import UNDECODABLE, VIDEO_FORMATS, VideoDataset, load_video_dataset
from train.evaluation.video_splits import plan_video
from train.precision import PRECISIONS, uses_bf16

# (key, column title) of the video table, in the reference's order (UAR first, then WAR)
DFER_COLUMNS = (("uar", "UAR (%)"), ("war", "WAR (%)"), ("macro_f1", "macro F1 (%)"), ("weighted_f1", "weighted F1 (%)"))


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}")


def _path_prefix(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise click.BadParameter("expected OLD=NEW", param_hint="--path-prefix")
    return old, new


data_options = option_group(
    click.option("--backbone", "backbones", multiple=True, required=True,
                 help="ResNet backbone .pt, run folder, 'random[:N]' or 'imagenet' (per frame, averaged over the "
                      "clip); an `sslfer-train export` file or run folder of a video MAE run (its LGI-Former "
                      "encoder); 'mae:PRESET' = a random LGI-Former (tiny, full). Repeat for more rows."),
    click.option("--arch", type=click.Choice(["resnet18", "resnet50"]), default="resnet18", show_default=True),
    click.option("--data", required=True, type=click.Path(exists=True),
                 help="Annotation file, a folder with train.csv/test.csv (/val.csv), or one with split01..split05."),
    click.option("--format", "fmt", type=click.Choice(VIDEO_FORMATS), default="auto", show_default=True,
                 help="dfew / ferv39k / mafw (reference files, fixed label sets) or video-csv (path,label[,subject])."),
    click.option("--classes", default=None, help="video-csv only: class names in order (others are unknown labels)."),
    click.option("--video-root", type=click.Path(file_okay=False), default=None,
                 help="Folder that relative paths are under (default: the annotation file's folder)."),
    click.option("--path-prefix", default=None, help="OLD=NEW: rewrite absolute paths starting with OLD."),
    click.option("--frames", type=click.IntRange(1), default=16, show_default=True, help="Frames per clip."),
    click.option("--stride", type=click.IntRange(1), default=4, show_default=True,
                 help="Frame step inside a clip (the reference: 4 for DFEW/MAFW, 1 for FERV39k)."),
    click.option("--test-clips", type=click.IntRange(1), default=2, show_default=True,
                 help="Evaluation clips per video, from its start to its end; softmax / features averaged."),
    click.option("--min-frames", type=click.IntRange(1), default=None,
                 help="Videos with fewer frames are bad rows (default: --frames; 1 keeps short ones, frames repeated)."),
    click.option("--image-size", type=click.IntRange(*IMAGE_SIZE_RANGE), default=112, show_default=True,
                 help="Frames are resized to this square as they are."),
    click.option("--align", is_flag=True, help="Detect and align the face in every frame (whole-scene videos)."),
    click.option("--dlib-models", type=click.Path(file_okay=False), default=None),
    click.option("--fold", "folds", multiple=True, type=int, help="Only these reference folds (default: all)."),
    click.option("--seeds", type=click.IntRange(1), default=1, show_default=True, help="Seeds 0..N-1; mean ± std."),
    click.option("--val-fraction", type=click.FloatRange(0.01, 0.5), default=0.1, show_default=True,
                 help="Validation carved from train when the dataset has none (subject-disjoint when possible)."),
    click.option("--test-fraction", type=click.FloatRange(0.01, 0.5), default=0.2, show_default=True,
                 help="Test carved from all clips when the dataset has no splits."),
    click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None),
    click.option("--workers", type=click.IntRange(0), default=None),
    click.option("--threads", type=click.IntRange(1), default=None),
    click.option("--device", default="auto", show_default=True),
    click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True),
)


def _load(params, required: tuple[str, ...] = SPLITS) -> tuple[VideoDataset, list, ClipSampling]:
    min_frames = params["min_frames"] or params["frames"]
    dataset = load_video_dataset(params["data"], params["fmt"], classes=session.parse_classes(params["classes"]),
                                 video_root=params["video_root"], path_prefix=_path_prefix(params["path_prefix"]),
                                 min_frames=min_frames)
    plans = [p for seed in range(params["seeds"]) for p in plan_video(dataset, seed, params["val_fraction"],
                                                                       params["test_fraction"])]
    if params["folds"]:
        plans = [p for p in plans if p.fold in set(params["folds"])]
        if not plans:
            raise click.ClickException(f"--fold {', '.join(map(str, params['folds']))}: the dataset has folds "
                                       f"{', '.join(str(f) for f in dataset.folds)}")
    for plan in plans:
        for split in required:
            if len(plan.indices[split]) == 0:
                raise click.ClickException(f"split '{split}' is empty ({plan.name}) for {dataset.path}")
    return dataset, plans, ClipSampling(params["frames"], params["stride"], params["test_clips"])


def _aligner(params):
    if not params["align"]:
        return None
    from train.evaluation.alignment import FaceAligner

    return FaceAligner(params["image_size"], params["dlib_models"])


def _unique_sources(dataset: VideoDataset) -> tuple[list, np.ndarray, np.ndarray]:
    """One record per distinct video (fold files repeat videos), each record's row in that list, and the
    dataset index of each distinct video's first record."""
    row_of_source: dict[str, int] = {}
    unique, first, row_of = [], [], np.zeros(len(dataset.records), dtype=np.int64)
    for i, record in enumerate(dataset.records):
        if record.source not in row_of_source:
            row_of_source[record.source] = len(unique)
            unique.append(record)
            first.append(i)
        row_of[i] = row_of_source[record.source]
    return unique, row_of, np.array(first, dtype=np.int64)


def per_fold_summary(runs: list[dict]) -> dict:
    folds = sorted({r["fold"] for r in runs if r["fold"] is not None})
    return {str(f): summarise([r["test"] for r in runs if r["fold"] == f]) for f in folds}


def dfer_table(rows: list[tuple[str, dict]], markdown: bool) -> str:
    header = ["backbone"] + [title for _, title in DFER_COLUMNS]
    body = [[label] + [_cell(summary.get(key), 100.0, 2) for key, _ in DFER_COLUMNS] for label, summary in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(DFER_COLUMNS)) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    fmt = lambda row: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(row) for row in body])


def _rows(payload: dict, with_command: bool = False) -> list[tuple[str, dict]]:
    rows = []
    for entry in payload["backbones"]:
        label = entry["backbone"]["name"] + (f" ({payload.get('command')})" if with_command else "")
        rows.append((label, entry.get("summary", {})))
        for fold, summary in entry.get("per_fold", {}).items():
            rows.append((f"{label} fold {fold}", summary))
    return rows


def finish(payload: dict, dataset: VideoDataset, out_dir: str | None) -> None:
    session.report_problems(dataset)
    for note in dataset.notes or []:
        session.warn(note)
    click.echo(dfer_table(_rows(payload), markdown=False))
    if out_dir:
        path = write_results(Path(out_dir), payload)
        table = Path(out_dir) / "table.md"
        with output_write(table):
            write_bytes_atomic(table, (dfer_table(_rows(payload), markdown=True) + "\n").encode())
        click.echo(f"results: {path}", err=True)
        for picture in write_confusion_figures(Path(out_dir), payload):
            click.echo(f"confusion matrix: {picture}", err=True)


def payload_for(command: str, params: dict, dataset: VideoDataset, plans: list, entries: list[dict],
                extra_config: dict) -> dict:
    return {
        "command": command, "created": now_utc(), "code_version": code_version(),
        "config": {**params, **extra_config},
        "dataset": {"path": dataset.path, "format": dataset.format, "classes": dataset.class_names,
                    "folds": [f for f in dataset.folds if f is not None], "notes": dataset.notes,
                    "counts": split_counts(dataset, plans[0].indices) if plans else {},
                    "problems": dataset.problems.as_dict()},
        "backbones": entries,
    }


@click.group(help="Dynamic FER on video datasets (UAR / WAR).")
def dfer():
    pass


@dfer.command(help="Linear probe on frozen clip features; weight decay and iterations chosen on validation UAR.")
@data_options
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Videos per batch.")
@click.option("--weight-decays", default="0,1e-4,1e-3,1e-2,1e-1", show_default=True)
@click.option("--max-iterations", type=click.IntRange(1), default=300, show_default=True)
@click.option("--loss", type=click.Choice(LOSSES), default="ce", show_default=True)
@click.option("--select-metric", type=click.Choice(SELECT_METRICS), default="uar", show_default=True)
def linear(**params):
    device = session.configure_torch(params["threads"], params["device"])
    dataset, plans, sampling = _load(params)
    workers = 0 if params["align"] else (session.default_workers() if params["workers"] is None else params["workers"])
    align = _aligner(params)
    config = LinearProbeConfig(weight_decays=_floats(params["weight_decays"]), max_iterations=params["max_iterations"],
                               loss=params["loss"], select_metric=params["select_metric"])
    labels = dataset.labels()
    names = dataset.class_names
    unique, row_of, first = _unique_sources(dataset)
    unreadable: set[str] = set()
    entries = []
    for spec in params["backbones"]:
        backbone = load_video_backbone(spec, params["arch"], params["frames"])
        backbone.check_input(params["frames"], params["image_size"])
        clips = VideoClips(unique, labels[first], params["image_size"], sampling, train=False, align=align)
        features, ok = video_features(backbone, clips, device, params["batch_size"], workers,
                                      uses_bf16(params["precision"], device), f"{backbone.name} features")
        for i in np.flatnonzero(~ok):
            if unique[i].source not in unreadable:  # once, however many backbones met it
                unreadable.add(unique[i].source)
                dataset.problems.add(UNDECODABLE, unique[i].source)
        features, ok = features[row_of], ok[row_of]
        runs = []
        for plan in plans:
            plan = plan.without(np.flatnonzero(~ok))
            train, val, test = (plan.indices[s] for s in SPLITS)
            classifier = fit_classifier(features[train], labels[train], features[val], labels[val], len(names), config)
            predicted = {s: classifier.predict(features[plan.indices[s]]) for s in ("val", "test")}
            run = {"name": plan.name, "seed": plan.seed, "fold": plan.fold, "notes": plan.notes,
                   "counts": split_counts(dataset, plan.indices), "selected": classifier.selected,
                   "val": metrics.dfer_report(labels[val], predicted["val"], names),
                   "test": metrics.dfer_report(labels[test], predicted["test"], names)}
            if params["out_dir"]:
                path = Path(params["out_dir"]) / "predictions" / f"{backbone.name.replace('/', '_')}-{plan.name}-test.csv"
                write_predictions(path, dataset, Predictions(test, labels=predicted["test"]))
                run["predictions_file"] = str(path)
            runs.append(run)
        entries.append({"backbone": backbone.describe(), "runs": runs,
                        "summary": summarise([r["test"] for r in runs]), "per_fold": per_fold_summary(runs),
                        "unreadable_videos": int((~ok).sum()),
                        "unaligned_frames": clips.unaligned_frames if align is not None else None})
    extra = {"protocol": "linear", "sampling": vars(sampling), "probe": vars(config), "device_used": str(device),
             "feature": "per video: mean over its evaluation clips of the clip feature (ResNet: mean over frames)"}
    finish(payload_for("dfer-linear", params, dataset, plans, entries, extra), dataset, params["out_dir"])


@dfer.command(help="Fine-tune the clip encoder with a linear head (optionally fused with the CA motion branch); "
                    "epoch chosen on validation UAR, test scored once.")
@data_options
@click.option("--epochs", type=click.IntRange(1), default=DferFinetuneConfig.epochs, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=DferFinetuneConfig.batch_size, show_default=True)
@click.option("--lr", type=float,
              default=DferFinetuneConfig.learning_rate, show_default=True,
              help="Base rate per 256 clips (scaled by batch).")
@click.option("--min-lr", type=float, default=DferFinetuneConfig.min_learning_rate, show_default=True)
@click.option("--warmup-epochs", type=click.IntRange(0), default=DferFinetuneConfig.warmup_epochs, show_default=True)
@click.option("--weight-decay", type=float, default=DferFinetuneConfig.weight_decay, show_default=True)
@click.option("--mixup", type=click.FloatRange(0.0),
              default=DferFinetuneConfig.mixup, show_default=True, help="Beta alpha; 0 = off.")
@click.option("--cutmix", type=click.FloatRange(0.0),
              default=DferFinetuneConfig.cutmix, show_default=True, help="Beta alpha; 0 = off.")
@click.option("--smoothing", type=click.FloatRange(0.0, 0.99),
              default=DferFinetuneConfig.label_smoothing, show_default=True)
@click.option("--layer-decay", type=click.FloatRange(0.0, 1.0),
              default=DferFinetuneConfig.layer_decay, show_default=True,
              help="Per-block learning-rate decay of the video encoder (1 = off; a ResNet has no blocks).")
@click.option("--drop-path", type=click.FloatRange(0.0, 0.9), default=DferFinetuneConfig.drop_path, show_default=True,
              help="Stochastic depth of the video encoder while fine-tuning.")
@click.option("--erase-prob", type=click.FloatRange(0.0, 1.0), default=DferFinetuneConfig.erase_prob, show_default=True)
@click.option("--no-augment", is_flag=True, help="No RandAugment / crop / flip / erasing (mixing still on).")
@click.option("--ca", type=click.Choice(FUSIONS), default=None, help="Fuse the CA motion branch (MAE-DFER-CA).")
@click.option("--motion", type=click.Choice(MOTION_INPUTS), default="mean-minus-first", show_default=True,
              help="CA input: the reference code's mean-minus-first map, or per-frame differences.")
@click.option("--keep-encoder-norm", is_flag=True,
              help="Video encoder: keep its final LayerNorm and PyTorch's default head initialisation, instead of "
                   "the reference's fresh LayerNorm and truncated-normal(0.02) x 0.001 head.")
def finetune(**params):
    device = session.configure_torch(params["threads"], params["device"])
    dataset, plans, sampling = _load(params)
    workers = 0 if params["align"] else (session.default_workers() if params["workers"] is None else params["workers"])
    config = DferFinetuneConfig(
        epochs=params["epochs"], batch_size=params["batch_size"], learning_rate=params["lr"],
        min_learning_rate=params["min_lr"], warmup_epochs=params["warmup_epochs"], weight_decay=params["weight_decay"],
        mixup=params["mixup"], cutmix=params["cutmix"], label_smoothing=params["smoothing"],
        erase_prob=params["erase_prob"], layer_decay=params["layer_decay"], drop_path=params["drop_path"],
        augment=not params["no_augment"], ca=params["ca"], motion=params["motion"],
        workers=workers, reference_start=not params["keep_encoder_norm"])
    if params["ca"] and params["image_size"] % 16:
        raise click.BadParameter("the CA branch needs a size divisible by 16", param_hint="--image-size")
    labels, names = dataset.labels(), dataset.class_names
    align = _aligner(params)
    entries = []
    for spec in params["backbones"]:
        backbone = load_video_backbone(spec, params["arch"], params["frames"])
        backbone.check_input(params["frames"], params["image_size"])
        tuner = DferFinetuner(backbone, dataset.records, labels, names, sampling, params["image_size"], config, device,
                              uses_bf16(params["precision"], device), align)
        runs = []
        for plan in plans:
            outcome = tuner.fit(plan)
            val_kept, val_predicted = outcome["val"]
            test_kept, test_predicted = outcome["test"]
            run = {"name": plan.name, "seed": plan.seed, "fold": plan.fold, "notes": plan.notes,
                   "counts": split_counts(dataset, plan.indices), "selected": outcome["selected"],
                   "history": outcome["history"], "parameters": outcome["parameters"],
                   "val": metrics.dfer_report(labels[val_kept], val_predicted, names),
                   "test": metrics.dfer_report(labels[test_kept], test_predicted, names)}
            if params["out_dir"]:
                path = Path(params["out_dir"]) / "predictions" / f"{backbone.name.replace('/', '_')}-{plan.name}-test.csv"
                write_predictions(path, dataset, Predictions(test_kept, labels=test_predicted))
                run["predictions_file"] = str(path)
            runs.append(run)
        for i in sorted(tuner.unreadable):
            dataset.problems.add(UNDECODABLE, dataset.records[i].source)
        name = backbone.name + (f"+ca-{params['ca']}" if params["ca"] else "")
        throughput = tuner.train_clips / tuner.train_seconds if tuner.train_seconds else None
        entries.append({"backbone": {**backbone.describe(), "name": name}, "runs": runs,
                        "summary": summarise([r["test"] for r in runs]), "per_fold": per_fold_summary(runs),
                        "train_clips_per_second": throughput})
        if throughput:
            click.echo(f"{name}: {throughput:.2f} training clips/s on {device}", err=True)
    extra = {"protocol": "finetune", "sampling": vars(sampling), "finetune": vars(config), "device_used": str(device)}
    finish(payload_for("dfer-finetune", params, dataset, plans, entries, extra), dataset, params["out_dir"])


def load_finetuned_model(path: Path):
    """(classifier, LGIFormerConfig, ReferenceFile) of a published fine-tuned MAE-DFER(-CA) checkpoint."""
    from train.reference_weights import ReferenceWeightsError, build_classifier, read_reference
    from train.weights_file import WeightsFileError

    try:
        reference = read_reference(path)
        if reference is None or reference.kind not in ("mae-dfer-finetuned", "mae-dfer-ca"):
            found = reference.kind if reference is not None else "not a published checkpoint"
            raise click.ClickException(f"--model {path}: {found}; give a fine-tuned MAE-DFER or MAE-DFER-CA "
                                       "checkpoint (its head is what this command scores)")
        model, config, line = build_classifier(reference)
    except (ReferenceWeightsError, WeightsFileError) as error:
        raise click.ClickException(f"--model {error}") from None
    click.echo(f"{reference.found_line()}; {line}", err=True)
    return model, config, reference


@dfer.command("test", help="Score a published fine-tuned MAE-DFER(-CA) model as it is (its own head, the CA branch "
                   "included) on the test split: evaluation clips as the reference tests (start to end, softmax "
                   "averaged per video), UAR / WAR. Nothing is trained.")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The fine-tuned checkpoint (e.g. MAE-DFER's DFEW fold model, a MAE-DFER-CA variant).")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Annotation file, a folder with train.csv/test.csv, or one with split01..split05.")
@click.option("--format", "fmt", type=click.Choice(VIDEO_FORMATS), default="auto", show_default=True)
@click.option("--classes", default=None, help="video-csv only: class names in the order of the model's head.")
@click.option("--video-root", type=click.Path(file_okay=False), default=None)
@click.option("--path-prefix", default=None, help="OLD=NEW: rewrite absolute paths starting with OLD.")
@click.option("--fold", "folds", multiple=True, type=int, help="Only these reference folds (default: all).")
@click.option("--stride", type=click.IntRange(1), default=4, show_default=True,
              help="Frame step inside a clip (the reference: 4 for DFEW/MAFW, 1 for FERV39k).")
@click.option("--test-clips", type=click.IntRange(1), default=2, show_default=True,
              help="Evaluation clips per video (the reference's --test_num_segment).")
@click.option("--min-frames", type=click.IntRange(1), default=None,
              help="Videos with fewer frames are bad rows (default: the model's clip length).")
@click.option("--test-fraction", type=click.FloatRange(0.01, 0.5), default=0.2, show_default=True,
              help="Test carved from all clips when the dataset has no splits.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True, help="Videos per batch.")
@click.option("--align", is_flag=True, help="Detect and align the face in every frame (whole-scene videos).")
@click.option("--dlib-models", type=click.Path(file_okay=False), default=None)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None)
@click.option("--workers", type=click.IntRange(0), default=None)
@click.option("--threads", type=click.IntRange(1), default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
def test_command(**params):
    device = session.configure_torch(params["threads"], params["device"])
    model, config, reference = load_finetuned_model(Path(params["model_path"]))
    params.update(frames=config.frames, image_size=config.img_size, seeds=1, val_fraction=0.1)
    dataset, plans, sampling = _load(params, required=("test",))
    labels, names = dataset.labels(), dataset.class_names
    classes = int(model.head.out_features)
    if classes != len(names):
        raise click.ClickException(f"--model {reference.path}: its head has {classes} classes, the dataset "
                                   f"{len(names)} ({', '.join(names)})")
    workers = 0 if params["align"] else (session.default_workers() if params["workers"] is None else params["workers"])
    scorer = DferFinetuner(None, dataset.records, labels, names, sampling, config.img_size,
                           DferFinetuneConfig(workers=workers, eval_batch_size=params["batch_size"]), device,
                           uses_bf16(params["precision"], device), _aligner(params))
    net = model.to(device).eval()
    runs = []
    for plan in plans:
        kept, predicted = scorer.predict(net, plan.indices["test"])
        runs.append({"name": plan.name, "seed": plan.seed, "fold": plan.fold, "notes": plan.notes,
                     "counts": split_counts(dataset, plan.indices),
                     "test": metrics.dfer_report(labels[kept], predicted, names)})
        if params["out_dir"]:
            path = Path(params["out_dir"]) / "predictions" / f"{reference.path.stem}-{plan.name}-test.csv"
            write_predictions(path, dataset, Predictions(kept, labels=predicted))
            runs[-1]["predictions_file"] = str(path)
    for i in sorted(scorer.unreadable):
        dataset.problems.add(UNDECODABLE, dataset.records[i].source)
    described = {"name": reference.path.stem, "kind": reference.kind, "variant": reference.variant,
                 "sha256": file_sha256(reference.path), "source": str(reference.path), "frames": config.frames,
                 "image_size": config.img_size, "classes": classes}
    entry = {"backbone": described, "runs": runs, "summary": summarise([r["test"] for r in runs]),
             "per_fold": per_fold_summary(runs)}
    extra = {"protocol": "test", "sampling": vars(sampling), "device_used": str(device),
             "model_args": {k: v for k, v in reference.args.items() if isinstance(v, (bool, int, float, str))}}
    finish(payload_for("dfer-test", params, dataset, plans, [entry], extra), dataset, params["out_dir"])


@dfer.command(help="Video results.json files side by side in the reference's layout (UAR, WAR).")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@plot_options(tuple(key for key, _ in DFER_COLUMNS), "uar")
def compare(files, plot_path, metric):
    session.check_output(plot_path, "--plot", is_file=True)
    rows = []
    for path in files:
        payload = load_results(Path(path))
        if not str(payload.get("command", "")).startswith("dfer"):
            raise click.ClickException(f"{path}: not a `sslfer-eval dfer` result (command {payload.get('command')!r})")
        rows.extend(_rows(payload, with_command=True))
    click.echo(dfer_table(rows, markdown=True))
    plot_compared(plot_path, rows, metric, 100.0)
