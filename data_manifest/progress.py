"""A one-line progress counter on stderr, silent when stderr is not a terminal (logs stay clean)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, *, unit: str = "", scale: float = 1.0, stream=None, enabled: bool | None = None,
                 min_interval: float = 0.2):
        self.label, self.total, self.unit, self.scale = label, total, unit, scale
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self._min_interval = min_interval
        self._last = 0.0
        self._started = time.monotonic()

    def advance(self, amount: int = 1, note: str = "") -> None:
        self.done += amount
        now = time.monotonic()
        if self.enabled and (now - self._last >= self._min_interval or self.done >= self.total):
            self._last = now
            rate = self.done / self.scale / max(now - self._started, 1e-9)
            text = f"\r{self.label}: {self._fmt(self.done)}/{self._fmt(self.total)}{self.unit} ({rate:.3g}{self.unit}/s)"
            self.stream.write(text + (f" {note}" if note else "") + "\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def _fmt(self, value: int) -> str:
        return f"{value:,}" if self.scale == 1 else f"{value / self.scale:,.1f}"
