"""The exported LGI-Former encoder of a video MAE run (`sslfer-train export`), and how to load it back.

The file is `torch.save` of a plain dict (loadable with `torch.load(..., weights_only=True)`):
  format          "sslfer-lgi-former-encoder"
  format_version  1
  state_dict      the LGIFormerEncoder's state_dict (keys as LGIFormerEncoder names them, no "encoder." prefix)
  preset          the preset the run started from ("tiny", "full")
  model_config    every LGIFormerConfig field (region as a list), so a changed --frames is kept
  input_size      side of the square input in pixels; frames, tubelet: clip length and tubelet depth
  normalisation   {"mean": [...], "std": [...]}: the ImageNet statistics the inputs are normalised with
  clip            how training clips were cut: {"frames", "stride_seconds", "fps"}
  source          {"step", "code_version"} of the checkpoint exported
docs/video-mae.md ("Export") describes it for users.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import torch
from torch import nn

from sslfer_core.gpu_augment import IMAGENET_MEAN, IMAGENET_STD
from sslfer_core.lgi_former import LGIFormerConfig, LGIFormerEncoder
from sslfer_core.state_fit import state_dict_misfit

EXPORT_FORMAT = "sslfer-lgi-former-encoder"
EXPORT_VERSION = 1


class EncoderExportError(ValueError):
    """The file is not an LGI-Former encoder export this code can load; one-line message."""


def config_to_plain(cfg: LGIFormerConfig) -> dict:
    plain = asdict(cfg)
    plain["region"] = list(cfg.region)
    return plain


def config_from_plain(plain: dict) -> LGIFormerConfig:
    known = {f.name for f in fields(LGIFormerConfig)}
    values = {k: v for k, v in plain.items() if k in known}
    if "region" in values:
        values["region"] = tuple(int(v) for v in values["region"])
    return LGIFormerConfig(**values)


def encoder_export(encoder: nn.Module, cfg: LGIFormerConfig, preset: str, *, clip: dict | None = None,
                   source: dict | None = None) -> dict:
    """The export payload of `encoder` (an LGIFormerEncoder built from cfg)."""
    return {
        "format": EXPORT_FORMAT, "format_version": EXPORT_VERSION,
        "state_dict": {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()},
        "preset": preset, "model_config": config_to_plain(cfg), "input_size": cfg.img_size,
        "frames": cfg.frames, "tubelet": cfg.tubelet,
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "clip": dict(clip or {}), "source": dict(source or {}),
    }


def load_encoder(path_or_payload: str | Path | dict, map_location="cpu") -> tuple[LGIFormerEncoder, dict]:
    """(encoder with the exported weights, the payload without its state_dict); raises EncoderExportError."""
    payload = path_or_payload
    if not isinstance(payload, dict):
        try:
            payload = torch.load(path_or_payload, map_location=map_location, weights_only=True)
        except Exception as error:  # torch raises several types for truncated or foreign files
            raise EncoderExportError(f"{path_or_payload}: unreadable ({type(error).__name__}: {str(error)[:200]})") \
                from None
    where = path_or_payload if not isinstance(path_or_payload, dict) else "export"
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise EncoderExportError(f"{where}: not an LGI-Former encoder export (format {EXPORT_FORMAT!r})")
    if payload.get("format_version") != EXPORT_VERSION:
        raise EncoderExportError(f"{where}: export format version {payload.get('format_version')} is not "
                                 f"{EXPORT_VERSION}; export the run again with this code")
    try:
        cfg = config_from_plain(payload["model_config"])
        encoder = LGIFormerEncoder(cfg)
        # Checked first: torch's first line names no key, and it would cast int8 weights into the floats.
        misfit = state_dict_misfit(encoder.state_dict(), payload["state_dict"]) \
            if isinstance(payload["state_dict"], dict) else "no state_dict"
        if not misfit:
            encoder.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        misfit = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if misfit:
        raise EncoderExportError(f"{where}: weights do not fit the recorded LGI-Former config: {misfit}")
    return encoder, {k: v for k, v in payload.items() if k != "state_dict"}


__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "EncoderExportError", "encoder_export", "load_encoder",
           "config_to_plain", "config_from_plain"]
