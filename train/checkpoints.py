"""Checkpoints of a run: RUN/checkpoints/ckpt-step{step:08d}.pt, written atomically, the newest few kept.

A checkpoint holds only tensors and plain Python values, so it loads with torch.load(weights_only=True).
"""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from sslfer_core.atomic_files import atomic_path
from sslfer_core.byte_sizes import human_bytes
from train.run_config import method_of_config, resume_command

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^ckpt-step(\d{8,})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"ckpt-step{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints of the run, oldest first (temporary files of interrupted writes are ignored)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, most often); the earlier ones are untouched."""


def _free_space(folder: Path) -> str:
    try:
        return f"{human_bytes(shutil.disk_usage(folder).free)} free there"
    except OSError:
        return "free space unknown"


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write atomically, then delete all but the newest `keep` checkpoints."""
    path = checkpoint_path(run_dir, step)
    resume = resume_command(method_of_config(state.get("config")), run_dir)
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as a RuntimeError
        newest = latest_checkpoint(run_dir)
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        raise CheckpointWriteError(
            f"could not write checkpoint {path.name} in {path.parent} ({reason}; {_free_space(path.parent)}). "
            f"Earlier checkpoints are untouched (newest: {newest.name if newest else 'none'}); "
            f"free some space, then continue with: {resume}") from error
    for old in list_checkpoints(run_dir)[:-max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_states() -> dict:
    """Python, numpy, torch and CUDA generator states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict) -> None:
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = states["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
