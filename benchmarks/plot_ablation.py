"""Loss curves of an ablation run as one PNG: one panel per row, one line per seed.

    python benchmarks/plot_ablation.py ablation_out/ablation.json -o docs/img/loss_curves.png
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def row_and_seed(run_name: str) -> tuple[str, str]:
    row, _, seed = run_name.rpartition("-s")
    return row, seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("record", type=Path, help="ablation.json written by benchmarks/ablation.py")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()
    record = json.loads(args.record.read_text())
    curves: dict[str, dict[str, list]] = {}
    for name, points in record["loss_curves"].items():
        row, seed = row_and_seed(name)
        if points:
            curves.setdefault(row, {})[seed] = points
    if not curves:
        raise SystemExit(f"{args.record}: no loss curves recorded")
    columns = 4
    rows = math.ceil(len(curves) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, (row, seeds) in zip(axes.flat, curves.items()):
        for seed, points in sorted(seeds.items()):
            steps, losses = zip(*points)
            ax.plot(steps, losses, label=f"seed {seed}", linewidth=1.2)
        ax.set_title(row, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("NT-Xent loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(curves):]:
        ax.axis("off")
    config = record.get("config", {})
    fig.suptitle(f"{record.get('budget')} budget: {config.get('arch')}, {config.get('steps')} steps, "
                 f"batch {config.get('batch_size')}, crop {config.get('crop')} px ({record.get('date', '')[:10]})")
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=90)
    print(args.output)


if __name__ == "__main__":
    main()
