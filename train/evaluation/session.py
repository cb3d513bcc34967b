"""Set-up shared by the sslfer-eval commands: threads and device, dataset loading with problem reports,
split plans, and the features of one backbone with undecodable / unaligned images accounted for."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch

from sslfer_core.atomic_files import writable_dir_problem
from sslfer_core.cpu_cores import available_cores
from train.evaluation.datasets import LabelledDataset, load_dataset
from train.evaluation.features import FeatureTable, default_cache_dir, extract_features
from train.evaluation.images import MAX_IMAGE_PIXELS, Preprocessing, image_too_large
from train.evaluation.sanity import check_plans
from train.evaluation.splits import SplitPlan, make_plans, require_nonempty, subsample_per_split


def configure_torch(threads: int | None, device: str) -> torch.device:
    torch.set_num_threads(threads or available_cores())
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise click.ClickException(f"--device {device}: CUDA is not available on this machine")
    return torch.device(device)


def check_output(path: str | None, option: str = "--out", *, is_file: bool = False) -> None:
    """Refuse an output path that cannot be written before any work is done (exit 2)."""
    if not path:
        return
    target = Path(path)
    if is_file and target.is_dir():
        raise click.BadParameter(f"{target} is a directory; give a file name", param_hint=option)
    problem = writable_dir_problem(target.parent if is_file else target)
    if problem:
        raise click.BadParameter(problem, param_hint=option)


def default_workers() -> int:
    # Decoding small images is cheap; worker processes only pay off with spare cores.
    cores = available_cores()
    return 0 if cores <= 2 else min(8, cores - 1)


def warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


def report_problems(dataset: LabelledDataset) -> None:
    for line in dataset.problems.summary_lines():
        warn(line)


@dataclass
class DataSetup:
    dataset: LabelledDataset
    plans: list[SplitPlan]
    notes: list[str] = field(default_factory=list)


def parse_classes(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if len(set(names)) != len(names):
        raise click.BadParameter("class names repeat", param_hint="--classes")
    return names


def prepare_data(data: str, fmt: str, classes: str | None, image_root: str | None, max_per_split: int | None,
                 seeds: int, folds: int | None, group: str, val_fraction: float, test_fraction: float) -> DataSetup:
    dataset = load_dataset(data, fmt, classes=parse_classes(classes), image_root=image_root)
    notes = []
    if max_per_split:
        dataset, note = subsample_per_split(dataset, max_per_split)
        notes.append(note)
    plans = make_plans(dataset, list(range(seeds)), folds, group, val_fraction, test_fraction)
    for plan in plans:
        require_nonempty(plan, dataset.path)
    notes += [f"warning: {text}" for text in check_plans(dataset, plans, warn)]
    return DataSetup(dataset, plans, notes)


def resolve_cache_dir(cache_dir: str | None, no_cache: bool) -> Path | None:
    if no_cache:
        return None
    return Path(cache_dir) if cache_dir else default_cache_dir()


def record_problems(dataset: LabelledDataset, kind: str, indices, reported: set[tuple[str, str]]) -> None:
    """Add each image once, however many backbones or epochs met it."""
    for i in indices:
        source = dataset.records[i].source
        if (kind, source) not in reported:
            reported.add((kind, source))
            dataset.problems.add(kind, source)


def record_unreadable(dataset: LabelledDataset, indices, reported: set[tuple[str, str]]) -> None:
    """Images that gave no pixels: those whose header declares more than MAX_IMAGE_PIXELS as "image too
    large", the others as "corrupt image"; each once."""
    indices = list(indices)
    large = {i for i in indices if dataset.records[i].pixels is None and image_too_large(dataset.records[i].source)}
    limit = f"image too large (over {MAX_IMAGE_PIXELS:,} pixels; not decoded)"
    record_problems(dataset, limit, sorted(large), reported)
    record_problems(dataset, "corrupt image", [i for i in indices if i not in large], reported)


def backbone_features(backbone, dataset: LabelledDataset, preprocessing: Preprocessing, *, cache_dir: Path | None,
                      batch_size: int, workers: int, device: torch.device, dlib_model_dir: str | None,
                      reported: set[tuple[str, str]], bf16: bool = False) -> tuple[FeatureTable, np.ndarray, dict]:
    """Features for every record, the indices of undecodable images, and a JSON-ready summary.

    Undecodable images and alignment failures are added to the dataset's problems once (sources in `reported`).
    """
    table = extract_features(backbone.model, backbone.sha256, dataset.records, preprocessing, cache_dir=cache_dir,
                             batch_size=batch_size, workers=workers, device=device, dlib_model_dir=dlib_model_dir,
                             label=f"features {backbone.name}", bf16=bf16)
    bad = np.flatnonzero(~table.ok)
    unaligned = np.flatnonzero(table.ok & ~table.aligned) if preprocessing.align else np.zeros(0, dtype=np.int64)
    record_unreadable(dataset, np.setdiff1d(bad, table.non_finite), reported)
    record_problems(dataset, f"non-finite features from {backbone.name} (left out)", table.non_finite, reported)
    record_problems(dataset, "could not be aligned (kept unaligned)", unaligned, reported)
    summary = {"images": len(dataset.records), "cache_hit": table.cache_hit, "seconds": round(table.seconds, 2),
               "undecodable": int(len(bad) - len(table.non_finite)), "non_finite": int(len(table.non_finite)),
               "bf16": bf16}
    if preprocessing.align:
        summary["not_aligned"] = int(len(unaligned))
    if not table.cache_hit:
        rate = len(dataset.records) / max(table.seconds, 1e-9)
        click.echo(f"{backbone.name}: features of {len(dataset.records)} images in {table.seconds:.1f} s "
                   f"({rate:.0f} images/s, {torch.get_num_threads()} threads, {device}{', bf16' if bf16 else ''})", err=True)
    return table, bad, summary


def usable_plans(plans: list[SplitPlan], bad: np.ndarray, dataset_path: str,
                 dataset: LabelledDataset | None = None) -> list[SplitPlan]:
    """The plans without the images that gave no usable features; a split they leave empty is refused,
    after the problems that emptied it are reported."""
    cleaned = [plan.without(bad) for plan in plans]
    for plan in cleaned:
        empty = [split for split, indices in plan.indices.items() if len(indices) == 0]
        if empty and len(bad):
            if dataset is not None:
                report_problems(dataset)
            raise click.ClickException(f"split '{empty[0]}' is empty ({plan.name}) once the {len(bad)} image(s) "
                                       f"without usable features are left out (see the warnings above)")
        require_nonempty(plan, dataset_path)
    return cleaned
