"""The DFER table: random init against MAE-pretrained LGI-Former, each fine-tuned without and with the CA motion
branch (add, cat, add-pos), and a contrastive ResNet against a random one; the same seeds for every row.

    .venv/bin/python benchmarks/bench_dfer_table.py --out /tmp/dfer_table    # synthetic set, CPU, tiny (~10 min)
    .venv/bin/python benchmarks/bench_dfer_table.py --out OUT --data DFEW_DIR --format dfew \\
        --mae-export mae.pt --resnet-export resnet.pt --preset full --frames 16 --image-size 160 --epochs 100
    .venv/bin/python benchmarks/bench_dfer_table.py --out OUT --cuda     # GPU: full preset, bf16, CA add, clips/s

Every row is one `sslfer-eval dfer finetune` (or `linear`) call with `--seeds N`: seed s fixes the split, the
head's initialisation and the augmentation draws, so rows are paired by seed. The table prints test UAR and WAR
as mean ± std over the seeds (sample std), and a comparison list marks with `*` each difference of means larger
than 2 pooled std (pooled = sqrt((s1^2 + s2^2) / 2)); with 3 seeds that is a coarse screen, not a test.

Without --data, labelled expression-change clips are rendered (sslfer_core.synthetic_clips) into OUT/clips.
Without --mae-export / --resnet-export, both backbones are pretrained here for --pretrain-steps steps
(`sslfer-train mae` and `sslfer-train` SimCLR, then `sslfer-train export`) on shards of unlabelled synthetic
talking faces of other subjects than the labelled set (OUT/pretrain_shards). Throughput (training clips/s)
is read from each fine-tuning row.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from data_manifest.manifest import build_manifest, save_manifest  # noqa: E402
from sslfer_core.shard_format import ImageCodec, ShardHeader, VideoFrames, write_shard  # noqa: E402
from sslfer_core.synthetic_clips import drawn_face, write_expression_clips  # noqa: E402
from sslfer_core.synthetic_faces import ExpressionParams, render_expression, smooth_schedule  # noqa: E402

FUSION_ROWS = (None, "add", "cat", "add-pos")
PRETRAIN_FPS = 25.0
PRETRAIN_SEED_OFFSET = 1000  # pretraining subjects are drawn from other seeds than the labelled clips
MARK_SIGMAS = 2.0


def _invoke(main, args: list) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exit_code != 0:
        sys.exit(f"bench_dfer_table: {' '.join(map(str, args[:3]))} failed:\n{result.output[-3000:]}")
    return result.output


def _eval(args: list) -> str:
    from train.evaluation.cli import main
    return _invoke(main, args)


def _train(args: list) -> str:
    from train.cli import main
    return _invoke(main, args)


# ------------------------------------------------------------------------------------------ pretraining
def write_pretrain_shards(root: Path, *, videos: int, frames: int, size: int, seed: int) -> Path:
    """Unlabelled talking-face videos (drawn faces, smoothly drifting expressions) at PRETRAIN_FPS, one shard."""
    root.mkdir(parents=True, exist_ok=True)
    header = ShardHeader(image_size=size, patch_size=0, swaps_per_frame=0, descriptor_kind="none",
                         descriptor_dim=0, codecs={name: ImageCodec() for name in ("face", "eyes", "mouth", "swaps")},
                         prep_config={"fps": PRETRAIN_FPS, "size": size},
                         dlib_model_sha256={"shape_predictor": "synthetic"})
    batch = []
    for v in range(videos):
        rng = np.random.default_rng([seed + PRETRAIN_SEED_OFFSET, v])
        face, landmarks = drawn_face(rng, size)
        schedule = smooth_schedule(rng, frames, PRETRAIN_FPS / 10)  # expressions change within a second or two
        rendered = [render_expression(face, landmarks, ExpressionParams.from_array(p)) for p in schedule]
        batch.append(VideoFrames(
            video_id=f"synth{v:03d}", identity=f"p{v:03d}", source_path=f"p{v:03d}/synth{v:03d}.mp4",
            source_fps=PRETRAIN_FPS, faces=np.stack([f for f, _ in rendered]),
            landmarks=np.stack([lm for _, lm in rendered]).astype(np.float32), eyes=None, mouth=None,
            timestamps=np.arange(frames) / PRETRAIN_FPS, frame_index=np.arange(frames),
            det_score=np.ones(frames, np.float32)))
    paths = [write_shard(root / "shard-00000.h5", header, batch)]
    save_manifest(root, build_manifest(root, paths))
    return root


def pretrain(out: Path, args) -> tuple[Path, Path]:
    shards = out / "pretrain_shards"
    if not (shards / "manifest.json").is_file():
        write_pretrain_shards(shards, videos=args.pretrain_videos, frames=args.pretrain_frames, size=args.image_size,
                              seed=args.data_seed)
    mae_run, con_run = out / "mae_run", out / "contrastive_run"
    mae_file, con_file = out / "mae_export.pt", out / "resnet_export.pt"
    steps = args.pretrain_steps
    if args.mae_export is None:
        _train(["mae", "--shards", shards, "--out", mae_run, "--preset", args.preset, "--frames", args.frames,
                "--stride", "2", "--batch-size", args.pretrain_batch, "--workers", "0", "--steps", steps,
                "--warmup-steps", max(1, steps // 10), "--lr", "1.5e-3", "--log-every", max(1, steps // 5),
                "--ckpt-every", steps])
        _train(["export", mae_run, "-o", mae_file])
    if args.resnet_export is None:
        _train(["--shards", shards, "--out", con_run, "--arch", "resnet18", "--resize", args.resnet_size + 4,
                "--crop", args.resnet_size, "--batch-size", args.pretrain_batch * 2, "--workers", "0",
                "--steps", steps, "--log-every", max(1, steps // 5), "--ckpt-every", steps])
        _train(["export", con_run, "-o", con_file])
    return (Path(args.mae_export) if args.mae_export else mae_file,
            Path(args.resnet_export) if args.resnet_export else con_file)


# ------------------------------------------------------------------------------------------------ table
def runs_of(results: Path) -> tuple[dict[str, dict[int, dict]], dict[str, float | None]]:
    """(backbone row name -> seed -> test report, row name -> training clips/s)."""
    payload = json.loads(results.read_text())
    return {entry["backbone"]["name"]: {run["seed"]: run["test"] for run in entry["runs"]}
            for entry in payload["backbones"]}, {entry["backbone"]["name"]: entry.get("train_clips_per_second")
                                                 for entry in payload["backbones"]}


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def comparison(a: list[float], b: list[float]) -> tuple[float, float, bool]:
    """(difference of means b - a, pooled std, whether |difference| > MARK_SIGMAS pooled std)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    pooled = math.sqrt((sa ** 2 + sb ** 2) / 2)
    diff = mb - ma
    return diff, pooled, abs(diff) > MARK_SIGMAS * pooled if pooled > 0 else diff != 0


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def render(rows: list[dict], comparisons: list[tuple[str, str, str]], seeds: list[int]) -> str:
    lines = [f"Seeds {', '.join(map(str, seeds))} (the same for every row); test UAR / WAR in %, mean ± std.", "",
             "| protocol | backbone | CA | UAR | WAR | train clips/s |", "|---|---|---|---:|---:|---:|"]
    by_key = {row["key"]: row for row in rows}
    for row in rows:
        uar, war = mean_std(row["uar"]), mean_std(row["war"])
        rate = f"{row['clips_per_second']:.2f}" if row.get("clips_per_second") else "-"
        lines.append(f"| {row['protocol']} | {row['label']} | {row['ca'] or '-'} | {_pct(uar[0])} ± {_pct(uar[1])} | "
                     f"{_pct(war[0])} ± {_pct(war[1])} | {rate} |")
    lines += ["", f"Differences (second minus first), `*` where |Δ| > {MARK_SIGMAS:g} pooled std:", "",
              "| comparison | Δ UAR | pooled std | Δ WAR | pooled std |", "|---|---:|---:|---:|---:|"]
    for title, first, second in comparisons:
        a, b = by_key[first], by_key[second]
        cells = []
        for metric in ("uar", "war"):
            diff, pooled, marked = comparison(a[metric], b[metric])
            cells += [f"{100 * diff:+.1f}{' *' if marked else ''}", _pct(pooled)]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def collect(results: Path, protocol: str, names: dict[str, tuple[str, str | None, str]], seeds: list[int],
            rows: list[dict]) -> None:
    reports, rates = runs_of(results)
    for name, (label, ca, key) in names.items():
        per_seed = reports[name]
        if sorted(per_seed) != seeds:
            sys.exit(f"bench_dfer_table: row {name} ran seeds {sorted(per_seed)}, not {seeds}")
        rows.append({"key": key, "protocol": protocol, "label": label, "ca": ca, "seeds": seeds,
                     "uar": [per_seed[s]["uar"] for s in seeds], "war": [per_seed[s]["war"] for s in seeds],
                     "clips_per_second": rates.get(name) if protocol == "finetune" else None})


def run_table(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.data is None:
        data = write_expression_clips(out / "clips", subjects=args.subjects, clips_per_class=args.clips_per_class,
                                      frames=args.clip_frames, size=max(args.image_size, args.resnet_size),
                                      seed=args.data_seed)
        fmt = "video-csv"
    else:
        data, fmt = Path(args.data), args.format
    mae, resnet = pretrain(out, args) if (args.mae_export is None or args.resnet_export is None) else \
        (Path(args.mae_export), Path(args.resnet_export))
    pretrain_seconds = time.perf_counter() - started
    seeds = list(range(args.seeds))
    common = ["--data", data, "--format", fmt, "--seeds", args.seeds, "--val-fraction", args.val_fraction,
              "--test-fraction", args.test_fraction, "--stride", args.stride, "--workers", args.workers,
              "--min-frames", args.frames]
    if args.threads:
        common += ["--threads", args.threads]
    video = ["--frames", args.frames, "--image-size", args.image_size]
    frames_2d = ["--frames", args.frames, "--image-size", args.resnet_size]
    finetune = ["--epochs", args.epochs, "--batch-size", args.batch_size, "--warmup-epochs", args.warmup_epochs,
                "--lr", args.lr]
    random_video = f"mae:{args.preset}"
    rows: list[dict] = []
    mae_name, resnet_name = mae.stem if mae.is_file() else None, resnet.stem if resnet.is_file() else None
    timings = {}
    if args.linear:
        t = time.perf_counter()
        target = out / "linear-video"
        _eval(["dfer", "linear", "--backbone", random_video, "--backbone", mae, "--out", target, *common, *video])
        names = json.loads((target / "results.json").read_text())["backbones"]
        collect(target / "results.json", "linear",
                {names[0]["backbone"]["name"]: ("LGI-Former random", None, "lin-random"),
                 names[1]["backbone"]["name"]: ("LGI-Former MAE", None, "lin-mae")}, seeds, rows)
        target = out / "linear-resnet"
        _eval(["dfer", "linear", "--backbone", "random", "--backbone", resnet, "--out", target, *common, *frames_2d])
        names = json.loads((target / "results.json").read_text())["backbones"]
        collect(target / "results.json", "linear",
                {names[0]["backbone"]["name"]: ("ResNet-18 random", None, "lin-rn-random"),
                 names[1]["backbone"]["name"]: ("ResNet-18 contrastive", None, "lin-rn-con")}, seeds, rows)
        timings["linear_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    for ca in FUSION_ROWS:
        target = out / f"finetune-video-{ca or 'none'}"
        _eval(["dfer", "finetune", "--backbone", random_video, "--backbone", mae, "--out", target, *common, *video,
               *finetune] + (["--ca", ca] if ca else []))
        names = json.loads((target / "results.json").read_text())["backbones"]
        collect(target / "results.json", "finetune",
                {names[0]["backbone"]["name"]: ("LGI-Former random", ca, f"ft-random-{ca}"),
                 names[1]["backbone"]["name"]: ("LGI-Former MAE", ca, f"ft-mae-{ca}")}, seeds, rows)
    target = out / "finetune-resnet"
    _eval(["dfer", "finetune", "--backbone", "random", "--backbone", resnet, "--out", target, *common, *frames_2d,
           *finetune])
    names = json.loads((target / "results.json").read_text())["backbones"]
    collect(target / "results.json", "finetune",
            {names[0]["backbone"]["name"]: ("ResNet-18 random", None, "ft-rn-random"),
             names[1]["backbone"]["name"]: ("ResNet-18 contrastive", None, "ft-rn-con")}, seeds, rows)
    timings["finetune_seconds"] = time.perf_counter() - t
    comparisons = [(f"finetune{' +CA ' + ca if ca else ''}: random -> MAE", f"ft-random-{ca}", f"ft-mae-{ca}")
                   for ca in FUSION_ROWS]
    comparisons += [(f"finetune {init}: no CA -> CA {ca}", f"ft-{init}-None", f"ft-{init}-{ca}")
                    for init in ("random", "mae") for ca in FUSION_ROWS[1:]]
    comparisons.append(("finetune ResNet-18: random -> contrastive", "ft-rn-random", "ft-rn-con"))
    if args.linear:
        comparisons += [("linear LGI-Former: random -> MAE", "lin-random", "lin-mae"),
                        ("linear ResNet-18: random -> contrastive", "lin-rn-random", "lin-rn-con")]
    text = render(rows, comparisons, seeds)
    total = time.perf_counter() - started
    conditions = (f"data {data} ({fmt}); {args.preset} preset {args.frames} x {args.image_size}^2 (ResNet "
                  f"{args.frames} x {args.resnet_size}^2); {args.epochs} epochs, batch {args.batch_size}; backbones "
                  f"{mae_name or mae} / {resnet_name or resnet}; {platform.processor() or platform.machine()}; "
                  f"pretraining+data {pretrain_seconds:.0f} s, total {total:.0f} s")
    print(text)
    print(f"\n{conditions}")
    (out / "table.md").write_text(text + f"\n\n{conditions}\n")
    (out / "bench.json").write_text(json.dumps({"rows": rows, "comparisons": comparisons, "seeds": seeds,
                                                "conditions": conditions, "timings": timings,
                                                "args": vars(args)}, indent=2, default=str))


def run_cuda(args) -> None:
    """Fine-tuning throughput of the full preset in bf16 on CUDA, without and with CA add (random init: the
    rate does not depend on the weights; --mae-export adds its row)."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench_dfer_table: --cuda needs a CUDA device; none is visible")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = write_expression_clips(out / "clips160", subjects=args.subjects, clips_per_class=args.clips_per_class,
                                  frames=16 + 2, size=160, seed=args.data_seed)
    backbones = ["--backbone", "mae:full"] + (["--backbone", args.mae_export] if args.mae_export else [])
    lines = [f"{torch.cuda.get_device_name()}, full preset 16 x 160^2, bf16, batch {args.batch_size}, "
             f"{args.epochs} epochs over {data}:"]
    for ca in (None, "add"):
        target = out / f"cuda-finetune-{ca or 'none'}"
        text = _eval(["dfer", "finetune", *backbones, "--data", data, "--frames", 16, "--image-size", 160,
                      "--stride", 1, "--device", "cuda", "--precision", "bf16", "--epochs", args.epochs,
                      "--warmup-epochs", 0, "--batch-size", args.batch_size, "--workers", args.workers,
                      "--val-fraction", args.val_fraction, "--test-fraction", args.test_fraction, "--out", target]
                     + (["--ca", ca] if ca else []))
        _, rates = runs_of(target / "results.json")
        lines += [f"  {name}: {rate:.1f} training clips/s" for name, rate in rates.items()]
        print(text)
    print("\n".join(lines))
    (out / "cuda.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default=None, help="Labelled clips (any `sslfer-eval dfer --data`); default: "
                                                     "render expression-change clips into OUT/clips.")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--mae-export", default=None, help="`sslfer-train export` of a video MAE run (or the run).")
    parser.add_argument("--resnet-export", default=None, help="A contrastive ResNet-18 export (or its run).")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=80, help="LGI-Former input side (the preset's).")
    parser.add_argument("--resnet-size", type=int, default=64, help="ResNet frame side.")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=9)
    parser.add_argument("--lr", type=float, default=1e-3, help="Base rate per 256 clips (as sslfer-eval).")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-linear", dest="linear", action="store_false", help="Skip the linear-probe rows.")
    parser.add_argument("--subjects", type=int, default=5, help="Synthetic set: subjects (drawn faces).")
    parser.add_argument("--clips-per-class", type=int, default=1)
    parser.add_argument("--clip-frames", type=int, default=10)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=10)
    parser.add_argument("--pretrain-batch", type=int, default=8)
    parser.add_argument("--pretrain-videos", type=int, default=8)
    parser.add_argument("--pretrain-frames", type=int, default=50)
    parser.add_argument("--cuda", action="store_true", help="Only the GPU throughput: full preset, bf16, CA add.")
    args = parser.parse_args()
    if args.cuda:
        run_cuda(args)
    else:
        run_table(args)


if __name__ == "__main__":
    main()
