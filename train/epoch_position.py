"""The (epoch, batches to skip) a batch stream starts its next iteration at, in shared memory, so that
set_epoch() in the main process reaches persistent DataLoader workers (train/methods/contrastive/shard_stream.py,
train/methods/mae/clip_stream.py)."""
from __future__ import annotations

import multiprocessing


class SharedEpochPosition:
    def _init_position(self) -> None:
        self._position = multiprocessing.RawArray("q", 2)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Plan epoch `epoch` and leave out its first `skip_batches` batches (a resumed run). Call it
        before iterating; workers read it when their iteration starts."""
        self._position[0], self._position[1] = int(epoch), int(skip_batches)

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    @property
    def skip(self) -> int:
        return int(self._position[1])
