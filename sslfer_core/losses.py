"""Contrastive losses as pure functions; positives are given by column index, so one function serves
SimCLR's two views, extra TimeAug/FaceSwap positives and MaskFN's weighted false negatives.

The formula is written out in docs/method.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_TEMPERATURE = 0.07  # NT-Xent temperature of the contrastive loss (--temperature)

def nt_xent_pair_indices(batch_size: int, num_views: int) -> Tensor:
    """positive_index for rows laid out as [view 0 of samples 0..B-1, view 1 of samples 0..B-1, ...]:
    row v*B + b has as positives the rows u*B + b for every other view u. Shape (B*V, V-1)."""
    if batch_size < 1 or num_views < 1:
        raise ValueError(f"batch_size and num_views must be >= 1, got {batch_size}, {num_views}")
    sample = torch.arange(batch_size).repeat(num_views)            # (N,) sample of each row
    view = torch.arange(num_views).repeat_interleave(batch_size)   # (N,) view of each row
    others = torch.arange(num_views).expand(len(view), num_views)
    others = others[others != view[:, None]].view(len(view), num_views - 1)
    return others * batch_size + sample[:, None]


def multi_positive_nt_xent(
    embeddings: Tensor,
    positive_index: Tensor,
    positive_weight: Tensor | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    exclude_from_denominator: Tensor | None = None,
    row_valid: Tensor | None = None,
) -> Tensor:
    """Mean over contributing rows i of  -sum_p w_ip * log(exp(s_ip) / sum_{k in D_i} exp(s_ik)) / sum_p w_ip,
    with s = cos / temperature and D_i = {k != i, not excluded}. A row contributes when row_valid[i] and its
    weights sum to > 0 and D_i is not empty; every row still serves as a negative. A NaN or infinite
    embedding makes the loss NaN (it is never skipped as an empty row).
    Computed in fp32 whatever the input dtype."""
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    n = embeddings.shape[0]
    if positive_index.dim() != 2 or positive_index.shape[0] != n:
        raise ValueError(f"positive_index must be ({n}, P), got shape {tuple(positive_index.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = embeddings.device
    positive_index = positive_index.to(device=device, dtype=torch.long)
    rows = torch.arange(n, device=device)
    if bool((positive_index == rows[:, None]).any()):
        raise ValueError("a row lists itself as a positive; self-similarity never enters the loss")

    # bf16/fp16 logits at temperatures near DEFAULT_TEMPERATURE lose too much precision in the exponent: force fp32.
    with torch.autocast(device_type=device.type, enabled=False):
        z = F.normalize(embeddings.float(), dim=1)
        logits = z @ z.T / temperature

        in_denominator = rows[:, None] != rows[None, :]
        if exclude_from_denominator is not None:
            in_denominator = in_denominator & ~exclude_from_denominator.to(device=device, dtype=torch.bool)
        log_norm = torch.logsumexp(logits.masked_fill(~in_denominator, float("-inf")), dim=1)  # (N,)

        has_positive = positive_index >= 0
        weight = has_positive.float() if positive_weight is None else positive_weight.to(device).float()
        weight = weight * has_positive
        positive_logits = logits.gather(1, positive_index.clamp(min=0))
        # where() instead of a product: a row with an empty denominator has log_norm = -inf.
        log_prob = torch.where(has_positive, positive_logits - log_norm[:, None], torch.zeros_like(positive_logits))

        weight_sum = weight.sum(dim=1)
        # A row whose denominator is empty (everything excluded) has no defined term: skip it. Only that
        # row: a NaN or +inf normaliser (diverged embeddings, an absurd temperature) stays in the loss, so
        # the trainer's non-finite-loss check sees it.
        contributes = (weight_sum > 0) & (log_norm != float("-inf"))
        if row_valid is not None:
            contributes = contributes & row_valid.to(device=device, dtype=torch.bool)
        row_loss = -(weight * log_prob).sum(dim=1) / weight_sum.clamp(min=torch.finfo(torch.float32).tiny)
        count = contributes.sum()
        # With no contributing row the loss is 0 but stays attached to the graph (DDP needs every grad).
        return torch.where(contributes, row_loss, torch.zeros_like(row_loss)).sum() / count.clamp(min=1)


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the masked tokens and all their values, in fp32.

    target (B, N, D) holds every token; mask (B, N) bool, True = masked, with the same count per sample.
    pred is either (B, N_masked, D), the masked tokens in raster order (what MAEModel.forward returns,
    i.e. the order target[mask] has), or (B, N, D), of which only the masked tokens count."""
    if target.dim() != 3 or mask.shape != target.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(f"target must be (B, N, D) and mask bool (B, N); got {tuple(target.shape)} and "
                         f"{mask.dtype} {tuple(mask.shape)}")
    b, n, d = target.shape
    with torch.autocast(device_type=pred.device.type, enabled=False):
        if pred.shape == target.shape:
            pred = pred[mask]
        elif pred.dim() != 3 or pred.shape[0] != b or pred.shape[2] != d:
            raise ValueError(f"pred must be (B, N_masked, {d}) or {tuple(target.shape)}, got {tuple(pred.shape)}")
        chosen = target[mask]
        if chosen.shape[0] != pred.reshape(-1, d).shape[0]:
            raise ValueError(f"pred has {pred.reshape(-1, d).shape[0]} masked rows, the mask selects {chosen.shape[0]}")
        return (pred.reshape(-1, d).float() - chosen.float()).pow(2).mean()


def mae_loss(pred: Tensor, appearance: Tensor, motion: Tensor, mask: Tensor,
             w_app: float = 0.5, w_mot: float = 0.5) -> tuple[Tensor, dict[str, Tensor]]:
    """w_app * masked_mse(appearance) + w_mot * masked_mse(motion). pred (B, N_masked, A + M) holds
    appearance values first, then motion; appearance (B, N, A) and motion (B, N, M) are full targets.
    With equal widths and the 0.5 / 0.5 default this is the MSE over all A + M values, as the reference."""
    a = appearance.shape[-1]
    if pred.shape[-1] != a + motion.shape[-1]:
        raise ValueError(f"pred's last dim must be {a} + {motion.shape[-1]}, got {pred.shape[-1]}")
    loss_appearance = masked_mse(pred[..., :a], appearance, mask)
    loss_motion = masked_mse(pred[..., a:], motion, mask)
    loss = w_app * loss_appearance + w_mot * loss_motion
    return loss, {"loss_appearance": loss_appearance.detach(), "loss_motion": loss_motion.detach()}
