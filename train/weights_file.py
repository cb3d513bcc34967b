"""Exported weights files: safetensors (the default; data, not code) or a torch state_dict (.pt), each with
string metadata. safetensors keeps the metadata in its header; a torch file keeps it in a JSON file beside
it (OUT.json), so that the .pt itself stays a plain state_dict that torchvision's load_state_dict accepts.

Preprocessing metadata (what the backbone was trained on, applied by sslfer-eval):
    input_size       network input side in pixels
    face_crop        central fraction of the aligned face kept before resizing (training --face-crop)
    resize           side the kept face is resized to before the input_size window is taken
    crop_convention  how the window sits: "centre" (a fixed window, or the mean of random ones)
    normalisation    "imagenet" (mean/std of torchvision's ImageNet models)
"""
from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path

import torch

from sslfer_core.atomic_files import atomic_path, write_bytes_atomic, write_through

FORMATS = ("safetensors", "torch")
DEFAULT_FORMAT = "safetensors"
PREPROCESSING_KEYS = ("input_size", "face_crop", "resize", "crop_convention", "normalisation")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class WeightsFileError(ValueError):
    """The file is not a weights file this project reads (one-line message naming the file)."""


def sidecar_path(path: Path) -> Path:
    return Path(str(path) + ".json")


def split_payload(payload: dict) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(tensors, the rest) of an export payload: either name -> tensor, or a dict whose "state_dict" holds
    the tensors beside plain JSON-able values (the rest goes into the header as "payload", JSON)."""
    if all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload, None
    if isinstance(payload.get("state_dict"), dict):
        return payload["state_dict"], {k: v for k, v in payload.items() if k != "state_dict"}
    raise ValueError("an export payload is name -> tensor, or has its tensors under 'state_dict'")


def write_weights(path: Path, payload: dict, metadata: dict, fmt: str = DEFAULT_FORMAT) -> Path:
    """Write an export payload with metadata (values stringified) atomically; returns the path written. The
    torch format saves the payload as it is."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown weights format {fmt!r}; use one of {', '.join(FORMATS)}")
    tensors, rest = split_payload(payload)
    text = {str(k): str(v) for k, v in metadata.items() if v is not None}
    if rest is not None:
        text["payload"] = json.dumps(rest, sort_keys=True)
    # Written through a Python file, so that a full disk is an OSError with its errno (safetensors' own
    # writer and torch.save report it as SafetensorError or "enforce fail" text).
    if fmt == "safetensors":
        from safetensors.torch import save

        data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=text)
        write = lambda handle: handle.write(data)  # noqa: E731
    else:
        write = lambda handle: torch.save(payload, handle)  # noqa: E731
    with atomic_path(Path(path)) as tmp:
        write_through(tmp, write)
    if fmt == "torch":
        write_bytes_atomic(sidecar_path(path), (json.dumps(text, indent=1, sort_keys=True) + "\n").encode())
    return Path(path)


def is_safetensors(path: Path) -> bool:
    """An 8-byte little-endian header length followed by a JSON object, as safetensors writes."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 0 < length <= _MAX_HEADER and head[8:9] == b"{"


def load_torch_file(path: Path):
    """torch.load with weights_only=True; a pickle that would run code, or any unreadable file, is one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))  # torch's weights_only refusal
        if refused:
            raise WeightsFileError(f"{path}: refused: this pickle holds more than tensors ({refused.group(1)}; "
                                   "loading it would run code); give a safetensors file or a plain state_dict") from None
        raise WeightsFileError(f"{path}: cannot read weights: not a plain weights file, or a damaged one") from None
    except Exception as error:  # torch raises several types for truncated / foreign files
        raise WeightsFileError(f"{path}: cannot read weights: not a plain weights file, or a damaged one "
                               f"({type(error).__name__}: {_first_line(error)})") from None


def _first_line(error: Exception, limit: int = 200) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else "")[:limit]


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file or a plain torch state_dict. A torch file that needs more
    than tensors and plain values to unpickle (i.e. would run code) is refused, as is anything else."""
    path = Path(path)
    if is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = dict(handle.metadata() or {})
                return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise WeightsFileError(f"{path}: damaged safetensors file ({str(error)[:200]})") from None
    state = load_torch_file(path)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        found = type(state).__name__ if not isinstance(state, dict) else "a dict of more than tensors"
        raise WeightsFileError(f"{path}: refused: expected a plain weights file (a state_dict), found {found}")
    metadata: dict[str, str] = {}
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            loaded = json.loads(sidecar.read_text())
        except (OSError, ValueError) as error:
            raise WeightsFileError(f"{sidecar}: unreadable metadata ({type(error).__name__})") from None
        metadata = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
    return state, metadata


def read_payload(path: Path) -> dict:
    """An export payload as it was given to write_weights, from either format (for payloads with a
    "state_dict"; a plain name -> tensor file comes back as it is)."""
    if not is_safetensors(path):
        return load_torch_file(path)
    tensors, metadata = read_weights(path)
    if "payload" not in metadata:
        return tensors
    try:
        rest = json.loads(metadata["payload"])
    except ValueError:
        raise WeightsFileError(f"{path}: damaged 'payload' metadata (not JSON)") from None
    return {**rest, "state_dict": tensors}
