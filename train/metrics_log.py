"""RUN/metrics.jsonl: one JSON object per logged step, appended and flushed as training goes; with
tensorboard=True the same records (and images) also go to TensorBoard event files in RUN/."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

from sslfer_core.atomic_files import write_bytes_atomic, write_error_text


class MetricsWriteError(RuntimeError):
    """metrics.jsonl could not be appended to (a full disk, most often); one line for the user."""


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null says "not measured"
    return value


def _parse(lines) -> tuple[list[tuple[str, dict]], int]:
    """(line, record) of each line holding a JSON object, and how many other non-blank lines there were
    (a last line cut by a kill or a full disk, or damage)."""
    records, bad = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append((line, record))
        else:
            bad += 1
    return records, bad


def _step(record: dict) -> float:
    step = record.get("step", 0)
    return step if isinstance(step, (int, float)) and not isinstance(step, bool) else math.inf


class MetricsLog:
    def __init__(self, path: Path, resume_step: int | None = None, tensorboard: bool = False,
                 warn: Callable[[str], None] = print):
        self.path = Path(path)
        self.board = None
        if tensorboard:
            from train.tensorboard_log import TensorBoardLog

            self.board = TensorBoardLog(self.path.parent, None if resume_step is None else resume_step + 1)
        if resume_step is not None and self.path.exists():
            # Steps after the checkpoint will be trained again: drop their old lines; and lines that do
            # not parse (cut by a kill or a full disk), which would stop every reader of the file.
            text = self.path.read_text(encoding="utf-8", errors="replace")
            parsed, bad = _parse(text.splitlines())
            kept = [line for line, record in parsed if _step(record) <= resume_step]
            if bad:
                warn(f"note: dropped {bad} line(s) of {self.path.name} that are not JSON records "
                     "(a write cut short by a kill or a full disk)")
            try:
                write_bytes_atomic(self.path, "".join(line + "\n" for line in kept).encode("utf-8"))
            except OSError as error:
                raise MetricsWriteError(f"could not rewrite {self.path} ({write_error_text(error, self.path.parent)})"
                                        ) from None
        try:
            self._handle = open(self.path, "a", encoding="utf-8")
        except OSError as error:
            raise MetricsWriteError(f"could not open {self.path} ({write_error_text(error, self.path.parent)})"
                                    ) from None

    def write(self, record: dict) -> None:
        try:
            self._handle.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
            self._handle.flush()
        except OSError as error:
            raise MetricsWriteError(f"could not append to {self.path} ({write_error_text(error, self.path.parent)})"
                                    ) from None
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
        try:
            self._handle.close()
        except OSError:
            pass  # a failed write was reported already; its buffered rest cannot be written either
        if self.board is not None:
            self.board.close()


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; lines that are not JSON objects (a cut last line) are left out."""
    return [record for _, record in _parse(Path(path).read_text(encoding="utf-8", errors="replace").splitlines())[0]]


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
