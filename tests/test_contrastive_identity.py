"""The contrastive method trains bit-identically to the trainer as it was before the method interface: the
same seed gives the same metrics.jsonl figures and the same final weights as recorded in
tests/data/contrastive_golden_<CPU vendor>.json. The pre-interface code (commit 4c286d5) wrote the
GenuineIntel recording; commit fa615ef, which matched it there, wrote the AuthenticAMD metrics and weights
(its config entries are the pre-interface ones, which carry no method), each with

    PYTHONPATH=. python tests/test_contrastive_identity.py --write

A run folder as that code wrote it (config.json and checkpoints without a method field) still resumes.
Float results depend on the torch build, the CPU's vector unit and its vendor (the same AVX512 capability gives
different last bits on Intel and AMD), so the comparison runs where those match a recording (and says why it
is skipped elsewhere); the thread count is fixed here.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from needs import machine_lacks

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint  # noqa: E402
from train.cli import main  # noqa: E402
from train.metrics_log import read_metrics  # noqa: E402
from train_fixtures import TINY_TRAIN, interrupt_after_checkpoint, make_train_shards  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def cpu_vendor() -> str:
    """The CPU's vendor id (GenuineIntel, AuthenticAMD, ...), or the platform's processor name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


GOLDEN = DATA / f"contrastive_golden_{cpu_vendor()}.json"
THREADS = 1
RUNS = {
    "ablation": [*TINY_TRAIN, "--timeaug", "--hardneg", "--faceswap", "--maskfn", "--steps", "4",
                 "--ckpt-every", "2", "--warmup-steps", "1", "--seed", "3"],
    "cutmix": [*TINY_TRAIN, "--timeaug", "--cutmix", "--maskfn", "--maskfn-mode", "mask", "--crop-area", "0.3", "1",
               "--face-crop", "0.8", "--steps", "3", "--seed", "11"],
}
METRIC_KEYS = ("step", "epoch", "loss", "loss_last", "lr", "pos_cos", "neg_cos", "false_negatives", "fallbacks")
# config.json entries that name this machine's paths and this checkout rather than the run
LOCAL_KEYS = ("shards", "out", "code_version", "manifest_sha256", "torch_version", "workers", "device",
              "device_used")


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _invoke(args) -> None:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def _with_threads(fn):
    before_threads, before_env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(THREADS)  # the trainer leaves an explicit setting alone
    torch.set_num_threads(THREADS)
    try:
        return fn()
    finally:
        torch.set_num_threads(before_threads)
        if before_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_env


def _summary(run: Path) -> dict:
    records = read_metrics(run / "metrics.jsonl")
    final = load_checkpoint(latest_checkpoint(run))
    return {"metrics": [{k: r[k] for k in METRIC_KEYS} for r in records], "step": final["step"],
            "model_sha256": state_dict_sha256(final["model"])}


def _make_shards(root: Path) -> Path:
    return make_train_shards(root, shards=2, videos=3, frames=40)


def record(root: Path) -> dict:
    shards = _make_shards(root / "shards")
    out = {"torch_version": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpu_vendor": cpu_vendor(), "threads": THREADS, "runs": {}}
    for name, args in RUNS.items():
        run = root / name
        _with_threads(lambda: _invoke(["--shards", shards, "--out", run, *args]))
        out["runs"][name] = _summary(run)
        config = json.loads((run / "config.json").read_text())
        out["runs"][name]["config"] = {k: v for k, v in config.items() if k not in LOCAL_KEYS}
    return out


@pytest.fixture(scope="module")
def golden() -> dict:
    if not GOLDEN.is_file():
        machine_lacks(f"no recording for {cpu_vendor()} CPUs ({GOLDEN.name}); record one with the code of "
                      "commit fa615ef to compare against")
    recorded = json.loads(GOLDEN.read_text())
    here = (torch.__version__, torch.backends.cpu.get_cpu_capability())
    if here != (recorded["torch_version"], recorded["cpu_capability"]):
        machine_lacks(f"recorded with torch {recorded['torch_version']} on {recorded['cpu_capability']}; "
                    f"this is torch {here[0]} on {here[1]}, whose float results may differ")
    return recorded


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return _make_shards(tmp_path_factory.mktemp("shards"))


@pytest.mark.parametrize("name", sorted(RUNS))
def test_contrastive_training_matches_the_recording(golden, shards, tmp_path, name):
    run = tmp_path / name
    _with_threads(lambda: _invoke(["--shards", shards, "--out", run, *RUNS[name]]))
    got, want = _summary(run), golden["runs"][name]
    assert got["metrics"] == want["metrics"]
    assert got["step"] == want["step"]
    assert got["model_sha256"] == want["model_sha256"]
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "contrastive"
    # everything the old config.json said is still said, with the same values
    assert {k: v for k, v in config.items() if k in want["config"]} == want["config"]


def test_a_run_folder_written_before_methods_existed_resumes(golden, shards, tmp_path, monkeypatch):
    """Stop the ablation run after step 2, make its folder what the old code wrote, resume: the run ends on
    the recorded weights."""
    run = tmp_path / "old"
    restore_saving = interrupt_after_checkpoint(monkeypatch, step=2)
    result = _with_threads(lambda: CliRunner().invoke(main, [str(a) for a in
                                                             ["--shards", shards, "--out", run, *RUNS["ablation"]]]))
    assert result.exit_code == 130, result.output
    restore_saving()

    written = json.loads((run / "config.json").read_text())
    old = dict(golden["runs"]["ablation"]["config"], **{k: written[k] for k in LOCAL_KEYS if k in written})
    assert "method" not in old
    (run / "config.json").write_text(json.dumps(old, indent=2))
    [checkpoint] = list_checkpoints(run)
    state = torch.load(checkpoint, weights_only=True)
    state["config"] = {k: v for k, v in state["config"].items() if k != "method"}
    counters = state["sampler"].pop("counters")  # the old code kept the fallback totals as a list, in order
    state["sampler"]["fallbacks"] = [counters[k] for k in ("timeaug", "hardneg", "faceswap", "cutmix")]
    torch.save(state, checkpoint)

    _with_threads(lambda: _invoke(["--out", run, "--resume"]))
    got = _summary(run)
    assert got["step"] == 4 and got["model_sha256"] == golden["runs"]["ablation"]["model_sha256"]
    assert got["metrics"] == golden["runs"]["ablation"]["metrics"]  # fallback totals carried over too


if __name__ == "__main__":
    import tempfile

    if sys.argv[1:] != ["--write"]:
        raise SystemExit(f"usage: python {sys.argv[0]} --write   (records {GOLDEN})")
    with tempfile.TemporaryDirectory() as tmp:
        recorded = record(Path(tmp))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {GOLDEN}")
