"""sslfer-eval dfer end to end on small synthetic frame-folder sets (and mead_mini when present)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import shared_data_root
from train.evaluation.cli import main

CLASSES = ("happy", "sad", "angry")
FAST = ["--image-size", "32", "--frames", "4", "--stride", "1", "--workers", "0", "--threads", "1"]


def _clip(path: Path, level: int, rng: np.random.Generator, frames: int = 6) -> None:
    path.mkdir(parents=True)
    for i in range(frames):
        image = np.clip(level + rng.normal(0, 8, (24, 24, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(path / f"{i:03d}.png"), image)


def _synthetic_csv(root: Path, subjects: int = 6) -> Path:
    rng = np.random.default_rng(0)
    rows = ["path,label,subject"]
    for s in range(subjects):
        for c, name in enumerate(CLASSES):  # each class its own brightness
            _clip(root / f"s{s}_{name}", 40 + 80 * c, rng)
            rows.append(f"s{s}_{name},{name},s{s}")
    path = root / "clips.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _run(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_linear_on_a_synthetic_set(tmp_path):
    data = _synthetic_csv(tmp_path / "data")
    out = tmp_path / "out"
    result = _run(["dfer", "linear", "--backbone", "random", "--data", str(data), "--seeds", "2",
                   "--val-fraction", "0.2", "--test-fraction", "0.34", "--out", str(out), *FAST])
    assert "UAR (%)" in result.output and "WAR (%)" in result.output
    payload = json.loads((out / "results.json").read_text())
    assert payload["command"] == "dfer-linear" and payload["dataset"]["classes"] == ["angry", "happy", "sad"]
    entry = payload["backbones"][0]
    assert entry["backbone"]["kind"] == "resnet-frames" and entry["summary"]["uar"]["n"] == 2
    for run in entry["runs"]:
        assert "subject-disjoint" in run["notes"][0] and "subject-disjoint" in run["notes"][1]
        test = run["test"]
        assert len(test["confusion_matrix"]) == 3 and [row["class"] for row in test["per_class"]] == ["angry", "happy", "sad"]
        assert test["count"] == run["counts"]["test"]["total"]
    # brightness separates the classes even for random features; a broken pipeline scores near chance (1/3)
    assert entry["summary"]["war"]["mean"] >= 0.6
    assert (out / "table.md").read_text().startswith("| backbone | UAR (%) | WAR (%)")
    compared = _run(["dfer", "compare", str(out / "results.json")])
    assert "random-resnet18 (dfer-linear)" in compared.output


def test_folds_are_reported_one_by_one_and_together(tmp_path):
    rng = np.random.default_rng(1)
    clips = tmp_path / "clips"
    lines = {}
    for i in range(12):
        label = i % 3
        _clip(clips / f"{i:05d}", 40 + 80 * label, rng)
        lines[i] = f"{clips / f'{i:05d}'} {label}"
    for fold, test_ids in ((1, range(0, 6)), (2, range(6, 12))):
        folder = tmp_path / "dfew" / f"split0{fold}"
        folder.mkdir(parents=True)
        (folder / "train.csv").write_text("\n".join(lines[i] for i in range(12) if i not in test_ids) + "\n")
        (folder / "test.csv").write_text("\n".join(lines[i] for i in test_ids) + "\n")
    out = tmp_path / "out"
    result = _run(["dfer", "linear", "--backbone", "random", "--data", str(tmp_path / "dfew"), "--format", "dfew",
                   "--val-fraction", "0.34", "--out", str(out), *FAST])
    assert "fold 1" in result.output and "fold 2" in result.output
    entry = json.loads((out / "results.json").read_text())["backbones"][0]
    assert [r["fold"] for r in entry["runs"]] == [1, 2]
    assert set(entry["per_fold"]) == {"1", "2"}
    values = entry["summary"]["uar"]["values"]
    assert entry["summary"]["uar"]["mean"] == pytest.approx(np.mean(values))
    assert values == [entry["per_fold"][f]["uar"]["mean"] for f in ("1", "2")]
    assert len(entry["runs"][0]["test"]["confusion_matrix"]) == 7  # DFEW's fixed label set


@pytest.mark.parametrize("ca", [None, "add-pos"])
def test_finetune_runs_with_and_without_ca(tmp_path, ca):
    data = _synthetic_csv(tmp_path / "data", subjects=3)
    out = tmp_path / "out"
    args = ["dfer", "finetune", "--backbone", "random", "--data", str(data), "--epochs", "1", "--batch-size", "4",
            "--warmup-epochs", "0", "--val-fraction", "0.34", "--test-fraction", "0.34", "--out", str(out), *FAST]
    result = _run(args + (["--ca", ca] if ca else []))
    assert "training clips/s" in result.output
    entry = json.loads((out / "results.json").read_text())["backbones"][0]
    run = entry["runs"][0]
    assert run["selected"]["epoch"] == 1 and len(run["history"]) == 1
    assert entry["backbone"]["name"] == "random-resnet18" + (f"+ca-{ca}" if ca else "")
    resnet18 = 11_176_512  # torchvision resnet18 without fc
    plain = resnet18 + 512 * 3 + 3
    assert (run["parameters"] == plain) if ca is None else (run["parameters"] > plain)


def test_bad_usage_is_one_line(tmp_path):
    data = _synthetic_csv(tmp_path / "data", subjects=2)
    result = CliRunner().invoke(main, ["dfer", "linear", "--backbone", "mae:nosuchpreset", "--data", str(data), *FAST])
    assert result.exit_code == 1 and "mae:nosuchpreset" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["dfer", "finetune", "--backbone", "random", "--data", str(data), "--ca", "add",
                                       "--image-size", "40", "--frames", "4"])
    assert result.exit_code == 2 and "divisible by 16" in result.output


def test_mead_mini_linear():
    root = shared_data_root() / "mead_mini"
    if not (root / "SOURCES.csv").is_file():
        pytest.skip(f"mead_mini not found at {root}")
    result = _run(["dfer", "linear", "--backbone", "random", "--data", str(root / "SOURCES.csv"), *FAST])
    assert "fewer frames than its header" in result.output  # sad.mp4 is truncated: 110 of 157 frames decode


def test_clip_augmentation_is_drawn_once_per_clip():
    import torch

    from train.evaluation.dfer_finetune import ClipAugment, DferFinetuneConfig, learning_rate_at

    torch.manual_seed(0)
    frame = torch.randint(0, 256, (1, 40, 40, 3), dtype=torch.uint8)
    clip = frame.expand(6, -1, -1, -1).contiguous()  # six identical frames
    augment = ClipAugment(16, DferFinetuneConfig(erase_prob=1.0))
    for _ in range(5):
        out = augment(clip)
        assert out.shape == (6, 3, 16, 16)
        assert all(torch.equal(out[0], out[t]) for t in range(6))  # same crop, flip and RandAugment ops
    erased = augment.erase(torch.zeros(2, 3, 6, 16, 16))
    for x in erased:
        box = x[0] != 0  # (T, S, S)
        assert box.any() and all(torch.equal(box[0], box[t]) for t in range(6))  # one box for all frames
        assert not torch.equal(x[0, 0], x[0, 1])  # filled with fresh noise per pixel
    # warm-up 0.1 -> 1.0 over 10 steps, then cosine from 1.0 to 0.0 over the remaining 10
    assert learning_rate_at(0, 20, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert learning_rate_at(10, 20, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert learning_rate_at(15, 20, 10, 1.0, 0.0) == pytest.approx(0.5)


def test_linear_with_the_video_encoder(tmp_path):
    lgi_former = pytest.importorskip("sslfer_core.lgi_former")
    config = lgi_former.preset("tiny")
    data = _synthetic_csv(tmp_path / "data", subjects=3)
    fast = ["--workers", "0", "--threads", "1", "--stride", "1", "--min-frames", "1"]
    wrong = CliRunner().invoke(main, ["dfer", "linear", "--backbone", "mae:tiny", "--data", str(data), *FAST])
    assert wrong.exit_code == 1 and f"--frames 4 --image-size {config.img_size}" in wrong.output  # built for --frames
    odd = CliRunner().invoke(main, ["dfer", "linear", "--backbone", "mae:tiny", "--data", str(data), "--frames", "5",
                                    "--image-size", str(config.img_size), "--min-frames", "1"])
    assert odd.exit_code == 1 and "--frames 5 does not fit" in odd.output and "Traceback" not in odd.output
    out = tmp_path / "out"
    _run(["dfer", "linear", "--backbone", "mae:tiny", "--data", str(data), "--frames", str(config.frames),
          "--image-size", str(config.img_size), "--val-fraction", "0.34", "--test-fraction", "0.34", "--out", str(out),
          *fast])
    entry = json.loads((out / "results.json").read_text())["backbones"][0]
    assert entry["backbone"]["kind"] == "video-encoder" and entry["backbone"]["feature_dim"] == config.dim


def test_layer_decay_groups():
    import torch
    from torch import nn

    from train.evaluation.dfer_finetune import PlainClassifier, parameter_groups

    class Encoder(nn.Module):  # the shape of the video encoder: embedding, tokens, blocks, final norm
        def __init__(self):
            super().__init__()
            self.tokens = nn.Parameter(torch.zeros(2, 4))
            self.patch_embed = nn.Linear(3, 4)
            self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.norm = nn.LayerNorm(4)

        def no_decay_parameters(self):
            return [self.tokens]

        def pooled(self, x):
            return x

    net = PlainClassifier(Encoder(), 4, 3)
    groups = parameter_groups(net, 0.05, 0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    enc = net.encoder
    # depth 2: layer 0 (patch embedding) 0.5^3, block 0 0.5^2, block 1 0.5; tokens, final norm and head 1, as the
    # reference's layer ids (its lg_region_tokens match none of its named layers and fall in the top one)
    assert scale_of[id(enc.patch_embed.weight)] == 0.125
    assert scale_of[id(enc.blocks[0].weight)] == 0.25 and scale_of[id(enc.blocks[1].bias)] == 0.5
    assert scale_of[id(enc.tokens)] == scale_of[id(enc.norm.weight)] == scale_of[id(net.head.weight)] == 1.0
    assert decay_of[id(enc.patch_embed.weight)] == decay_of[id(net.head.weight)] == 0.05
    assert decay_of[id(enc.tokens)] == decay_of[id(enc.patch_embed.bias)] == decay_of[id(enc.norm.weight)] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    resnet_like = PlainClassifier(nn.Linear(4, 4), 4, 3)  # no blocks: one layer, every scale 1
    assert {g["lr_scale"] for g in parameter_groups(resnet_like, 0.05, 0.5)} == {1.0}
