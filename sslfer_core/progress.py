"""The progress bar of every command (sslfer-prep phases, sslfer-manifest, sslfer-train, sslfer-eval), on tqdm.

It draws on stderr only when stderr is a terminal, so logs, pipes and tests stay clean. tqdm shows the done
count, the rate and the ETA; callers add what their unit does not say (frames/s and skips of a prep phase,
the loss of a training step) as a postfix. tqdm imports no torch, so data_manifest stays torch-free.
"""
from __future__ import annotations

import sys

from tqdm import tqdm

MIN_INTERVAL_S = 0.25  # redraw at most this often


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a file
        return False


class Progress:
    """`label: done/total unit [elapsed<ETA, rate] postfix`. `scale`: units shown per counted unit's
    1/scale (e.g. counting bytes and showing MiB: scale=2**20). `initial`: already done (a resumed run)."""

    def __init__(self, label: str, total: int, *, unit: str = "it", scale: float = 1, initial: int = 0,
                 stream=None, enabled: bool | None = None, min_interval: float = MIN_INTERVAL_S):
        stream = sys.stderr if stream is None else stream
        self.enabled = _is_terminal(stream) if enabled is None else enabled
        self.total = max(int(total), 0)
        self.done = int(initial)
        self._bar = tqdm(total=self.total, initial=self.done, desc=label, unit=unit.strip() or "it", file=stream,
                         disable=not self.enabled, mininterval=min_interval, dynamic_ncols=True, leave=True,
                         unit_scale=False if scale == 1 else 1 / scale)

    @property
    def elapsed(self) -> float:
        return float(self._bar.format_dict["elapsed"]) if self.enabled else 0.0

    def advance(self, amount: int = 1, note: str = "") -> None:
        self.done += amount
        if self.enabled:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(amount)

    def update_to(self, done: int, note: str = "") -> None:
        """Set the done count (e.g. the training step) instead of adding to it."""
        self.advance(done - self.done, note)

    def close(self) -> None:
        self._bar.close()


class PhaseProgress(Progress):
    """A prep phase: items (videos or shards) done, with frames per second and skipped items beside."""

    def __init__(self, label: str, total: int, *, unit: str = "videos", **kwargs):
        super().__init__(label, total, unit=unit, **kwargs)
        self.frames = 0
        self.skips = 0

    def advance(self, items: int = 1, *, frames: int = 0, skips: int = 0) -> None:  # type: ignore[override]
        self.frames += frames
        self.skips += skips
        rate = self.frames / self.elapsed if self.elapsed > 0 else 0.0
        super().advance(items, f"{rate:.1f} frames/s, skipped {self.skips}")


class TrainProgress(Progress):
    """Training steps with the newest interval's loss and rate (images/s or the method's unit)."""

    def __init__(self, total: int, start: int = 0, *, unit: str = "images", **kwargs):
        self.rate_unit = "img" if unit == "images" else unit
        super().__init__("train", total, unit="step", initial=start, **kwargs)

    def update(self, step: int, loss: float, rate: float) -> None:  # type: ignore[override]
        self.update_to(step, f"loss {loss:.4f}, {rate:,.0f} {self.rate_unit}/s")
