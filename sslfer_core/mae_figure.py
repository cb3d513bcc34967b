"""Reconstruction figure for video MAE pretraining: what the model saw and what it predicted.

For each clip, six rows over `frames` evenly spaced token time slices (each column shows the first frame of
that slice's tubelet, the frame the appearance target describes):
  1. input: the clip;
  2. masked input: masked tokens greyed out;
  3. predicted appearance and 4. target appearance;
  5. predicted motion and 6. target motion.
Display choices:
- Appearance targets are per-tubelet standardised; predictions and targets are mapped back to pixels with
  the tubelet's own mean and std (sslfer_core.mae.tubelet_stats), so both show faces. The target row
  then reproduces the input, which checks the target code by eye. The mean comes from the target, so
  even a zero prediction shows each patch's mean colour (a blocky face): only the structure inside a
  patch is the model's. The figure says so in its caption.
- Motion is the difference of two standardised frames with the same statistics, so multiplied by the
  tubelet's std it is the pixel difference f(2k+1) - f(2k). It is shown as 0.5 + gain * difference,
  clipped to [0, 1] (grey = no change), with one gain per clip for both motion rows, chosen so that the
  target's 99th percentile of |difference| reaches 0.45.
- The model predicts masked tokens only; visible tokens in the predicted rows show the target's values,
  as in the MAE paper's figures, so the rows read as whole frames.
"""
from __future__ import annotations

import io
import os

import numpy as np
import torch
from torch import Tensor

from sslfer_core.atomic_files import write_bytes_atomic
from sslfer_core.lgi_former import LGIFormerConfig
from sslfer_core.mae import tubelet_stats, unpatchify_frames

ROW_TITLES = ("input", "masked input", "predicted appearance", "target appearance", "predicted motion",
              "target motion")
MASK_GREY = 0.5
MOTION_PERCENTILE = 99.0
MOTION_HALF_RANGE = 0.45
CAPTION_HEIGHT = 0.45  # inches
CAPTION = ("Predicted appearance = prediction x tubelet std + tubelet mean of the target: a zero prediction\n"
           "shows each patch's mean colour. Motion = 0.5 + gain x pixel difference. Visible tokens show the target.")


def _full(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Predictions of the masked tokens on a full (B, N, D) grid; visible tokens keep the target's values."""
    if pred.shape == target.shape:
        return torch.where(mask[..., None], pred, target)
    out = target.clone()
    out[mask] = pred.reshape(-1, pred.shape[-1]).to(out.dtype)
    return out


def _pixels(values: Tensor, mean: Tensor, std: Tensor, cfg: LGIFormerConfig) -> Tensor:
    """(B, N, patch*patch*C) standardised values of one frame per token -> (B, C, grid_t, H, W) pixels."""
    b, n, _ = values.shape
    per_channel = values.reshape(b, n, -1, cfg.in_chans)
    return unpatchify_frames((per_channel * std[:, :, None] + mean[:, :, None]).flatten(2), cfg)


def reconstruction_figure(path: str | os.PathLike, clips_01: Tensor, mask: Tensor, pred_app: Tensor,
                          target_app: Tensor, pred_mot: Tensor, target_mot: Tensor, cfg: LGIFormerConfig,
                          frames: int = 4) -> None:
    """Write the PNG described in the module docstring for every clip given (pass a few).

    clips_01 (B, C, T, H, W) in [0, 1]; mask (B, N) True = masked; target_app (B, N, appearance_dim) and
    target_mot (B, N, motion_dim) from mae_targets; pred_app / pred_mot either (B, N_masked, dim) as
    split_prediction gives them, or full (B, N, dim). Only the first motion frame of each tubelet is drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    gt = cfg.grid[0]
    if not 1 <= frames <= gt:
        raise ValueError(f"frames must be in 1..{gt}, got {frames}")
    with torch.no_grad():
        clips_01 = clips_01.detach().float().cpu()
        mask = mask.detach().cpu()
        tensors = [t.detach().float().cpu() for t in (pred_app, target_app, pred_mot, target_mot)]
        pred_app, target_app, pred_mot, target_mot = tensors
        fpd = cfg.frame_patch_dim
        pred_mot, target_mot = pred_mot[..., :fpd], target_mot[..., :fpd]
        mean, std = tubelet_stats(clips_01, cfg)
        zero = torch.zeros_like(mean)
        app_pred = _pixels(_full(pred_app, target_app, mask), mean, std, cfg)
        app_target = _pixels(target_app, mean, std, cfg)
        mot_pred = _pixels(_full(pred_mot, target_mot, mask), zero, std, cfg)
        mot_target = _pixels(target_mot, zero, std, cfg)
        inputs = clips_01[:, :, ::cfg.tubelet]
        token_mask = unpatchify_frames(mask[..., None].float().expand(-1, -1, fpd), cfg)[:, :1] > 0.5
        masked_input = torch.where(token_mask, torch.full_like(inputs, MASK_GREY), inputs)

    columns = np.linspace(0, gt - 1, frames).round().astype(int)
    b = clips_01.shape[0]
    rows = len(ROW_TITLES)
    side = 1.3
    fig = Figure(figsize=(side * frames + 1.6, side * rows * b + CAPTION_HEIGHT), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows * b, frames, squeeze=False)
    for i in range(b):
        scale = float(np.percentile(mot_target[i].abs().numpy(), MOTION_PERCENTILE))
        gain = MOTION_HALF_RANGE / scale if scale > 0 else 1.0
        images = (inputs[i], masked_input[i], app_pred[i], app_target[i],
                  0.5 + gain * mot_pred[i], 0.5 + gain * mot_target[i])
        for r, image in enumerate(images):
            for j, t in enumerate(columns):
                ax = axes[i * rows + r, j]
                ax.imshow(image[:, t].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"clip {i}\n{ROW_TITLES[r]}" if r == 0 else ROW_TITLES[r], fontsize=7)
                if i == 0 and r == 0:
                    ax.set_title(f"frame {t * cfg.tubelet}", fontsize=7)
    fig.tight_layout(pad=0.3, rect=(0, CAPTION_HEIGHT / fig.get_figheight(), 1, 1))
    fig.text(0.01, 0.2 * CAPTION_HEIGHT / fig.get_figheight(), CAPTION, fontsize=6, va="bottom", wrap=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes_atomic(path, buffer.getvalue())


__all__ = ["reconstruction_figure", "ROW_TITLES"]
