"""What a video MAE's loss should be compared with: on the same clips, crops and masks, the loss of
predicting zeros, the loss of predicting each token position's mean target (a "mean face" that needs no
context), and, given a run, the loss of the run's newest checkpoint.

    .venv/bin/python benchmarks/mae_baselines.py --shards /tmp/maerun/shards --run /tmp/maerun/cpu3
        [--preset tiny] [--prior-batches 48] [--eval-batches 12] [--batch-size 8] [--json out.json]

Aligned faces put the same parts of the face at the same token positions, so part of the standardised
appearance target is predictable from the position alone; the multi-scale crop of the pretraining
augmentation (sslfer_core.clip_augment) moves the face and removes most of that share. A model beats the
position prior only by reading the visible tokens.

Clips are drawn by ClipStream from the usable videos: --prior-batches batches (epoch 0 of seed 101) give
the per-position means, --eval-batches other batches (epoch 0 of seed 202) are scored. The scored clips are
new clips of the run's own videos (voxceleb_mini has no others to hold out), with crops and masks from a
fixed generator, so the model's figure is the loss on fresh clips, crops and masks, not on unseen people.
Each figure is given for the reference augmentation and for no crop (scale 1 only). The model is scored in
eval mode, fp32.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sslfer_core.clip_augment import ClipAugmentConfig, augment_clips  # noqa: E402
from sslfer_core.losses import mae_loss  # noqa: E402
from sslfer_core.mae import MAEModel, mae_targets  # noqa: E402
from sslfer_core.tube_masking import tube_window_mask  # noqa: E402
from train.checkpoints import list_checkpoints, read_checkpoint  # noqa: E402
from train.distributed import DistContext  # noqa: E402
from train.methods import get_method  # noqa: E402
from train.shard_set import open_shard_set  # noqa: E402

PRIOR_SEED, EVAL_SEED, MASK_SEED = 101, 202, 303


def draw(method, index, seed: int, batches: int) -> torch.Tensor:
    """`batches` batches of uint8 clips (B, T, H, W, 3) from the method's clip stream with this seed."""
    stream = method.make_stream(index, 0)
    stream.seed = seed
    stream.set_epoch(0)
    out = []
    for batch in stream:
        out.append(batch["clips"])
        if len(out) == batches:
            break
    stream.close()
    if len(out) < batches:
        raise SystemExit(f"only {len(out)} batches in an epoch; raise --clips-per-video")
    return torch.stack(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", required=True, type=Path)
    ap.add_argument("--run", type=Path, default=None, help="a sslfer-train mae run folder: score its newest checkpoint")
    ap.add_argument("--preset", default="tiny", help="model geometry when no --run is given")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--prior-batches", type=int, default=48)
    ap.add_argument("--eval-batches", type=int, default=12)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    method_cls = get_method("mae")
    model, step = None, None
    if args.run is not None:
        found = list_checkpoints(args.run)
        if not found:
            print(f"{args.run}: no checkpoint", file=sys.stderr)
            return 2
        state = read_checkpoint(found[-1])
        run_cfg = method_cls.config_class.from_json(state["config"])
        preset_name, step = run_cfg.preset, int(state.get("step", -1))
    else:
        preset_name = args.preset
    cfg = method_cls.config_class(shards=str(args.shards), out="/nonexistent", preset=preset_name,
                                  batch_size=args.batch_size, steps=1, lr=1e-3, min_lr=0.0, clips_per_video=1000)
    method = method_cls(cfg, DistContext(device=torch.device("cpu")))
    model_cfg = method.model_cfg
    if args.run is not None:
        model = MAEModel(model_cfg)
        model.load_state_dict(state["model"])
        model.eval()
    index, _ = open_shard_set(args.shards)
    method.check_shards(index, args.shards)
    prior_clips = draw(method, index, PRIOR_SEED, args.prior_batches)
    eval_clips = draw(method, index, EVAL_SEED, args.eval_batches)

    results = {"shards": str(args.shards), "run": str(args.run) if args.run else None, "checkpoint_step": step,
               "preset": preset_name, "eval_clips": int(eval_clips.shape[0] * eval_clips.shape[1]),
               "prior_clips": int(prior_clips.shape[0] * prior_clips.shape[1])}
    weights = (cfg.appearance_weight, cfg.motion_weight)
    for name, augment in (("reference crop", method.augment),
                          ("no crop", ClipAugmentConfig(size=model_cfg.img_size, scales=(1.0,)))):
        generator = torch.Generator().manual_seed(PRIOR_SEED)
        sums = None
        for clips in prior_clips:
            _, clips_01 = augment_clips(clips, augment, generator)
            app, mot = mae_targets(clips_01, model_cfg)
            part = (app.sum(0), mot.sum(0))
            sums = part if sums is None else (sums[0] + part[0], sums[1] + part[1])
        count = prior_clips.shape[0] * prior_clips.shape[1]
        prior_app, prior_mot = sums[0] / count, sums[1] / count
        generator = torch.Generator().manual_seed(MASK_SEED)
        totals = {}
        for clips in eval_clips:
            x, clips_01 = augment_clips(clips, augment, generator)
            mask = tube_window_mask(x.shape[0], model_cfg, cfg.mask_ratio, generator=generator)
            app, mot = mae_targets(clips_01, model_cfg)
            b = x.shape[0]
            preds = {"zeros": torch.zeros(b, model_cfg.num_tokens, model_cfg.pred_dim),
                     "position prior": torch.cat([prior_app, prior_mot], -1).expand(b, -1, -1)}
            if model is not None:
                with torch.no_grad():
                    preds["model"] = model(x, mask).float()
            for key, pred in preds.items():
                loss, parts = mae_loss(pred, app, mot, mask, *weights)
                row = totals.setdefault(key, [0.0, 0.0, 0.0])
                for i, value in enumerate((loss, parts["loss_appearance"], parts["loss_motion"])):
                    row[i] += float(value) / eval_clips.shape[0]
        results[name] = {key: dict(zip(("loss", "appearance", "motion"), row)) for key, row in totals.items()}

    print(f"{preset_name} preset; {results['eval_clips']} scored clips, per-position means from "
          f"{results['prior_clips']} others" + (f"; {args.run} at step {step}" if step is not None else ""))
    for name in ("reference crop", "no crop"):
        zero = results[name]["zeros"]
        print(f"  {name}:")
        for key, row in results[name].items():
            rel = "  ".join(f"{part} {row[part]:.3f} ({row[part] / zero[part] - 1:+.1%})"
                            for part in ("loss", "appearance", "motion"))
            print(f"    {key:15s} {rel}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
