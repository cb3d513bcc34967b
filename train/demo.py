"""The whole pipeline end to end on a fresh machine: sample -> prep -> verify -> train -> export -> eval.

    python -m train.demo --out DIR [--data VOXCELEB_ROOT] [--eval-data PATH]   (or: make demo)

Without --data it first writes the embedded synthetic sample (preprocess.demo_sample). Every other stage runs
the installed command-line tool in its own process, exactly as a user would type it, so a failing stage is
isolated and its own error message stays visible above the demo's one-line verdict.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

# Console script -> module whose `main` it runs (as in setup.cfg). Tools are launched through the current
# interpreter so the demo works whether or not the venv's bin/ is on PATH.
TOOL_MODULES = {
    "sslfer-prep": "preprocess.cli",
    "sslfer-manifest": "data_manifest.cli",
    "sslfer-train": "train.cli",
    "sslfer-eval": "train.evaluation.cli",
}
SUMMARY_NAME = "demo.json"
# Everything the demo writes into OUT; a rerun removes exactly these.
OWNED_NAMES = ("sample", "shards", "run", "backbone.safetensors", "eval", "feature-cache", SUMMARY_NAME)
ABLATION_FLAGS = ("--timeaug", "--hardneg", "--faceswap", "--maskfn")


class StageFailed(Exception):
    """A stage did not complete; the message is one line."""


@dataclass
class DemoPaths:
    out: Path

    @property
    def sample(self) -> Path:
        return self.out / "sample"

    @property
    def shards(self) -> Path:
        return self.out / "shards"

    @property
    def manifest(self) -> Path:
        return self.shards / "manifest.json"

    @property
    def run(self) -> Path:
        return self.out / "run"

    @property
    def metrics(self) -> Path:
        return self.run / "metrics.jsonl"

    @property
    def backbone(self) -> Path:
        return self.out / "backbone.safetensors"

    @property
    def eval(self) -> Path:
        return self.out / "eval"

    @property
    def results(self) -> Path:
        return self.eval / "results.json"

    @property
    def feature_cache(self) -> Path:
        return self.out / "feature-cache"

    @property
    def summary(self) -> Path:
        return self.out / SUMMARY_NAME


@dataclass
class StageRecord:
    name: str
    seconds: float
    command: str | None = None
    note: str = ""


@dataclass
class DemoLog:
    stages: list[StageRecord] = field(default_factory=list)
    total: int = 0

    def header(self, name: str, command: list[str] | None = None, what: str = "") -> None:
        number = len(self.stages) + 1
        text = f"\n[{number}/{self.total}] {name}" + (f": {what}" if what else "")
        if command:
            text += "\n$ " + shlex.join(command)
        click.echo(text)
        sys.stdout.flush()

    def done(self, record: StageRecord) -> None:
        self.stages.append(record)
        click.echo(f"[{len(self.stages)}/{self.total}] {record.name} done in {record.seconds:.1f} s"
                   + (f" ({record.note})" if record.note else ""))
        sys.stdout.flush()


def tool_process_args(tool: str, args: list[str]) -> list[str]:
    """argv that runs `tool args...` with this interpreter, as the console script would."""
    module = TOOL_MODULES[tool]
    launcher = f"import sys; from {module} import main; sys.argv[0] = {tool!r}; sys.exit(main())"
    return [sys.executable, "-c", launcher, *args]


def run_tool(log: DemoLog, stage: str, tool: str, args: list[str], what: str = "") -> None:
    command = [tool, *args]
    log.header(stage, command, what)
    start = time.perf_counter()
    try:
        status = subprocess.run(tool_process_args(tool, args)).returncode
    except OSError as error:
        raise StageFailed(f"cannot start {tool}: {error}") from None
    if status != 0:
        raise StageFailed(f"{tool} exited with status {status} (its messages are above)")
    log.done(StageRecord(stage, time.perf_counter() - start, shlex.join(command)))


def make_sample(log: DemoLog, paths: DemoPaths, *, clips: int, seconds: float, probe: bool, seed: int) -> dict:
    if clips:
        what = f"{clips} synthetic clip(s) of {seconds:g} s per identity"
        what += " + labelled probe images" if probe else ""
    else:
        what = "labelled probe images only (training clips come from --data)"
    log.header("sample", what=what)
    start = time.perf_counter()
    from preprocess.demo_sample import write_demo_sample
    from sslfer_core.dlib_models import DlibModelsNotFound, locate_dlib_models
    from sslfer_core.face_detection import FaceDetector

    try:
        detector = FaceDetector(locate_dlib_models())
        counts = write_demo_sample(paths.sample, detector, clips_per_identity=clips, seconds=seconds,
                                   probe_clips_per_identity=2 if probe else 0, probe_seconds=12.0, seed=seed)
    except DlibModelsNotFound as error:
        raise StageFailed(str(error)) from None
    except Exception as error:  # any failure here ends the demo with one line naming the stage
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise StageFailed(f"{type(error).__name__}: {first_line}") from None
    note = f"{counts['train_clips']} training clips, {counts['probe_images']} probe images in {paths.sample}"
    log.done(StageRecord("sample", time.perf_counter() - start, note=note))
    return counts


def prepare_out(out: Path) -> None:
    """OUT must be new, empty, or an earlier demo's folder (whose demo outputs are then replaced)."""
    if out.exists() and not out.is_dir():
        raise click.UsageError(f"--out {out} is a file")
    if out.is_dir():
        entries = [p.name for p in out.iterdir()]
        if entries and SUMMARY_NAME not in entries:
            raise click.UsageError(f"--out {out} is not empty and holds no earlier demo ({SUMMARY_NAME}); "
                                   "choose a new or empty folder")
        for name in OWNED_NAMES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def write_summary(paths: DemoPaths, log: DemoLog, status: str, options: dict) -> None:
    payload = {
        "status": status,
        "options": options,
        "stages": [dict(vars(record), seconds=round(record.seconds, 2)) for record in log.stages],
        "total_seconds": round(sum(record.seconds for record in log.stages), 2),
        "paths": {name: str(getattr(paths, name)) for name in
                  ("sample", "shards", "manifest", "run", "metrics", "backbone", "results", "feature_cache")},
    }
    paths.summary.write_text(json.dumps(payload, indent=2) + "\n")


def results_table(results_path: Path) -> str:
    from train.evaluation.results import COLUMNS, load_results, render_table, table_rows

    try:
        payload = load_results(results_path)
    except click.ClickException as error:
        raise StageFailed(error.message) from None
    return render_table(table_rows(payload), tuple(c[0] for c in COLUMNS), markdown=False)


def print_report(paths: DemoPaths, log: DemoLog, eval_name: str, used_sample: bool) -> None:
    total = sum(record.seconds for record in log.stages)
    click.echo(f"\n=== sslfer demo finished in {total:.1f} s ===\n")
    width = max(len(record.name) for record in log.stages)
    for record in log.stages:
        click.echo(f"  {record.name.ljust(width)}  {record.seconds:7.1f} s")
    click.echo(f"\nLinear probe on {eval_name} (test split; 'backbone' = the demo's pretrained network):\n")
    click.echo(results_table(paths.results))
    click.echo("\nWhere everything went:")
    rows = [("sample", paths.sample if used_sample else None), ("shards", paths.shards),
            ("manifest", paths.manifest), ("run folder", paths.run), ("metrics", paths.metrics),
            ("backbone", paths.backbone), ("results", paths.results), ("demo summary", paths.summary)]
    for label, path in rows:
        if path is not None:
            click.echo(f"  {label:<13} {path}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for everything the demo writes (new, empty, or an earlier demo's, which is replaced).")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="VoxCeleb root to prepare instead of the embedded synthetic sample.")
@click.option("--eval-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Dataset for the linear probe (any that sslfer-eval reads); default: the synthetic probe set.")
@click.option("--eval-max", type=click.IntRange(min=1), default=None,
              help="With --eval-data: at most ~N images per split (sslfer-eval --max-per-split).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="With --data: prepare only the first N clips (sslfer-prep --limit).")
@click.option("--clips", type=click.IntRange(min=1), default=4, show_default=True,
              help="Synthetic training clips per identity.")
@click.option("--seconds", type=click.FloatRange(min=4.0), default=12.0, show_default=True,
              help="Length of each synthetic training clip.")
@click.option("--steps", type=click.IntRange(min=1), default=60, show_default=True, help="Training steps.")
@click.option("--batch-size", type=click.IntRange(min=2), default=16, show_default=True,
              help="Anchors per step (4 rows each with --hardneg).")
@click.option("--resize", type=click.IntRange(min=16), default=72, show_default=True, help="sslfer-train --resize.")
@click.option("--crop", type=click.IntRange(min=16), default=64, show_default=True,
              help="sslfer-train --crop; also the evaluation image size.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(out: Path, data: Path | None, eval_data: Path | None, eval_max: int | None, limit: int | None,
         clips: int, seconds: float, steps: int, batch_size: int, resize: int, crop: int, seed: int):
    """Generate (or take) data, then run sslfer-prep, sslfer-manifest verify, sslfer-train, export and
    sslfer-eval linear with a short budget, and print the results and where everything went."""
    if crop > resize:
        raise click.UsageError(f"--crop {crop} is larger than --resize {resize}")
    if limit is not None and data is None:
        raise click.UsageError("--limit applies to --data only")
    if eval_max is not None and eval_data is None:
        raise click.UsageError("--eval-max applies to --eval-data only")
    out = out.resolve()
    prepare_out(out)
    paths = DemoPaths(out)
    options = {"data": str(data) if data else None, "eval_data": str(eval_data) if eval_data else None,
               "eval_max": eval_max, "limit": limit, "clips": clips, "seconds": seconds, "steps": steps,
               "batch_size": batch_size, "resize": resize, "crop": crop, "seed": seed}
    need_sample = data is None or eval_data is None
    log = DemoLog(total=5 + int(need_sample))
    write_summary(paths, log, "running", options)  # marks OUT as a demo folder from the start
    current = "setup"
    try:
        if need_sample:
            current = "sample"
            make_sample(log, paths, clips=0 if data else clips, seconds=seconds, probe=eval_data is None, seed=seed)
        current = "prep"
        source = data.resolve() if data else paths.sample
        run_tool(log, "prep", "sslfer-prep", ["voxceleb", str(source), "--out", str(paths.shards), "--seed", str(seed)]
                 + (["--limit", str(limit)] if limit else []), what="videos -> face shards")
        current = "verify"
        run_tool(log, "verify", "sslfer-manifest", ["verify", str(paths.shards)], what="shards against their manifest")
        current = "train"
        run_tool(log, "train", "sslfer-train",
                 ["train", "--shards", str(paths.shards), "--out", str(paths.run), "--arch", "resnet18",
                  *ABLATION_FLAGS, "--batch-size", str(batch_size), "--steps", str(steps), "--resize", str(resize),
                  "--crop", str(crop), "--seed", str(seed), "--log-every", str(max(1, min(10, steps // 6)))],
                 what=f"{steps} contrastive steps")
        current = "export"
        run_tool(log, "export", "sslfer-train", ["export", str(paths.run), "-o", str(paths.backbone)],
                 what="backbone as a torchvision state_dict")
        current = "eval"
        eval_source = eval_data.resolve() if eval_data else paths.sample / "probe.csv"
        run_tool(log, "eval", "sslfer-eval",
                 ["linear", "--backbone", str(paths.backbone), "--backbone", "random", "--data", str(eval_source),
                  "--image-size", str(crop), "--out", str(paths.eval),
                  "--cache-dir", str(paths.feature_cache)] + (["--max-per-split", str(eval_max)] if eval_max else []),
                 what="linear probe, pretrained vs random backbone")
        current = "report"
        write_summary(paths, log, "ok", options)
        print_report(paths, log, "the synthetic probe set" if eval_data is None else str(eval_source),
                     used_sample=need_sample)
    except StageFailed as error:
        write_summary(paths, log, f"failed at {current}", options)
        sys.stdout.flush()
        raise click.ClickException(f"demo failed at stage '{current}': {error}") from None
    except KeyboardInterrupt:
        write_summary(paths, log, f"interrupted at {current}", options)
        click.echo(f"\ndemo interrupted during stage '{current}'", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
