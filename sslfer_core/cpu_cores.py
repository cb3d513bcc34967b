"""What this process's CPU offers: how many cores it may use (the affinity mask of containers, taskset or
SLURM when the platform has one, else the machine's count) and whether it has native bf16 arithmetic."""
from __future__ import annotations

import os


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions only pay off with hardware bf16 dot products; emulated they are slower."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            flags = handle.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
