"""The paper's ablation table at small scale: prep -> train every row with equal step budgets and several
seeds -> export -> FER2013 linear probe (selection on validation, test once) -> Markdown table.

    python benchmarks/ablation.py --budget small            # ResNet-18, 2-core CPU
    python benchmarks/ablation.py --budget full --parallel 1 # ResNet-50 at 112 px, for a GPU

Everything goes through the user-facing tools (sslfer-prep, sslfer-train, sslfer-eval) as subprocesses.
Each backbone is probed as soon as it is exported, and table.md is rewritten after every probe, so a run
that stops early leaves a partial table. Rerunning the same command skips finished prep, training runs and
evaluations, so a killed run resumes; timings.json keeps every run's training and probe seconds.
Data: --data (VoxCeleb layout; default $SSLFER_DATA/voxceleb_mini) and --fer (default $SSLFER_DATA/fer2013),
with $SSLFER_DATA defaulting to ../shared/data beside the repository.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from sslfer_core.atomic_files import write_bytes_atomic, write_json_atomic
from sslfer_core.cpu_cores import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("timeaug", "hardneg", "faceswap", "maskfn", "cutmix")

# The rows of the paper's table (Shu et al., BMVC 2022), in its order.
ROWS: dict[str, tuple[str, ...]] = {
    "SimCLR": (),
    "TimeAug": ("timeaug",),
    "TimeAug+HardNeg": ("timeaug", "hardneg"),
    "TimeAug+HardNeg+CutMix": ("timeaug", "hardneg", "cutmix"),
    "TimeAug+FaceSwap+MaskFN": ("timeaug", "faceswap", "maskfn"),
    "TimeAug+HardNeg+FaceSwap": ("timeaug", "hardneg", "faceswap"),
    "TimeAug+HardNeg+MaskFN": ("timeaug", "hardneg", "maskfn"),
    "all four": ("timeaug", "hardneg", "faceswap", "maskfn"),
}
# The paper's self-supervised baselines, each its own sslfer-train method on the same views and budget.
BASELINES: dict[str, str] = {"BYOL": "byol", "MoCo-v2": "moco"}
RANDOM_ROW = "random"
ALL_ROWS = (*ROWS, *BASELINES, RANDOM_ROW)


@dataclass(frozen=True)
class Budget:
    arch: str
    steps: int
    batch_size: int
    resize: int
    crop: int
    face_crop: float  # central fraction of the aligned face: FER2013's tight crops
    crop_area: tuple[float, float] | None  # sslfer-train --crop-area (random-resized crop); None = fixed crop
    lr: float  # Adam's peak learning rate
    precision: str  # sslfer-train --precision; bf16 on a CPU without native bf16 falls back to auto
    eval_size: int
    probe_precision: str  # sslfer-eval --precision for feature extraction; the same fallback
    max_per_split: int | None  # per FER2013 split; None = all images
    threads: int  # torch threads per process (runs go side by side with --parallel)
    moco_queue: int  # MoCo's queue of negative keys: at most the frames in the shards
    moco_momentum: float  # MoCo's key encoder momentum: its averaging horizon (1 / (1 - m) steps) within the run


BUDGETS = {
    # 2-core CPU: two single-threaded processes side by side; 48 px = FER2013's native size. The paper's lr
    # (3e-4) is too low for 200 steps: 1e-3 was chosen on SimCLR seeds 0 and 1 by FER2013 validation F1.
    # With the paper's fixed crop, 2-view SimCLR's loss fell to 0.5-0.8 by 200 steps and 0.1-0.2 by 400: the
    # instance task was solved early. A random-resized crop of 50-100 % of the face (SimCLR's main
    # augmentation; from 96 px so zoomed boxes stay sharp) left it at 1.5-1.6 after 200. 600 steps: the whole
    # table took 49 min here once 2x2-map convolutions ran as one matrix product (130 min before, when 300 steps
    # was the most that fit; at 300 no row beat a random backbone by more than the seed spread). The probe
    # uses the whole FER2013 training split (with 4,000 images its scores moved by several points between
    # seeds) and bf16 features (about 2x faster end to end here). docs/results-log.md says how each was chosen.
    # MoCo: voxceleb_mini holds 1,830 frames, so the queue keeps 512 keys (16 steps' worth; 8x SimCLR's 62
    # in-batch negatives), and momentum 0.99 averages over about 100 steps where 0.999 would average over
    # more steps than the run has.
    "small": Budget("resnet18", steps=600, batch_size=32, resize=96, crop=48, face_crop=0.72, crop_area=(0.5, 1.0),
                    lr=1e-3, precision="bf16", eval_size=48, probe_precision="bf16", max_per_split=None, threads=1,
                    moco_queue=512, moco_momentum=0.99),
    # A GPU: the paper's network, input size and learning rate.
    "full": Budget("resnet50", steps=20000, batch_size=256, resize=128, crop=112, face_crop=0.72, crop_area=None,
                   lr=3e-4, precision="auto", eval_size=112, probe_precision="auto", max_per_split=None, threads=0,
                   moco_queue=65536, moco_momentum=0.999),
}


def shared_data() -> Path:
    return Path(os.environ.get("SSLFER_DATA", REPO.parent / "shared" / "data"))


def tool(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def run_logged(command: list[str], log: Path, threads: int) -> float:
    """Run one tool with its output in `log`; a failure stops the benchmark naming the log."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(" ".join(command) + "\n")
        handle.flush()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"failed (exit {done.returncode}): {' '.join(command)}\n  see {log}")
    return time.perf_counter() - start


def prep(data: Path, out: Path, jobs: int) -> Path:
    shards = out / "shards"
    if not (shards / "manifest.json").is_file():
        took = run_logged(tool("preprocess.cli") + ["voxceleb", str(data), "--out", str(shards), "--jobs", str(jobs)],
                          out / "logs" / "prep.log", threads=0)
        print(f"prep: {took:.0f} s -> {shards}", flush=True)
    return shards


def train_command(shards: Path, run: Path, row: str, seed: int, budget: Budget, log_every: int = 10,
                  ckpt_every: int = 100) -> list[str]:
    """The sslfer-train command line of one row and seed at a budget's settings."""
    method = BASELINES.get(row, "train")
    command = tool("train.cli") + [
        method, "--shards", str(shards), "--out", str(run), "--arch", budget.arch,
        *[f"--{s}" for s in ROWS.get(row, ())],
        "--steps", str(budget.steps), "--batch-size", str(budget.batch_size), "--resize", str(budget.resize),
        "--crop", str(budget.crop), "--face-crop", str(budget.face_crop), "--lr", str(budget.lr),
        *(["--crop-area", *map(str, budget.crop_area)] if budget.crop_area else []),
        "--precision", budget.precision, "--seed", str(seed), "--log-every", str(log_every),
        "--ckpt-every", str(ckpt_every)]
    if method == "moco":
        command += ["--queue-size", str(budget.moco_queue), "--momentum", str(budget.moco_momentum)]
    if budget.threads:
        command += ["--workers", "0"]  # a core per run: loading in-process beats a competing worker
    return command


def train_and_export(shards: Path, out: Path, row: str, seed: int, budget: Budget) -> tuple[Path, float, bool]:
    """The exported backbone, the seconds this call trained (0 when it was already there) and whether the
    training resumed a run that an earlier invocation had started (its seconds then miss that part)."""
    name = run_name(row, seed)
    run, backbone = out / "runs" / name, out / "backbones" / f"{name}.safetensors"
    if backbone.is_file():
        return backbone, 0.0, False
    command = train_command(shards, run, row, seed, budget)
    resumed = (run / "checkpoints").is_dir()
    if resumed:
        command = tool("train.cli") + [BASELINES.get(row, "train"), "--out", str(run), "--resume"]
    elif run.exists():
        shutil.rmtree(run)  # started but no checkpoint yet: start again
    took = run_logged(command, out / "logs" / f"train-{name}.log", budget.threads)
    run_logged(tool("train.cli") + ["export", str(run), "-o", str(backbone)], out / "logs" / f"export-{name}.log", 0)
    return backbone, took, resumed


def evaluate(spec: str, name: str, fer: Path, out: Path, budget: Budget) -> tuple[dict, float]:
    """The probe's summary and the seconds this call spent on it (0 when an earlier invocation probed it)."""
    folder = out / "eval" / name
    results = folder / "results.json"
    took = 0.0
    if not results.is_file():
        command = tool("train.evaluation.cli") + [
            "linear", "--backbone", spec, "--arch", budget.arch, "--data", str(fer), "--image-size",
            str(budget.eval_size), "--out", str(folder), "--cache-dir", str(out / "feature_cache"),
            "--precision", budget.probe_precision]
        if budget.max_per_split:
            command += ["--max-per-split", str(budget.max_per_split)]
        if budget.threads:
            command += ["--threads", str(budget.threads), "--workers", "0"]
        took = run_logged(command, out / "logs" / f"eval-{name}.log", budget.threads)
    payload = json.loads(results.read_text())
    return payload["backbones"][0]["summary"], took


def require_same_budget(path: Path, budget: Budget) -> None:
    """Resuming skips finished runs, so an --out made with other settings would mix two budgets in one table."""
    wanted = json.loads(json.dumps(budget.__dict__))  # tuples as the record holds them: lists
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            changed = ", ".join(f"{k}: {found.get(k)} -> {v}" for k, v in wanted.items() if found.get(k) != v)
            raise SystemExit(f"{path.parent} was made with another budget ({changed}); use a new --out")
    else:
        path.write_text(json.dumps(wanted, indent=1))


def loss_curve(run: Path) -> list[tuple[int, float]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    return [(line["step"], line["loss"]) for line in map(json.loads, path.read_text().splitlines())]


def slug(row: str) -> str:
    return row.lower().replace(" ", "-").replace("+", "-")


def run_name(row: str, seed: int) -> str:
    """The name of a run's folder, backbone file, probe folder and logs."""
    return f"{slug(row)}-s{seed}"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(results: dict[str, dict]) -> str:
    head = ["row", "TimeAug", "HardNeg", "FaceSwap", "MaskFN", "CutMix", "macro F1 (%)", "accuracy (%)", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + ":---:|" * 5 + "---:|---:|---:|"]
    for row, entry in results.items():
        marks = ["✓" if s in ROWS.get(row, ()) else "" for s in STRATEGIES[:4]] + [
            "✓" if "cutmix" in ROWS.get(row, ()) else ""]
        f1, acc = entry["macro_f1"], entry["accuracy"]
        cells = [row, *marks, f"{100 * f1[0]:.2f} ± {100 * f1[1]:.2f}", f"{100 * acc[0]:.2f} ± {100 * acc[1]:.2f}",
                 str(entry["seeds"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences(results: dict[str, dict], against: str) -> list[str]:
    """Each row's macro-F1 difference to `against`, flagged when it exceeds 2 pooled seed standard deviations."""
    if against not in results:
        return []
    base_mean, base_std = results[against]["macro_f1"]
    lines = []
    for row, entry in results.items():
        if row == against or (row == RANDOM_ROW and against != RANDOM_ROW):
            continue  # every row is compared with random separately
        mean, std = entry["macro_f1"]
        gap = f"{row} vs {against}: {100 * (mean - base_mean):+.2f} F1 points"
        if min(entry.get("seeds", 2), results[against].get("seeds", 2)) < 2:
            lines.append(f"{gap}; not judged: one seed has no spread yet")  # a partial table
            continue
        spread = math.sqrt((std ** 2 + base_std ** 2) / 2)
        verdict = "exceeds" if spread > 0 and abs(mean - base_mean) > 2 * spread else "within"
        lines.append(f"{gap}; 2 pooled std = {200 * spread:.2f}: {verdict} the seed spread")
    return lines


def run_all(tasks: list[tuple[Callable, tuple]], parallel: int) -> None:
    """Run (function, arguments) tasks on `parallel` threads. The first failure (or Ctrl-C) stops the tasks
    not yet started, waits for the running ones, and is raised."""
    stop = threading.Event()

    def guarded(function: Callable, arguments: tuple) -> None:
        if stop.is_set():
            return  # a task failed: start nothing new
        try:
            function(*arguments)
        except BaseException:
            stop.set()  # before the worker thread can take the next task
            raise

    with ThreadPoolExecutor(parallel) as pool:
        futures = [pool.submit(guarded, function, arguments) for function, arguments in tasks]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            stop.set()  # also on Ctrl-C here
        failed = [future for future in futures if future in done and future.exception() is not None]
        if failed:
            raise failed[0].exception()


def tabulate(probed: dict[tuple[str, int], dict], rows: list[str]) -> dict[str, dict]:
    """Mean ± std over the seeds probed so far, per row in table order; rows with no probe yet are left out."""
    results: dict[str, dict] = {}
    by_seed = sorted(probed.items(), key=lambda item: item[0][1])
    for row in rows:
        mine = [summary for (r, _), summary in by_seed if r == row]
        if not mine:
            continue
        results[row] = {key: mean_std([s[key]["mean"] for s in mine]) for key in ("macro_f1", "accuracy")}
        results[row]["seeds"] = len(mine)
        results[row]["values_macro_f1"] = [s["macro_f1"]["mean"] for s in mine]
    return results


def report(results: dict[str, dict]) -> tuple[str, list[str]]:
    return markdown_table(results), differences(results, "SimCLR") + differences(results, RANDOM_ROW)


class ProbedSoFar:
    """Probe summaries as they arrive from the worker threads. After each one table.md is rewritten, marked
    partial until every run is in (then it is the final table), so a run stopped by a crash or a time limit
    still leaves its table."""

    def __init__(self, path: Path, rows: list[str], expected: int):
        self.path, self.rows, self.expected = path, rows, expected
        self.probed: dict[tuple[str, int], dict] = {}
        self.lock = threading.Lock()

    def add(self, row: str, seed: int, summary: dict) -> int:
        """Record one probe, rewrite table.md, and return how many runs are probed now."""
        with self.lock:
            self.probed[(row, seed)] = summary
            table, notes = report(tabulate(self.probed, self.rows))
            text = f"{table}\n\n" + "".join(f"- {n}\n" for n in notes)
            if len(self.probed) < self.expected:
                stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
                text = (f"Partial: {len(self.probed)} of {self.expected} runs probed ({stamp}); rows with fewer "
                        f"seeds are not final.\n\n{text}")
            write_bytes_atomic(self.path, text.encode())
            return len(self.probed)


class RunTimings:
    """timings.json: each run's training and probe seconds, kept across invocations so that a resumed table
    still reports every run (a run marked resumed lacks the seconds it trained before the stop)."""

    def __init__(self, path: Path):
        self.path = path
        self.runs: dict[str, dict] = json.loads(path.read_text()) if path.is_file() else {}
        self.lock = threading.Lock()

    def record(self, name: str, **fields) -> None:
        with self.lock:
            self.runs.setdefault(name, {}).update(fields)
            write_json_atomic(self.path, self.runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="small")
    parser.add_argument("--data", type=Path, default=None, help="VoxCeleb-layout videos [default: voxceleb_mini]")
    parser.add_argument("--fer", type=Path, default=None, help="FER2013 folder [default: fer2013 in shared data]")
    parser.add_argument("--out", type=Path, default=Path("ablation_out"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="Seeds FIRST..FIRST+SEEDS-1 (pretraining and random init): fresh seeds for a confirmation "
                             "run after settings were explored on the default ones.")
    parser.add_argument("--steps", type=int, default=None, help="Override the budget's training steps.")
    parser.add_argument("--lr", type=float, default=None, help="Override the budget's learning rate.")
    parser.add_argument("--rows", nargs="*", default=None, help=f"Subset of rows: {', '.join(ALL_ROWS)}")
    parser.add_argument("--parallel", type=int, default=None, help="Processes side by side [default: cores / threads]")
    args = parser.parse_args()

    budget = BUDGETS[args.budget]
    overrides = {key: value for key, value in (("steps", args.steps), ("lr", args.lr)) if value}
    for key in ("precision", "probe_precision"):
        if getattr(budget, key) == "bf16" and not cpu_has_native_bf16():
            overrides[key] = "auto"  # emulated bf16 is slower than fp32 on CPU; CUDA keeps bf16
    budget = Budget(**{**budget.__dict__, **overrides})
    data = args.data or shared_data() / "voxceleb_mini"
    fer = args.fer or shared_data() / "fer2013"
    for path, what in ((data, "--data"), (fer, "--fer")):
        if not path.is_dir():
            raise SystemExit(f"{what} {path}: no such folder (set SSLFER_DATA or pass {what})")
    rows = args.rows or list(ALL_ROWS)
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)}; choose from {', '.join(ALL_ROWS)}")
    cores = os.cpu_count() or 1
    parallel = args.parallel or max(1, cores // budget.threads if budget.threads else 1)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    require_same_budget(out / "budget.json", budget)
    started = time.perf_counter()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"ablation, budget {args.budget}: {budget}; seeds {seeds.start}-{seeds.stop - 1}; {parallel} side by side; "
          f"out {out}",
          flush=True)

    shards = prep(data, out, jobs=cores)
    jobs = [(row, seed) for row in rows if row != RANDOM_ROW for seed in seeds]
    probed = ProbedSoFar(out / "table.md", rows, expected=len(rows) * len(seeds))
    timings = RunTimings(out / "timings.json")

    def probe(row: str, seed: int, spec: str) -> None:
        name = run_name(row, seed)
        summary, took = evaluate(spec, name, fer, out, budget)
        if took:
            timings.record(name, probe_s=round(took, 1))
        count = probed.add(row, seed, summary)  # read under the lock: two probes may finish together
        print(f"probed {row} seed {seed}: test macro F1 {100 * summary['macro_f1']['mean']:.2f} "
              f"({count} of {probed.expected})", flush=True)

    def train_then_probe(job: tuple[str, int]) -> None:
        row, seed = job
        backbone, took, resumed = train_and_export(shards, out, row, seed, budget)
        if took:
            timings.record(run_name(row, seed), train_s=round(took, 1), resumed=resumed)
            print(f"trained {row} seed {seed}: {took:.0f} s{' (resumed)' if resumed else ''}", flush=True)
        probe(row, seed, str(backbone))

    # The random rows first: they need no training, and every trained row is judged against them.
    tasks = [(probe, (RANDOM_ROW, seed, f"random:{seed}")) for seed in seeds if RANDOM_ROW in rows]
    run_all(tasks + [(train_then_probe, (job,)) for job in jobs], parallel)

    results = tabulate(probed.probed, rows)
    table, notes = report(results)
    elapsed = time.perf_counter() - started
    record = {
        "budget": args.budget, "config": budget.__dict__, "seeds": list(seeds), "rows": results,
        "run_seconds": timings.runs, "elapsed_s": elapsed, "data": str(data), "fer": str(fer),
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores", "python": platform.python_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "loss_curves": {run_name(r, s): loss_curve(out / "runs" / run_name(r, s)) for r, s in jobs},
    }
    (out / "ablation.json").write_text(json.dumps(record, indent=1))
    print(f"\nFER2013 test, linear probe ({budget.arch}, {budget.steps} steps, {args.seeds} seeds; "
          f"mean ± std over seeds):\n\n{table}\n")
    print("\n".join(notes))
    print(f"\nwall time {elapsed / 60:.1f} min; table in {out / 'table.md'}, everything in {out / 'ablation.json'}")


if __name__ == "__main__":
    main()
