"""The contrastive method (Shu et al., BMVC 2022): SimCLR on aligned faces with the TimeAug, HardNeg,
FaceSwap, CutMix and MaskFN ablation flags. Batches come from ShardStream (shard_stream.py), the step from
ContrastiveStep (step.py); optimiser Adam, schedule warm-up then cosine to 0."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import click
import torch
from torch import Tensor, nn

from sslfer_core.gpu_augment import IMAGENET_MEAN, IMAGENET_STD, valid_crop_area
from sslfer_core.false_negatives import DEFAULT_LAMBDA
from sslfer_core.false_negatives import MODES as MASKFN_MODES
from sslfer_core.losses import DEFAULT_TEMPERATURE
from sslfer_core.models import ARCHS, ContrastiveModel, backbone_state_dict
from sslfer_core.state_fit import state_dict_misfit
from train.methods import ExportError, Exported, Method, config_option, field_default, register
from train.methods.contrastive.batch_builder import MaskFNConfig, similarity_stats
from train.methods.contrastive.epoch_plan import DEFAULT_SWAP_P, FALLBACK_KINDS, PlanConfig
from train.methods.contrastive.shard_stream import ShardStream, make_loader
from train.methods.contrastive.step import ContrastiveStep
from train.run_config import TrainConfig
from train.shard_index import ShardIndex
from train.shard_set import ShardSetError

NEGATIVE_FLAGS = ("hardneg", "maskfn")  # strategies that act on in-batch negatives


def refuse_negative_strategies(cfg, reason: str) -> None:
    """For a method without in-batch negatives: HardNeg or MaskFN set in `cfg` is a ValueError, `reason`
    formatted with the flag's name."""
    for flag in NEGATIVE_FLAGS:
        if getattr(cfg, flag):
            raise ValueError(reason.format(flag=flag))


def options_without_negatives(options: list[click.Option], unused: tuple[str, ...],
                              refused_help: str) -> list[click.Option]:
    """The contrastive options less `unused`, the negative strategies' help saying why they are refused."""
    kept = [option for option in options if option.name not in unused]
    for option in kept:
        if option.name in NEGATIVE_FLAGS:
            option.help = refused_help
    return kept


PREVIEW_VIEWS = 16  # augmented views in TensorBoard's start image


def check_ablation(index: ShardIndex, root: Path, *, faceswap: bool, maskfn: bool, global_batch: int) -> None:
    """Refuse flags that the prepared data cannot serve."""
    if faceswap and index.swaps_per_frame == 0:
        raise ShardSetError(f"--faceswap needs stored face swaps, but the shards in {root} hold none "
                            "(swaps_per_frame 0); prepare them with sslfer-prep --swaps 1")
    if maskfn and index.descriptor_dim == 0:
        raise ShardSetError(f"--maskfn needs eye+mouth descriptors, but the shards in {root} hold none "
                            "(descriptor_dim 0); prepare them with sslfer-prep --descriptor auto (not none)")
    if index.num_frames < global_batch:
        raise ShardSetError(f"{root} holds {index.num_frames} frames, fewer than one batch of {global_batch} "
                            "anchors; lower --batch-size")


@dataclass
class ContrastiveConfig(TrainConfig):
    arch: str = "resnet50"
    proj_dim: int = 128
    timeaug: bool = False
    hardneg: bool = False
    faceswap: bool = False
    cutmix: bool = False
    maskfn: bool = False
    maskfn_mode: str = MASKFN_MODES[0]
    maskfn_k: int = 1
    maskfn_lambda: float = DEFAULT_LAMBDA
    temperature: float = DEFAULT_TEMPERATURE
    resize: int = 128
    crop: int = 112
    face_crop: float = 1.0  # central fraction of the stored aligned face kept before --resize
    crop_area: tuple[float, float] | None = None  # random-resized crop's area range; None = fixed --crop window
    swap_p: float = DEFAULT_SWAP_P
    pool_videos: int = 64
    sync_bn: bool = False

    method: ClassVar[str] = "contrastive"

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown --arch {self.arch!r}; use {' or '.join(ARCHS)}")
        super().__post_init__()
        if self.maskfn_mode not in MASKFN_MODES:
            raise ValueError(f"unknown --maskfn-mode {self.maskfn_mode!r}; use {' or '.join(MASKFN_MODES)}")
        if self.faceswap and self.cutmix:
            raise ValueError("--faceswap and --cutmix both replace the positive; give one of them")
        if not 0 < self.face_crop <= 1:
            raise ValueError(f"--face-crop must be in (0, 1], got {self.face_crop}")
        if self.crop_area is not None:
            self.crop_area = tuple(float(v) for v in self.crop_area)  # config.json gives a list
            if not valid_crop_area(self.crop_area):
                raise ValueError(f"--crop-area needs 0 < LO <= HI <= 1, got {' '.join(map(str, self.crop_area))}")
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"need 0 < --crop <= --resize, got {self.crop} and {self.resize}")

    @property
    def strategies(self) -> list[str]:
        return [name for name, on in (("TimeAug", self.timeaug), ("HardNeg", self.hardneg),
                                      ("FaceSwap", self.faceswap), ("CutMix", self.cutmix),
                                      ("MaskFN", self.maskfn)) if on]

    @property
    def ablation(self) -> str:
        return "+".join(self.strategies) if self.strategies else "SimCLR"


@register
class Contrastive(Method):
    name = "contrastive"
    config_class = ContrastiveConfig
    help = "Contrastive pretraining (SimCLR, TimeAug, HardNeg, FaceSwap, CutMix, MaskFN)."
    counter_names = FALLBACK_KINDS  # samples whose TimeAug / HardNeg / FaceSwap / CutMix view fell back
    rate_unit = "images"
    option_help = {
        "epochs": f"Passes over every frame as anchor [default: {ContrastiveConfig.default_epochs} unless --steps].",
        "warmup_steps": "Linear warm-up steps [default: 5% of the steps, at most 1000].",
        "precision": "bf16 autocast for the network: auto = on CUDA only; bf16 on CPU pays off where the CPU has "
                     "AVX512-BF16 or AMX (1.3-1.5x for ResNet-18 at 48-64 px here).",
    }

    @classmethod
    def cli_options(cls) -> list[click.Option]:
        _option = functools.partial(config_option, cls.config_class)  # defaults of the subclass configs too
        return [
            _option("arch", type=click.Choice(ARCHS)),
            _option("timeaug", is_flag=True, help="Positive = a frame 0.5-1.5 s away (else a second augmentation)."),
            _option("hardneg", is_flag=True,
                    help="Add a frame >= 3 s away (and its own positive) as extra negative rows."),
            _option("faceswap", is_flag=True,
                    help="Positive replaced by its stored face swap with probability --swap-p."),
            _option("cutmix", is_flag=True,
                    help="Positive's inner-face box pasted on another identity's frame (ablation)."),
            _option("maskfn", is_flag=True, help="Treat the most descriptor-similar samples as false negatives."),
            _option("maskfn_mode", type=click.Choice(MASKFN_MODES)),
            _option("maskfn_k", type=click.IntRange(min=1)),
            _option("maskfn_lambda", type=click.FloatRange(min=0, min_open=True)),
            _option("temperature", type=click.FloatRange(min=0, min_open=True)),
            _option("batch_size", type=click.IntRange(min=2),
                    help="Anchors per step over all ranks; each adds 2 rows (4 with --hardneg)."),
            _option("resize", type=click.IntRange(min=8), help="Faces are resized to this first."),
            _option("crop", type=click.IntRange(min=8), help="Random crop side (network input)."),
            _option("face_crop", type=click.FloatRange(0, 1, min_open=True),
                    help="Central fraction of the stored aligned face kept before --resize (e.g. 0.72 for tight "
                         "crops like FER2013's)."),
            _option("crop_area", type=(float, float), metavar="LO HI", show_default=False,
                    help="Random-resized crop: a box of LO..HI of the face's area (aspect 3/4..4/3) resized to "
                         "--crop [default: a fixed --crop window of the --resize face]."),
            _option("swap_p", type=click.FloatRange(0, 1),
                    help="Probability that a positive is its FaceSwap (or CutMix) version."),
            _option("pool_videos", type=click.IntRange(min=1),
                    help="Videos each loader worker keeps open to mix into batches."),
            _option("sync_bn", is_flag=True, help="Synchronise BatchNorm statistics across ranks (CUDA)."),
        ]

    def __init__(self, cfg: ContrastiveConfig, ctx):
        super().__init__(cfg, ctx)
        world = ctx.world_size
        self.plan = PlanConfig(seed=cfg.seed, batch_size=cfg.batch_size // world, timeaug=cfg.timeaug,
                               hardneg=cfg.hardneg, faceswap=cfg.faceswap, cutmix=cfg.cutmix, swap_p=cfg.swap_p,
                               pool_videos=cfg.pool_videos)
        self.objective = ContrastiveStep(
            ctx, batch_size=cfg.batch_size // world, num_views=self.plan.num_views, resize=cfg.resize,
            crop=cfg.crop, temperature=cfg.temperature, face_crop=cfg.face_crop, crop_area=cfg.crop_area,
            precision=cfg.precision,
            maskfn=MaskFNConfig(cfg.maskfn_mode, cfg.maskfn_k, cfg.maskfn_lambda) if cfg.maskfn else None)

    # -- data
    def check_shards(self, index: ShardIndex, shards: Path) -> None:
        cfg = self.cfg
        check_ablation(index, shards, faceswap=cfg.faceswap, maskfn=cfg.maskfn, global_batch=cfg.batch_size)

    def make_stream(self, index: ShardIndex, workers: int) -> ShardStream:
        return ShardStream(index, self.plan, rank=self.ctx.rank, world_size=self.ctx.world_size,
                           num_workers=workers, with_descriptors=self.cfg.maskfn)

    def make_loader(self, stream: ShardStream, workers: int, pin_memory: bool):
        return make_loader(stream, workers, pin_memory=pin_memory)

    # -- model and optimisation
    @property
    def bf16(self) -> bool:
        return self.objective.bf16

    @property
    def rows_per_step(self) -> int:
        return self.cfg.batch_size * self.objective.num_views

    @classmethod
    def build_network(cls, setting: Callable[[str], Any]) -> nn.Module:
        """The method's model from its config settings (`setting(name)`), on the CPU; its ResNet is .backbone,
        which is what export writes. Methods that train on the same views (BYOL, MoCo) override this."""
        return ContrastiveModel(setting("arch"), proj_dim=int(setting("proj_dim")))

    def build_model(self) -> nn.Module:
        model = self.build_network(lambda name: getattr(self.cfg, name)).to(self.ctx.device)
        if self.objective.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.cfg.sync_bn and self.ctx.distributed:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def init_weights(self, model: nn.Module, path: Path) -> dict:
        from train.reference_weights import init_contrastive

        return init_contrastive(model, path)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        # fused: Adam's update in one kernel per parameter instead of several, which shortens every step
        # (docs/training.md, "Measurements behind defaults").
        # Only what gradients train: a momentum network (BYOL's target, MoCo's key encoder) follows by EMA.
        trained = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.Adam(trained, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, fused=True)

    # -- one step
    def step(self, net: nn.Module, batch: dict[str, Tensor], generator: torch.Generator):
        x = self.objective.views(batch, generator)
        result = self.objective.loss(net, x, batch)
        inputs = result.inputs
        return result.loss, {"embeddings": result.embeddings, "partner": inputs.positive_index[:, 0],
                             "row_valid": inputs.row_valid,
                             "false_negatives": torch.tensor(inputs.false_negatives)}

    def start_images(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The first anchors' augmented views as the network gets them, un-normalised."""
        generator = torch.Generator(device=self.ctx.device).manual_seed(self.cfg.seed)
        with torch.no_grad():
            x = self.objective.views(batch, generator)[:PREVIEW_VIEWS].float()
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return {"augmented_views": (x * std + mean).clamp(0, 1)}

    def counts(self, batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> Tensor:
        return batch["fallbacks"]

    # -- reporting
    @property
    def title(self) -> str:
        return f"{self.cfg.ablation}, {self.cfg.arch}"

    @property
    def batch_description(self) -> str:
        return f"{self.cfg.batch_size} anchors x {self.objective.num_views} views per step"

    def config_record(self) -> dict:
        return {"ablation": self.cfg.ablation}

    def log_record(self, outputs: dict[str, Tensor], counters: dict[str, int]) -> dict:
        pos_cos, neg_cos = similarity_stats(outputs["embeddings"], outputs["partner"], outputs["row_valid"])
        return {"pos_cos": pos_cos, "neg_cos": neg_cos, "false_negatives": int(outputs["false_negatives"]),
                "fallbacks": dict(counters)}

    def final_summary(self, counters: dict[str, int]) -> str:
        return "; samples that fell back: " + ", ".join(f"{k} {v}" for k, v in counters.items())

    # -- export
    @classmethod
    def export(cls, state: dict, source: Path) -> Exported:
        """The backbone as a plain torchvision ResNet state_dict (keys conv1.weight, layer1.0..., no fc.*), with
        the input preprocessing it was trained with."""
        def setting(name: str):  # the checkpoint's config, or the default for settings it predates
            return state["config"].get(name, field_default(cls.config_class, name))

        arch = setting("arch")
        model = cls.build_network(setting)
        misfit = state_dict_misfit(model.state_dict(), state["model"])  # names the keys; torch's first line does not
        if misfit:
            raise ExportError(f"{source}: weights do not fit {arch}: {misfit}")
        model.load_state_dict(state["model"], strict=True)
        metadata = {"arch": arch, "input_size": int(setting("crop")), "resize": int(setting("resize")),
                    "face_crop": float(setting("face_crop")), "crop_convention": "centre",
                    "normalisation": "imagenet"}
        return Exported(backbone_state_dict(model), f"{arch} backbone", metadata)
