"""Checkpoints of a run: RUN/checkpoints/ckpt-step{step:08d}.pt, written atomically, the newest few kept.

A checkpoint holds only tensors and plain Python values, so it loads with torch.load(weights_only=True).
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sslfer_core.atomic_files import TEMP_PREFIX, atomic_path, write_error_text, write_through
from sslfer_core.finite import count_floating, describe_non_finite, non_finite_names
from train.run_config import RUNTIME_KEYS, method_of_config, resume_command

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^ckpt-step(\d{8,})\.pt$")
# What RunState.restore reads besides model and config.
RESUME_KEYS = ("optimizer", "scheduler", "rng", "sampler", "step", "epoch")


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


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write atomically, then delete all but the newest `keep` checkpoints."""
    path = checkpoint_path(run_dir, step)
    resume = resume_command(method_of_config(state.get("config")), run_dir)
    try:
        # A full disk is then an OSError with its errno, not torch's "enforce fail" text.
        with atomic_path(path) as tmp:
            write_through(tmp, lambda handle: torch.save(state, handle))
    except (OSError, RuntimeError) as error:  # RuntimeError: what torch.save raises for what it cannot pickle
        newest = latest_checkpoint(run_dir)
        raise CheckpointWriteError(
            f"could not write checkpoint {path.name} in {path.parent} ({write_error_text(error, path.parent)}). "
            f"Earlier checkpoints are untouched (newest: {newest.name if newest else 'none'}); "
            f"free some space, then continue with: {resume}") from error
    for old in list_checkpoints(run_dir)[:-max(1, keep)]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be used: truncated, empty, foreign, or holding non-finite weights."""


def read_checkpoint(path: Path, *, finite: bool = True, run_config: dict | None = None,
                    for_resume: bool = False) -> dict:
    """A checkpoint of sslfer-train (a dict with model and config), its model weights finite unless
    finite=False; with `run_config` (the run's config.json), one made by that run's method and settings;
    with `for_resume`, one holding all a resume reads. Raises CheckpointReadError with a one-line reason."""
    try:
        state = load_checkpoint(path)
    except MemoryError:
        raise
    except Exception as error:  # torch raises EOFError, RuntimeError, UnpicklingError, ... for damaged files
        text = str(error).strip()
        reason = f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__
        if isinstance(error, EOFError):
            reason = "it ends early" if path.stat().st_size else "an empty file"
        raise CheckpointReadError(f"{path}: unreadable checkpoint ({reason})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict) or not isinstance(
            state.get("config"), dict):
        raise CheckpointReadError(f"{path}: not an sslfer-train checkpoint (no model/config)")
    if for_resume:
        missing = [key for key in RESUME_KEYS if key not in state]
        if missing:
            raise CheckpointReadError(f"{path}: cannot resume from it (no {', '.join(missing)})")
    if run_config is not None:
        foreign = foreign_to_run(state["config"], run_config)
        if foreign:
            raise CheckpointReadError(f"{path}: {foreign}")
    if finite:
        check_finite_weights(state, path)
    return state


def _plain(value):
    """A config value as config.json holds it (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


def foreign_to_run(config: dict, run_config: dict) -> str | None:
    """Why a checkpoint whose config is `config` was not made by the run that config.json `run_config`
    describes (another method, or other settings than those a resume may change); None when it was."""
    made_by, run_method = method_of_config(config), method_of_config(run_config)
    if made_by != run_method:
        return f"a checkpoint of a {made_by} run, not of this {run_method} run"
    differing = sorted(key for key in config if key not in RUNTIME_KEYS and key in run_config
                       and _plain(config[key]) != _plain(run_config[key]))
    if differing:
        shown = ", ".join(f"{key} {_plain(config[key])!r} (run: {_plain(run_config[key])!r})" for key in differing[:3])
        more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
        return f"a checkpoint of another run: its settings differ from config.json: {shown}{more}"
    return None


def check_finite_weights(state: dict, path: Path) -> None:
    """Raise CheckpointReadError when the checkpoint's model holds NaN or infinite values."""
    bad = non_finite_names(state["model"].items())
    if bad:
        raise CheckpointReadError(f"{path}: the weights of a diverged run: "
                                  f"{describe_non_finite(bad, count_floating(state['model'].values()))}")


def newest_readable_checkpoint(run_dir: Path, skipped: Callable[[Path, CheckpointReadError], None],
                               run_config: dict | None = None) -> tuple[Path, dict] | None:
    """The newest checkpoint to resume from that reads, holds finite weights and (given config.json's
    `run_config`) belongs to the run, with its content; `skipped` is told of each newer one that does not,
    newest first. None when none reads."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, read_checkpoint(path, run_config=run_config, for_resume=True)
        except CheckpointReadError as error:
            skipped(path, error)
    return None


def remove_stale_partials(run_dir: Path, run_files: tuple[str, ...]) -> tuple[int, int]:
    """Delete the temporary files that killed writes of checkpoints and of the run folder's `run_files`
    (config.json) left behind; returns (files, bytes). Only for the process holding the run folder's
    lock: no other writer is live then. Other temporaries (an export written into the folder, say) stay."""
    run_dir = Path(run_dir)
    found = list((run_dir / CHECKPOINT_DIR).glob(f"{TEMP_PREFIX}ckpt-step*"))
    for name in run_files:
        found += list(run_dir.glob(f"{TEMP_PREFIX}{name}.*"))
    removed = size = 0
    for path in found:
        try:
            length = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        removed, size = removed + 1, size + length
    return removed, size


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
