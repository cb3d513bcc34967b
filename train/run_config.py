"""What every training run is configured by, whatever its method, as written to RUN/config.json and into
every checkpoint. A method's config (train/methods/) subclasses TrainConfig with its own fields, and may
re-declare a shared field to give it another default; config.json holds them all flat, plus `method`."""
from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

from sslfer_core import __version__
from train.precision import PRECISIONS

# May differ when a run is resumed (where the data lives, how it is read, how often to log).
RUNTIME_KEYS = frozenset({"shards", "out", "device", "workers", "verify", "log_every", "keep_checkpoints", "compile"})
# config.json of runs made before there were methods has no "method" entry: they are all contrastive.
DEFAULT_METHOD = "contrastive"


@dataclass
class TrainConfig:
    shards: str
    out: str
    batch_size: int = 256  # samples per optimiser step, all ranks together
    epochs: int | None = None
    steps: int | None = None
    warmup_steps: int | None = None
    lr: float = 3e-4
    weight_decay: float = 1e-4
    workers: int = 1
    seed: int = 0
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast; what auto means is the method's rule
    compile: bool = False
    verify: bool = False

    method: ClassVar[str] = ""  # the registered method name; set by each method's config class
    runtime_keys: ClassVar[frozenset[str]] = RUNTIME_KEYS
    default_epochs: ClassVar[int] = 100  # the CLI's --epochs when neither --epochs nor --steps is given

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown --precision {self.precision!r}; use {', '.join(PRECISIONS)}")
        if self.steps is None and self.epochs is None:
            raise ValueError("give --steps or --epochs")
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give --steps or --epochs, not both")

    def to_json(self) -> dict:
        return dict(method=self.method, **asdict(self))

    @classmethod
    def from_json(cls, obj: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})

    def differences(self, other: "TrainConfig") -> list[str]:
        """Settings (other than the runtime keys) on which two configs disagree."""
        mine, theirs = self.to_json(), other.to_json()
        return sorted(k for k in mine if k not in self.runtime_keys and mine[k] != theirs.get(k))


def method_of_config(obj) -> str:
    """The method a config.json or checkpoint config names (runs from before methods: contrastive)."""
    return (obj.get("method") if isinstance(obj, dict) else None) or DEFAULT_METHOD


def resume_command(method: str, run_dir) -> str:
    """The command line that continues a run of `method`."""
    sub = "" if method == DEFAULT_METHOD else f" {method}"
    return f"sslfer-train{sub} --out {run_dir} --resume"


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
