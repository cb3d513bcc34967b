"""How many CPU cores this process may use: the affinity mask (containers, taskset, SLURM) when the
platform has one, else the machine's count."""
from __future__ import annotations

import os


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
