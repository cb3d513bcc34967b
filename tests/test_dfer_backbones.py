"""sslfer-eval dfer with pretrained backbones end to end: a tiny video MAE run's `sslfer-train export` (and the run
folder), `mae:tiny` random, and a contrastive ResNet-18 export, with and without the CA branch, on synthetic
expression-change clips and mead_mini; the loader's refusals are one line."""
import json

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dfer_fixtures import MAE_FRAMES, contrastive_export, mae_export
from sslfer_core.file_hash import file_sha256
from sslfer_core.synthetic_clips import CHANGE_CLASSES, write_expression_clips
from tests.conftest import shared_data_root
from train.evaluation.backbones import load_backbone
from train.evaluation.cli import main
from train.evaluation.video_backbones import load_video_backbone
from train.weights_file import read_payload

lgi_former = pytest.importorskip("sslfer_core.lgi_former")
TINY = lgi_former.preset("tiny")
COMMON = ["--workers", "0", "--threads", "1", "--stride", "1"]
VIDEO = ["--frames", str(MAE_FRAMES), "--image-size", str(TINY.img_size), *COMMON]
RESNET = ["--frames", "4", "--image-size", "32", *COMMON]
SPLIT = ["--val-fraction", "0.25", "--test-fraction", "0.25"]
ONE_EPOCH = ["--epochs", "1", "--batch-size", "4", "--warmup-epochs", "0"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("dfer_backbones")
    clips = write_expression_clips(root / "clips", subjects=4, frames=MAE_FRAMES + 2, size=64)
    return {"root": root, "clips": clips, "mae": mae_export(root), "resnet": contrastive_export(root)}


def _run(args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _one_line_error(args, code=1):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    return errors[0]


def _entries(out):
    payload = json.loads((out / "results.json").read_text())
    assert (out / "table.md").read_text().startswith("| backbone | UAR (%) | WAR (%)")
    return payload, {entry["backbone"]["name"]: entry for entry in payload["backbones"]}


def test_the_export_loads_its_weights_and_pools_representative_tokens(built):
    payload = read_payload(built["mae"])
    backbone = load_video_backbone(str(built["mae"]), "resnet18", MAE_FRAMES)
    assert backbone.kind == "video-encoder" and (backbone.frames, backbone.image_size) == (MAE_FRAMES, TINY.img_size)
    assert backbone.sha256 == file_sha256(built["mae"]) and backbone.name == built["mae"].stem
    state = backbone.encoder.state_dict()
    assert set(state) == set(payload["state_dict"])
    assert all(torch.equal(state[k], payload["state_dict"][k]) for k in state)
    random = load_video_backbone("mae:tiny", "resnet18", MAE_FRAMES)
    assert not torch.equal(random.encoder.state_dict()["rep_tokens"], state["rep_tokens"])
    # the linear feature: mean of the representative tokens, then the encoder's final LayerNorm, by hand
    x = torch.randn(2, 3, MAE_FRAMES, TINY.img_size, TINY.img_size)
    with torch.no_grad():
        rep, _ = backbone.encoder.forward_features(x)
        mean = rep.mean(dim=1)
        norm = backbone.encoder.norm
        by_hand = (mean - mean.mean(-1, keepdim=True)) / torch.sqrt(mean.var(-1, unbiased=False, keepdim=True)
                                                                     + norm.eps) * norm.weight + norm.bias
        assert torch.allclose(backbone.encoder.pooled(x), by_hand, atol=1e-5)
    run = load_video_backbone(str(built["root"] / "mae_run"), "resnet18", MAE_FRAMES)  # the run folder, in memory
    assert run.name.endswith("@step1") and all(torch.equal(run.encoder.state_dict()[k], state[k]) for k in state)
    with pytest.raises(click.ClickException, match="exports LGI-Former .* not a ResNet backbone"):
        load_backbone(str(built["root"] / "mae_run"))  # the image evaluation takes ResNets only


def test_resnet_clip_feature_is_the_mean_of_frame_features(built):
    backbone = load_video_backbone(str(built["resnet"]), "resnet18")
    assert backbone.kind == "resnet-frames" and backbone.feature_dim == 512
    run = load_video_backbone(str(built["root"] / "con_run"), "resnet18")  # the run folder, through its export
    assert run.kind == "resnet-frames" and run.name.endswith("@step1")
    assert all(torch.equal(run.encoder.state_dict()[k], backbone.encoder.state_dict()[k])
               for k in backbone.encoder.state_dict())
    clip = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        frames = [backbone.encoder.frame_model(clip[:, :, t]) for t in range(3)]
        assert torch.allclose(backbone.encoder.pooled(clip), (frames[0] + frames[1] + frames[2]) / 3, atol=1e-5)


def test_video_encoders_linear_and_finetune_on_synthetic_clips(built, tmp_path):
    rows = ["--backbone", "mae:tiny", "--backbone", built["mae"]]
    _run(["dfer", "linear", *rows, "--data", built["clips"], "--out", tmp_path / "linear", *SPLIT, *VIDEO])
    payload, entries = _entries(tmp_path / "linear")
    assert set(entries) == {"random-lgi-tiny", built["mae"].stem}
    assert payload["dataset"]["classes"] == sorted(CHANGE_CLASSES)
    for entry in entries.values():
        assert entry["backbone"]["kind"] == "video-encoder" and entry["backbone"]["frames"] == MAE_FRAMES
        assert entry["runs"][0]["test"]["count"] == 3  # one held-out subject, one clip per class
        assert "subject-disjoint" in entry["runs"][0]["notes"][0]
    for ca in (None, "add"):
        out = tmp_path / f"finetune-{ca}"
        _run(["dfer", "finetune", *rows, "--data", built["clips"], "--out", out, *SPLIT, *ONE_EPOCH, *VIDEO]
             + (["--ca", ca] if ca else []))
        _, entries = _entries(out)
        suffix = f"+ca-{ca}" if ca else ""
        assert set(entries) == {f"random-lgi-tiny{suffix}", f"{built['mae'].stem}{suffix}"}
        for entry in entries.values():
            assert entry["train_clips_per_second"] > 0 and entry["runs"][0]["selected"]["epoch"] == 1
            parameters = entry["runs"][0]["parameters"]
            encoder = lgi_former.count_parameters(lgi_former.LGIFormerEncoder(
                lgi_former.with_overrides(TINY, frames=MAE_FRAMES)))
            plain = encoder + TINY.dim * 3 + 3
            flatten = 512 * (TINY.img_size // 16) ** 2  # the last CA map, flattened into Linear(flatten -> dim)
            assert parameters == plain if ca is None else parameters > plain + flatten * TINY.dim


def test_contrastive_resnet_linear_and_finetune_on_synthetic_clips(built, tmp_path):
    _run(["dfer", "linear", "--backbone", built["resnet"], "--backbone", "random", "--data", built["clips"],
          "--out", tmp_path / "linear", *SPLIT, *RESNET])
    _, entries = _entries(tmp_path / "linear")
    assert set(entries) == {built["resnet"].stem, "random-resnet18"}
    assert entries[built["resnet"].stem]["backbone"]["sha256"] == file_sha256(built["resnet"])
    _run(["dfer", "finetune", "--backbone", built["resnet"], "--data", built["clips"], "--out", tmp_path / "ft",
          "--ca", "cat", *SPLIT, *ONE_EPOCH, *RESNET])
    _, entries = _entries(tmp_path / "ft")
    run = entries[f"{built['resnet'].stem}+ca-cat"]["runs"][0]
    assert run["parameters"] > 11_176_512 + 2 * 512 * 3  # ResNet-18 + CA branch + a 1024 -> 3 head


def test_mead_mini_with_pretrained_backbones(built, tmp_path):
    root = shared_data_root() / "mead_mini"
    if not (root / "SOURCES.csv").is_file():
        pytest.skip(f"mead_mini not found at {root}")
    data = ["--data", root / "SOURCES.csv", "--val-fraction", "0.2", "--test-fraction", "0.2"]
    _run(["dfer", "linear", "--backbone", built["mae"], "--out", tmp_path / "lin", *data, *VIDEO])
    _, entries = _entries(tmp_path / "lin")
    assert len(entries[built["mae"].stem]["runs"][0]["test"]["confusion_matrix"]) == 6  # MEAD's six labels here
    _run(["dfer", "finetune", "--backbone", built["mae"], "--ca", "add-pos", "--out", tmp_path / "ft-mae", *data,
          *ONE_EPOCH, *VIDEO])
    _run(["dfer", "finetune", "--backbone", built["resnet"], "--ca", "add", "--out", tmp_path / "ft-resnet", *data,
          *ONE_EPOCH, *RESNET])
    for out, name in ((tmp_path / "ft-mae", f"{built['mae'].stem}+ca-add-pos"),
                      (tmp_path / "ft-resnet", f"{built['resnet'].stem}+ca-add")):
        _, entries = _entries(out)
        assert entries[name]["runs"][0]["test"]["count"] >= 1


def test_bad_backbone_files_are_refused_in_one_line(built, tmp_path):
    data = ["--data", built["clips"], *SPLIT]
    line = _one_line_error(["dfer", "linear", "--backbone", built["mae"], *data, "--frames", "16", "--image-size",
                            "80", "--min-frames", "1", *COMMON])
    assert f"--frames {MAE_FRAMES} --image-size {TINY.img_size}" in line
    payload = read_payload(built["mae"])
    payload["state_dict"]["rep_tokens"][0, 0] = float("nan")
    torch.save(payload, tmp_path / "nan.pt")
    assert "non-finite values in 'rep_tokens'" in _one_line_error(
        ["dfer", "linear", "--backbone", tmp_path / "nan.pt", *data, *VIDEO])
    state = read_payload(built["resnet"])
    state["conv1.weight"][0, 0, 0, 0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    assert "non-finite values in 'conv1.weight'" in _one_line_error(
        ["dfer", "linear", "--backbone", tmp_path / "inf.pt", *data, *RESNET])
    torch.save({"weights": np.random.default_rng(0).normal(size=3)}, tmp_path / "numpy.pt")  # not tensors only
    assert "refused: this pickle holds more than tensors (numpy" in _one_line_error(
        ["dfer", "linear", "--backbone", tmp_path / "numpy.pt", *data, *RESNET])
    wrong = read_payload(built["mae"])
    wrong["preset"] = "full"
    torch.save(wrong, tmp_path / "wrong_preset.pt")
    assert "preset 'full' but its config differs in img_size" in _one_line_error(
        ["dfer", "linear", "--backbone", tmp_path / "wrong_preset.pt", *data, *VIDEO])
    (tmp_path / "text.pt").write_text("not weights\n")
    assert "not a plain weights file" in _one_line_error(
        ["dfer", "linear", "--backbone", tmp_path / "text.pt", *data, *RESNET])
