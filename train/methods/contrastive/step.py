"""One training step's computation on the device: CutMix rows, per-sample augmentation, forward, gather
across ranks, MaskFN and the multi-positive NT-Xent loss. No optimiser and no I/O, so the distributed
test and the benchmark call exactly what the trainer calls."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sslfer_core.gpu_augment import AugmentConfig, BatchAugment, cutmix_inner_face
from sslfer_core.losses import DEFAULT_TEMPERATURE, multi_positive_nt_xent
from train.distributed import DistContext, gather, gather_with_grad
from train.methods.contrastive.batch_builder import LossInputs, MaskFNConfig, build_loss_inputs
from train.precision import uses_bf16
from train.step_io import batch_to_device, step_generator  # noqa: F401  (benchmarks import them from here)


@dataclass
class StepResult:
    loss: Tensor
    embeddings: Tensor  # gathered (global) projections, for statistics
    inputs: LossInputs


def centre_crop(images: Tensor, landmarks: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """Keep the central `fraction` of each (N, S, S, 3) aligned face, landmarks shifted to match. The aligned
    crops keep hair and background for FaceSwap; datasets with tight face crops (FER2013) match better
    when pretraining sees the face at their scale."""
    side = images.shape[1]
    margin = int(round(side * (1 - fraction) / 2))
    if margin == 0:
        return images, landmarks
    return images[:, margin:side - margin, margin:side - margin], landmarks - margin


class ContrastiveStep:
    def __init__(self, ctx: DistContext, *, batch_size: int, num_views: int, resize: int, crop: int,
                 temperature: float = DEFAULT_TEMPERATURE, maskfn: MaskFNConfig | None = None, face_crop: float = 1.0,
                 crop_area: tuple[float, float] | None = None, precision: str = "auto"):
        if not 0 < face_crop <= 1:
            raise ValueError(f"face_crop must be in (0, 1], got {face_crop}")
        self.ctx = ctx
        self.face_crop = face_crop
        self.batch_size, self.num_views = batch_size, num_views  # per rank
        self.augment = BatchAugment(AugmentConfig(resize=resize, crop=crop, crop_area=crop_area))
        self.temperature = temperature
        self.maskfn = maskfn
        self.bf16 = uses_bf16(precision, ctx.device)
        # channels_last pays off on CUDA and with bf16 kernels, not in fp32 on CPU. The trainer lays
        # the model out to match.
        self.channels_last = ctx.device.type == "cuda" or self.bf16

    def views(self, batch: dict[str, Tensor], generator: torch.Generator | None) -> Tensor:
        """(N, 3, crop, crop) network input from a device batch of uint8 faces."""
        images, landmarks = batch["images"], batch["landmarks"]
        target = batch["cutmix_target"]
        rows = (target >= 0).nonzero().squeeze(1)
        if rows.numel():
            # CutMix: the positive frame's inner-face box pasted onto another identity's anchor frame.
            images = images.clone()
            images[rows] = cutmix_inner_face(images[target[rows]], images[rows], landmarks[rows])
        images, landmarks = centre_crop(images, landmarks, self.face_crop)
        x = self.augment(images, landmarks, generator=generator)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def loss(self, model: nn.Module, x: Tensor, batch: dict[str, Tensor]) -> StepResult:
        with torch.autocast(device_type=self.ctx.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            z = model(x)
        z_all = gather_with_grad(z.float(), self.ctx)
        video_ids = gather(batch["video_ids"], self.ctx)
        row_valid = gather(batch["row_valid"].to(torch.uint8), self.ctx).bool()
        if self.maskfn is not None:
            descriptors = gather(batch["descriptors"], self.ctx)
            has_descriptor = gather(batch["has_descriptor"].to(torch.uint8), self.ctx).bool()
        else:
            descriptors = has_descriptor = None
        inputs = build_loss_inputs(video_ids, row_valid, descriptors, has_descriptor, self.batch_size,
                                   self.num_views, self.ctx.world_size, self.maskfn)
        loss = multi_positive_nt_xent(z_all, inputs.positive_index, inputs.positive_weight, self.temperature,
                                      inputs.exclude, inputs.row_valid)
        return StepResult(loss, z_all, inputs)
