"""`python -m train.demo` end to end, both families, with a tiny budget (one ~2 min run shared by the checks),
plus its refusals and the one-line verdict when a stage fails."""
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torchvision
from click.testing import CliRunner
from safetensors import safe_open

from data_manifest.verify import ERROR, verify_shards
from needs import missing
from preprocess.demo_sample import expression_clip_schedule
from sslfer_core.synthetic_faces import EXPRESSION_CLASSES, PARAM_NAMES, ExpressionParams
from train.demo import OWNED_NAMES, SUMMARY_NAME, Channel, DemoLog, StageFailed, main, prepare_out, run_family

REPO_ROOT = Path(__file__).resolve().parents[1]
# 1 clip of 4 s per identity (2 identities -> 40 frames at 5 fps, 80 at 10 fps in the video shards), 3 contrastive
# steps of 4 anchors at 32 px, 2 MAE steps of 2 clips.
TINY = ["--clips", "1", "--seconds", "4", "--steps", "3", "--batch-size", "4", "--resize", "40", "--crop", "32",
        "--mae-steps", "2", "--mae-batch-size", "2"]
STAGES = ["sample", "prep", "verify", "sheet", "train", "export", "eval",
          "prep-video", "sheet-video", "train-mae", "export-mae", "eval-video"]


NO_NETWORK = ["unshare", "--user", "--map-root-user", "--net"]  # a namespace with only loopback


def python_under(prefix: list, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=180)


def network_interfaces(prefix: list) -> list:
    """Interface names seen by a Python started under `prefix`, or [] when the prefix cannot run here.
    A slow start (a loaded machine) is not "cannot run": it raises TimeoutExpired instead of passing as []."""
    try:
        result = python_under(prefix, "import socket; print(' '.join(name for _, name in socket.if_nameindex()))")
    except OSError:  # no unshare binary
        return []
    return result.stdout.split() if result.returncode == 0 else []


def run_demo(*args: str, prefix: list = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "train.demo", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    """The tiny demo, run with no network where user namespaces allow it; returns whether it was."""
    out = tmp_path_factory.mktemp("demo") / "out"
    offline = network_interfaces(NO_NETWORK) == ["lo"]
    result = run_demo("--out", str(out), *TINY, prefix=NO_NETWORK if offline else ())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result.stdout, offline


def test_demo_runs_with_no_network(demo_out):
    # The fixture ran the demo in a namespace whose only interface is loopback: nothing downloaded at run time.
    _, _, offline = demo_out
    if not offline:
        missing("unshare --user --net is not available here, so the demo ran with the network present")
    probe = ("import errno, socket\ntry:\n    socket.create_connection(('192.0.2.1', 80), timeout=5)\n"
             "except OSError as e:\n    print(e.errno == errno.ENETUNREACH)")
    result = python_under(NO_NETWORK, probe)
    assert result.stdout.strip() == "True", result.stdout + result.stderr


def test_demo_shards_verify_and_hold_both_identities(demo_out):
    out, _, _ = demo_out
    assert [p for p in verify_shards(out / "shards") if p.severity == ERROR] == []
    totals = json.loads((out / "shards" / "manifest.json").read_text())["totals"]
    assert totals["identities"] == 2 and totals["videos"] == 2 and totals["frames"] == 40


def test_demo_trains_the_requested_steps_with_all_four_strategies(demo_out):
    out, _, _ = demo_out
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["total_steps"] == 3 and config["arch"] == "resnet18"
    assert all(config[flag] for flag in ("timeaug", "hardneg", "faceswap", "maskfn"))
    steps = [json.loads(line)["step"] for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3


def test_demo_backbone_loads_into_torchvision_resnet18_with_only_fc_missing(demo_out):
    out, _, _ = demo_out
    with safe_open(str(out / "backbone.safetensors"), framework="pt") as handle:  # the default export format
        state = {key: handle.get_tensor(key) for key in handle.keys()}
        assert handle.metadata()["arch"] == "resnet18" and handle.metadata()["method"] == "contrastive"
    missing, unexpected = torchvision.models.resnet18().load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected


def test_demo_results_compare_the_pretrained_and_random_backbones(demo_out):
    out, stdout, _ = demo_out
    results = json.loads((out / "eval" / "results.json").read_text())
    rows = results["backbones"]
    assert [row["backbone"]["name"] for row in rows] == ["backbone", "random-resnet18"]
    assert rows[0]["backbone"]["source"] == str(out / "backbone.safetensors")
    for row in rows:
        test = row["runs"][0]["test"]
        assert 0.0 <= test["macro_f1"] <= 1.0 and test["count"] > 0
    video = json.loads((out / "eval-video" / "results.json").read_text())
    assert video["command"] == "dfer-linear"
    assert [row["backbone"]["name"] for row in video["backbones"]] == ["mae-encoder", "random-lgi-tiny"]
    assert video["backbones"][0]["backbone"]["source"] == str(out / "mae-encoder.safetensors")
    assert video["dataset"]["classes"] == ["brow_raise", "mouth_open", "neutral", "smile"]
    assert video["dataset"]["counts"]["test"]["total"] == 8  # one test clip per (identity, expression)
    # The printed report: every stage with its time, one table with the rows of both families, the paths.
    report = stdout.split("=== sslfer demo finished in", 1)[1]
    for stage in STAGES:
        assert f"\n  {stage} " in report
    table = [line for line in report.splitlines() if line.startswith(("contrastive ", "video (MAE) "))]
    assert [line.split()[-4] for line in table] == ["backbone", "random-resnet18", "mae-encoder", "random-lgi-tiny"]
    for path in (out / "shards", out / "run", out / "backbone.safetensors", out / "eval" / "results.json",
                 out / "shards-video", out / "run-mae", out / "mae-encoder.safetensors",
                 out / "eval-video" / "results.json"):
        assert f" {path}\n" in report


def test_demo_prints_where_the_sheets_and_confusion_matrices_are(demo_out):
    out, stdout, _ = demo_out
    pictures = stdout.split("\nPictures:\n", 1)[1].splitlines()
    expected = [out / "sheets" / "shards.png", out / "sheets" / "shards-video.png",
                out / "eval" / "confusion-backbone.png", out / "eval" / "confusion-random-resnet18.png",
                out / "eval-video" / "confusion-mae-encoder.png", out / "eval-video" / "confusion-random-lgi-tiny.png"]
    assert [line.split()[-1] for line in pictures] == [str(p) for p in expected]
    for path in expected:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / SUMMARY_NAME).read_text())["pictures"] == [str(p) for p in expected]


def test_demo_summary_records_every_stage(demo_out):
    out, _, _ = demo_out
    summary = json.loads((out / SUMMARY_NAME).read_text())
    assert summary["status"] == "ok"
    assert [stage["name"] for stage in summary["stages"]] == STAGES
    assert all(stage["seconds"] > 0 for stage in summary["stages"])
    assert summary["stages"][1]["command"].startswith("sslfer-prep voxceleb ")
    assert "--profile video" in summary["stages"][7]["command"]
    assert summary["stages"][9]["command"].startswith("sslfer-train mae ") and "--preset tiny" in summary["stages"][9]["command"]


def test_failing_stage_exits_nonzero_naming_it(tmp_path):
    # --data without clips: sslfer-prep finds nothing and exits 1; with --eval-data and only the contrastive
    # family there is no sample stage.
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = tmp_path / "probe.csv"
    probe.write_text("path,label\n")
    result = run_demo("--out", str(tmp_path / "out"), "--family", "contrastive", "--data", str(empty),
                      "--eval-data", str(probe))
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "demo failed at stage 'prep'" in last_line and "sslfer-prep exited with status 1" in last_line
    assert "[1/6] prep" in result.stdout and f"sslfer-prep voxceleb {empty}" in result.stdout
    assert not (tmp_path / "out" / "sample").exists()
    assert json.loads((tmp_path / "out" / SUMMARY_NAME).read_text())["status"] == "failed at prep"


def test_refuses_a_foreign_nonempty_out(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, ["--out", str(tmp_path)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_rerun_replaces_only_the_demos_own_outputs(tmp_path):
    for name in OWNED_NAMES:
        (tmp_path / name).mkdir() if "." not in name else (tmp_path / name).write_text("old")
    (tmp_path / "shards" / "stale.h5").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    prepare_out(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("args, message", [
    (["--crop", "80"], "larger than --resize"),
    (["--limit", "3"], "--limit applies to --data only"),
    (["--eval-max", "3"], "--eval-max applies to --eval-data only"),
    (["--family", "video", "--eval-data", "."], "--family video has none"),
    (["--probe-seconds", "1"], "shorter than the tiny preset's clip (1.6 s at 10 fps)"),
])
def test_bad_option_combinations_are_usage_errors(tmp_path, args, message):
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("label", EXPRESSION_CLASSES)
def test_video_probe_clips_show_their_label_after_the_rise(label):
    # A clip labelled X must show X (ExpressionParams.label) in every frame the DFER probe samples after the
    # first third, and no other expression above the labelling threshold anywhere.
    for seed in range(20):
        schedule = expression_clip_schedule(np.random.default_rng(seed), label, 16)
        labels = [ExpressionParams.from_array(values).label() for values in schedule]
        assert set(labels[16 // 3:]) == {label}, (seed, labels)
        others = [c for c in range(3) if label == "neutral" or PARAM_NAMES[c] != label]
        assert schedule[:, others].max() < 0.35


def test_a_failing_family_stops_the_one_beside_it(tmp_path):
    # The video family runs in a thread with its messages in a file; when the other family fails, its running
    # tool is ended and the first failure is the one reported.
    log = DemoLog(plan=["a", "b"])
    beside = Channel(log, tmp_path / "video.log", "video family")
    terminal = Channel(log)
    failures = []

    def slow_stage():
        beside.header("b")
        status = beside.run([sys.executable, "-c", "import time; print('working', flush=True); time.sleep(120)"])
        raise StageFailed(f"exited with status {status}")

    def failing_stage():
        terminal.header("a")
        raise StageFailed("broken")

    worker = threading.Thread(target=run_family, args=(beside, slow_stage, failures, terminal), daemon=True)
    started = time.monotonic()
    worker.start()
    log_file = tmp_path / "video.log"
    while "working" not in (log_file.read_text() if log_file.exists() else "") and time.monotonic() - started < 60:
        time.sleep(0.05)  # the tool's output goes to the file, and it is running
    assert beside.process is not None
    run_family(terminal, failing_stage, failures, beside)
    worker.join(timeout=60)
    assert not worker.is_alive() and time.monotonic() - started < 110  # not the tool's 120 s
    assert [(stage, str(error)) for stage, error, _ in failures][0] == ("a", "broken")
    assert failures[1][0] == "b" and "exited with status" in str(failures[1][1])
    with pytest.raises(StageFailed, match="the other family failed"):
        beside.run([sys.executable, "-c", "pass"])
