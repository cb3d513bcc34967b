"""The --precision rule shared by sslfer-train and sslfer-eval's feature extraction."""
from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def uses_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast for the network: auto = on CUDA only (on CPU only AVX512-BF16/AMX make it pay, and there
    it is asked for by name); bf16 anywhere when asked for."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")
