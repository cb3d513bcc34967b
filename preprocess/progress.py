"""A one-line progress bar on stderr (silent when stderr is not a terminal) and the end-of-run summary table."""
from __future__ import annotations

import sys
import time

REDRAW_SECONDS = 0.25


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class PhaseProgress:
    """Items done of a phase, frames per second, skips and ETA; redrawn at most every REDRAW_SECONDS."""

    def __init__(self, label: str, total: int, *, unit: str = "videos", stream=None, enabled: bool | None = None):
        self.label = label
        self.total = max(int(total), 0)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self.frames = 0
        self.skips = 0
        self._start = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    def advance(self, items: int = 1, *, frames: int = 0, skips: int = 0) -> None:
        self.done += items
        self.frames += frames
        self.skips += skips
        now = time.monotonic()
        if self.enabled and (now - self._drawn >= REDRAW_SECONDS or self.done >= self.total):
            self._drawn = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self._start
        fraction = self.done / self.total if self.total else 1.0
        filled = int(20 * min(fraction, 1.0))
        rate = self.frames / elapsed if elapsed > 0 else 0.0
        eta = elapsed * (self.total - self.done) / self.done if self.done else 0.0
        return (f"{self.label} [{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} {self.unit}"
                f"  {rate:.1f} frames/s  skipped {self.skips}  elapsed {_clock(elapsed)}  ETA {_clock(eta)}")

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


def summary_table(rows: list[tuple[str, str]]) -> str:
    """Two aligned columns, e.g. [('videos kept', '34'), ...]."""
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)
