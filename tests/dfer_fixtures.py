"""Backbones for the dynamic-FER end-to-end tests and the DFER table benchmark: a tiny video MAE run exported
with `sslfer-train export`, and a contrastive ResNet-18 export, each trained for a few steps on tiny shards."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

from data_manifest.manifest import build_manifest, save_manifest
from shard_fixtures import make_header, make_video
from sslfer_core.shard_format import write_shard
from train.cli import main as train_main
from train_fixtures import TINY_TRAIN, make_train_shards

MAE_FRAMES = 4  # tiny preset at 4 frames: token grid 2 x 10 x 10, 2 regions; a step takes a fraction of a second
MAE_FPS = 25.0


def _train(args) -> None:
    result = CliRunner().invoke(train_main, [str(a) for a in args])
    if result.exit_code != 0:
        raise RuntimeError(f"sslfer-train {' '.join(map(str, args[:2]))} failed:\n{result.output}")


def make_mae_shards(root: Path, *, videos: int = 4, frames: int = 24, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    header = make_header(size=size, patch=8, swaps=0, descriptor_dim=0)
    header.prep_config = {"fps": MAE_FPS, "size": size}
    root.mkdir(parents=True, exist_ok=True)
    batch = [make_video(rng, header, frames, video_id=f"v{v}", identity=f"id{v}", fps=MAE_FPS) for v in range(videos)]
    paths = [write_shard(root / "shard-00000.h5", header, batch)]
    save_manifest(root, build_manifest(root, paths))
    return root


def mae_export(root: Path, *, steps: int = 1, frames: int = MAE_FRAMES) -> Path:
    """`sslfer-train mae --preset tiny` for `steps` steps on tiny shards, then `sslfer-train export`."""
    shards = make_mae_shards(root / "mae_shards")
    run = root / "mae_run"
    _train(["mae", "--shards", shards, "--out", run, "--preset", "tiny", "--frames", frames, "--stride", "2",
            "--batch-size", "2", "--workers", "0", "--precision", "fp32", "--steps", steps, "--warmup-steps", "0",
            "--lr", "1e-3", "--min-lr", "1e-4", "--log-every", "1"])
    out = root / "mae_tiny_export.safetensors"
    _train(["export", run, "-o", out])
    return out


def contrastive_export(root: Path, *, steps: int = 1) -> Path:
    """A contrastive ResNet-18 run of `steps` steps on tiny shards, exported (safetensors, the default)."""
    shards = make_train_shards(root / "con_shards", shards=1, videos=3, frames=20)
    run = root / "con_run"
    _train(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", steps, "--ckpt-every", steps])
    out = root / "resnet18_contrastive.safetensors"
    _train(["export", run, "-o", out])
    return out
