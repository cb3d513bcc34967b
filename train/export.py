"""`sslfer-train export`: what the run's method exports from its newest (or a given) checkpoint, e.g. the
contrastive backbone as a plain torchvision ResNet state_dict."""
from __future__ import annotations

from pathlib import Path

import torch

from sslfer_core.atomic_files import atomic_path
from train.checkpoints import latest_checkpoint, load_checkpoint
from train.methods import ExportError, get_method
from train.run_config import method_of_config

__all__ = ["ExportError", "export_run"]


def export_run(run_dir: Path, out_path: Path, checkpoint: Path | None = None) -> tuple[Path, str, int]:
    """Write the export of the checkpoint's method to out_path atomically; returns (checkpoint used,
    description of what was written, step)."""
    path = Path(checkpoint) if checkpoint else latest_checkpoint(Path(run_dir))
    if path is None:
        raise ExportError(f"{run_dir}: no checkpoint to export (expected checkpoints/ckpt-step*.pt)")
    try:
        state = load_checkpoint(path)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ExportError(f"{path}: unreadable checkpoint ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("config"), dict):
        raise ExportError(f"{path}: not an sslfer-train checkpoint (no model/config)")
    try:
        method = get_method(method_of_config(state["config"]))
    except ValueError as error:
        raise ExportError(f"{path}: {error}") from None
    exported = method.export(state, path)
    with atomic_path(out_path) as tmp:
        torch.save(exported.payload, tmp)
    return path, exported.description, int(state.get("step", -1))
