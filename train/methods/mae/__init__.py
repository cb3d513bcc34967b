"""The video masked-autoencoder method (MAE-DFER, Sun et al., ACM MM 2023): an LGI-Former encoder learns by
reconstructing the appearance and motion of tube-window-masked tubelets of 16-frame face clips.

Batches come from ClipStream (clip_stream.py) over the shard index; each step augments the clips on
the device (sslfer_core.clip_augment), draws the mask (sslfer_core.tube_masking), both from the step's
generator so a resumed run redraws them exactly, and computes the targets and loss of sslfer_core.mae
and sslfer_core.losses. AdamW (0.9, 0.95) with weight decay 0.05 off biases, norms and the representative
and mask tokens; lr = base lr x global batch / 256, warm-up then cosine to --min-lr at the last step.
docs/video-mae.md ("Pretraining") describes the options, metrics and export.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import click
import torch
from torch import Tensor, nn

from sslfer_core.clip_augment import REFERENCE_SCALES, ClipAugmentConfig, augment_clips
from sslfer_core.lgi_export import encoder_export
from sslfer_core.lgi_former import PRESETS, LGIFormerConfig, preset, with_overrides
from sslfer_core.losses import mae_loss
from sslfer_core.mae import MAEModel, mae_targets, param_groups, split_prediction
from sslfer_core.mae_figure import reconstruction_figure
from sslfer_core.state_fit import state_dict_misfit
from sslfer_core.tube_masking import DEFAULT_MASK_RATIO, masked_per_window, tube_window_mask
from train.distributed import sum_across
from train.lr_schedule import make_scheduler
from train.methods import ExportError, Exported, Method, config_option, field_default, register
from train.methods.mae.clip_plan import (REFERENCE_FPS, CatalogueBuilder, ClipCatalogue, ClipConfig,
                                         ClipConfigError, build_catalogue, clip_stride_frames, shard_fps)
from train.methods.mae.clip_stream import ClipStream, make_clip_loader
from train.precision import cpu_has_native_bf16, uses_bf16
from train.run_config import RunConfigError, TrainConfig, load_run_config
from train.shard_index import ShardIndex

LR_BATCH = 256  # lr = base_lr x global batch / LR_BATCH (the reference's linear scaling rule)
REFERENCE_STRIDE = 4  # frames at REFERENCE_FPS between clip frames (0.16 s)
FIGURE_CLIPS = 2  # clips drawn in the reconstruction figure written at each checkpoint
FIGURE_FRAMES = 4  # token time slices (columns) per clip in the figure
FIGURE_SEED = 0x5EED  # the figure's own generator: its draws never touch the run's RNGs
FIGURE_DIR = "figures"
# Interval sums kept on the device between log lines, in this order (means over steps and ranks are logged).
LOGGED_PARTS = ("loss_appearance", "loss_motion", "zero_loss", "zero_loss_appearance", "zero_loss_motion")


@dataclass
class MAEConfig(TrainConfig):
    preset: str = "full"
    # Frames per clip (--frames; the model's temporal input, a multiple of the tubelet). Not named "frames":
    # config.json's "frames" is the loop's count of stored frames in the shards.
    clip_frames: int = 16
    stride: int | None = None  # frames at 25 fps between clip frames; None = REFERENCE_STRIDE unless stride_seconds
    stride_seconds: float | None = None
    clips_per_video: int = 1
    timing_tolerance: float = 0.5
    mask_ratio: float = DEFAULT_MASK_RATIO
    appearance_weight: float = 0.5
    motion_weight: float = 0.5
    batch_size: int = 256
    lr: float | None = None  # peak lr; None = base_lr x batch_size / LR_BATCH
    base_lr: float = 3e-4
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: float | None = None
    crop_scales: tuple[float, ...] = REFERENCE_SCALES

    method: ClassVar[str] = "mae"
    default_epochs: ClassVar[int] = 100

    def __post_init__(self):
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"unknown --preset {self.preset!r}; use {' or '.join(sorted(PRESETS))}")
        if self.stride is not None and self.stride_seconds is not None:
            raise ValueError("give --stride (frames at 25 fps) or --stride-seconds, not both")
        self.betas = tuple(float(b) for b in self.betas)  # config.json gives a list
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"--betas needs two values in [0, 1), got {self.betas}")
        if self.appearance_weight < 0 or self.motion_weight < 0 or not self.appearance_weight + self.motion_weight:
            raise ValueError("--appearance-weight and --motion-weight must be >= 0 and not both 0")
        model_config = self.model_config  # validates --frames against the preset
        try:
            masked_per_window(model_config, self.mask_ratio)
        except ValueError as error:
            raise ValueError(f"--mask-ratio: {error}") from None
        scaled = self.lr is None
        if scaled:
            self.lr = self.base_lr * self.batch_size / LR_BATCH
        if self.min_lr > self.lr:
            rule = f" (--base-lr {self.base_lr:g} x {self.batch_size} / {LR_BATCH})" if scaled else ""
            raise ValueError(f"--min-lr {self.min_lr:g} is above the peak lr {self.lr:g}{rule}; lower --min-lr or "
                             f"raise the lr")
        if self.clip_grad is not None and not self.clip_grad > 0:
            raise ValueError(f"--clip-grad must be positive, got {self.clip_grad}")
        self.crop_scales = tuple(float(s) for s in self.crop_scales)  # config.json gives a list
        try:
            self.augment_config
        except ValueError as error:
            raise ValueError(f"--crop-scales: {error}") from None
        self.clip_config  # validates frames / stride / clips per video

    @property
    def model_config(self) -> LGIFormerConfig:
        base = preset(self.preset)
        if self.clip_frames == base.frames:
            return base
        try:
            return with_overrides(base, frames=self.clip_frames)
        except ValueError as error:
            raise ValueError(f"--frames {self.clip_frames} does not fit the {self.preset} preset: {error}") from None

    @property
    def augment_config(self) -> ClipAugmentConfig:
        return ClipAugmentConfig(size=self.model_config.img_size, scales=self.crop_scales)

    @property
    def clip_config(self) -> ClipConfig:
        stride = self.stride if self.stride is not None or self.stride_seconds is not None else REFERENCE_STRIDE
        try:
            return ClipConfig(frames=self.clip_frames, stride_frames=stride, stride_seconds=self.stride_seconds,
                              frame_rate=REFERENCE_FPS, clips_per_video=self.clips_per_video,
                              timing_tolerance=self.timing_tolerance)
        except ClipConfigError as error:
            raise ValueError(str(error)) from None


def _option(name: str, **kwargs) -> click.Option:
    return config_option(MAEConfig, name, **kwargs)


def _scales(ctx, param, value):
    """--crop-scales "1,0.875" -> (1.0, 0.875)."""
    try:
        return tuple(float(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


@register
class MAE(Method):
    name = "mae"
    config_class = MAEConfig
    help = "Video masked-autoencoder pretraining of an LGI-Former (MAE-DFER) on 16-frame face clips."
    counter_names = ()
    rate_unit = "clips"
    user_errors = (ClipConfigError,)
    option_help = {
        "batch_size": "Clips per optimiser step over all ranks.",
        "epochs": f"Passes over the usable videos (--clips-per-video clips each) "
                  f"[default: {MAEConfig.default_epochs} unless --steps].",
        "warmup_steps": "Linear warm-up steps [default: 5% of the steps, at most 1000].",
        "weight_decay": "AdamW weight decay (not on biases, norms, representative and mask tokens).",
        "precision": "bf16 autocast for the network: auto = on CUDA and on CPUs with native bf16 (AVX512-BF16 or "
                     "AMX); never fp16.",
    }

    @classmethod
    def cli_options(cls) -> list[click.Option]:
        return [
            _option("preset", type=click.Choice(sorted(PRESETS)),
                    help="LGI-Former size: full = the reference (16 x 160^2), tiny = trains on a CPU (16 x 80^2)."),
            click.Option(["--frames", "clip_frames"], type=click.IntRange(min=1), show_default=True,
                         default=field_default(MAEConfig, "clip_frames"),
                         help="Frames per clip (a multiple of the tubelet, 2)."),
            _option("stride", type=click.IntRange(min=1), show_default=False,
                    help=f"Frames at {REFERENCE_FPS:g} fps between clip frames [default: {REFERENCE_STRIDE}, "
                         f"0.16 s, unless --stride-seconds]."),
            _option("stride_seconds", type=click.FloatRange(min=0, min_open=True),
                    help="The stride in seconds instead of --stride."),
            _option("clips_per_video", type=click.IntRange(min=1), help="Clips drawn per usable video per epoch."),
            _option("timing_tolerance", type=click.FloatRange(0, 1, max_open=True),
                    help="How far a clip step may be off stride/fps in row periods (uneven sources are skipped)."),
            _option("mask_ratio", type=click.FloatRange(0, 1, max_open=True),
                    help="Fraction of each mask window's tokens masked."),
            _option("appearance_weight", type=click.FloatRange(min=0), help="Weight of the appearance MSE."),
            _option("motion_weight", type=click.FloatRange(min=0), help="Weight of the motion MSE."),
            _option("batch_size", type=click.IntRange(min=1), help="Clips per optimiser step over all ranks."),
            _option("lr", type=click.FloatRange(min=0, min_open=True), show_default=False,
                    help=f"Peak learning rate [default: --base-lr x batch size / {LR_BATCH}]."),
            _option("base_lr", type=click.FloatRange(min=0, min_open=True),
                    help=f"Learning rate per {LR_BATCH} clips of global batch."),
            _option("min_lr", type=click.FloatRange(min=0), help="Learning rate at the last step (cosine floor)."),
            _option("betas", type=(float, float), metavar="B1 B2", help="AdamW betas."),
            _option("clip_grad", type=click.FloatRange(min=0, min_open=True),
                    help="Clip the gradient norm to this and log grad_norm [default: no clipping]."),
            _option("crop_scales", type=str, callback=_scales, metavar="S1,S2,...",
                    default=",".join(f"{s:g}" for s in REFERENCE_SCALES),
                    help="Multi-scale crop sides as fractions of the frame (the reference's by default; 1 = no crop)."),
        ]

    def __init__(self, cfg: MAEConfig, ctx):
        super().__init__(cfg, ctx)
        self.model_cfg = cfg.model_config
        self.clip_cfg = cfg.clip_config
        self.augment = cfg.augment_config
        self._bf16 = uses_bf16(cfg.precision, ctx.device) or (
            cfg.precision == "auto" and ctx.device.type == "cpu" and cpu_has_native_bf16())
        self.local_batch = cfg.batch_size // ctx.world_size
        self.stream: ClipStream | None = None
        self._catalogue_builder = CatalogueBuilder(self.clip_cfg)
        self.catalogue: ClipCatalogue | None = None
        self._sums = torch.zeros(len(LOGGED_PARTS), dtype=torch.float64, device=ctx.device)
        self._steps = 0

    # -- data
    def index_options(self) -> dict:
        # Clips need each video's valid starts, not its timestamps: the catalogue is built while the
        # index is read, and the index keeps no timestamps (216 M at VoxCeleb2 scale).
        return {"keep_timestamps": False, "on_shard": self._catalogue_builder}

    def check_shards(self, index: ShardIndex, shards: Path) -> None:
        """Refuse shards whose fps cannot give the stride, and a clip span longer than every video."""
        cfg = self.cfg
        fps = shard_fps(index)
        stride = clip_stride_frames(fps, self.clip_cfg)
        span = (cfg.clip_frames - 1) * stride + 1
        longest = int(index.video_frames.max()) if index.num_videos else 0
        if longest < span:
            given = (f"--stride-seconds {cfg.stride_seconds:g}" if cfg.stride_seconds is not None
                     else f"--stride {cfg.stride or REFERENCE_STRIDE}")
            raise ClipConfigError(
                f"--frames {cfg.clip_frames} at {given} spans {span} stored frames ({span / fps:.2f} s at {fps:g} fps) but "
                f"the longest video in {shards} has {longest}; lower --frames or the stride")
        # The remaining refusals (uneven timing everywhere); the catalogue is kept for the stream.
        builder = self._catalogue_builder
        self.catalogue = builder.finish(index) if builder.covers(index) else build_catalogue(index, self.clip_cfg)

    def make_stream(self, index: ShardIndex, workers: int) -> ClipStream:
        self.stream = ClipStream(index, self.clip_cfg, seed=self.cfg.seed, batch_size=self.local_batch,
                                 rank=self.ctx.rank, world_size=self.ctx.world_size, num_workers=workers,
                                 catalogue=self.catalogue)
        return self.stream

    def make_loader(self, stream: ClipStream, workers: int, pin_memory: bool):
        return make_clip_loader(stream, workers, pin_memory=pin_memory)

    # -- model and optimisation
    @property
    def bf16(self) -> bool:
        return self._bf16

    def build_model(self) -> nn.Module:
        return MAEModel(self.model_cfg).to(self.ctx.device)

    def init_weights(self, model: nn.Module, path: Path) -> dict:
        from train.reference_weights import init_mae

        return init_mae(model, path, f"--preset {self.cfg.preset} --frames {self.cfg.clip_frames}")

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)

    def build_scheduler(self, optimizer, warmup_steps: int, total_steps: int):
        return make_scheduler(optimizer, warmup_steps, total_steps, min_factor=self.cfg.min_lr / self.cfg.lr,
                              end_at_last_step=True)

    @property
    def grad_clip(self) -> float | None:
        return self.cfg.clip_grad

    # -- one step
    def inputs(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(normalised clips, clips in [0, 1], mask True = masked): the augmentation, then the mask, both
        drawn from `generator` on the device."""
        x, clips_01 = augment_clips(batch["clips"], self.augment, generator)
        mask = tube_window_mask(x.shape[0], self.model_cfg, self.cfg.mask_ratio, generator=generator,
                                device=x.device)
        return x, clips_01, mask

    def objective(self, net: nn.Module, x: Tensor, clips_01: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted masked MSE of the prediction and its parts, plus the same losses of predicting zeros."""
        cfg = self.cfg
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self._bf16):
            pred = net(x, mask)
        appearance, motion = mae_targets(clips_01, self.model_cfg)
        loss, parts = mae_loss(pred.float(), appearance, motion, mask, cfg.appearance_weight, cfg.motion_weight)
        with torch.no_grad():  # weighted by the mask, not selected by it: no host sync on a GPU
            weights = mask.float() / mask.sum()
            zero_app = (appearance.pow(2).mean(-1) * weights).sum()
            zero_mot = (motion.pow(2).mean(-1) * weights).sum()
        parts.update(zero_loss=cfg.appearance_weight * zero_app + cfg.motion_weight * zero_mot,
                     zero_loss_appearance=zero_app, zero_loss_motion=zero_mot)
        return loss, parts

    def step(self, net: nn.Module, batch: dict[str, Tensor], generator: torch.Generator):
        x, clips_01, mask = self.inputs(batch, generator)
        loss, parts = self.objective(net, x, clips_01, mask)
        self._sums += torch.stack([parts[name].detach().double() for name in LOGGED_PARTS])
        self._steps += 1
        return loss, parts

    # -- reporting
    @property
    def title(self) -> str:
        return f"video MAE, LGI-Former {self.cfg.preset}"

    @property
    def batch_description(self) -> str:
        c = self.stream.catalogue if self.stream is not None else None
        mc = self.model_cfg
        text = (f"{self.cfg.batch_size} clips of {mc.frames} x {mc.img_size}^2 per step, "
                f"{self.cfg.mask_ratio:.0%} masked")
        if c is not None:
            text += (f"; stride {c.stride} rows at {c.fps:g} fps; {len(c.usable)} of {self.stream.index.num_videos} "
                     f"videos usable ({c.skipped_short} too short, {c.skipped_timing} uneven in time)")
        return text

    def config_record(self) -> dict:
        cfg, mc = self.cfg, self.model_cfg
        record = {"peak_lr": cfg.lr, "lr_rule": f"base_lr {cfg.base_lr:g} x {cfg.batch_size} / {LR_BATCH}"
                  if math.isclose(cfg.lr, cfg.base_lr * cfg.batch_size / LR_BATCH) else "given with --lr",
                  "input_size": mc.img_size, "tubelet": mc.tubelet}
        if self.stream is not None:
            c = self.stream.catalogue
            record.update(clip_stride_rows=c.stride, clip_fps=c.fps, usable_videos=len(c.usable),
                          skipped_short=c.skipped_short, skipped_timing=c.skipped_timing)
        return record

    def log_record(self, outputs: dict[str, Tensor], counters: dict[str, int]) -> dict:
        steps = torch.tensor([float(self._steps)], dtype=torch.float64, device=self._sums.device)
        totals = sum_across(torch.cat([self._sums, steps]), self.ctx).tolist()
        self._sums.zero_()
        self._steps = 0
        n = max(totals[-1], 1.0)
        return {name: value / n for name, value in zip(LOGGED_PARTS, totals)}

    def on_checkpoint(self, model: nn.Module, run_dir: Path, step: int, batch: dict[str, Tensor]) -> list[Path]:
        path = Path(run_dir) / FIGURE_DIR / f"reconstruction-step{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_reconstruction(model, batch["clips"][:FIGURE_CLIPS], self.model_cfg, self.augment, self.cfg.mask_ratio,
                             path, bf16=self._bf16)
        return [path]

    # -- export
    @classmethod
    def export(cls, state: dict, source: Path) -> Exported:
        """The encoder's state_dict with its preset, config and input size (sslfer_core/lgi_export.py)."""
        try:
            cfg = cls.config_class.from_json(state["config"])
        except (TypeError, ValueError) as error:
            raise ExportError(f"{source}: its config is not a video MAE config: {error}") from None
        model_cfg = cfg.model_config
        model = MAEModel(model_cfg)
        misfit = state_dict_misfit(model.state_dict(), state["model"])  # names the keys; torch's first line does not
        if misfit:
            raise ExportError(f"{source}: weights do not fit the {cfg.preset} preset: {misfit}")
        model.load_state_dict(state["model"], strict=True)
        clip = {"frames": cfg.clip_frames, "stride_seconds": cfg.clip_config.seconds_per_step,
                "fps": _recorded(source, "clip_fps")}
        payload = encoder_export(model.encoder, model_cfg, cfg.preset, clip=clip,
                                 source={"step": int(state.get("step", -1)),
                                         "code_version": state.get("code_version")})
        return Exported(payload, f"LGI-Former {cfg.preset} encoder ({model_cfg.frames} x {model_cfg.img_size}^2)")


def _recorded(checkpoint: Path, key: str):
    """An entry of the run's config.json (RUN/checkpoints/ckpt-*.pt -> RUN/config.json); None when absent."""
    try:
        return (load_run_config(Path(checkpoint).parent.parent) or {}).get(key)
    except RunConfigError:
        return None


@torch.no_grad()
def write_reconstruction(model: nn.Module, clips_uint8: Tensor, cfg: LGIFormerConfig, augment: ClipAugmentConfig,
                         mask_ratio: float, path: Path, *, bf16: bool = False, seed: int = FIGURE_SEED) -> Path:
    """The reconstruction PNG (sslfer_core/mae_figure.py) of `model` (an MAEModel, unwrapped) on these clips,
    with crop and mask drawn from a generator of its own; the model's train/eval mode is restored."""
    device = clips_uint8.device
    generator = torch.Generator(device=device).manual_seed(seed)
    x, clips_01 = augment_clips(clips_uint8, augment, generator)
    mask = tube_window_mask(x.shape[0], cfg, mask_ratio, generator=generator, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = model(x, mask)
    finally:
        model.train(was_training)
    appearance, motion = mae_targets(clips_01, cfg)
    pred_app, pred_mot = split_prediction(pred.float(), cfg)
    reconstruction_figure(path, clips_01, mask, pred_app, appearance, pred_mot, motion, cfg,
                          frames=min(FIGURE_FRAMES, cfg.grid[0]))
    return path
