"""What every training run is configured by, whatever its method, as written to RUN/config.json and into
every checkpoint. A method's config (train/methods/) subclasses TrainConfig with its own fields, and may
re-declare a shared field to give it another default; config.json holds them all flat, plus `method`."""
from __future__ import annotations

import json
import math
import subprocess
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from sslfer_core import __version__
from train.precision import PRECISIONS
from train.tensorboard_log import tensorboard_available

# May differ when a run is resumed (where the data lives, how it is read, how often to log).
RUNTIME_KEYS = frozenset({"shards", "out", "device", "workers", "verify", "log_every", "keep_checkpoints", "compile",
                          "tensorboard"})
# config.json of runs made before there were methods has no "method" entry: they are all contrastive.
DEFAULT_METHOD = "contrastive"
# Ranges of the shared numeric settings, (lowest, highest, lowest excluded); None = unbounded. The CLI's
# option types and TrainConfig's own check both read them. numpy seeds are below 2**32.
LIMITS = {
    "batch_size": (1, None, False), "epochs": (1, None, False), "steps": (1, None, False),
    "warmup_steps": (0, None, False), "workers": (0, None, False), "seed": (0, 2**32 - 1, False),
    "ckpt_every": (1, None, False), "keep_checkpoints": (1, None, False), "log_every": (1, None, False),
    "lr": (0.0, None, True), "weight_decay": (0.0, None, False),
}


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
    tensorboard: bool = field(default_factory=tensorboard_available)  # event files beside metrics.jsonl
    init: str | None = None  # published weights the run starts from (train/reference_weights.py)

    method: ClassVar[str] = ""  # the registered method name; set by each method's config class
    runtime_keys: ClassVar[frozenset[str]] = RUNTIME_KEYS
    default_epochs: ClassVar[int] = 100  # the CLI's --epochs when neither --epochs nor --steps is given

    def __post_init__(self):
        check_numbers(self)
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


def _option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def check_numbers(cfg) -> None:
    """Raise ValueError (one line naming the option) for a float setting of any method that is NaN or
    infinite, and for a shared setting outside LIMITS. Every float field is checked, so a method's own
    options (temperature, a mask ratio, ...) need no check of their own for NaN."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in items):
            shown = " ".join(map(str, items))
            raise ValueError(f"{_option_name(f.name)} must be a finite number, got {shown}")
        if f.name in LIMITS and value is not None:
            low, high, low_open = LIMITS[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{_option_name(f.name)} must be a number, got {value!r}")
            if value < low or (low_open and value == low) or (high is not None and value > high):
                wanted = (f"> {low}" if low_open else f">= {low}") + (f" and <= {high}" if high is not None else "")
                raise ValueError(f"{_option_name(f.name)} must be {wanted}, got {value}")


CONFIG_NAME = "config.json"  # a run folder's record of the method and settings that made it


class RunConfigError(ValueError):
    """A run folder's config.json exists but is no run config; the message is one line."""


def load_run_config(run_dir) -> dict | None:
    """The run folder's config.json, or None when it has none (a bare folder of checkpoints)."""
    path = Path(run_dir) / CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise RunConfigError(f"{path}: unreadable ({str(error)[:200]})") from None
    if not isinstance(config, dict):
        raise RunConfigError(f"{path}: not a run config (a JSON object)")
    return config


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
