"""`sslfer-train export`: what the run's method exports from its newest (or a given) checkpoint, e.g. the
contrastive backbone as a plain torchvision ResNet state_dict, in safetensors or torch format as the output's
name says (.safetensors / .pt, .pth), with the method's metadata plus method, source checkpoint sha256 and code
version (train/weights_file.py). `--format mae-dfer` (video MAE runs) writes the encoder in the layout of
MAE-DFER's pretraining checkpoints instead, which the reference's run_class_finetuning.py --finetune loads
(train/reference_weights.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from sslfer_core.atomic_files import writable_dir_problem, write_error_text
from sslfer_core.file_hash import file_sha256
from train.checkpoints import CheckpointReadError, check_finite_weights, list_checkpoints, read_checkpoint
from train.methods import ExportError, Exported, get_method
from train.run_config import RunConfigError, code_version, load_run_config, method_of_config
from train.weights_file import FORMATS, format_for_path, write_weights

MAE_DFER_FORMAT = "mae-dfer"
EXPORT_FORMATS = (*FORMATS, MAE_DFER_FORMAT)

__all__ = ["ExportError", "export_checkpoint", "export_run", "EXPORT_FORMATS", "MAE_DFER_FORMAT"]

def _run_config(run_dir: Path) -> dict | None:
    """The run's config.json, which says what method and settings made the run; None when the folder has
    none (a bare folder of checkpoints)."""
    try:
        return load_run_config(run_dir)
    except RunConfigError as error:
        raise ExportError(f"{error}; it says which method made the run") from None


def _newest_usable(run_dir: Path, run_config: dict | None, warn: Callable[[str], None]) -> tuple[Path, dict]:
    """The newest checkpoint that reads and belongs to the run; newer ones that do not (truncated, empty, of
    another method or run) are named in a warning. A checkpoint with non-finite weights stops the export
    instead: an older one is a choice to make."""
    found = list_checkpoints(run_dir)
    if not found:
        raise ExportError(f"{run_dir}: no checkpoint to export (expected checkpoints/ckpt-step*.pt)")
    for path in reversed(found):
        try:
            return path, read_checkpoint(path, finite=False, run_config=run_config)
        except CheckpointReadError as error:
            warn(f"warning: {error}; trying the one before")
    raise ExportError(f"{run_dir}: none of its {len(found)} checkpoints reads and belongs to the run")


def _mae_dfer_path(out_path: Path) -> str:
    """MAE-DFER's files are torch pickles; a .safetensors name for one would mislead whoever loads it."""
    if out_path.suffix.lower() == ".safetensors":
        raise ValueError(f"--format {MAE_DFER_FORMAT} writes a torch file; name it {out_path.stem}.pth")
    return MAE_DFER_FORMAT


def _write_mae_dfer(out_path: Path, payload: dict) -> None:
    import torch

    from sslfer_core.atomic_files import atomic_path
    from train.reference_weights import mae_dfer_payload

    try:
        with atomic_path(Path(out_path)) as tmp:
            torch.save(mae_dfer_payload(payload), tmp)
    except (OSError, RuntimeError) as error:  # RuntimeError: what torch.save raises for what it cannot pickle
        raise ExportError(f"could not write {out_path} ({write_error_text(error, Path(out_path).parent)}); "
                          "an existing file there is untouched") from None


def export_checkpoint(run_dir: Path, checkpoint: Path | None = None,
                      warn: Callable[[str], None] = print) -> tuple[Path, dict, Exported]:
    """What the run's method (config.json's; the checkpoint's own in a folder without one) exports from its
    newest readable (or the given) checkpoint, in memory: (checkpoint used, its content, the export).
    Non-finite weights, and a checkpoint of another method or run, are refused. Evaluation loads run
    folders through this, so it needs to know no method."""
    run_config = _run_config(Path(run_dir))
    if checkpoint:
        path = Path(checkpoint)
        try:
            state = read_checkpoint(path, finite=False, run_config=run_config)
        except CheckpointReadError as error:
            raise ExportError(str(error)) from None
    else:
        path, state = _newest_usable(Path(run_dir), run_config, warn)
    try:
        check_finite_weights(state, path)
    except CheckpointReadError as error:
        older = "" if checkpoint else "; export an earlier checkpoint with --checkpoint"
        raise ExportError(f"{error}{older}") from None
    try:
        method = get_method(method_of_config(state["config"]))
    except ValueError as error:
        raise ExportError(f"{path}: {error}") from None
    return path, state, method.export(state, path)


def export_run(run_dir: Path, out_path: Path, checkpoint: Path | None = None, fmt: str | None = None,
               warn: Callable[[str], None] = print) -> tuple[Path, str, int]:
    """Write export_checkpoint's export to out_path atomically, in the format its name says (or `fmt` for
    other names; a contradiction is an ExportError); returns (checkpoint used, description of what was
    written, step)."""
    try:
        fmt = _mae_dfer_path(Path(out_path)) if fmt == MAE_DFER_FORMAT else format_for_path(Path(out_path), fmt)
    except ValueError as error:
        raise ExportError(str(error)) from None
    problem = writable_dir_problem(Path(out_path).parent)
    if problem:
        raise ExportError(problem)
    path, state, exported = export_checkpoint(run_dir, checkpoint, warn)
    method = method_of_config(state["config"])
    step = state.get("step", -1)
    step = step if isinstance(step, int) and not isinstance(step, bool) else -1  # a foreign file may hold anything
    if fmt == MAE_DFER_FORMAT:
        if method != "mae":
            raise ExportError(f"{path}: --format {MAE_DFER_FORMAT} writes an LGI-Former encoder; this is a "
                              f"{method} run")
        _write_mae_dfer(out_path, exported.payload)
        return path, f"{exported.description} in MAE-DFER's checkpoint layout", step
    metadata = {**exported.metadata, "method": method, "source_checkpoint": path.name,
                "source_sha256": file_sha256(path), "step": step, "code_version": code_version()}
    try:
        write_weights(out_path, exported.payload, metadata, fmt)
    except (OSError, RuntimeError) as error:  # RuntimeError: what torch.save raises for what it cannot pickle
        raise ExportError(f"could not write {out_path} ({write_error_text(error, Path(out_path).parent)}); "
                          "an existing file there is untouched") from None
    return path, exported.description, step
