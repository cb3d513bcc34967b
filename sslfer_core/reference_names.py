"""Tensor names of the published checkpoints (MAE-DFER, MAE-DFER-CA, SSL-FER) against sslfer's, as data.

Each NameMap is one table per file format: rows of (reference name, sslfer name), where a name is a module
path or a whole tensor name, "{i}" stands for a block index, and a row matches a tensor whose name starts with
its path at a "." boundary (the longest matching row wins; the rest of the name is kept). `splits` are single
reference tensors that sslfer holds as several (the decoder's fused qkv projection: q then kv, cut on dim 0).
`unused` lists reference tensors that no sslfer module holds; they are reported, never silently dropped.
The reverse direction (sslfer -> reference) is derived from the same rows.
docs/evaluation.md ("Using the published weights") describes the formats.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NameMap:
    name: str
    rows: tuple[tuple[str, str], ...]
    splits: tuple[tuple[str, tuple[str, ...]], ...] = ()
    unused: tuple[tuple[str, str], ...] = ()  # (reference path, why it is not used)

    def reversed(self) -> "NameMap":
        return NameMap(f"{self.name} (reverse)", tuple((b, a) for a, b in self.rows))


# One LGI-Former block: the reference's LGBlock names -> sslfer_core.lgi_former.LGIBlock names. The attention
# modules' own tensors (q, kv, q_bias, v_bias, proj) are named alike on both sides.
LGI_BLOCK = (
    ("first_attn_norm0", "local_norm"),
    ("first_attn", "local_attn"),
    ("second_attn_norm0", "global_norm"),
    ("second_attn", "global_attn"),
    ("third_attn_norm0", "cross_norm_q"),
    ("third_attn_norm1", "cross_norm_kv"),
    ("third_attn", "cross_attn"),
    ("norm2", "mlp_norm"),
    ("mlp", "mlp"),
)


def _encoder_rows(reference: str, ours: str) -> tuple[tuple[str, str], ...]:
    return ((f"{reference}patch_embed.proj", f"{ours}patch_embed"),
            (f"{reference}lg_region_tokens", f"{ours}rep_tokens"),
            *((f"{reference}blocks.{{i}}.{a}", f"{ours}blocks.{{i}}.{b}") for a, b in LGI_BLOCK))


# MAE-DFER pretraining (run_mae_pretraining.py, e.g. checkpoint-49.pth) -> sslfer_core.mae.MAEModel
MAE_DFER_PRETRAIN = NameMap(
    "mae-dfer-pretrain",
    rows=_encoder_rows("encoder.", "encoder.") + (
        ("encoder.norm", "encoder.norm"),
        ("encoder_to_decoder", "encoder_to_decoder"),
        ("mask_token", "mask_token"),
        ("decoder.blocks.{i}.norm1", "decoder_blocks.{i}.norm1"),
        ("decoder.blocks.{i}.attn.q_bias", "decoder_blocks.{i}.attn.q_bias"),
        ("decoder.blocks.{i}.attn.v_bias", "decoder_blocks.{i}.attn.v_bias"),
        ("decoder.blocks.{i}.attn.proj", "decoder_blocks.{i}.attn.proj"),
        ("decoder.blocks.{i}.norm2", "decoder_blocks.{i}.norm2"),
        ("decoder.blocks.{i}.mlp", "decoder_blocks.{i}.mlp"),
        ("decoder.norm", "decoder_norm"),
        ("decoder.head", "decoder_pred"),
    ),
    splits=(("decoder.blocks.{i}.attn.qkv.weight",
             ("decoder_blocks.{i}.attn.q.weight", "decoder_blocks.{i}.attn.kv.weight")),),
)

# MAE-DFER fine-tuned classifier (run_class_finetuning.py, lg_classify_token_type 'region', mean pooling)
# -> sslfer_core.lgi_former.LGIFormerClassifier. The reference's fc_norm is the LayerNorm after the mean of
# the representative tokens, which sslfer's encoder calls norm.
MAE_DFER_FINETUNED = NameMap(
    "mae-dfer-finetuned",
    rows=_encoder_rows("", "encoder.") + (("fc_norm", "encoder.norm"), ("head", "head")),
)

# MAE-DFER-CA fine-tuned (the classifier above + the CA motion branch, and for add(pos) the position ViT)
# -> sslfer_core.ca_branch.MotionFusionClassifier with an LGIFormerEncoder.
_CA_LAYERS = tuple(row for k in range(4) for row in (
    (f"cablock.layer{k + 1}.0", f"ca.blocks.{k}"),
    (f"cablock.layer{k + 1}.0.downsample", f"ca.blocks.{k}.shortcut"),
    (f"cablock.layer{k + 1}.0.attn", f"ca.blocks.{k}.attention"),
))
MAE_DFER_CA = NameMap(
    "mae-dfer-ca",
    rows=MAE_DFER_FINETUNED.rows + (
        ("conv_act.0", "ca.stem.0"),
        ("conv_act.1", "ca.stem.1"),
        ("cablock.conv1", "ca.stem.3"),
        ("cablock.bn1", "ca.stem.4"),
        *_CA_LAYERS,
        ("fc1", "ca.fc"),
        ("vit_pos.patch_embed.proj", "positions.patch_embed"),
        ("vit_pos.pos_embed", "positions.positions"),
        ("vit_pos.blocks.{i}", "positions.blocks.{i}"),
        ("vit_pos.blocks.{i}.mlp.fc1", "positions.blocks.{i}.mlp.0"),
        ("vit_pos.blocks.{i}.mlp.fc2", "positions.blocks.{i}.mlp.2"),
        ("vit_pos.norm", "positions.norm"),
    ),
    unused=(
        ("cablock.fc", "the CA network's classifier, which no forward pass uses"),
        ("vit_pos.cls_token", "the position ViT's class token, unused by its forward pass"),
        ("vit_pos.head", "the position ViT's head, unused by its forward pass"),
        ("vit_pos.to_Mask", "the position ViT's mask layer, unused by its forward pass"),
    ),
)

# SSL-FER ResNetSimCLR (checkpoint_best.pth.tar: a torchvision ResNet under `backbone.`, its fc replaced by the
# projection MLP Linear-ReLU-Linear) -> a torchvision ResNet under plain names (sslfer_core.models.build_backbone).
SSL_FER = NameMap(
    "ssl-fer",
    rows=(("backbone", ""),),
    unused=(("backbone.fc", "the contrastive projection MLP (Linear-ReLU-Linear); evaluation and sslfer's "
                           "Linear-BN-ReLU-Linear head do not use it"),),
)

NAME_MAPS = {m.name: m for m in (MAE_DFER_PRETRAIN, MAE_DFER_FINETUNED, MAE_DFER_CA, SSL_FER)}


class NameMapError(ValueError):
    """The tensors do not fit the table or the target model; one-line message."""


def _pattern(path: str) -> re.Pattern:
    if not path:
        return re.compile(r"(?P<rest>.*)\Z")
    body = re.escape(path).replace(re.escape("{i}"), r"(?P<i>\d+)")
    return re.compile(body + r"(?P<rest>(?:\..*)?)\Z")


def _fill(path: str, match: re.Match) -> str:
    name = path.replace("{i}", match.group("i")) if "{i}" in path else path
    rest = match.group("rest")
    if not name:
        return rest.lstrip(".")
    return name + rest if not rest or rest.startswith(".") else f"{name}.{rest}"  # rest of an empty-path row


def translate(name: str, table: NameMap) -> str | None:
    """The other side's name of one tensor by the longest matching row; None when no row matches."""
    best = None
    for source, target in table.rows:
        match = _pattern(source).match(name)
        if match and (best is None or len(source) > len(best[0])):
            best = (source, target, match)
    return None if best is None else _fill(best[1], best[2])


def _unused_reason(name: str, table: NameMap) -> str | None:
    for path, why in table.unused:
        if _pattern(path).match(name):
            return why
    return None


@dataclass
class Mapped:
    state: dict[str, torch.Tensor]  # sslfer names
    renamed: int  # tensors whose name changed
    unused: list[tuple[str, tuple[int, ...], str]]  # (reference name, shape, why)

    def describe_unused(self, limit: int = 4) -> str:
        if not self.unused:
            return "nothing unused"
        parts = [f"{name} {'x'.join(map(str, shape))}" for name, shape, _ in self.unused[:limit]]
        more = f" and {len(self.unused) - limit} more" if len(self.unused) > limit else ""
        return f"unused: {', '.join(parts)}{more} ({self.unused[0][2]})"


def to_sslfer(state: dict[str, torch.Tensor], table: NameMap, target: dict[str, torch.Tensor]) -> Mapped:
    """Reference tensors -> sslfer's names, checked against `target` (a state_dict of the model to load):
    every target tensor must be given once with its shape; unmatched reference tensors are an error."""
    out: dict[str, torch.Tensor] = {}
    unused, unmatched, renamed = [], [], 0
    split_rows = [(_pattern(source), parts) for source, parts in table.splits]
    for name, tensor in state.items():
        why = _unused_reason(name, table)
        if why is not None:
            unused.append((name, tuple(tensor.shape), why))
            continue
        split = next(((pattern.match(name), parts) for pattern, parts in split_rows if pattern.match(name)), None)
        if split is not None:
            match, parts = split
            names = [_fill(p, match) for p in parts]
            sizes = [target[n].shape[0] if n in target else -1 for n in names]
            if -1 in sizes or sum(sizes) != tensor.shape[0]:
                raise NameMapError(f"{name} {tuple(tensor.shape)} does not split into {', '.join(names)}")
            for part_name, part in zip(names, torch.split(tensor, sizes, dim=0)):
                out[part_name] = part.clone()
            renamed += 1
            continue
        ours = translate(name, table)
        if ours is None:
            unmatched.append(name)
            continue
        if ours in out:
            raise NameMapError(f"{name} and another tensor both map to {ours}")
        out[ours] = tensor
        renamed += ours != name
    if unmatched:
        raise NameMapError(f"{len(unmatched)} tensors match no row of the {table.name} table, first: "
                           f"{', '.join(unmatched[:5])}")
    missing = [k for k in target if k not in out]
    extra = [k for k in out if k not in target]
    if missing or extra:
        raise NameMapError(f"{table.name}: {len(missing)} tensors missing (first: {', '.join(missing[:3]) or '-'}), "
                           f"{len(extra)} not in the model (first: {', '.join(extra[:3]) or '-'})")
    wrong = [(k, tuple(out[k].shape), tuple(target[k].shape)) for k in target if out[k].shape != target[k].shape]
    if wrong:
        k, got, want = wrong[0]
        raise NameMapError(f"{table.name}: {len(wrong)} tensors have the wrong shape, first {k}: {got} in the file, "
                           f"{want} in the model")
    return Mapped(out, renamed, unused)


def from_sslfer(state: dict[str, torch.Tensor], table: NameMap) -> dict[str, torch.Tensor]:
    """sslfer tensors -> the reference's names (the table's rows reversed; split tensors concatenated again).
    Tensors no row covers are an error."""
    reverse = table.reversed()
    out: dict[str, torch.Tensor] = {}
    joined: set[str] = set()
    for source, parts in table.splits:
        patterns = [_pattern(p) for p in parts]
        first = [(name, patterns[0].match(name)) for name in state if patterns[0].match(name)]
        for name, match in first:
            names = [_fill(p, match) for p in parts]
            if not all(n in state for n in names):
                raise NameMapError(f"{table.name}: {name} has no partner {', '.join(n for n in names if n not in state)}")
            out[_fill(source, match)] = torch.cat([state[n] for n in names], dim=0)
            joined.update(names)
    unmatched = []
    for name, tensor in state.items():
        if name in joined:
            continue
        theirs = translate(name, reverse)
        if theirs is None:
            unmatched.append(name)
        else:
            out[theirs] = tensor
    if unmatched:
        raise NameMapError(f"{len(unmatched)} tensors match no row of the {table.name} table, first: "
                           f"{', '.join(unmatched[:5])}")
    return out


__all__ = ["NameMap", "NAME_MAPS", "MAE_DFER_PRETRAIN", "MAE_DFER_FINETUNED", "MAE_DFER_CA", "SSL_FER", "LGI_BLOCK",
           "Mapped", "NameMapError", "translate", "to_sslfer", "from_sslfer"]
