"""sslfer-train itself under torchrun with two gloo ranks on the CPU: one run folder, one metrics line per
step, and every file in it written by rank 0 (README: "only rank 0 writes")."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from train.checkpoints import list_checkpoints
from train.metrics_log import read_metrics
from train_fixtures import TINY_TRAIN, make_train_shards

REPO = Path(__file__).resolve().parents[1]

# Each rank records every file it opens for writing, and every rename target, below the run folder, and
# leaves the list beside it (outside the run folder) when it exits.
_AUDITED_TRAINER = """
import atexit, builtins, json, os, sys
run_dir = os.path.abspath(os.environ["AUDIT_RUN_DIR"])
written = []
def inside(path):
    try:
        return os.path.abspath(os.fspath(path)).startswith(run_dir + os.sep) or os.path.abspath(os.fspath(path)) == run_dir
    except TypeError:
        return False
real_open, real_replace, real_rename = builtins.open, os.replace, os.rename
def audited_open(file, mode="r", *args, **kwargs):
    if any(flag in mode for flag in "wax+") and inside(file):
        written.append(os.fspath(file))
    return real_open(file, mode, *args, **kwargs)
def audited_replace(src, dst, *args, **kwargs):
    if inside(dst):
        written.append(os.fspath(dst))
    return real_replace(src, dst, *args, **kwargs)
def audited_rename(src, dst, *args, **kwargs):
    if inside(dst):
        written.append(os.fspath(dst))
    return real_rename(src, dst, *args, **kwargs)
builtins.open, os.replace, os.rename = audited_open, audited_replace, audited_rename
def report():
    with real_open(os.environ["AUDIT_RUN_DIR"] + ".rank" + os.environ["RANK"] + ".json", "w") as handle:
        json.dump(written, handle)
atexit.register(report)
from train.cli import main
sys.argv[0] = "sslfer-train"
main()
"""


def test_two_gloo_ranks_train_and_only_rank_0_writes(tmp_path):
    shards = make_train_shards(tmp_path / "shards", shards=2, videos=3, frames=20)
    run = tmp_path / "run"
    script = tmp_path / "audited_trainer.py"
    script.write_text(_AUDITED_TRAINER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AUDIT_RUN_DIR": str(run), "PYTHONPATH": str(REPO)}
    # --standalone: the rendezvous store binds a port of its own choosing, so two test runs cannot collide
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
               "--shards", str(shards), "--out", str(run), *TINY_TRAIN, "--device", "cpu", "--steps", "3",
               "--ckpt-every", "2"]
    launcher = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    try:
        stdout, stderr = launcher.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)  # torchrun and both ranks: a stuck rank must not outlive the test
        launcher.communicate()
        raise
    assert launcher.returncode == 0, stdout[-3000:] + stderr[-3000:]

    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["total_steps"] == 3
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]  # one line per step, not two
    assert [p.name for p in list_checkpoints(run)] == ["ckpt-step00000002.pt", "ckpt-step00000003.pt"]
    assert torch.load(list_checkpoints(run)[-1], weights_only=True)["step"] == 3
    rank0 = json.loads(Path(f"{run}.rank0.json").read_text())
    rank1 = json.loads(Path(f"{run}.rank1.json").read_text())
    assert rank1 == [], rank1
    written = {Path(p).name for p in rank0}
    assert {"config.json", "metrics.jsonl", "ckpt-step00000002.pt", "ckpt-step00000003.pt"} <= written, written
