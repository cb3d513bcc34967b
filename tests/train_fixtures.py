"""Small synthetic shard sets (with manifest.json) for the trainer tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from data_manifest.manifest import build_manifest, save_manifest
from shard_fixtures import make_header, make_video
from sslfer_core.shard_format import write_shard

TINY_TRAIN = ["--arch", "resnet18", "--resize", "36", "--crop", "32", "--batch-size", "6", "--workers", "0",
              "--log-every", "1"]


def make_train_shards(root: Path, *, shards: int = 2, videos: int = 3, frames: int = 40, fps: float = 5.0,
                      codec: str = "raw", swaps: int = 1, descriptor_dim: int = 8, identities: int = 2,
                      seed: int = 0, swap_ok: bool | None = None) -> Path:
    """`shards` shards of `videos` videos with `frames` frames each at `fps` (40 frames at 5 fps = 8 s),
    video ids s{shard}v{video}, identities id{video % identities}; a manifest is written beside them."""
    rng = np.random.default_rng(seed)
    header = make_header(codec=codec, swaps=swaps, descriptor_dim=descriptor_dim)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        batch = []
        for v in range(videos):
            video = make_video(rng, header, frames, video_id=f"s{s}v{v}", identity=f"id{v % identities}", fps=fps)
            if swaps and swap_ok is not None:
                video.swap_ok = np.full_like(video.swap_ok, swap_ok)
            batch.append(video)
        paths.append(write_shard(root / f"shard-{s:05d}.h5", header, batch))
    save_manifest(root, build_manifest(root, paths))
    return root


def interrupt_after_checkpoint(monkeypatch, step: int = 2):
    """Make a run stop with KeyboardInterrupt right after writing its checkpoint of `step`, as Ctrl-C would;
    returns the function that puts the real checkpoint writer back (for the resumed part of a test)."""
    import train.run_state

    real_save = train.run_state.save_checkpoint

    def save_then_interrupt(run_dir, at, state, keep):
        path = real_save(run_dir, at, state, keep)
        if at == step:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(train.run_state, "save_checkpoint", save_then_interrupt)
    return lambda: monkeypatch.setattr(train.run_state, "save_checkpoint", real_save)


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory):
    """Two shards of 3 videos of 40 frames (8 s at 5 fps each), for the CLI tests that train, resume and
    compare methods (import it as `shards`: `from train_fixtures import two_shards as shards`)."""
    return make_train_shards(tmp_path_factory.mktemp("shards"), shards=2, videos=3, frames=40)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """One small shard of 3 videos, for tests that train a few steps (import the fixture by name)."""
    return make_train_shards(tmp_path_factory.mktemp("shards"), shards=1, videos=3, frames=20)


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory):
    """A 4-step contrastive run on `shards` with checkpoints at steps 2 and 4."""
    from train.cli import main

    run = tmp_path_factory.mktemp("finished") / "run"
    result = CliRunner().invoke(main, [str(a) for a in ["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "4",
                                                        "--ckpt-every", "2", "--warmup-steps", "1"]])
    assert result.exit_code == 0, result.output
    return run
