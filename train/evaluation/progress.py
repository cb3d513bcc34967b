"""Progress lines on stderr, only when stderr is a terminal (quiet in logs and tests)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, *, min_interval_s: float = 0.5) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.done = 0
        self.enabled = sys.stderr.isatty()
        self._started = time.monotonic()
        self._last_print = 0.0
        self._min_interval_s = min_interval_s

    def update(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and (now - self._last_print >= self._min_interval_s or self.done >= self.total):
            self._last_print = now
            rate = self.done / max(now - self._started, 1e-9)
            sys.stderr.write(f"\r{self.label}: {self.done}/{self.total} ({rate:.0f}/s)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
