"""The trainer and export against files another run or lab hands over, and against a full disk (issue 32,
"Training and export"): a checkpoint of another method in the run folder, a metrics.jsonl cut by a kill,
a disk that fills while metrics or an export are written, a resume with other loader workers, and an MAE
mask ratio that masks nothing."""
import errno
import io
import json
import shutil

import pytest
import torch
from click.testing import CliRunner

import train.metrics_log
from test_mae_method import TINY_MAE, make_mae_shards
from train.checkpoints import checkpoint_path, list_checkpoints
from train.cli import main
from train.metrics_log import read_metrics
from train.weights_file import read_weights
from train_fixtures import TINY_TRAIN, finished, interrupt_after_checkpoint, shards  # noqa: F401 (fixtures)
from cli_checks import one_error_line


def _run(args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory):
    """The checkpoint of a one-step tiny MAE run."""
    root = tmp_path_factory.mktemp("mae")
    run = root / "run"
    result = _run(["mae", "--shards", make_mae_shards(root / "shards"), "--out", run, *TINY_MAE, "--steps", "1",
                   "--warmup-steps", "0", "--min-lr", "0"])
    assert result.exit_code == 0, result.output
    return list_checkpoints(run)[-1]


def _copy_run(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "train.lock").unlink(missing_ok=True)
    return copy


# -- a checkpoint of another method in the run folder


def test_resume_sets_aside_a_checkpoint_of_another_method(finished, mae_checkpoint, tmp_path):
    run = _copy_run(finished, tmp_path)
    foreign = checkpoint_path(run, 9)
    shutil.copy(mae_checkpoint, foreign)
    result = _run(["--out", run, "--resume"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "a checkpoint of a mae run, not of this contrastive run" in result.output
    assert "ckpt-step00000009.pt.unusable" in result.output and len(result.output.splitlines()) < 8
    assert not foreign.exists() and foreign.with_name(foreign.name + ".unusable").exists()
    assert "already reached its 4 steps" in result.output  # resumed from step 4, the run's own newest


def test_resume_sets_aside_a_checkpoint_of_another_run_of_the_same_method(finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    state = torch.load(checkpoint_path(run, 4), weights_only=True)
    state["config"]["temperature"] = 0.5  # another run's setting (the run's is 0.07)
    torch.save(state, checkpoint_path(run, 9))
    result = _run(["--out", run, "--resume"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "its settings differ from config.json: temperature 0.5 (run: 0.07)" in result.output


def test_resume_from_a_checkpoint_whose_weights_do_not_fit_names_the_keys(finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    state = torch.load(checkpoint_path(run, 4), weights_only=True)
    state["model"]["backbone.extra.weight"] = torch.zeros(2)
    del state["model"]["projector.net.3.bias"]
    torch.save(state, checkpoint_path(run, 9))
    line = one_error_line(_run(["--out", run, "--resume"]), "ckpt-step00000009.pt",
                           "1 missing (projector.net.3.bias)", "1 unexpected (backbone.extra.weight)")
    assert len(line) < 400


def test_export_writes_the_runs_method_past_a_foreign_checkpoint(finished, mae_checkpoint, tmp_path):
    run = _copy_run(finished, tmp_path)
    shutil.copy(mae_checkpoint, checkpoint_path(run, 9))
    out = tmp_path / "backbone.safetensors"
    result = _run(["export", run, "-o", out])
    assert result.exit_code == 0, result.output
    assert "a checkpoint of a mae run, not of this contrastive run" in result.output
    tensors, metadata = read_weights(out)
    assert metadata["method"] == "contrastive" and metadata["source_checkpoint"] == "ckpt-step00000004.pt"
    assert "conv1.weight" in tensors


def test_export_refuses_a_foreign_checkpoint_given_by_name(finished, mae_checkpoint, tmp_path):
    run = _copy_run(finished, tmp_path)
    one_error_line(_run(["export", run, "-o", tmp_path / "x.safetensors", "--checkpoint", mae_checkpoint]),
                    "a checkpoint of a mae run, not of this contrastive run")
    assert not (tmp_path / "x.safetensors").exists()


def test_export_of_weights_that_do_not_fit_names_the_keys(finished, tmp_path):
    state = torch.load(checkpoint_path(finished, 4), weights_only=True)
    state["model"]["backbone.conv1.weight"] = state["model"]["backbone.conv1.weight"].to(torch.int8)
    del state["model"]["projector.net.3.bias"]
    torch.save(state, tmp_path / "odd.pt")
    one_error_line(_run(["export", finished, "-o", tmp_path / "x.safetensors", "--checkpoint", tmp_path / "odd.pt"]),
                    "weights do not fit resnet18: 1 missing (projector.net.3.bias)",
                    "backbone.conv1.weight int8 (model: float32)")


def test_an_lgi_former_export_of_int8_weights_is_refused_naming_the_tensor():
    from sslfer_core.lgi_export import EncoderExportError, encoder_export, load_encoder
    from sslfer_core.lgi_former import LGIFormerEncoder, preset, with_overrides

    cfg = with_overrides(preset("tiny"), frames=4)
    payload = encoder_export(LGIFormerEncoder(cfg), cfg, "tiny")
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key].to(torch.int8)
    with pytest.raises(EncoderExportError, match=f"{key} int8 \\(model: float32\\)"):
        load_encoder(payload)


def test_eval_of_a_run_folder_skips_a_checkpoint_of_another_method(finished, mae_checkpoint, tmp_path):
    from eval_fixtures import write_pattern_folder
    from train.evaluation.cli import main as eval_main

    run = _copy_run(finished, tmp_path)
    shutil.copy(mae_checkpoint, checkpoint_path(run, 9))
    data = write_pattern_folder(tmp_path / "patterns", {"train": 4, "val": 2, "test": 2})
    out = tmp_path / "out"
    result = CliRunner().invoke(eval_main, ["linear", "--backbone", str(run), "--data", str(data), "--out", str(out),
                                            "--max-iterations", "5", "--workers", "0", "--threads", "1", "--no-cache"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "a checkpoint of a mae run, not of this contrastive run; trying the one before" in result.output
    entry = json.loads((out / "results.json").read_text())["backbones"][0]["backbone"]
    assert entry["name"] == "run@step4" and entry["source"].endswith("ckpt-step00000004.pt")


# -- metrics.jsonl


def test_resume_survives_a_metrics_line_cut_by_a_kill(finished, tmp_path):
    run = _copy_run(finished, tmp_path)
    checkpoint_path(run, 4).unlink()  # the kill came before step 4's checkpoint
    metrics = run / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[:len(text) - 30])  # step 4's line cut short
    result = _run(["--out", run, "--resume"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "dropped 1 line(s) of metrics.jsonl that are not JSON records" in result.output
    assert [r["step"] for r in read_metrics(metrics)] == [1, 2, 3, 4]


def test_read_metrics_leaves_out_a_cut_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n[1, 2]\n{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 2.0}]


def test_a_full_disk_while_appending_metrics_is_one_line_naming_the_resume(shards, tmp_path, monkeypatch):
    real_open = open
    flushes = []

    class FullAfterTwoLines:
        def __init__(self, handle):
            self.handle = handle

        def write(self, text):
            return self.handle.write(text)

        def flush(self):
            flushes.append(1)
            if len(flushes) > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.handle.flush()

        def close(self):
            self.handle.close()

    monkeypatch.setattr(train.metrics_log, "open", lambda *a, **k: FullAfterTwoLines(real_open(*a, **k)),
                        raising=False)
    run = tmp_path / "run"
    line = one_error_line(_run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "4", "--ckpt-every", "2"]),
                           "metrics.jsonl (disk full (", "free there)", "stopped at step 3",
                           "newest checkpoint: ckpt-step00000002.pt", f"sslfer-train --out {run} --resume")
    assert "OSError" not in line


# -- a full disk during an export


def _full_disk(monkeypatch):
    """Files that sslfer_core.atomic_files.write_through creates (checkpoints, exports) are on a full disk."""
    import sslfer_core.atomic_files

    real_open = open

    class FullFile(io.FileIO):
        """Takes its first 100 bytes, then fails as a full disk does (torch.save then reports
        "enforce fail ... unexpected pos" of its own)."""

        def write(self, data):
            room = 100 - self.tell()
            if room <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(bytes(memoryview(data).cast("B")[:room]))

    def opener(path, mode="r", *args, **kwargs):
        if "w" in mode and "b" in mode:
            return io.BufferedWriter(FullFile(path, "wb"))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(sslfer_core.atomic_files, "open", opener, raising=False)


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_a_full_disk_during_an_export_says_disk_full_and_keeps_the_old_file(finished, tmp_path, monkeypatch, fmt):
    out = tmp_path / f"backbone.{fmt}"
    out.write_bytes(b"the export of yesterday")
    _full_disk(monkeypatch)
    line = one_error_line(_run(["export", finished, "-o", out, "--format", fmt]), f"could not write {out}",
                           "(disk full (", "free there)")
    assert "enforce fail" not in line and "Safetensor" not in line
    assert out.read_bytes() == b"the export of yesterday"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left


def test_a_full_disk_during_a_checkpoint_says_disk_full(shards, tmp_path, monkeypatch):
    _full_disk(monkeypatch)
    run = tmp_path / "run"
    line = one_error_line(_run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "2", "--ckpt-every", "2"]),
                           "could not write checkpoint ckpt-step00000002.pt", "(disk full (",
                           f"sslfer-train --out {run} --resume")
    assert "enforce fail" not in line


# -- resume with other loader workers


def test_resume_with_other_workers_lands_on_the_same_weights(shards, tmp_path, monkeypatch):
    """Torch threads follow cores - workers at a run's start; a resume keeps that count, whatever its
    --workers, since the count changes how sums are split."""
    import train.trainer

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(train.trainer, "cores_per_local_rank", lambda: 4)  # 4 threads at 0 workers, 3 at 1
    before = torch.get_num_threads()
    common = ["--shards", shards, *TINY_TRAIN, "--timeaug", "--steps", "4", "--ckpt-every", "2", "--warmup-steps", "1"]
    straight = _run([*common, "--out", tmp_path / "straight"])
    assert straight.exit_code == 0, straight.output
    assert "(4 torch threads" in straight.output
    restore = interrupt_after_checkpoint(monkeypatch, step=2)
    assert _run([*common, "--out", tmp_path / "split"]).exit_code == 130
    restore()
    resumed = _run(["--out", tmp_path / "split", "--resume", "--workers", "1"])
    assert resumed.exit_code == 0, resumed.output
    assert "1 loader worker(s)" in resumed.output and "(4 torch threads" in resumed.output
    assert json.loads((tmp_path / "split" / "config.json").read_text())["torch_threads_used"] == 4
    assert torch.get_num_threads() == before
    a = torch.load(list_checkpoints(tmp_path / "straight")[-1], weights_only=True)["model"]
    b = torch.load(list_checkpoints(tmp_path / "split")[-1], weights_only=True)["model"]
    differing = [key for key in a if not torch.equal(a[key], b[key])]
    assert not differing, f"{len(differing)} of {len(a)} tensors differ, e.g. {differing[:3]}"


def test_a_full_disk_while_writing_config_json_is_one_line(shards, tmp_path, monkeypatch):
    import train.trainer

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train.trainer, "write_json_atomic", full)
    run = tmp_path / "run"
    one_error_line(_run(["--shards", shards, "--out", run, *TINY_TRAIN, "--steps", "1"]),
                    f"could not write {run / 'config.json'} (disk full (", "nothing was trained")


# -- MAE mask ratio


@pytest.mark.parametrize("ratio", ["0", "0.0", "0.01"])
def test_a_mask_ratio_that_masks_nothing_is_a_usage_error(tmp_path, ratio):
    result = _run(["mae", "--shards", tmp_path, "--out", tmp_path / "run", *TINY_MAE, "--steps", "1",
                   "--mask-ratio", ratio])
    one_error_line(result, "--mask-ratio", "masks no token of a 5 x 10 window", code=2)


@pytest.mark.parametrize("text", ["[1, 2]", '"contrastive"', "\xff\xfe"])
def test_a_config_json_that_is_no_run_config_is_one_line_on_resume(finished, tmp_path, text):
    run = _copy_run(finished, tmp_path)
    (run / "config.json").write_bytes(text.encode("latin-1"))
    result = _run(["--out", run, "--resume"])
    assert result.exit_code in (1, 2) and isinstance(result.exception, SystemExit), (result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "config.json" in errors[0], result.output
