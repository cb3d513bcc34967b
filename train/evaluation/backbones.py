"""Backbones to evaluate: an exported SSL backbone file (safetensors or a plain torch state_dict), a training
run folder, `random`, or `imagenet`. Exports and run folders also carry the input preprocessing the backbone
was trained with (train/weights_file.py), which evaluation applies unless told otherwise.

Each loads into an unmodified torchvision ResNet whose fc is Identity, so the output is the pooled feature
(512-d for resnet18, 2048-d for resnet50). Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch
from torch import nn

from sslfer_core.file_hash import file_sha256
from sslfer_core.finite import count_floating, describe_non_finite, non_finite_names
from sslfer_core.models import ARCHS, build_backbone, infer_arch
from sslfer_core.state_fit import state_dict_misfit
from train.weights_file import PREPROCESSING_KEYS, WeightsFileError, load_torch_file, read_weights

RANDOM_SEED = 0  # `random` is the same network every time
IMAGENET_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet50": "resnet50-0676ba61.pth"}
CHECKPOINT_PATTERN = re.compile(r"^ckpt-step(\d+)\.pt$")
BACKBONE_PREFIX = "backbone."


@dataclass
class LoadedBackbone:
    name: str  # row label in tables
    arch: str
    model: nn.Module  # outputs (B, feature_dim)
    sha256: str  # of the weights file; for `random`, of the initialised tensors
    source: str
    # what the weights were trained on (PREPROCESSING_KEYS, strings as recorded); empty when unknown
    trained_preprocessing: dict = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return int(self.model.feature_dim)

    def describe(self) -> dict:
        return {"name": self.name, "arch": self.arch, "sha256": self.sha256, "source": self.source,
                "feature_dim": self.feature_dim, "trained_preprocessing": self.trained_preprocessing}


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _load_state(path: Path) -> dict:
    try:
        return load_torch_file(path)
    except WeightsFileError as error:
        raise click.ClickException(str(error)) from None


def _into_resnet(state: dict, arch: str | None, where: str) -> tuple[nn.Module, str]:
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        found = infer_arch(state)
    except ValueError as error:
        raise click.ClickException(f"{where}: {error}")
    if arch is not None and arch != found:
        raise click.ClickException(f"{where}: config says {arch} but the weights are {found}")
    model = build_backbone(found)
    # Checked before loading: load_state_dict names no key on its first line, and it would cast int8 or
    # bool tensors into the float network and score them.
    misfit = state_dict_misfit(model.state_dict(), state)
    if misfit:
        raise click.ClickException(f"{where}: weights do not fit torchvision {found}: {misfit}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise click.ClickException(f"{where}: weights do not fit torchvision {found}: {str(error).strip()[:300]}")
    bad = non_finite_names(state.items())  # a diverged run's weights would score at chance, silently
    if bad:
        total = count_floating(state.values())
        raise click.ClickException(f"{where}: refusing to evaluate: {describe_non_finite(bad, total)}")
    return model, found


def load_exported(path: Path) -> LoadedBackbone:
    try:
        state, metadata = read_weights(path)
    except WeightsFileError as error:
        raise click.ClickException(str(error)) from None
    if any(k.startswith(BACKBONE_PREFIX) for k in state):
        state = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    model, arch = _into_resnet(state, metadata.get("arch"), str(path))
    trained = {key: metadata[key] for key in PREPROCESSING_KEYS if key in metadata}
    return LoadedBackbone(path.stem, arch, model, file_sha256(path), str(path), trained)


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, newest step first ("step100" sorts before "step20" by name)."""
    found = [(int(m.group(1)), p) for p in (run_dir / "checkpoints").glob("ckpt-step*.pt")
             if (m := CHECKPOINT_PATTERN.match(p.name))]
    if not found:
        raise click.ClickException(f"{run_dir}: no checkpoints/ckpt-step*.pt in this run folder")
    return sorted(found, reverse=True)


def _run_checkpoint(run_dir: Path, run_config: dict) -> tuple[Path, int, dict]:
    """The newest checkpoint made by the run that config.json describes; one of another method or run
    (copied into the folder) is skipped with a warning, as training and export skip it."""
    from train.checkpoints import foreign_to_run

    for step, path in run_checkpoints(run_dir):
        checkpoint = _load_state(path)
        foreign = (foreign_to_run(checkpoint["config"], run_config)
                   if isinstance(checkpoint, dict) and isinstance(checkpoint.get("config"), dict) else None)
        if foreign is None:
            return path, step, checkpoint
        click.echo(f"warning: {path}: {foreign}; trying the one before", err=True)
    raise click.ClickException(f"{run_dir}: none of its checkpoints belongs to the run its config.json describes")


def load_run(run_dir: Path) -> LoadedBackbone:
    config_path = run_dir / "config.json"
    try:
        run_config = json.loads(config_path.read_text())
        arch = run_config["arch"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise click.ClickException(f"{config_path}: cannot read key 'arch' ({type(error).__name__})")
    path, step, checkpoint = _run_checkpoint(run_dir, run_config)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise click.ClickException(f"{path}: expected a dict with key 'model' (a state_dict)")
    state = {k[len(BACKBONE_PREFIX):]: v for k, v in checkpoint["model"].items() if k.startswith(BACKBONE_PREFIX)}
    if not state:
        raise click.ClickException(f"{path}: no '{BACKBONE_PREFIX}*' keys in the model state_dict")
    model, arch = _into_resnet(state, arch, str(path))
    return LoadedBackbone(f"{run_dir.name}@step{step}", arch, model, file_sha256(path), str(path),
                          _run_preprocessing(checkpoint, path))


def _run_preprocessing(checkpoint: dict, path: Path) -> dict:
    """The preprocessing the run's method records in its export (nothing when the checkpoint has no config)."""
    if not isinstance(checkpoint.get("config"), dict):
        return {}
    from train.methods import ExportError, get_method
    from train.run_config import method_of_config

    try:
        metadata = get_method(method_of_config(checkpoint["config"])).export(checkpoint, path).metadata
    except (ExportError, ValueError):
        return {}
    return {key: str(metadata[key]) for key in PREPROCESSING_KEYS if key in metadata}


def load_random(arch: str, seed: int = RANDOM_SEED) -> LoadedBackbone:
    # Fork the RNG so the fixed seed does not disturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_backbone(arch)
    name = f"random-{arch}" if seed == RANDOM_SEED else f"random{seed}-{arch}"
    return LoadedBackbone(name, arch, model, state_dict_sha256(model.state_dict()), f"random (seed {seed})")


def _random_seed(spec: str) -> int | None:
    """'random' -> the fixed seed, 'random:N' -> N (several random initialisations give a seed spread)."""
    if spec == "random":
        return RANDOM_SEED
    head, _, tail = spec.partition(":")
    if head == "random" and re.fullmatch(r"[0-9]{1,18}", tail):  # ASCII digits: "²".isdigit() is True
        return int(tail)
    return None


def imagenet_weights_path(arch: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILES[arch]


def load_imagenet(arch: str) -> LoadedBackbone:
    path = imagenet_weights_path(arch)
    if not path.is_file():
        raise click.ClickException(
            f"ImageNet weights for {arch} are not cached: put {IMAGENET_FILES[arch]} (torchvision's file) at {path} "
            f"(directory set by $TORCH_HOME); nothing is downloaded")
    model, found = _into_resnet(_load_state(path), arch, str(path))
    return LoadedBackbone(f"imagenet-{arch}", found, model, file_sha256(path), str(path))


def load_backbone(spec: str, arch: str = "resnet18") -> LoadedBackbone:
    """`spec`: a backbone .pt file, a run folder, 'random[:SEED]' or 'imagenet' (the latter two use `arch`)."""
    if arch not in ARCHS:
        raise click.ClickException(f"unknown --arch {arch!r}; use one of {', '.join(ARCHS)}")
    random_seed = _random_seed(spec)
    if random_seed is not None:
        backbone = load_random(arch, random_seed)
    elif spec == "imagenet":
        backbone = load_imagenet(arch)
    else:
        path = Path(spec)
        if path.is_dir():
            backbone = load_run(path)
        elif path.is_file():
            backbone = load_exported(path)
        else:
            raise click.ClickException(f"--backbone {spec!r}: not a file, a run folder, 'random[:SEED]' or 'imagenet'")
    backbone.model.eval()
    return backbone


def load_backbones(specs: list[str], arch: str) -> list[LoadedBackbone]:
    backbones = [load_backbone(spec, arch) for spec in specs]
    seen: dict[str, int] = {}
    for backbone in backbones:  # keep table rows distinguishable
        seen[backbone.name] = seen.get(backbone.name, 0) + 1
        if seen[backbone.name] > 1:
            backbone.name = f"{backbone.name}#{seen[backbone.name]}"
    return backbones
