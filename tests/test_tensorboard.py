"""TensorBoard event files of sslfer-train, read back with tensorboard's own event reader."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from train.cli import main
from train.metrics_log import MetricsLog
from train_fixtures import TINY_TRAIN, make_train_shards

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _events(folder):
    reader = event_accumulator.EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    reader.Reload()
    return reader


def test_training_writes_every_logged_scalar_and_the_augmented_views(tmp_path):
    shards = make_train_shards(tmp_path / "shards", shards=1, videos=3, frames=20)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["--shards", str(shards), "--out", str(run), *TINY_TRAIN, "--steps", "2",
                                       "--ckpt-every", "2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    reader = _events(run)
    tags = set(reader.Tags()["scalars"])
    assert {"loss", "lr", "images_per_s", "pos_cos", "neg_cos", "epoch"} <= tags
    assert any(tag.startswith("fallbacks/") for tag in tags)
    for name in ("loss", "lr", "pos_cos"):
        written = [(e.step, e.value) for e in reader.Scalars(name)]
        assert written == [(line["step"], pytest.approx(line[name], rel=1e-6)) for line in lines]
    views = reader.Images("augmented_views")
    assert len(views) == 1 and views[0].step == 0
    image = cv2.imdecode(np.frombuffer(views[0].encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    # 16 views of 32 px in a grid of 8 columns, 1 px padding: 2 rows
    assert image.shape[:2] == (2 * 33 + 1, 8 * 33 + 1) and image.std() > 0


def test_no_tensorboard_writes_no_event_file(tmp_path):
    shards = make_train_shards(tmp_path / "shards", shards=1, videos=3, frames=20)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["--shards", str(shards), "--out", str(run), *TINY_TRAIN, "--steps", "1",
                                       "--no-tensorboard"])
    assert result.exit_code == 0, result.output
    assert (run / "metrics.jsonl").is_file() and not list(run.glob("events.out.tfevents.*"))
    assert json.loads((run / "config.json").read_text())["tensorboard"] is False


def test_method_figures_and_nested_scalars(tmp_path):
    figure = np.zeros((10, 20, 3), np.uint8)
    figure[:, 10:] = (0, 0, 255)  # BGR red on the right half
    png = tmp_path / "reconstruction-step00000005.png"
    cv2.imwrite(str(png), figure)
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=True)
    log.write({"step": 5, "loss": 1.5, "note": "text is left out", "fallbacks": {"swap": 3}, "nan": float("nan")})
    log.figures([png], 5)
    log.close()
    reader = _events(tmp_path)
    assert sorted(reader.Tags()["scalars"]) == ["fallbacks/swap", "loss"]
    assert [(e.step, e.value) for e in reader.Scalars("fallbacks/swap")] == [(5, 3.0)]
    [image] = reader.Images("reconstruction")
    decoded = cv2.imdecode(np.frombuffer(image.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (10, 20, 3) and tuple(decoded[0, 15]) == (0, 0, 255) and tuple(decoded[0, 0]) == (0, 0, 0)


def test_eval_finetune_writes_its_curves(tmp_path):
    from eval_fixtures import write_pattern_folder
    from train.evaluation.cli import main as eval_main

    data = write_pattern_folder(tmp_path / "patterns", {"train": 4, "val": 2, "test": 2})
    out = tmp_path / "out"
    result = CliRunner().invoke(eval_main, [
        "finetune", "--backbone", "random", "--data", str(data), "--out", str(out), "--image-size", "32",
        "--epochs", "2", "--batch-size", "4", "--head-dims", "16", "--workers", "0", "--threads", "1"])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "results.json").read_text())["backbones"][0]["runs"][0]
    reader = _events(out)
    tag = f"random-resnet18/{run['name']}"
    assert [(e.step, e.value) for e in reader.Scalars(f"{tag}/train_loss")] == [
        (h["epoch"], pytest.approx(h["train_loss"], rel=1e-6)) for h in run["history"]]
    assert len(reader.Scalars(f"{tag}/val_score")) == 2
