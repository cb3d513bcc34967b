"""Whether a state_dict from a file fits a model, said in one line that names the keys.

torch's own load_state_dict error starts with "Error(s) in loading state_dict for ResNet:" and lists every
key on the lines after it, so its first line names none; and it casts whatever dtype it gets, so int8 or
bool tensors would be scored as if they were float weights.
"""
from __future__ import annotations

import torch

SHOWN = 3  # keys named per kind of misfit


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "float"
    return "bool" if dtype == torch.bool else "integer"


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def state_dict_misfit(expected: dict, given: dict) -> str | None:
    """Why `given` cannot load into a model whose state_dict is `expected` as it is, or None: keys missing
    or unexpected, a value that is not a tensor, a shape that differs, or a dtype of another kind (an
    integer tensor for float weights: quantised weights mean nothing once cast). Float precisions
    (float16, bfloat16, float64) load as float32 and count as fitting."""
    problems = []
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    if missing:
        problems.append(f"{len(missing)} missing ({_names(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    not_tensors = [key for key in expected if key in given and not isinstance(given[key], torch.Tensor)]
    if not_tensors:
        problems.append(f"not tensors: {_names(not_tensors)}")
    shared = [key for key in expected if key in given and isinstance(given[key], torch.Tensor)]
    shapes = [key for key in shared if tuple(given[key].shape) != tuple(expected[key].shape)]
    if shapes:
        shown = ", ".join(f"{key} {tuple(given[key].shape)} (model: {tuple(expected[key].shape)})"
                          for key in shapes[:SHOWN])
        problems.append(f"{len(shapes)} of another shape ({shown}{' ...' if len(shapes) > SHOWN else ''})")
    kinds = [key for key in shared if _kind(given[key].dtype) != _kind(expected[key].dtype)]
    if kinds:
        shown = ", ".join(f"{key} {str(given[key].dtype).replace('torch.', '')} "
                          f"(model: {str(expected[key].dtype).replace('torch.', '')})" for key in kinds[:SHOWN])
        problems.append(f"{len(kinds)} of a dtype the model cannot take as it is ({shown}"
                        f"{' ...' if len(kinds) > SHOWN else ''})")
    return "; ".join(problems) if problems else None
