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

import argparse
import collections
import json
import pickle
import re
import struct
from pathlib import Path

import torch

from sslfer_core.atomic_files import atomic_path, write_bytes_atomic, write_through

FORMATS = ("safetensors", "torch")
DEFAULT_FORMAT = "safetensors"
# The format a file name promises; other names get --format, else DEFAULT_FORMAT.
FORMAT_OF_SUFFIX = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch"}
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


def format_for_path(path: Path, requested: str | None = None) -> str:
    """The format to write `path` in: what its extension names (.safetensors, .pt, .pth), `requested` for any
    other name (DEFAULT_FORMAT without one). A request that contradicts the extension is a ValueError."""
    named = FORMAT_OF_SUFFIX.get(Path(path).suffix.lower())
    if requested is not None and requested not in FORMATS:
        raise ValueError(f"unknown weights format {requested!r}; use one of {', '.join(FORMATS)}")
    if named and requested and requested != named:
        fitting = next(suffix for suffix, fmt in FORMAT_OF_SUFFIX.items() if fmt == requested)
        raise ValueError(f"{Path(path).name} names a {named} file but --format {requested} was given; "
                         f"name it {Path(path).stem}{fitting} or leave out --format")
    return named or requested or DEFAULT_FORMAT


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


# Harmless types that published checkpoints hold beside their tensors (the reference scripts save their
# command-line arguments with the weights); torch's weights_only loader builds them without running code.
ALLOWED_CLASSES = (argparse.Namespace,)
# Pickled objects under these module paths (optimisers, learning-rate schedulers) are read past without being
# built: each becomes an inert SkippedObject, and its state is dropped unread.
SKIPPED_PREFIXES = ("torch.optim.",)
# What a skipped optimiser's pickled state is made of besides tensors: its per-parameter state is a
# defaultdict(dict). Allowed only while reading past skipped objects.
SKIPPED_CONTENTS = (collections.defaultdict, dict)
_MAX_SKIPPED_CLASSES = 32
_REFUSED = re.compile(r"Unsupported global: GLOBAL (\S+)")  # torch's weights_only refusal


class SkippedObject:
    """Stands where a pickled object of a skipped class was; builds nothing and keeps none of its state."""

    reference_class = "?"
    holds: tuple[str, ...] = ()  # classes of the skipped objects inside this one's state (e.g. its optimiser)

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        self.holds = tuple(name for _, name in skipped_objects(state))

    def __repr__(self) -> str:
        return f"<skipped {self.reference_class}>"


def _placeholder(full_name: str) -> type:
    return type(full_name.rsplit(".", 1)[-1], (SkippedObject,), {"reference_class": full_name})


def load_torch_file(path: Path, skip_objects: bool = False):
    """torch.load with weights_only=True and ALLOWED_CLASSES; a pickle that would run code, or any unreadable
    file, is one line. skip_objects: classes under SKIPPED_PREFIXES come back as SkippedObject instances
    (still weights_only: the placeholder is what the unpickler builds for that name)."""
    placeholders: list[tuple[type, str]] = []
    while True:
        try:
            extra = SKIPPED_CONTENTS if skip_objects else ()
            with torch.serialization.safe_globals([*ALLOWED_CLASSES, *extra, *placeholders]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            refused = _REFUSED.search(str(error))
            name = refused.group(1) if refused else None
            if name and skip_objects and name.startswith(SKIPPED_PREFIXES) and \
                    len(placeholders) < _MAX_SKIPPED_CLASSES and name not in {n for _, n in placeholders}:
                placeholders.append((_placeholder(name), name))
                continue
            if name:
                raise WeightsFileError(f"{path}: refused: this pickle holds more than tensors ({name}; "
                                       "loading it would run code); give a safetensors file or a plain state_dict") from None
            raise WeightsFileError(f"{path}: cannot read weights: not a plain weights file, or a damaged one") from None
        except Exception as error:  # torch raises several types for truncated / foreign files
            raise WeightsFileError(f"{path}: cannot read weights: not a plain weights file, or a damaged one "
                                   f"({type(error).__name__}: {_first_line(error)})") from None


def skipped_objects(payload) -> list[tuple[str, str]]:
    """(where, class) of every SkippedObject in a loaded payload (dicts, lists, tuples walked), in order."""
    found: list[tuple[str, str]] = []

    def walk(value, where: str) -> None:
        if isinstance(value, SkippedObject):
            found.append((where, value.reference_class))
            found.extend((f"{where} (inside)", name) for name in value.holds)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]")

    walk(payload, "")
    return found


def describe_skipped(payload) -> str | None:
    """One line naming the skipped objects of a payload, or None when there are none."""
    found = skipped_objects(payload)
    if not found:
        return None
    return "skipped without building: " + ", ".join(f"{where} ({name})" for where, name in found)


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
