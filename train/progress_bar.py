"""Training progress on stderr (step, loss, images/s or the method's unit, ETA); silent when stderr is not a
terminal."""
from __future__ import annotations

import sys
import time


class TrainProgress:
    def __init__(self, total: int, start: int = 0, *, stream=None, enabled: bool | None = None,
                 min_interval: float = 0.5, unit: str = "images"):
        self.total, self.start = total, start
        self.unit = "img" if unit == "images" else unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._min_interval = min_interval
        self._last = 0.0
        self._started = time.monotonic()

    def update(self, step: int, loss: float, rate: float) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < self._min_interval and step < self.total):
            return
        self._last = now
        done = max(step - self.start, 1)
        eta = (now - self._started) / done * (self.total - step)
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r[{bar}] {step}/{self.total} loss {loss:.4f} {rate:,.0f} {self.unit}/s "
                          f"eta {eta / 60:.1f} min\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
