"""Video MAE loss curves against the zero-prediction level, as one PNG: one panel each for the total,
appearance and motion loss, one line per run, in percent of the zero-prediction loss on the same targets
(0 % = a model that predicts nothing; the logged `zero_loss*` fields of metrics.jsonl).

    .venv/bin/python benchmarks/plot_mae_losses.py RUN [RUN ...] [--label NAME ...] [--smooth 500]
        -o docs/img/mae_losses.png

Each logged interval counts by its length in steps, so the curves are means over the last --smooth steps.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from train.metrics_log import read_metrics  # noqa: E402

PARTS = (("", "loss (0.5 appearance + 0.5 motion)"), ("_appearance", "appearance"), ("_motion", "motion"))


def relative_curves(records: list[dict], smooth: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """part suffix -> (steps, 100 * (loss / zero loss - 1)) with both sides the step-weighted means over
    the `smooth` steps up to each logged step."""
    rows = [r for r in records if "zero_loss" in r]
    if not rows:
        raise SystemExit("no MAE loss records with zero_loss in metrics.jsonl")
    steps = np.array([r["step"] for r in rows], dtype=float)
    lengths = np.diff(steps, prepend=0.0)
    # index into step-weighted sums with a leading 0: the window of each line starts after the last line
    # at least `smooth` steps before it, or at step 1
    start = np.searchsorted(steps, steps - smooth, side="right")
    out = {}
    for suffix, _ in PARTS:
        loss, zero = (np.concatenate([[0.0], np.cumsum(lengths * np.array([r[key + suffix] for r in rows]))])
                      for key in ("loss", "zero_loss"))
        out[suffix] = (steps, 100 * ((loss[1:] - loss[start]) / (zero[1:] - zero[start]) - 1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="MAE run folders (with metrics.jsonl)")
    ap.add_argument("--label", action="append", default=[], help="legend name per run (default: folder)")
    ap.add_argument("--smooth", type=int, default=500, help="steps in each plotted mean")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.label and len(args.label) != len(args.runs):
        ap.error(f"{len(args.label)} --label for {len(args.runs)} runs")
    labels = args.label or [run.name for run in args.runs]
    fig, axes = plt.subplots(1, len(PARTS), figsize=(4.2 * len(PARTS), 3.4), sharey=True)
    for run, label in zip(args.runs, labels):
        path = run / "metrics.jsonl"
        if not path.is_file():
            raise SystemExit(f"{run} has no metrics.jsonl")
        for ax, (steps, rel) in zip(axes, relative_curves(read_metrics(path), args.smooth).values()):
            ax.plot(steps, rel, label=label)
    for ax, (_, title) in zip(axes, PARTS):
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"% against predicting zeros\n(mean of the last {args.smooth} steps)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
