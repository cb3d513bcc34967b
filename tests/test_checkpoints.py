"""Checkpoint files: atomic names, newest-few retention, ignored partial writes, RNG round trip."""
import errno
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import train.checkpoints
from sslfer_core.atomic_files import TEMP_PREFIX
from train.checkpoints import (
    CheckpointWriteError, checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint, restore_rng_states,
    rng_states, save_checkpoint,
)


def test_names_order_and_retention(tmp_path):
    for step in (5, 100, 20, 7):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((2,), float(step))}, keep=3)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["ckpt-step00000007.pt", "ckpt-step00000020.pt", "ckpt-step00000100.pt"]
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 100)
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["w"], torch.full((2,), 100.0))


def test_partial_writes_are_never_taken_for_checkpoints(tmp_path):
    save_checkpoint(tmp_path, 3, {"step": 3}, keep=2)
    folder = tmp_path / "checkpoints"
    (folder / (TEMP_PREFIX + "ckpt-step00000009.pt.abc")).write_bytes(b"half a file")
    (folder / "ckpt-step9.pt").write_bytes(b"not our name")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 3)
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_failed_save_leaves_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, 1, {"step": 1}, keep=3)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(CheckpointWriteError, match="could not write checkpoint ckpt-step00000002.pt"):
        save_checkpoint(tmp_path, 2, {"bad": Unpicklable()}, keep=3)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt-step00000001.pt"]


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, 1, {"rng": rng_states()}, keep=1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_states(load_checkpoint(latest_checkpoint(tmp_path))["rng"])
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_full_disk_gives_a_resumable_error_and_keeps_the_earlier_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 4, {"step": 4}, keep=3)

    def save_half_then_fail(state, handle):  # what a file on a full disk does under torch.save
        handle.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train.checkpoints.torch, "save", save_half_then_fail)
    with pytest.raises(CheckpointWriteError) as caught:
        save_checkpoint(tmp_path, 8, {"step": 8}, keep=3)
    message = str(caught.value)
    assert "ckpt-step00000008.pt" in message and "(disk full (" in message
    assert re.search(r"\(disk full \(\d+(\.\d)? [KMGT]?B free there\)\)", message) and "newest: ckpt-step00000004.pt" in message
    assert f"sslfer-train --out {tmp_path} --resume" in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["ckpt-step00000004.pt"]
