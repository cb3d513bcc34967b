"""RUN/metrics.jsonl: one JSON object per logged step, appended and flushed as training goes; with
tensorboard=True the same records (and images) also go to TensorBoard event files in RUN/."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from sslfer_core.atomic_files import write_bytes_atomic


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "not measured"
    return value


class MetricsLog:
    def __init__(self, path: Path, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(path)
        self.board = None
        if tensorboard:
            from train.tensorboard_log import TensorBoardLog

            self.board = TensorBoardLog(self.path.parent, None if resume_step is None else resume_step + 1)
        if resume_step is not None and self.path.exists():
            # Steps after the checkpoint will be trained again: drop their old lines.
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            write_bytes_atomic(self.path, "".join(line + "\n" for line in kept).encode("utf-8"))
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._handle.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._handle.flush()
        if self.board is not None:
            self.board.scalars(record)

    def images(self, images: dict, step: int) -> None:
        """name -> (N, 3, H, W) floats in [0, 1]; TensorBoard only."""
        if self.board is not None and images:
            self.board.images(images, step)

    def figures(self, paths, step: int) -> None:
        """PNG files written at `step` (a method's on_checkpoint); TensorBoard only."""
        if self.board is not None and paths:
            self.board.pngs(list(paths), step)

    def close(self) -> None:
        self._handle.close()
        if self.board is not None:
            self.board.close()


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


class IntervalMeter:
    """Mean loss and images/s since the previous take()."""

    def __init__(self, rows_per_step: int):
        self.rows_per_step = rows_per_step
        self.losses: list[float] = []
        self.last = float("nan")
        self._start = time.monotonic()

    def add(self, loss: float) -> None:
        self.losses.append(loss)
        self.last = loss

    def take(self) -> tuple[float, float]:
        now = time.monotonic()
        steps = len(self.losses)
        result = (sum(self.losses) / steps if steps else float("nan"),
                  self.rows_per_step * steps / max(now - self._start, 1e-9))
        self.losses, self._start = [], now
        return result
