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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 autocast speeds up
    transformer matrix products instead of emulating them."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)
