"""TensorBoard event files beside metrics.jsonl (sslfer-train) and results.json (sslfer-eval finetune).

Every number of a metrics record becomes a scalar at the record's step; nested dicts (the contrastive
fallback counters) become "outer/inner" tags; other values (strings, None) are left to the JSONL file.
The package is optional (the `tensorboard` extra): without it, runs write metrics.jsonl only.
"""
from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used, so run_config can ask tensorboard_available() cheaply
    from torch import Tensor


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def flat_scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """Numbers of a (possibly nested) record by tag; booleans and non-finite values are skipped."""
    found: dict[str, float] = {}
    for key, value in record.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            found.update(flat_scalars(value, tag + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            found[tag] = float(value)
    return found


class TensorBoardLog:
    """One event-file writer for a folder. `purge_step`: on resume, events from that step on (written by the
    interrupted run) are hidden, as metrics.jsonl drops its lines after the checkpoint."""

    def __init__(self, folder: Path, purge_step: int | None = None, step_key: str = "step"):
        from torch.utils.tensorboard import SummaryWriter

        self.step_key = step_key
        self._writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def scalars(self, record: dict) -> None:
        step = int(record[self.step_key])
        for tag, value in flat_scalars({k: v for k, v in record.items() if k != self.step_key}).items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def images(self, images: dict[str, Tensor], step: int) -> None:
        """name -> (N, 3, H, W) floats in [0, 1], each written as one grid."""
        from torchvision.utils import make_grid

        for name, batch in images.items():
            batch = batch.detach().float().cpu().clamp(0, 1)
            self._writer.add_image(name, make_grid(batch, nrow=min(8, len(batch)), padding=1), step)
        self._writer.flush()

    def pngs(self, paths: list[Path], step: int) -> None:
        """Figures a method wrote (e.g. the MAE reconstruction), under their file stem without its step
        number ("reconstruction-step00000100.png" -> "reconstruction"), so that one tag has every step."""
        import cv2
        import numpy as np
        import torch

        for path in paths:
            if Path(path).suffix.lower() != ".png":
                continue
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            rgb = np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))
            tag = re.sub(r"[-_.]?step\d+$", "", Path(path).stem) or Path(path).stem
            self._writer.add_image(tag, torch.from_numpy(rgb), step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def write_curves(folder: Path, runs_by_backbone: dict[str, list[dict]]) -> None:
    """Fine-tuning curves of sslfer-eval: each run's "history" (one record per epoch) as scalars tagged
    "<backbone>/<run>/<name>" at step = epoch."""
    board = TensorBoardLog(folder, step_key="epoch")
    try:
        for backbone, runs in runs_by_backbone.items():
            for run in runs:
                for record in run.get("history", []):
                    board.scalars({"epoch": record["epoch"], f"{backbone}/{run['name']}": record})
    finally:
        board.close()
