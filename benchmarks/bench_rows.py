"""Training speed of every ablation row at a budget's settings, measured through sslfer-train itself (not a test).

Each row trains --steps steps on one seed; its metrics log holds images/s per --log-every steps (default 1).
The median over the intervals after the first --skip steps is the steady rate. On a GPU the trainer reads
its losses only at log points, so --log-every 1 adds a host-device sync to every step; a larger interval
measures what a real run does. On a small shard set every epoch end
writes a checkpoint and refills the loader, so those steps are slow; the median leaves them out and the
mean keeps them. From the median the script projects the hours the budget's whole table would take here
(rows x seeds x steps, one run at a time).

    python benchmarks/bench_rows.py --shards SHARDS [--budget full] [--steps 60] [--rows ...] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from ablation import BUDGETS, ROWS, Budget, run_logged, run_name, train_command  # noqa: E402
from train.metrics_log import read_metrics  # noqa: E402

VIEWS_LINE = re.compile(r"(\d+) anchors x (\d+) views per step")


def row_speed(log: Path, metrics: Path, skip: int) -> dict:
    """Per-step seconds of one finished run, from its log (views per step) and metrics (images/s per logged
    interval)."""
    found = VIEWS_LINE.search(log.read_text())
    if found is None:
        raise ValueError(f"{log}: no 'anchors x views per step' line")
    rows_per_step = int(found.group(1)) * int(found.group(2))
    rates = [m["images_per_s"] for m in read_metrics(metrics) if m["step"] > skip and m["images_per_s"]]
    if not rates:
        raise ValueError(f"{metrics}: no step after the first {skip} was logged")
    seconds = [rows_per_step / rate for rate in rates]
    return {"views": int(found.group(2)), "images_per_step": rows_per_step, "timed_steps": len(seconds),
            "median_images_per_s": statistics.median(rates), "median_step_s": statistics.median(seconds),
            "mean_step_s": statistics.fmean(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=Path, required=True, help="a shard set with swaps (sslfer-prep output)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--steps", type=int, default=60, help="steps per row")
    parser.add_argument("--skip", type=int, default=5, help="first steps left out (start-up, cuDNN autotuning)")
    parser.add_argument("--log-every", type=int, default=1, help="steps per metrics line (a sync point on a GPU)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per row in the projection")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), help=f"rows: {', '.join(ROWS)}")
    parser.add_argument("--out", type=Path, default=Path("bench_rows_out"))
    args = parser.parse_args()
    if args.steps <= args.skip:
        raise SystemExit(f"--steps {args.steps} leaves no step after --skip {args.skip}")
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)}; choose from {', '.join(ROWS)}")
    budget = BUDGETS[args.budget]
    timed = Budget(**{**budget.__dict__, "steps": args.steps})
    out = args.out.resolve()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}; budget {args.budget}: {budget.arch}, "
          f"{budget.batch_size} anchors, crop {budget.crop}, precision {budget.precision}; {args.steps} steps per row, "
          f"median over steps {args.skip + 1}-{args.steps}", flush=True)
    results = {}
    for row in args.rows:
        name = run_name(row, 0)
        run, log = out / "runs" / name, out / "logs" / f"train-{name}.log"
        if run.exists():
            raise SystemExit(f"{run} exists: use a new --out")
        try:
            wall = run_logged(train_command(args.shards, run, row, 0, timed, log_every=args.log_every, ckpt_every=args.steps),
                              log, timed.threads)
        except SystemExit as failure:  # one broken row should not hide the others' figures
            print(f"{row}: {failure}", flush=True)
            continue
        results[row] = {**row_speed(log, run / "metrics.jsonl", args.skip), "process_s": wall}
        print(f"{row}: {results[row]['median_images_per_s']:,.0f} images/s, "
              f"{1e3 * results[row]['median_step_s']:.1f} ms/step median, {wall:.0f} s in all", flush=True)
    total_h = sum(r["median_step_s"] for r in results.values()) * budget.steps * args.seeds / 3600
    lines = ["| row | views | images/s (median) | ms/step (median) | ms/step (mean, epoch ends in) |",
             "|---|---|---|---|---|"]
    lines += [f"| {row} | {r['views']} | {r['median_images_per_s']:,.0f} | {1e3 * r['median_step_s']:.1f} | "
              f"{1e3 * r['mean_step_s']:.1f} |" for row, r in results.items()]
    print("\n" + "\n".join(lines))
    print(f"\nprojected: {len(results)} rows x {args.seeds} seeds x {budget.steps:,} steps at the median rates = "
          f"{total_h:.1f} h of training, one run at a time")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_rows.json").write_text(json.dumps(
        {"budget": args.budget, "config": budget.__dict__, "steps": args.steps, "skip": args.skip,
         "rows": results, "projected_hours": total_h, "seeds": args.seeds, "machine": platform.node(),
         "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1))


if __name__ == "__main__":
    main()
