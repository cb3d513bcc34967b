"""Everything that defines a training run, as written to RUN/config.json and into every checkpoint."""
from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from sslfer_core import __version__
from sslfer_core.gpu_augment import valid_crop_area
from train.precision import PRECISIONS

# May differ when a run is resumed (where the data lives, how it is read, how often to log).
RUNTIME_KEYS = frozenset({"shards", "out", "device", "workers", "verify", "log_every", "keep_checkpoints", "compile"})
MASKFN_MODES = ("positive", "mask")
ARCHS = ("resnet50", "resnet18")


@dataclass
class RunConfig:
    shards: str
    out: str
    arch: str = "resnet50"
    proj_dim: int = 128
    timeaug: bool = False
    hardneg: bool = False
    faceswap: bool = False
    cutmix: bool = False
    maskfn: bool = False
    maskfn_mode: str = "positive"
    maskfn_k: int = 1
    maskfn_lambda: float = 0.8
    temperature: float = 0.07
    batch_size: int = 256  # anchors per optimiser step, all ranks together
    epochs: int | None = None
    steps: int | None = None
    warmup_steps: int | None = None
    lr: float = 3e-4
    weight_decay: float = 1e-4
    resize: int = 128
    crop: int = 112
    face_crop: float = 1.0  # central fraction of the stored aligned face kept before --resize
    crop_area: tuple[float, float] | None = None  # random-resized crop's area range; None = fixed --crop window
    swap_p: float = 0.8
    pool_videos: int = 64
    workers: int = 1
    seed: int = 0
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast: auto = on CUDA only
    compile: bool = False
    sync_bn: bool = False
    verify: bool = False

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown --arch {self.arch!r}; use {' or '.join(ARCHS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown --precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.maskfn_mode not in MASKFN_MODES:
            raise ValueError(f"unknown --maskfn-mode {self.maskfn_mode!r}; use {' or '.join(MASKFN_MODES)}")
        if self.faceswap and self.cutmix:
            raise ValueError("--faceswap and --cutmix both replace the positive; give one of them")
        if self.steps is None and self.epochs is None:
            raise ValueError("give --steps or --epochs")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")
        if not 0 < self.face_crop <= 1:
            raise ValueError(f"--face-crop must be in (0, 1], got {self.face_crop}")
        if self.crop_area is not None:
            self.crop_area = tuple(float(v) for v in self.crop_area)  # config.json gives a list
            if not valid_crop_area(self.crop_area):
                raise ValueError(f"--crop-area needs 0 < LO <= HI <= 1, got {' '.join(map(str, self.crop_area))}")
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"need 0 < --crop <= --resize, got {self.crop} and {self.resize}")

    @property
    def ablation(self) -> str:
        parts = [name for name, on in (("TimeAug", self.timeaug), ("HardNeg", self.hardneg),
                                       ("FaceSwap", self.faceswap), ("CutMix", self.cutmix),
                                       ("MaskFN", self.maskfn)) if on]
        return "+".join(parts) if parts else "SimCLR"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})

    def differences(self, other: "RunConfig") -> list[str]:
        """Settings (other than RUNTIME_KEYS) on which two configs disagree."""
        mine, theirs = self.to_json(), other.to_json()
        return sorted(k for k in mine if k not in RUNTIME_KEYS and mine[k] != theirs[k])


def code_version() -> str:
    """sslfer version plus the git commit of the source tree when it is a checkout ("+dirty" if edited)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" + (".dirty" if dirty else "")
