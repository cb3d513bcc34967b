"""Multiply-adds per clip of the LGI-Former presets, counted by torch.utils.flop_counter, side by side with a
plain ViT-B (joint attention over all tokens, VideoMAE-B's encoder) on the same clip.

    .venv/bin/python benchmarks/bench_video_model.py [--presets full tiny] [--json out.json] [--time-tiny]

FlopCounterMode counts matrix products, convolutions and attention; MACs = FLOPs / 2. It does not count
LayerNorm, GELU, softmax or additions, as the usual fvcore-style figures do not. Attention runs on
PyTorch's math backend while counting, because the fused CPU kernel has no FLOP formula. One clip
(batch 1) of the preset's size; the pretraining rows use a 90 % tube window mask.

Rows:
  classifier forward        fine-tune forward (7-class head); the last block skips its local-token steps,
                            which nothing reads
  encoder, all steps        every block's four steps on all tokens (what the reference computes)
  pretrain encoder          the encoder on the visible tokens only
  pretrain decoder          encoder-to-decoder projection + decoder on all tokens, predictions for masked ones
  pretrain forward          the two together
  pretrain fwd+bwd          one training step's forward and backward (targets and loss excluded)
  ViT-B joint, all tokens   12 x 768 joint-attention blocks over the same tokens (the VideoMAE-B encoder)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from sslfer_core.lgi_former import (LGIFormerClassifier, LGIFormerConfig, count_parameters,  # noqa: E402
                                    preset, sincos_table)
from sslfer_core.mae import Block, MAEModel  # noqa: E402
from sslfer_core.tube_masking import tube_window_mask  # noqa: E402

NUM_CLASSES = 7
MASK_RATIO = 0.9


class JointViT(nn.Module):
    """ViT encoder with joint space-time attention over all tokens (VideoMAE's encoder), for the FLOP ratio."""

    def __init__(self, cfg: LGIFormerConfig, dim: int = 768, depth: int = 12, heads: int = 12):
        super().__init__()
        self.patch_embed = nn.Conv3d(cfg.in_chans, dim, (cfg.tubelet, cfg.patch, cfg.patch),
                                     (cfg.tubelet, cfg.patch, cfg.patch))
        self.register_buffer("pos", sincos_table(cfg.num_tokens, dim), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, heads, 4.0) for _ in range(depth))

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        return x


def macs(fn) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def measure(name: str) -> list[dict]:
    cfg = preset(name)
    torch.manual_seed(0)
    x = torch.randn(1, cfg.in_chans, cfg.frames, cfg.img_size, cfg.img_size)
    mask = tube_window_mask(1, cfg, MASK_RATIO, generator=torch.Generator().manual_seed(0), device="cpu")
    classifier = LGIFormerClassifier(cfg, NUM_CLASSES).eval()
    mae = MAEModel(cfg)
    rows = []

    def add(what, value, params=None):
        rows.append({"preset": name, "what": what, "gmacs": value / 1e9, "params": params})

    # Forward rows run with autograd on but no backward: FlopCounterMode's module tracker fails under no_grad.
    add("classifier forward", macs(lambda: classifier(x)), count_parameters(classifier))
    add("encoder, all steps", macs(lambda: classifier.encoder(x)))
    latent = mae.forward_encoder(x, mask).detach()
    add("pretrain encoder (10 % visible)", macs(lambda: mae.forward_encoder(x, mask)))
    add("pretrain decoder", macs(lambda: mae.forward_decoder(latent, mask)))
    add("pretrain forward", macs(lambda: mae(x, mask)), count_parameters(mae))
    add("pretrain fwd+bwd", macs(lambda: mae(x, mask).square().mean().backward()))
    if name == "full":
        vit = JointViT(cfg).eval()
        add("ViT-B joint, all tokens", macs(lambda: vit(x)), count_parameters(vit))
    return rows


def time_tiny(batch: int = 8, repeats: int = 5) -> dict:
    """Wall time of one tiny-preset forward+backward at `batch` on this CPU (median of `repeats`)."""
    cfg = preset("tiny")
    model = MAEModel(cfg)
    x = torch.randn(batch, cfg.in_chans, cfg.frames, cfg.img_size, cfg.img_size)
    mask = tube_window_mask(batch, cfg, MASK_RATIO, generator=torch.Generator().manual_seed(0), device="cpu")
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model(x, mask).square().mean().backward()
        times.append(time.perf_counter() - start)
    times = sorted(times[1:])
    return {"batch": batch, "median_s": times[len(times) // 2], "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["full", "tiny"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--time-tiny", action="store_true", help="also time a tiny-preset step on this CPU")
    args = parser.parse_args()
    try:
        rows = [row for name in args.presets for row in measure(name)]
    except ValueError as error:
        raise SystemExit(f"error: {error}")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, batch 1, "
          f"mask ratio {MASK_RATIO}")
    print(f"{'preset':<6} {'what':<34} {'GMACs':>9} {'params':>12}")
    for row in rows:
        params = f"{row['params']:,}" if row["params"] is not None else ""
        print(f"{row['preset']:<6} {row['what']:<34} {row['gmacs']:9.3f} {params:>12}")
    full = {row["what"]: row["gmacs"] for row in rows if row["preset"] == "full"}
    if "ViT-B joint, all tokens" in full:
        print(f"LGI-Former encoder / ViT-B joint (all tokens): "
              f"{full['encoder, all steps'] / full['ViT-B joint, all tokens']:.3f}")
    result = {"rows": rows}
    if args.time_tiny:
        result["tiny_step"] = time_tiny()
        t = result["tiny_step"]
        print(f"tiny forward+backward, batch {t['batch']}: {t['median_s'] * 1000:.0f} ms "
              f"(median, {t['threads']} threads)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
