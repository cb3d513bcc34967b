"""Both families of the tool end to end on a fresh machine (or make demo):

    contrastive  sample -> prep -> verify -> sheet -> train -> export -> eval (linear probe on images)
    video        prep --profile video -> sheet -> train mae (LGI-Former tiny) -> export -> eval dfer linear

    python -m train.demo --out DIR [--family both|contrastive|video] [--data VOXCELEB_ROOT] [--eval-data PATH]

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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from preprocess.demo_sample import CLIP_FPS

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
OWNED_NAMES = ("sample", "shards", "shards-video", "run", "run-mae", "backbone.safetensors", "mae-encoder.safetensors",
               "eval", "eval-video", "sheets", "logs", "feature-cache", SUMMARY_NAME)
ABLATION_FLAGS = ("--timeaug", "--hardneg", "--faceswap", "--maskfn")
FAMILIES = ("both", "contrastive", "video")
CONTRASTIVE_STAGES = ("prep", "verify", "sheet", "train", "export", "eval")
VIDEO_STAGES = ("prep-video", "sheet-video", "train-mae", "export-mae", "eval-video")
MAE_PRESET = "tiny"  # its clip (frames, input side) comes from sslfer_core.lgi_former.PRESETS
VIDEO_PREP_SIZE = 96  # stored face side of the video shards: above the tiny preset's input, so crops are real
# The synthetic clips are CLIP_FPS (10 fps): the video shards keep every frame and a clip steps one frame.
# Real VoxCeleb2 (--data) is 25 fps: the reference's 25 fps and 4-frame (0.16 s) stride.
REAL_DATA_STRIDE = ("--stride", "4")
# The reference's lr rule (3e-4 per 256 clips) gives 1e-5 at a batch of 8, below its own final lr; a few dozen
# steps need a fixed peak instead.
MAE_SCHEDULE = ("--lr", "1e-3", "--min-lr", "1e-5")
# A handful of videos: several clips of each per epoch, so 20 steps of 8 clips see every video several times.
MAE_CLIPS_PER_VIDEO = 4


def mae_clip() -> tuple[int, int]:
    """(frames, input side) of the MAE preset's clip; imported when the video family runs (it loads torch)."""
    from sslfer_core.lgi_former import preset

    config = preset(MAE_PRESET)
    return config.frames, config.img_size


class StageFailed(Exception):
    """A stage did not complete; the message is one line. `stage` names it where the raiser knows."""

    def __init__(self, message: str, stage: str | None = None):
        super().__init__(message)
        self.stage = stage


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
    def video_shards(self) -> Path:
        return self.out / "shards-video"

    @property
    def mae_run(self) -> Path:
        return self.out / "run-mae"

    @property
    def mae_encoder(self) -> Path:
        return self.out / "mae-encoder.safetensors"

    @property
    def video_eval(self) -> Path:
        return self.out / "eval-video"

    @property
    def video_results(self) -> Path:
        return self.video_eval / "results.json"

    @property
    def video_log(self) -> Path:
        return self.out / "logs" / "video.log"

    @property
    def sheets(self) -> Path:
        return self.out / "sheets"

    @property
    def sheet(self) -> Path:
        return self.sheets / "shards.png"

    @property
    def video_sheet(self) -> Path:
        return self.sheets / "shards-video.png"

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
    """Finished stages of the whole demo, numbered by their place in the plan; the two families may add to it
    from two threads, so every change and every terminal line takes the lock."""
    plan: list[str] = field(default_factory=list)
    stages: list[StageRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def number(self, name: str) -> str:
        return f"[{self.plan.index(name) + 1}/{len(self.plan)}]"

    def echo(self, text: str, err: bool = False) -> None:
        with self.lock:
            click.echo(text, err=err)
            (sys.stderr if err else sys.stdout).flush()

    def add(self, record: StageRecord) -> None:
        with self.lock:
            self.stages.append(record)

    def in_plan_order(self) -> list[StageRecord]:
        """Finished stages in the plan's order, whichever family finished first."""
        with self.lock:
            return sorted(self.stages, key=lambda record: self.plan.index(record.name))


@dataclass
class Channel:
    """Where one family's stages go. On the terminal (`output` None) a stage prints its header, command and
    messages as it runs. Beside the other family its messages go to the `output` file and the terminal gets
    one line as each stage starts and ends, so the two never interleave."""
    log: DemoLog
    output: Path | None = None
    family: str = ""
    running: str | None = None  # the stage begun last and not yet done
    stop: threading.Event = field(default_factory=threading.Event)  # set when the other family fails
    process: subprocess.Popen | None = None

    def header(self, name: str, command: list[str] | None = None, what: str = "") -> None:
        self.running = name
        text = f"{self.log.number(name)} {name}" + (f": {what}" if what else "")
        if self.output is None:
            self.log.echo("\n" + text + ("\n$ " + shlex.join(command) if command else ""))
            return
        with open(self.output, "a") as handle:
            handle.write(f"\n{text}\n" + ("$ " + shlex.join(command) + "\n" if command else ""))
        self.log.echo(f"{text} ({self.family}, beside the other family; its messages go to {self.output})")

    def done(self, record: StageRecord) -> None:
        self.running = None
        self.log.add(record)
        self.log.echo(f"{self.log.number(record.name)} {record.name} done in {record.seconds:.1f} s"
                      + (f" ({record.note})" if record.note else ""))

    def run(self, args: list[str]) -> int:
        if self.stop.is_set():
            raise StageFailed("not started: the other family failed")
        handle = open(self.output, "a") if self.output is not None else None  # None: the terminal
        try:
            self.process = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT if handle else None)
            return self.process.wait()
        finally:
            self.process = None
            if handle is not None:
                handle.close()

    def halt(self) -> None:
        """Stop this family: no further stage starts, and the running tool is ended."""
        self.stop.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()

    def messages_hint(self) -> str:
        return "its messages are above" if self.output is None else f"its messages are in {self.output}"


def tool_process_args(tool: str, args: list[str]) -> list[str]:
    """argv that runs `tool args...` with this interpreter, as the console script would."""
    module = TOOL_MODULES[tool]
    launcher = f"import sys; from {module} import main; sys.argv[0] = {tool!r}; sys.exit(main())"
    return [sys.executable, "-c", launcher, *args]


def run_tool(channel: Channel, stage: str, tool: str, args: list[str], what: str = "") -> None:
    command = [tool, *args]
    channel.header(stage, command, what)
    start = time.perf_counter()
    try:
        status = channel.run(tool_process_args(tool, args))
    except OSError as error:
        raise StageFailed(f"cannot start {tool}: {error}") from None
    if status != 0:
        raise StageFailed(f"{tool} exited with status {status} ({channel.messages_hint()})")
    channel.done(StageRecord(stage, time.perf_counter() - start, shlex.join(command)))


def make_sample(channel: Channel, paths: DemoPaths, *, clips: int, seconds: float, probe: bool,
                video_probe_seconds: float, seed: int) -> dict:
    parts = [f"{clips} synthetic clip(s) of {seconds:g} s per identity"] if clips else []
    parts += ["labelled probe images"] if probe else []
    parts += [f"labelled {video_probe_seconds:g} s probe clips"] if video_probe_seconds else []
    channel.header("sample", what=" + ".join(parts) + ("" if clips else " (training clips come from --data)"))
    start = time.perf_counter()
    from preprocess.demo_sample import write_demo_sample
    from sslfer_core.dlib_models import DlibModelsNotFound, locate_dlib_models
    from sslfer_core.face_detection import FaceDetector

    try:
        detector = FaceDetector(locate_dlib_models())
        counts = write_demo_sample(paths.sample, detector, clips_per_identity=clips, seconds=seconds,
                                   probe_clips_per_identity=2 if probe else 0, probe_seconds=12.0,
                                   video_probe_seconds=video_probe_seconds, seed=seed)
    except DlibModelsNotFound as error:
        raise StageFailed(str(error)) from None
    except Exception as error:  # any failure here ends the demo with one line naming the stage
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise StageFailed(f"{type(error).__name__}: {first_line}") from None
    note = (f"{counts['train_clips']} training clips, {counts['probe_images']} probe images, "
            f"{counts['video_probe_clips']} probe clips in {paths.sample}")
    channel.done(StageRecord("sample", time.perf_counter() - start, note=note))
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


PATH_NAMES = ("sample", "shards", "manifest", "sheet", "run", "metrics", "backbone", "results", "video_shards",
              "video_sheet", "mae_run", "mae_encoder", "video_results", "feature_cache")


def write_summary(paths: DemoPaths, log: DemoLog, status: str, options: dict, wall: float | None = None) -> None:
    payload = {
        "status": status,
        "options": options,
        "stages": [dict(vars(record), seconds=round(record.seconds, 2)) for record in log.in_plan_order()],
        "stage_seconds": round(sum(record.seconds for record in log.stages), 2),
        "wall_seconds": None if wall is None else round(wall, 2),
        "paths": {name: str(getattr(paths, name)) for name in PATH_NAMES},
        "pictures": [str(p) for p in pictures(paths)],
    }
    paths.summary.write_text(json.dumps(payload, indent=2) + "\n")


def pictures(paths: DemoPaths) -> list[Path]:
    """The PNGs the demo's stages wrote: shard-set sheets, then the evaluations' confusion matrices."""
    found = [p for p in (paths.sheet, paths.video_sheet) if p.is_file()]
    for folder in (paths.eval, paths.video_eval):
        found += sorted(folder.glob("confusion-*.png")) if folder.is_dir() else []
    return found


def closing_table(results: list[tuple[str, str, Path]]) -> str:
    """One table over both families: (family, data, results.json) -> a row per backbone. Image results give
    accuracy, video results WAR, which is the same quantity (the fraction of test items right)."""
    from train.evaluation.results import load_results

    header = ["family", "probe data", "backbone", "macro F1 (%)", "accuracy / WAR (%)", "UAR (%)"]
    body = []
    for family, data, path in results:
        try:
            payload = load_results(path)
        except click.ClickException as error:
            raise StageFailed(error.message, "report") from None
        for entry in payload["backbones"]:
            summary = entry.get("summary", {})
            cells = []
            for keys in (("macro_f1",), ("accuracy", "war"), ("uar",)):
                value = next((summary[k]["mean"] for k in keys if summary.get(k, {}).get("mean") is not None), None)
                cells.append("-" if value is None else f"{100 * value:.2f}")
            body.append([family, data, entry["backbone"]["name"], *cells])
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    line = lambda row: "  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(row) for row in body])


def print_report(paths: DemoPaths, log: DemoLog, results: list[tuple[str, str, Path]], used_sample: bool,
                 wall: float, side_by_side: bool) -> None:
    click.echo(f"\n=== sslfer demo finished in {wall:.1f} s ===\n")
    if side_by_side:
        click.echo("After the sample the two families ran side by side, so their stage times overlap:\n")
    width = max(len(record.name) for record in log.stages)
    for record in log.in_plan_order():
        click.echo(f"  {record.name.ljust(width)}  {record.seconds:7.1f} s")
    click.echo("\nLinear probes on the test split ('backbone' / 'mae-encoder' = the demo's pretrained networks, "
               "'random-*' = the same architecture untrained):\n")
    click.echo(closing_table(results))
    click.echo("\nWhere everything went:")
    rows = [("sample", paths.sample if used_sample else None), ("shards", paths.shards), ("run folder", paths.run),
            ("backbone", paths.backbone), ("results", paths.results), ("video shards", paths.video_shards),
            ("MAE run", paths.mae_run), ("MAE encoder", paths.mae_encoder), ("video results", paths.video_results),
            ("video log", paths.video_log), ("demo summary", paths.summary)]
    for label, path in rows:
        if path is not None and path.exists():
            click.echo(f"  {label:<13} {path}")
    click.echo("\nPictures:")
    for path in pictures(paths):
        kind = "shard-set sheet" if path.parent == paths.sheets else "confusion matrix"
        click.echo(f"  {kind:<16} {path}")


def contrastive_stages(channel: Channel, paths: DemoPaths, source: Path, *, limit, steps, batch_size, resize, crop,
                       seed, eval_source: Path, eval_max) -> None:
    run_tool(channel, "prep", "sslfer-prep", ["voxceleb", str(source), "--out", str(paths.shards), "--seed", str(seed)]
             + (["--limit", str(limit)] if limit else []), what="videos -> face shards")
    run_tool(channel, "verify", "sslfer-manifest", ["verify", str(paths.shards)], what="shards against their manifest")
    run_tool(channel, "sheet", "sslfer-manifest", ["inspect", str(paths.shards), "--sheet", str(paths.sheet)],
             what="a picture of the shard set")
    run_tool(channel, "train", "sslfer-train",
             ["train", "--shards", str(paths.shards), "--out", str(paths.run), "--arch", "resnet18",
              *ABLATION_FLAGS, "--batch-size", str(batch_size), "--steps", str(steps), "--resize", str(resize),
              "--crop", str(crop), "--seed", str(seed), "--log-every", str(max(1, min(10, steps // 6)))],
             what=f"{steps} contrastive steps")
    run_tool(channel, "export", "sslfer-train", ["export", str(paths.run), "-o", str(paths.backbone)],
             what="backbone as a torchvision state_dict")
    run_tool(channel, "eval", "sslfer-eval",
             ["linear", "--backbone", str(paths.backbone), "--backbone", "random", "--data", str(eval_source),
              "--image-size", str(crop), "--out", str(paths.eval),
              "--cache-dir", str(paths.feature_cache)] + (["--max-per-split", str(eval_max)] if eval_max else []),
             what="linear probe, pretrained vs random backbone")


def video_stages(channel: Channel, paths: DemoPaths, source: Path, *, real_data: bool, limit, steps, batch_size,
                 seed) -> None:
    frames, side = mae_clip()
    timing = list(REAL_DATA_STRIDE) if real_data else ["--stride-seconds", f"{1 / CLIP_FPS:g}"]
    run_tool(channel, "prep-video", "sslfer-prep",
             ["voxceleb", str(source), "--out", str(paths.video_shards), "--profile", "video",
              "--size", str(VIDEO_PREP_SIZE), "--seed", str(seed)]
             + ([] if real_data else ["--fps", f"{CLIP_FPS:g}"]) + (["--limit", str(limit)] if limit else []),
             what="videos -> every aligned frame (video profile)")
    run_tool(channel, "sheet-video", "sslfer-manifest", ["inspect", str(paths.video_shards), "--sheet", str(paths.video_sheet)],
             what="a picture of the video shard set")
    run_tool(channel, "train-mae", "sslfer-train",
             ["mae", "--shards", str(paths.video_shards), "--out", str(paths.mae_run), "--preset", MAE_PRESET,
              "--frames", str(frames), *timing, "--clips-per-video", str(MAE_CLIPS_PER_VIDEO), "--batch-size", str(batch_size),
              "--steps", str(steps), *MAE_SCHEDULE, "--seed", str(seed),
              "--log-every", str(max(1, min(10, steps // 6)))],
             what=f"{steps} masked-autoencoder steps, LGI-Former {MAE_PRESET}")
    run_tool(channel, "export-mae", "sslfer-train", ["export", str(paths.mae_run), "-o", str(paths.mae_encoder)],
             what="the LGI-Former encoder")
    run_tool(channel, "eval-video", "sslfer-eval",
             ["dfer", "linear", "--backbone", str(paths.mae_encoder), "--backbone", f"mae:{MAE_PRESET}",
              "--data", str(paths.sample / "video-probe.csv"), "--frames", str(frames), "--stride", "1",
              "--image-size", str(side), "--out", str(paths.video_eval)],
             what="clip-level linear probe, pretrained vs random LGI-Former")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for everything the demo writes (new, empty, or an earlier demo's, which is replaced).")
@click.option("--family", type=click.Choice(FAMILIES), default="both", show_default=True,
              help="contrastive: prep, train, export, linear probe on images; video: video-profile prep, MAE "
                   "pretraining, export, linear probe on clips; both: one after the other.")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="VoxCeleb root to prepare instead of the embedded synthetic sample.")
@click.option("--eval-data", type=click.Path(exists=True, path_type=Path), default=None,
              help="Dataset for the image linear probe (any that sslfer-eval reads); default: the synthetic probe set.")
@click.option("--eval-max", type=click.IntRange(min=1), default=None,
              help="With --eval-data: at most ~N images per split (sslfer-eval --max-per-split).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="With --data: prepare only the first N clips (sslfer-prep --limit).")
@click.option("--clips", type=click.IntRange(min=1), default=3, show_default=True,
              help="Synthetic training clips per identity.")
@click.option("--seconds", type=click.FloatRange(min=4.0), default=10.0, show_default=True,
              help="Length of each synthetic training clip.")
@click.option("--probe-seconds", type=click.FloatRange(min_open=True, min=0), default=None,
              help="Length of each labelled video probe clip [default and least: the MAE preset's clip at the "
                   "sample's frame rate].")
@click.option("--steps", type=click.IntRange(min=1), default=30, show_default=True, help="Contrastive training steps.")
@click.option("--batch-size", type=click.IntRange(min=2), default=16, show_default=True,
              help="Anchors per contrastive step (4 rows each with --hardneg).")
@click.option("--mae-steps", type=click.IntRange(min=1), default=20, show_default=True, help="MAE training steps.")
@click.option("--mae-batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Clips per MAE step.")
@click.option("--resize", type=click.IntRange(min=16), default=72, show_default=True, help="sslfer-train --resize.")
@click.option("--crop", type=click.IntRange(min=16), default=64, show_default=True,
              help="sslfer-train --crop; also the evaluation image size.")
@click.option("--serial", is_flag=True,
              help="Run the video family after the contrastive one, its messages on the terminal, instead of side "
                   "by side with its messages in OUT/logs/video.log.")
@click.option("--seed", type=int, default=0, show_default=True)
def main(out: Path, family: str, data: Path | None, eval_data: Path | None, eval_max: int | None, limit: int | None,
         clips: int, seconds: float, probe_seconds: float | None, steps: int, batch_size: int, mae_steps: int,
         mae_batch_size: int, resize: int, crop: int, serial: bool, seed: int):
    """Generate (or take) data, then run both families of the tool with a short budget: sslfer-prep,
    sslfer-manifest verify and inspect --sheet, sslfer-train (contrastive, then mae), export, and
    sslfer-eval linear / dfer linear; print one results table and where everything went."""
    if crop > resize:
        raise click.UsageError(f"--crop {crop} is larger than --resize {resize}")
    if limit is not None and data is None:
        raise click.UsageError("--limit applies to --data only")
    if eval_max is not None and eval_data is None:
        raise click.UsageError("--eval-max applies to --eval-data only")
    if eval_data is not None and family == "video":
        raise click.UsageError("--eval-data is the image probe's; --family video has none")
    contrastive, video = family in ("both", "contrastive"), family in ("both", "video")
    if video:
        shortest = mae_clip()[0] / CLIP_FPS
        if probe_seconds is not None and probe_seconds < shortest:
            raise click.UsageError(f"--probe-seconds {probe_seconds:g} is shorter than the {MAE_PRESET} preset's "
                                   f"clip ({shortest:g} s at {CLIP_FPS:g} fps)")
        probe_seconds = shortest if probe_seconds is None else probe_seconds
    out = out.resolve()
    prepare_out(out)
    paths = DemoPaths(out)
    options = {"family": family, "data": str(data) if data else None,
               "eval_data": str(eval_data) if eval_data else None, "eval_max": eval_max, "limit": limit,
               "clips": clips, "seconds": seconds, "probe_seconds": probe_seconds, "steps": steps,
               "batch_size": batch_size, "mae_steps": mae_steps, "mae_batch_size": mae_batch_size,
               "resize": resize, "crop": crop, "serial": serial, "seed": seed}
    image_probe = contrastive and eval_data is None
    need_sample = data is None or image_probe or video
    log = DemoLog(plan=["sample"] * need_sample + list(CONTRASTIVE_STAGES) * contrastive + list(VIDEO_STAGES) * video)
    terminal = Channel(log)
    side_by_side = contrastive and video and not serial
    video_channel = Channel(log, paths.video_log, "video family") if side_by_side else terminal
    write_summary(paths, log, "running", options)  # marks OUT as a demo folder from the start
    source = data.resolve() if data else paths.sample
    eval_source = eval_data.resolve() if eval_data else paths.sample / "probe.csv"
    run_contrastive = lambda: contrastive_stages(
        terminal, paths, source, limit=limit, steps=steps, batch_size=batch_size, resize=resize, crop=crop,
        seed=seed, eval_source=eval_source, eval_max=eval_max)
    run_video = lambda: video_stages(video_channel, paths, source, real_data=data is not None, limit=limit,
                                     steps=mae_steps, batch_size=mae_batch_size, seed=seed)
    failures: list[tuple[str, StageFailed, Channel]] = []  # in the order they happened
    worker = None
    start = time.perf_counter()
    try:
        if need_sample:
            make_sample(terminal, paths, clips=0 if data else clips, seconds=seconds, probe=image_probe,
                        video_probe_seconds=probe_seconds if video else 0.0, seed=seed)
        if side_by_side:
            # Each tool runs one torch thread, so the families share the cores instead of waiting in turn.
            paths.video_log.parent.mkdir(parents=True, exist_ok=True)
            paths.video_log.write_text("")
            worker = threading.Thread(target=run_family, args=(video_channel, run_video, failures, terminal),
                                      name="video family", daemon=True)
            worker.start()
        if contrastive:
            run_family(terminal, run_contrastive, failures, video_channel if side_by_side else None)
        if worker is not None:
            worker.join()
        elif video and not failures:
            run_family(terminal, run_video, failures, None)
        if failures:
            stage, error, channel = failures[0]
            if channel.output is not None:
                log.echo(f"\nlast lines of {channel.output}:\n" + tail(channel.output), err=True)
            raise StageFailed(str(error), stage)
        wall = time.perf_counter() - start
        write_summary(paths, log, "ok", options, wall)
        results = [("contrastive", "synthetic probe images" if eval_data is None else eval_source.name, paths.results)
                   ] * contrastive + [("video (MAE)", "synthetic probe clips", paths.video_results)] * video
        print_report(paths, log, results, used_sample=need_sample, wall=wall, side_by_side=side_by_side)
    except StageFailed as error:
        current = error.stage or terminal.running or "setup"
        write_summary(paths, log, f"failed at {current}", options, time.perf_counter() - start)
        raise click.ClickException(f"demo failed at stage '{current}': {error}") from None
    except KeyboardInterrupt:
        video_channel.halt()
        if worker is not None:
            worker.join(timeout=30)
        current = terminal.running or video_channel.running or "setup"
        write_summary(paths, log, f"interrupted at {current}", options, time.perf_counter() - start)
        click.echo(f"\ndemo interrupted during stage '{current}'", err=True)
        sys.exit(130)


def run_family(channel: Channel, stages, failures: list, other: Channel | None) -> None:
    """Run one family's stages; a failure is recorded with its stage, and stops the other family."""
    try:
        stages()
    except StageFailed as error:
        failures.append((channel.running or "setup", error, channel))
        if other is not None:
            other.halt()
    except Exception as error:  # a worker thread must not end silently
        failures.append((channel.running or "setup", StageFailed(f"{type(error).__name__}: {error}"), channel))
        if other is not None:
            other.halt()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(cannot read it: {error})"


if __name__ == "__main__":
    main()
