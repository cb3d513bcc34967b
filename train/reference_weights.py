"""Published checkpoints of the reference code, read without running code and mapped onto sslfer's models.

Kinds, detected from the contents (never from the file name):
  mae-dfer-pretrain   MAE-DFER's VoxCeleb2 pretraining (checkpoint-49.pth): {"model", "optimizer", "epoch",
                      "scaler", "args"}, model = encoder.* + decoder.* of the LGI-Former MAE
  mae-dfer-finetuned  MAE-DFER fine-tuned on DFEW / FERV39k / MAFW: the same keys, model = the classifier
  mae-dfer-ca         MAE-DFER-CA fine-tuned: the classifier + the CA motion branch; variant add, cat or add-pos
  ssl-fer             SSL-FER's checkpoint_best.pth.tar: {"epoch", "arch", "state_dict", "optimizer",
                      "scheduler"}, state_dict = ResNetSimCLR (backbone.*); the pickled scheduler (and the
                      optimiser it holds) are read past without being built (train/weights_file.py)
A bare state_dict of any of these (the "model" / "state_dict" entry alone) is recognised too. The LGI-Former's
geometry comes from the tensor shapes and the saved args (input_size, num_frames, lg_region_size; the reference's
defaults 160, 16, (2, 5, 10) without args); heads = width / 64, as in every model the reference defines.
Name tables: sslfer_core/reference_names.py.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sslfer_core.reference_names import (MAE_DFER_CA, MAE_DFER_FINETUNED, MAE_DFER_PRETRAIN, SSL_FER, Mapped,
                                         NameMapError, from_sslfer, to_sslfer)
from train.weights_file import describe_skipped, is_safetensors, load_torch_file

KINDS = ("mae-dfer-pretrain", "mae-dfer-finetuned", "mae-dfer-ca", "ssl-fer")
VIDEO_KINDS = KINDS[:3]
HEAD_WIDTH = 64  # the reference's models: 512 wide with 8 heads, 768 with 12
SSLFER_HEADS_ARG = "num_heads"  # an arg only sslfer's mae-dfer export writes (the reference's models fix heads)
REFERENCE_DEFAULTS = {"input_size": 160, "num_frames": 16, "lg_region_size": (2, 5, 10)}
# Options of the reference's LGI-Former that sslfer's computes only at these values.
SUPPORTED_ARGS = {"attn_type": "local_global", "lg_first_attn_type": "self", "lg_third_attn_type": "cross",
                  "lg_attn_param_sharing_first_third": False, "lg_attn_param_sharing_all": False,
                  "lg_no_second": False, "lg_no_third": False}
CLASSIFIER_ARGS = {"lg_classify_token_type": "region", "use_mean_pooling": True}


class ReferenceWeightsError(ValueError):
    """A published checkpoint that cannot be used here; one-line message naming the file."""


@dataclass
class ReferenceFile:
    path: Path
    kind: str
    state: dict[str, torch.Tensor]  # the reference's tensors under the reference's names
    args: dict = field(default_factory=dict)
    skipped: str | None = None  # describe_skipped's line
    variant: str | None = None  # the CA fusion: add, cat, add-pos
    where: str = "model"  # the payload entry the tensors came from
    meta: dict = field(default_factory=dict)  # the payload's plain top-level values (epoch, arch)

    def arg(self, name: str):
        return self.args.get(name, REFERENCE_DEFAULTS.get(name))

    def found_line(self) -> str:
        extra = f" ({self.variant})" if self.variant else ""
        count = sum(t.numel() for t in self.state.values())
        line = f"{self.path}: {self.kind}{extra} checkpoint, {len(self.state)} tensors ({count:,} values) under '{self.where}'"
        if self.args:
            line += f", with its saved args ({len(self.args)})"
        return line


def _tensor_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(torch.is_tensor(v) for v in value.values())


def kind_of_state(state: dict) -> tuple[str, str | None] | None:
    """(kind, variant) of a reference state_dict, from its keys; None when it is none of KINDS."""
    keys = set(state)
    if "encoder.lg_region_tokens" in keys and "encoder.patch_embed.proj.weight" in keys:
        return "mae-dfer-pretrain", None
    if "lg_region_tokens" in keys and "patch_embed.proj.weight" in keys:
        if "fc1.weight" in keys and any(k.startswith("cablock.") for k in keys):
            if any(k.startswith("vit_pos.") for k in keys):
                return "mae-dfer-ca", "add-pos"
            head, dim = state.get("head.weight"), state["patch_embed.proj.weight"].shape[0]
            return "mae-dfer-ca", ("cat" if head is not None and head.shape[1] == 2 * dim else "add")
        return "mae-dfer-finetuned", None
    if "backbone.conv1.weight" in keys and "backbone.fc.0.weight" in keys:
        return "ssl-fer", None
    return None


def detect(payload, path: Path) -> ReferenceFile | None:
    """The ReferenceFile of a loaded payload, or None when it is not a reference checkpoint. A dict that holds a
    'model' / 'module' / 'state_dict' entry of tensors matching no known layout is an error listing its keys."""
    skipped = describe_skipped(payload)
    if not isinstance(payload, dict) or isinstance(payload.get("format"), str):
        return None  # sslfer's own exports name their format; their readers take them
    where, state = None, None
    for key in ("model", "module", "state_dict"):
        if _tensor_dict(payload.get(key)):
            where, state = key, payload[key]
            break
    if state is None:
        if not _tensor_dict(payload):
            if skipped:
                raise ReferenceWeightsError(f"{path}: holds objects that are not built ({skipped}) but no "
                                            "'model' or 'state_dict' of tensors")
            return None
        where, state = "(the file itself)", payload
    found = kind_of_state(state)
    if found is None:
        if where == "(the file itself)":
            return None  # a plain state_dict of another kind (an sslfer export, a torchvision ResNet)
        raise ReferenceWeightsError(f"{path}: '{where}' matches no known checkpoint layout (MAE-DFER, MAE-DFER-CA, "
                                    f"SSL-FER); first keys: {', '.join(list(state)[:6])}")
    args = payload.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else (dict(args) if isinstance(args, dict) else {})
    kind, variant = found
    meta = {k: v for k, v in payload.items() if isinstance(v, (bool, int, float, str))} if where != "(the file itself)" \
        else {}
    return ReferenceFile(Path(path), kind, dict(state), args, skipped, variant, where, meta)


def read_reference(path: Path) -> ReferenceFile | None:
    """A reference checkpoint from a torch file, or None for any other weights file (safetensors included).
    Raises ReferenceWeightsError / WeightsFileError with one line."""
    path = Path(path)
    if is_safetensors(path):
        return None
    return detect(load_torch_file(path, skip_objects=True), path)


# ------------------------------------------------------------------------------------- LGI-Former geometry
def _depth(state: dict, prefix: str) -> int:
    """Blocks under prefix ("blocks." / "encoder.blocks."): one more than the largest index."""
    indices = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(indices) + 1 if indices else 0


def _check_args(ref: ReferenceFile, classifier: bool) -> None:
    wanted = {**SUPPORTED_ARGS, **(CLASSIFIER_ARGS if classifier else {})}
    for name, value in wanted.items():
        if name in ref.args and ref.args[name] != value:
            raise ReferenceWeightsError(f"{ref.path}: saved with {name}={ref.args[name]!r}; sslfer's LGI-Former "
                                        f"computes {name}={value!r} only")


def lgi_config(ref: ReferenceFile):
    """The LGIFormerConfig of a MAE-DFER(-CA) checkpoint."""
    from sslfer_core.lgi_former import LGIFormerConfig

    prefix = "encoder." if ref.kind == "mae-dfer-pretrain" else ""
    _check_args(ref, classifier=ref.kind != "mae-dfer-pretrain")
    state = ref.state
    dim, in_chans, tubelet, patch, _ = state[f"{prefix}patch_embed.proj.weight"].shape
    depth = _depth(state, f"{prefix}blocks.")
    hidden = state[f"{prefix}blocks.0.mlp.fc1.weight"].shape[0]
    if dim % HEAD_WIDTH and SSLFER_HEADS_ARG not in ref.args:
        raise ReferenceWeightsError(f"{ref.path}: width {dim} is not a multiple of the reference's head width "
                                    f"{HEAD_WIDTH}")
    heads = int(ref.args.get(SSLFER_HEADS_ARG) or int(dim) // HEAD_WIDTH)
    # the fine-tuning script builds its model for num_frames x num_segments frames
    frames = int(ref.arg("num_frames")) * int(ref.args.get("num_segments") or 1)
    values = dict(frames=frames, img_size=int(ref.arg("input_size")), tubelet=int(tubelet),
                  patch=int(patch), in_chans=int(in_chans), dim=int(dim), depth=depth, heads=heads,
                  mlp_ratio=hidden / dim, region=tuple(int(v) for v in ref.arg("lg_region_size")))
    if has_decoder(ref):
        dec_dim = int(state["decoder.norm.weight"].shape[0])
        values.update(dec_dim=dec_dim, dec_depth=_depth(state, "decoder.blocks."),
                      dec_heads=max(1, dec_dim // HEAD_WIDTH))
    try:
        config = LGIFormerConfig(**values)
    except ValueError as error:
        raise ReferenceWeightsError(f"{ref.path}: its geometry does not form an LGI-Former here: {error}") from None
    regions = state[f"{prefix}lg_region_tokens"].shape[0]
    if regions != config.num_regions:
        raise ReferenceWeightsError(f"{ref.path}: {regions} region tokens, but {values['frames']} frames of "
                                    f"{values['img_size']} px in regions of {values['region']} make "
                                    f"{config.num_regions}")
    return config


def has_decoder(ref: ReferenceFile) -> bool:
    return ref.kind == "mae-dfer-pretrain" and "decoder.norm.weight" in ref.state


def _map(ref: ReferenceFile, table, model: nn.Module) -> Mapped:
    try:
        mapped = to_sslfer(ref.state, table, model.state_dict())
        model.load_state_dict(mapped.state, strict=True)
    except NameMapError as error:
        raise ReferenceWeightsError(f"{ref.path}: {error}") from None
    return mapped


def mapped_line(ref: ReferenceFile, mapped: Mapped, into: str) -> str:
    parts = [f"mapped {len(mapped.state)} tensors into {into} ({mapped.renamed} renamed)", mapped.describe_unused()]
    if ref.skipped:
        parts.append(ref.skipped)
    return "; ".join(parts)


def build_pretraining(ref: ReferenceFile):
    """(MAEModel with the file's weights, its config, the mapping line) of a mae-dfer-pretrain file."""
    from sslfer_core.mae import MAEModel

    config = lgi_config(ref)
    if not has_decoder(ref):
        raise ReferenceWeightsError(f"{ref.path}: holds the encoder only (no decoder.*), not a whole MAE")
    model = MAEModel(config)
    mapped = _map(ref, MAE_DFER_PRETRAIN, model)
    return model.eval(), config, mapped_line(ref, mapped, "sslfer's MAEModel")


def _encoder_only(ref: ReferenceFile):
    """The LGIFormerEncoder of a pretraining-layout file without a decoder (sslfer's mae-dfer export)."""
    from sslfer_core.lgi_former import LGIFormerEncoder

    config = lgi_config(ref)
    encoder = LGIFormerEncoder(config)
    target = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    try:
        mapped = to_sslfer(ref.state, MAE_DFER_PRETRAIN, target)
    except NameMapError as error:
        raise ReferenceWeightsError(f"{ref.path}: {error}") from None
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in mapped.state.items()}, strict=True)
    return encoder.eval(), config, mapped_line(ref, mapped, "sslfer's LGI-Former encoder")


def build_classifier(ref: ReferenceFile):
    """(the fine-tuned classifier with the file's weights, its config, the mapping line): an LGIFormerClassifier,
    or a MotionFusionClassifier (LGIFormerEncoder + CA branch) for mae-dfer-ca."""
    from sslfer_core.ca_branch import CAConfig, MotionFusionClassifier
    from sslfer_core.lgi_former import LGIFormerClassifier, LGIFormerEncoder

    config = lgi_config(ref)
    classes = int(ref.state["head.weight"].shape[0])
    if ref.kind == "mae-dfer-finetuned":
        model = LGIFormerClassifier(config, classes)
        mapped = _map(ref, MAE_DFER_FINETUNED, model)
        return model.eval(), config, mapped_line(ref, mapped, f"sslfer's LGI-Former classifier ({classes} classes)")
    if ref.kind != "mae-dfer-ca":
        raise ReferenceWeightsError(f"{ref.path}: a {ref.kind} checkpoint holds no classifier")
    out_dim = int(ref.state["fc1.weight"].shape[0])
    try:
        ca_config = CAConfig(img_size=config.img_size, frames=config.frames, in_chans=config.in_chans, out_dim=out_dim)
        model = MotionFusionClassifier(LGIFormerEncoder(config), config.dim, classes, ref.variant, ca_config)
    except ValueError as error:
        raise ReferenceWeightsError(f"{ref.path}: {error}") from None
    mapped = _map(ref, MAE_DFER_CA, model)
    return model.eval(), config, mapped_line(ref, mapped, f"sslfer's LGI-Former + CA ({ref.variant}) classifier "
                                                          f"({classes} classes)")


def build_encoder(ref: ReferenceFile):
    """(LGIFormerEncoder with the file's encoder weights, its config, the mapping line) of any MAE-DFER(-CA) file;
    a fine-tuned file's head (and CA branch) are not part of the encoder and are named in the line."""
    if ref.kind == "mae-dfer-pretrain" and not has_decoder(ref):
        return _encoder_only(ref)
    if ref.kind == "mae-dfer-pretrain":
        model, config, line = build_pretraining(ref)
        return model.encoder, config, line + "; the decoder is not used"
    model, config, line = build_classifier(ref)
    rest = "the head and the CA branch are" if ref.kind == "mae-dfer-ca" else "the head is"
    return model.encoder, config, f"{line}; {rest} not used"


def resnet_state(ref: ReferenceFile) -> tuple[dict[str, torch.Tensor], str]:
    """(torchvision ResNet state_dict without fc, the mapping line) of an ssl-fer file."""
    from sslfer_core.models import build_backbone, infer_arch

    if ref.kind != "ssl-fer":
        raise ReferenceWeightsError(f"{ref.path}: a {ref.kind} checkpoint (a video model), not a ResNet; use "
                                    "`sslfer-eval dfer` for it")
    plain = {k[len("backbone."):]: v for k, v in ref.state.items() if k.startswith("backbone.")}
    try:
        arch = infer_arch(plain)
    except ValueError as error:
        raise ReferenceWeightsError(f"{ref.path}: {error}") from None
    saved = ref.meta.get("arch")
    try:
        mapped = to_sslfer(ref.state, SSL_FER, build_backbone(arch).state_dict())
    except NameMapError as error:
        raise ReferenceWeightsError(f"{ref.path}: {error}") from None
    return mapped.state, mapped_line(ref, mapped, f"torchvision {arch}") + (
        f"; saved arch {saved!r}" if saved else "")


# ------------------------------------------------------------------------------ --init and the mae-dfer export
GEOMETRY = ("frames", "img_size", "tubelet", "patch", "in_chans", "dim", "depth", "heads", "mlp_ratio", "region")
DECODER_GEOMETRY = ("dec_dim", "dec_depth", "dec_heads")


def _fits(ref: ReferenceFile, theirs, ours, names, where: str) -> None:
    differs = [f"{n} {getattr(theirs, n)} (run: {getattr(ours, n)})" for n in names
               if getattr(theirs, n) != getattr(ours, n)]
    if differs:
        raise ReferenceWeightsError(f"{ref.path}: its LGI-Former does not fit {where}: {', '.join(differs)}")


def init_mae(model: nn.Module, path: Path, where: str) -> dict:
    """Load a MAE-DFER(-CA) checkpoint into a fresh sslfer MAEModel (`sslfer-train mae --init`): the whole MAE
    from a pretraining file, the encoder alone from a fine-tuned file or an encoder-only export (the decoder
    keeps its initialisation). Returns what config.json records."""
    ref = read_reference(path)
    if ref is None or ref.kind not in VIDEO_KINDS:
        found = ref.kind if ref is not None else "not a published checkpoint"
        raise ReferenceWeightsError(f"{path}: {found}; --init for mae takes a MAE-DFER or MAE-DFER-CA checkpoint")
    config = lgi_config(ref)
    _fits(ref, config, model.cfg, GEOMETRY, where)
    if has_decoder(ref):
        _fits(ref, config, model.cfg, DECODER_GEOMETRY, where)
        line = mapped_line(ref, _map(ref, MAE_DFER_PRETRAIN, model), "the run's MAEModel")
    else:
        encoder, _, line = build_encoder(ref)
        model.encoder.load_state_dict(encoder.state_dict(), strict=True)
        line += "; the decoder starts from its initialisation"
    return _init_record(ref, line)


def init_contrastive(model: nn.Module, path: Path) -> dict:
    """Load an SSL-FER checkpoint's ResNet into a fresh contrastive model's backbone (`sslfer-train contrastive
    --init`); the projection head keeps its initialisation (SSL-FER's MLP has another shape)."""
    ref = read_reference(path)
    if ref is None or ref.kind != "ssl-fer":
        found = ref.kind if ref is not None else "not a published checkpoint"
        raise ReferenceWeightsError(f"{path}: {found}; --init for contrastive takes an SSL-FER checkpoint")
    state, line = resnet_state(ref)
    from sslfer_core.models import infer_arch

    arch = infer_arch(state)
    if arch != model.arch:
        raise ReferenceWeightsError(f"{path}: holds a {arch}; the run is --arch {model.arch}")
    model.backbone.load_state_dict(state, strict=True)
    return _init_record(ref, line + "; the projection head starts from its initialisation")


def _init_record(ref: ReferenceFile, line: str) -> dict:
    from sslfer_core.file_hash import file_sha256

    return {"path": str(ref.path), "sha256": file_sha256(ref.path), "kind": ref.kind, "variant": ref.variant,
            "summary": f"{ref.found_line()}; {line}"}


def mae_dfer_payload(export_payload: dict) -> dict:
    """sslfer's LGI-Former encoder export -> the reference's pretraining layout ({"model": encoder.* under the
    reference's names, "args": a Namespace with the geometry}), which run_class_finetuning.py --finetune reads.
    The args carry num_heads too, which only sslfer reads (the reference fixes heads by model name)."""
    from sslfer_core.lgi_export import config_from_plain

    config = config_from_plain(export_payload["model_config"])
    state = {f"encoder.{k}": v for k, v in export_payload["state_dict"].items()}
    model_name = ("pretrain_videomae_base_dim512_no_depth_patch16_160"
                  if (config.dim, config.heads, config.img_size, config.patch) == (512, 8, 160, 16) else
                  "sslfer_lgi_former")
    args = argparse.Namespace(
        model=model_name, input_size=config.img_size, num_frames=config.frames, tubelet_size=config.tubelet,
        encoder_depth=config.depth, lg_region_size=list(config.region), attn_type="local_global",
        lg_first_attn_type="self", lg_third_attn_type="cross", lg_attn_param_sharing_first_third=False,
        lg_attn_param_sharing_all=False, lg_no_second=False, lg_no_third=False, **{SSLFER_HEADS_ARG: config.heads})
    return {"model": from_sslfer(state, MAE_DFER_PRETRAIN), "args": args}


__all__ = ["KINDS", "VIDEO_KINDS", "ReferenceFile", "ReferenceWeightsError", "read_reference", "detect",
           "kind_of_state", "lgi_config", "build_pretraining", "build_classifier", "build_encoder", "resnet_state",
           "mapped_line", "HEAD_WIDTH", "init_mae", "init_contrastive", "mae_dfer_payload", "has_decoder"]
