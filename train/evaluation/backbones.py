"""Backbones to evaluate: an exported SSL backbone file (safetensors or a plain torch state_dict), a training
run folder, `random`, or `imagenet`. Exports and run folders also carry the input preprocessing the backbone
was trained with (train/weights_file.py), which evaluation applies unless told otherwise.

Each loads into an unmodified torchvision ResNet whose fc is Identity, so the output is the pooled feature
(512-d for resnet18, 2048-d for resnet50). Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch
from torch import nn

from sslfer_core.file_hash import file_sha256
from sslfer_core.finite import count_floating, describe_non_finite, non_finite_names
from sslfer_core.models import ARCHS, build_backbone, infer_arch
from sslfer_core.state_fit import state_dict_misfit
from train.weights_file import PREPROCESSING_KEYS, WeightsFileError, load_torch_file, read_weights

if TYPE_CHECKING:
    from train.methods import Exported

RANDOM_SEED = 0  # `random` is the same network every time
IMAGENET_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet50": "resnet50-0676ba61.pth"}
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


def load_reference(path: Path) -> LoadedBackbone | None:
    """The ResNet of a published SSL-FER checkpoint (train/reference_weights.py), or None for any other file;
    one line says what was found, mapped and skipped."""
    from train.reference_weights import ReferenceWeightsError, read_reference, resnet_state

    try:
        reference = read_reference(path)
        if reference is None:
            return None
        state, line = resnet_state(reference)
    except (ReferenceWeightsError, WeightsFileError) as error:
        raise click.ClickException(str(error)) from None
    model, arch = _into_resnet(state, None, str(path))
    click.echo(f"{reference.found_line()}; {line}", err=True)
    return LoadedBackbone(path.stem, arch, model, file_sha256(path), str(path))


def load_exported(path: Path) -> LoadedBackbone:
    reference = load_reference(path)
    if reference is not None:
        return reference
    try:
        state, metadata = read_weights(path)
    except WeightsFileError as error:
        raise click.ClickException(str(error)) from None
    if any(k.startswith(BACKBONE_PREFIX) for k in state):
        state = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    model, arch = _into_resnet(state, metadata.get("arch"), str(path))
    trained = {key: metadata[key] for key in PREPROCESSING_KEYS if key in metadata}
    return LoadedBackbone(path.stem, arch, model, file_sha256(path), str(path), trained)


def export_of_run(run_dir: Path) -> tuple[Path, dict, Exported]:
    """The newest readable checkpoint of a run folder, its content, and what the run's own method exports
    from it (in memory, as `sslfer-train export` would write it); one-line errors."""
    from train.export import ExportError, export_checkpoint

    try:
        return export_checkpoint(run_dir, warn=lambda text: click.echo(text, err=True))
    except ExportError as error:
        raise click.ClickException(str(error)) from None


def resnet_from_export(run_dir: Path, path: Path, state: dict, exported: Exported) -> LoadedBackbone:
    """A run's export as a torchvision ResNet, with the preprocessing it was trained with."""
    payload = exported.payload
    if not (isinstance(payload, dict) and payload and all(torch.is_tensor(v) for v in payload.values())):
        raise click.ClickException(f"{run_dir}: its method exports {exported.description}, not a ResNet "
                                   "backbone; evaluate it with `sslfer-eval dfer`")
    model, arch = _into_resnet(payload, exported.metadata.get("arch"), str(path))
    trained = {key: str(exported.metadata[key]) for key in PREPROCESSING_KEYS if key in exported.metadata}
    return LoadedBackbone(f"{run_dir.name}@step{int(state.get('step', -1))}", arch, model, file_sha256(path),
                          str(path), trained)


def load_run(run_dir: Path) -> LoadedBackbone:
    return resnet_from_export(run_dir, *export_of_run(run_dir))


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
