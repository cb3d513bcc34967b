"""Pictures of evaluation results: a confusion matrix per backbone beside results.json, and the bar chart
of `compare --plot`. Drawn from the results payload only, so a picture always shows what the file holds."""
from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np

from sslfer_core.atomic_files import atomic_path
from train.evaluation.option_group import option_group

ANNOTATE_UP_TO = 20  # classes; beyond this the cells carry no numbers
LABEL_UP_TO = 60  # classes; beyond this the axes carry no class names
CONFUSION_PREFIX = "confusion-"


def _figure(width_in: float, height_in: float):
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=100, facecolor="white")


def _save(figure, path: Path) -> Path:
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=100, facecolor="white", bbox_inches="tight")
    return Path(path)


def summed_confusion(entry: dict) -> np.ndarray | None:
    """The test confusion matrices of a backbone's runs (seeds, folds), summed; None when a run has none."""
    matrices = [run.get("test", {}).get("confusion_matrix") if isinstance(run.get("test"), dict) else None
                for run in entry.get("runs", [])]
    if not matrices or any(m is None for m in matrices):
        return None
    return np.sum([np.asarray(m, dtype=np.int64) for m in matrices], axis=0)


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each true class's row as fractions of that class's test items (a row without items stays 0)."""
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)


def confusion_figure(counts: np.ndarray, class_names: list[str], title: str):
    """Rows = true class, columns = predicted class; colour = fraction of the true class, each cell
    annotated with that percentage and the count."""
    n = len(class_names)
    side = min(max(3.2 + 0.55 * n, 4.5), 16.0)
    figure = _figure(side + 1.4, side)
    axes = figure.add_subplot(1, 1, 1)
    fractions = row_normalised(counts)
    image = axes.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of the true class", fontsize=9)
    if n <= LABEL_UP_TO:
        size = 9 if n <= 10 else 7
        axes.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=size)
        axes.set_yticks(range(n), class_names, fontsize=size)
    else:
        axes.set_xticks([])
        axes.set_yticks([])
    axes.set_xlabel("predicted class", fontsize=10)
    axes.set_ylabel("true class (test items)", fontsize=10)
    if n <= ANNOTATE_UP_TO:
        for i in range(n):
            for j in range(n):
                colour = "white" if fractions[i, j] > 0.6 else "black"
                axes.text(j, i, f"{100 * fractions[i, j]:.0f}%\n{counts[i, j]}", ha="center", va="center",
                          fontsize=8 if n <= 10 else 6, color=colour)
    axes.set_title(title, fontsize=10)
    return figure


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_") or "backbone"


def write_confusion_figures(out_dir: Path, payload: dict) -> list[Path]:
    """One PNG per backbone entry that has test confusion matrices: OUT/confusion-<backbone>.png."""
    names = payload.get("dataset", {}).get("classes") or []
    written = []
    for entry in payload.get("backbones", []):
        counts = summed_confusion(entry)
        if counts is None or counts.shape != (len(names), len(names)):
            continue
        runs = len(entry["runs"])
        dataset = Path(str(payload["dataset"].get("path", ""))).name
        title = (f"{entry['backbone']['name']}: {payload.get('command')} on {dataset}, test split"
                 + (f", {runs} runs summed" if runs > 1 else "") + f" ({int(counts.sum())} items)")
        figure = confusion_figure(counts, list(names), title)
        written.append(_save(figure, Path(out_dir) / f"{CONFUSION_PREFIX}{_safe_name(entry['backbone']['name'])}.png"))
    return written


def compare_figure(rows: list[tuple[str, dict]], metric: str, title: str, scale: float = 100.0):
    """Bars of `metric` per row (label, summary): the mean over runs with ± one standard deviation; rows
    without the metric are left out by the caller."""
    labels = [label for label, _ in rows]
    means = np.array([summary[metric]["mean"] * scale for _, summary in rows])
    stds = np.array([summary[metric].get("std", 0.0) * scale for _, summary in rows])
    runs = [summary[metric].get("n", 1) for _, summary in rows]
    figure = _figure(max(4.0, 1.2 + 0.9 * len(rows)), 4.6)
    axes = figure.add_subplot(1, 1, 1)
    axes.bar(range(len(rows)), means, yerr=stds, capsize=5, color="#4878a8", ecolor="black")
    for x, (mean, std, n) in enumerate(zip(means, stds, runs)):
        axes.text(x, mean + std, f"{mean:.1f}" + (f" ± {std:.1f}\n(n={n})" if n > 1 else "\n(n=1)"),
                  ha="center", va="bottom", fontsize=8)
    axes.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel(f"{metric} (%)" if scale == 100.0 else metric, fontsize=10)
    top = float(np.max(means + stds)) if len(rows) else 1.0
    axes.set_ylim(0, max(top * 1.2, 1.0))
    axes.set_title(title, fontsize=10)
    return figure


def write_compare_figure(path: Path, rows: list[tuple[str, dict]], metric: str, title: str,
                         scale: float = 100.0) -> Path:
    return _save(compare_figure(rows, metric, title, scale), path)


def plot_options(metrics: tuple[str, ...], default: str):
    """--plot and --metric of the compare commands."""
    return option_group(
        click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
                     help="Also draw a bar chart of --metric (mean over runs, error bars ± one std) as this PNG."),
        click.option("--metric", type=click.Choice(metrics), default=default, show_default=True,
                     help="The metric --plot draws."),
    )


def plot_compared(plot_path: str | None, rows: list[tuple[str, dict]], metric: str, scale: float) -> None:
    """`--plot` of the compare commands; rows without the metric are named in a warning and left out."""
    if not plot_path:
        return
    if not plot_path.lower().endswith(".png"):
        raise click.BadParameter(f"{plot_path}: the plot is a PNG; name it *.png", param_hint="--plot")
    has = lambda summary: (summary.get(metric) or {}).get("mean") is not None
    for label, summary in rows:
        if not has(summary):
            click.echo(f"warning: --plot: {label} has no {metric}; left out of the chart", err=True)
    kept = [(label, summary) for label, summary in rows if has(summary)]
    if not kept:
        raise click.ClickException(f"--plot: no compared row has {metric}")
    path = write_compare_figure(Path(plot_path), kept, metric, f"{metric} on the test split, mean ± std over runs",
                                scale)
    click.echo(f"plot: {path}", err=True)
