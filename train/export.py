"""`sslfer-train export`: the newest checkpoint's backbone as a plain torchvision ResNet state_dict."""
from __future__ import annotations

from pathlib import Path

import torch

from sslfer_core.atomic_files import atomic_path
from sslfer_core.models import ContrastiveModel, backbone_state_dict
from train.checkpoints import latest_checkpoint, load_checkpoint


class ExportError(ValueError):
    """The run folder or checkpoint cannot be exported."""


def export_backbone(run_dir: Path, out_path: Path, checkpoint: Path | None = None) -> tuple[Path, str, int]:
    """Write backbone weights (keys conv1.weight, layer1.0..., no fc.*) to out_path atomically;
    returns (checkpoint used, arch, step)."""
    path = Path(checkpoint) if checkpoint else latest_checkpoint(Path(run_dir))
    if path is None:
        raise ExportError(f"{run_dir}: no checkpoint to export (expected checkpoints/ckpt-step*.pt)")
    try:
        state = load_checkpoint(path)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ExportError(f"{path}: unreadable checkpoint ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ExportError(f"{path}: not an sslfer-train checkpoint (no model/config)")
    arch = state["config"].get("arch", "resnet50")
    model = ContrastiveModel(arch, proj_dim=int(state["config"].get("proj_dim", 128)))
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as error:
        raise ExportError(f"{path}: weights do not fit {arch}: {str(error).splitlines()[0]}") from None
    with atomic_path(out_path) as tmp:
        torch.save(backbone_state_dict(model), tmp)
    return path, arch, int(state.get("step", -1))
