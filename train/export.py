"""`sslfer-train export`: what the run's method exports from its newest (or a given) checkpoint, e.g. the
contrastive backbone as a plain torchvision ResNet state_dict, in safetensors (default) or torch format,
with the method's metadata plus method, source checkpoint sha256 and code version (train/weights_file.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from sslfer_core.atomic_files import writable_dir_problem, write_error_text
from sslfer_core.file_hash import file_sha256
from train.checkpoints import CheckpointReadError, check_finite_weights, list_checkpoints, read_checkpoint
from train.methods import ExportError, get_method
from train.run_config import code_version, method_of_config
from train.weights_file import DEFAULT_FORMAT, write_weights

__all__ = ["ExportError", "export_run"]

RUN_CONFIG = "config.json"  # written by the trainer (train/trainer.py CONFIG_NAME)


def _run_config(run_dir: Path) -> dict | None:
    """The run's config.json, which says what method and settings made the run; None when the folder has
    none (a bare folder of checkpoints)."""
    path = Path(run_dir) / RUN_CONFIG
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ExportError(f"{path}: unreadable ({type(error).__name__}); it says which method made the run") from None
    if not isinstance(config, dict):
        raise ExportError(f"{path}: not a run config (a JSON object)")
    return config


def _newest_usable(run_dir: Path, run_config: dict | None, warn: Callable[[str], None]) -> tuple[Path, dict]:
    """The newest checkpoint that reads and belongs to the run; newer ones that do not (truncated, empty, of
    another method or run) are named in a warning. A checkpoint with non-finite weights stops the export
    instead: an older one is a choice to make."""
    found = list_checkpoints(run_dir)
    if not found:
        raise ExportError(f"{run_dir}: no checkpoint to export (expected checkpoints/ckpt-step*.pt)")
    for path in reversed(found):
        try:
            return path, read_checkpoint(path, finite=False, run_config=run_config)
        except CheckpointReadError as error:
            warn(f"warning: {error}; trying the one before")
    raise ExportError(f"{run_dir}: none of its {len(found)} checkpoints reads and belongs to the run")


def export_run(run_dir: Path, out_path: Path, checkpoint: Path | None = None, fmt: str = DEFAULT_FORMAT,
               warn: Callable[[str], None] = print) -> tuple[Path, str, int]:
    """Write the export of the run's method (config.json's; the checkpoint's own in a folder without one)
    to out_path atomically; returns (checkpoint used, description of what was written, step). Non-finite
    weights, and a checkpoint of another method or run, are refused."""
    problem = writable_dir_problem(Path(out_path).parent)
    if problem:
        raise ExportError(problem)
    run_config = _run_config(Path(run_dir))
    if checkpoint:
        path = Path(checkpoint)
        try:
            state = read_checkpoint(path, finite=False, run_config=run_config)
        except CheckpointReadError as error:
            raise ExportError(str(error)) from None
    else:
        path, state = _newest_usable(Path(run_dir), run_config, warn)
    try:
        check_finite_weights(state, path)
    except CheckpointReadError as error:
        older = "" if checkpoint else "; export an earlier checkpoint with --checkpoint"
        raise ExportError(f"{error}{older}") from None
    try:
        method = get_method(method_of_config(state["config"]))
    except ValueError as error:
        raise ExportError(f"{path}: {error}") from None
    exported = method.export(state, path)
    step = state.get("step", -1)
    step = step if isinstance(step, int) and not isinstance(step, bool) else -1  # a foreign file may hold anything
    metadata = {**exported.metadata, "method": method.name, "source_checkpoint": path.name,
                "source_sha256": file_sha256(path), "step": step, "code_version": code_version()}
    try:
        write_weights(out_path, exported.payload, metadata, fmt)
    except (OSError, RuntimeError) as error:  # RuntimeError: what torch.save raises for what it cannot pickle
        raise ExportError(f"could not write {out_path} ({write_error_text(error, Path(out_path).parent)}); "
                          "an existing file there is untouched") from None
    return path, exported.description, step
