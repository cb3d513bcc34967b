"""Published checkpoints (MAE-DFER, MAE-DFER-CA, SSL-FER): read without running code, mapped onto sslfer's models,
and computing what the reference code computes. The fixtures in tests/data/reference_weights were made by running
the reference code at a tiny configuration (docs/evaluation.md, "Using the published weights")."""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sslfer_core.reference_names import MAE_DFER_PRETRAIN, NAME_MAPS, from_sslfer, translate
from train.evaluation.cli import main as eval_main
from train.evaluation.video_backbones import normalise_clips
from train.reference_weights import (build_classifier, build_encoder, build_pretraining, read_reference,
                                     resnet_state, ReferenceWeightsError)
from train.weights_file import WeightsFileError

DATA = Path(__file__).parent / "data" / "reference_weights"
FILES = {
    "pretrain": "mae_dfer_pretrain_checkpoint-49.pth",
    "finetuned": "mae_dfer_dfew_finetuned.pth",
    "ca": "mae_dfer_ca_add_finetuned.pth",
    "ssl": "ssl_fer_checkpoint_best.pth.tar",
}
TOLERANCE = dict(rtol=1e-5, atol=1e-5)  # float32, as the reference computed them


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The fixture checkpoints, decompressed (they are stored xz-compressed)."""
    root = tmp_path_factory.mktemp("reference_weights")
    out = {}
    for key, name in FILES.items():
        out[key] = root / name
        out[key].write_bytes(lzma.decompress((DATA / f"{name}.xz").read_bytes()))
    return out


@pytest.fixture(scope="module")
def reference():
    with np.load(DATA / "reference_outputs.npz") as stored:
        return {k: stored[k] for k in stored.files}


def _clip(reference) -> torch.Tensor:
    return normalise_clips(torch.from_numpy(reference["clips_uint8"]))


def test_pretraining_checkpoint_encodes_and_predicts_as_the_reference(files, reference):
    found = read_reference(files["pretrain"])
    assert found.kind == "mae-dfer-pretrain" and found.args["lg_region_size"] == [2, 2, 4]
    model, config, line = build_pretraining(found)
    assert (config.dim, config.depth, config.heads, config.region) == (128, 2, 2, (2, 2, 4))
    assert "mapped 89 tensors into sslfer's MAEModel" in line and "nothing unused" in line
    x, mask = _clip(reference), torch.from_numpy(reference["pretrain_mask"])
    with torch.no_grad():
        encoded = model.forward_encoder(x, mask)  # visible tokens in raster order
        predicted = model(x, mask)
    # the reference returns the visible tokens region by region; its raster index of each is stored
    order = torch.from_numpy(reference["pretrain_visible_region_order"])
    visible = [torch.nonzero(~m).flatten() for m in mask]
    in_reference_order = torch.stack([encoded[i][torch.searchsorted(visible[i], order[i])] for i in range(len(x))])
    np.testing.assert_allclose(in_reference_order.numpy(), reference["pretrain_encoded"], **TOLERANCE)
    # the reference's decoder with the visible tokens' positions in the order its encoder returns them
    np.testing.assert_allclose(predicted.numpy(), reference["pretrain_prediction"], **TOLERANCE)
    assert float(reference["pretrain_published_max_difference"]) > 1e-3  # without that fix it differs


def test_finetuned_classifier_computes_the_reference_logits(files, reference):
    found = read_reference(files["finetuned"])
    assert found.kind == "mae-dfer-finetuned"
    model, _, line = build_classifier(found)
    assert "7 classes" in line
    x = _clip(reference)
    with torch.no_grad():
        np.testing.assert_allclose(model.encoder.pooled(x).numpy(), reference["finetuned_feature"], **TOLERANCE)
        np.testing.assert_allclose(model(x).numpy(), reference["finetuned_logits"], **TOLERANCE)


def test_ca_add_classifier_computes_the_reference_logits_and_lists_the_unused_layer(files, reference):
    found = read_reference(files["ca"])
    assert (found.kind, found.variant) == ("mae-dfer-ca", "add")
    model, _, line = build_classifier(found)
    assert "unused: cablock.fc.weight 7x2048, cablock.fc.bias 7" in line
    with torch.no_grad():
        np.testing.assert_allclose(model(_clip(reference)).numpy(), reference["ca_add_logits"], **TOLERANCE)


def test_ssl_fer_checkpoint_gives_the_reference_features_and_skips_the_scheduler(files, reference):
    from sslfer_core.models import build_backbone

    found = read_reference(files["ssl"])
    assert found.kind == "ssl-fer" and found.meta["arch"] == "resnet18"
    state, line = resnet_state(found)
    assert "skipped without building: scheduler (torch.optim.lr_scheduler.CosineAnnealingLR)" in line
    assert "torch.optim.adam.Adam" in line and "unused: backbone.fc.0.weight 512x512" in line
    net = build_backbone("resnet18")
    net.load_state_dict(state)
    images = torch.from_numpy(reference["sslfer_images_uint8"]).permute(0, 3, 1, 2).float().div(255.0)
    images = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(images).numpy(), reference["sslfer_feature"], **TOLERANCE)


def test_bare_state_dict_is_recognised_and_an_unknown_layout_is_one_line(files, tmp_path):
    payload = torch.load(files["finetuned"], map_location="cpu", weights_only=False)
    bare = tmp_path / "bare.pth"
    torch.save(payload["model"], bare)
    assert read_reference(bare).kind == "mae-dfer-finetuned"
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"stem.weight": torch.zeros(2), "stem.bias": torch.zeros(2)}, "epoch": 1}, foreign)
    with pytest.raises(ReferenceWeightsError, match=r"matches no known checkpoint layout.*first keys: stem.weight, "
                                                    r"stem.bias"):
        read_reference(foreign)


def test_round_trip_sslfer_to_the_reference_layout_and_back(files):
    found = read_reference(files["pretrain"])
    model, _, _ = build_pretraining(found)
    back = from_sslfer(model.state_dict(), MAE_DFER_PRETRAIN)
    assert set(back) == set(found.state)
    assert all(torch.equal(back[k], found.state[k]) for k in back)


def test_every_table_reverses_to_itself():
    for table in NAME_MAPS.values():
        for reference_name, ours in table.rows:
            concrete = reference_name.replace("{i}", "3") + ".weight"
            there = translate(concrete, table)
            assert translate(there, table.reversed()) == concrete, (table.name, concrete)


@pytest.mark.parametrize("fusion", ["cat", "add-pos"])
def test_ca_variants_without_reference_code_are_detected_and_mapped(files, tmp_path, fusion):
    """The cat and add(pos) models exist only as released files (their code is not published): an sslfer model of
    each, written under the reference's names with the tensors the reference's modules would also hold, reads
    back as that variant and computes the same logits."""
    import argparse

    from sslfer_core.ca_branch import CAConfig, MotionFusionClassifier
    from sslfer_core.lgi_former import LGIFormerEncoder
    from sslfer_core.reference_names import MAE_DFER_CA

    config = read_reference(files["ca"]).args
    _, lgi, _ = build_classifier(read_reference(files["ca"]))
    torch.manual_seed(0)
    ours = MotionFusionClassifier(LGIFormerEncoder(lgi), lgi.dim, 7, fusion,
                                  CAConfig(img_size=lgi.img_size, frames=lgi.frames, out_dim=lgi.dim)).eval()
    state = from_sslfer(ours.state_dict(), MAE_DFER_CA)
    state.update({"cablock.fc.weight": torch.zeros(7, 2048), "cablock.fc.bias": torch.zeros(7)})
    if fusion == "add-pos":
        state.update({"vit_pos.cls_token": torch.zeros(1, 1, 512), "vit_pos.head.weight": torch.zeros(5, 512),
                      "vit_pos.head.bias": torch.zeros(5), "vit_pos.to_Mask.0.weight": torch.zeros(1, 512),
                      "vit_pos.to_Mask.0.bias": torch.zeros(1)})
    path = tmp_path / f"{fusion}.pth"
    torch.save({"model": state, "epoch": 1, "args": argparse.Namespace(**config)}, path)
    found = read_reference(path)
    assert (found.kind, found.variant) == ("mae-dfer-ca", fusion)
    model, _, line = build_classifier(found)
    assert "cablock.fc.weight" in line and (fusion != "add-pos" or "vit_pos.cls_token" in line)
    x = torch.randn(2, 3, lgi.frames, lgi.img_size, lgi.img_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ours(x), rtol=0, atol=0)


class _CreatesFile:
    """Unpickling this would call open(path, 'w'), creating the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Scheduler:
    """Pickled as a torch.optim scheduler (a class that is skipped, not built) whose state holds `inner`."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __reduce__(self):
        return (torch.optim.lr_scheduler.StepLR, (), {"inner": self.inner})


@pytest.mark.parametrize("where", ["top", "inside-skipped"])
def test_a_pickle_that_would_run_code_is_refused_and_runs_none(tmp_path, where):
    marker = tmp_path / "created-by-unpickling"
    evil = _CreatesFile(marker)
    payload = {"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "args": evil} if where == "top" else \
        {"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "scheduler": _Scheduler(evil)}
    path = tmp_path / "evil.pth.tar"
    torch.save(payload, path)
    with pytest.raises(WeightsFileError, match=r"refused: this pickle holds more than tensors \((io\.)?open;"):
        read_reference(path)
    result = CliRunner().invoke(eval_main, ["dfer", "test", "--model", str(path), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "refused" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not marker.exists()
    if where == "top":  # the same pickle, loaded the unsafe way, does create the file: the check above is real
        torch.load(path, weights_only=False)
        assert marker.exists()


# ------------------------------------------------------------------------------------------------ through the CLI
def _clip_set(root: Path, videos: int = 6, frames: int = 16) -> Path:
    """A video-csv set of frame folders (32 px, the fixtures' input size) in the 7 DFEW classes."""
    import cv2

    rng = np.random.default_rng(0)
    names = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
    rows = ["path,label,subject"]
    for v in range(videos * len(names)):
        folder = root / f"v{v:03d}"
        folder.mkdir(parents=True)
        for i in range(frames):
            cv2.imwrite(str(folder / f"{i:03d}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        rows.append(f"v{v:03d},{names[v % len(names)]},s{v % videos}")
    (root / "clips.csv").write_text("\n".join(rows) + "\n")
    return root / "clips.csv"


FAST = ["--workers", "0", "--threads", "1", "--stride", "1"]
CLASSES = "Happy,Sad,Neutral,Angry,Surprise,Disgust,Fear"


@pytest.mark.parametrize("key", ["pretrain", "finetuned", "ca"])
def test_dfer_linear_loads_each_mae_dfer_file_with_a_one_line_summary(files, tmp_path, key):
    data = _clip_set(tmp_path / "clips", videos=3)
    out = tmp_path / "out"
    result = CliRunner().invoke(eval_main, [
        "dfer", "linear", "--backbone", str(files[key]), "--data", str(data), "--classes", CLASSES,
        "--frames", "16", "--image-size", "32", "--max-iterations", "5", "--val-fraction", "0.34",
        "--test-fraction", "0.34", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    summary = [line for line in result.output.splitlines() if "checkpoint," in line]
    assert len(summary) == 1 and "mapped" in summary[0] and "not used" in summary[0]
    entry = json.loads((out / "results.json").read_text())["backbones"][0]
    assert entry["backbone"]["kind"] == "video-encoder" and entry["backbone"]["feature_dim"] == 128


def test_image_commands_load_the_ssl_fer_file(files, tmp_path):
    from eval_fixtures import write_pattern_folder

    data = write_pattern_folder(tmp_path / "patterns", {"train": 6, "val": 3, "test": 3})
    result = CliRunner().invoke(eval_main, [
        "linear", "--backbone", str(files["ssl"]), "--data", str(data), "--image-size", "32", "--max-iterations", "5",
        "--weight-decays", "0", "--workers", "0", "--threads", "1", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert "ssl-fer checkpoint" in result.output and "skipped without building: scheduler" in result.output
    wrong = CliRunner().invoke(eval_main, ["linear", "--backbone", str(files["finetuned"]), "--data", str(data),
                                           "--workers", "0", "--no-cache"])
    assert wrong.exit_code == 1 and "not a ResNet" in wrong.output and "Traceback" not in wrong.output


@pytest.mark.parametrize("key", ["finetuned", "ca"])
def test_dfer_test_scores_a_finetuned_model_as_it_is(files, tmp_path, key):
    data = _clip_set(tmp_path / "clips", videos=2)
    out = tmp_path / "out"
    result = CliRunner().invoke(eval_main, [
        "dfer", "test", "--model", str(files[key]), "--data", str(data), "--classes", CLASSES,
        "--test-fraction", "0.5", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert "UAR (%)" in result.output and "WAR (%)" in result.output
    payload = json.loads((out / "results.json").read_text())
    assert payload["command"] == "dfer-test"
    run = payload["backbones"][0]["runs"][0]
    assert run["test"]["count"] == run["counts"]["test"]["total"] > 0
    assert 0.0 <= run["test"]["uar"] <= 1.0
    assert payload["backbones"][0]["backbone"]["classes"] == 7


def test_dfer_test_refuses_a_pretraining_file(files, tmp_path):
    data = _clip_set(tmp_path / "clips", videos=1)
    result = CliRunner().invoke(eval_main, ["dfer", "test", "--model", str(files["pretrain"]), "--data", str(data),
                                            "--classes", CLASSES])
    assert result.exit_code == 1 and "mae-dfer-pretrain; give a fine-tuned" in result.output


def test_build_encoder_of_a_finetuned_file_names_what_is_left_out(files):
    encoder, config, line = build_encoder(read_reference(files["ca"]))
    assert "the head and the CA branch are not used" in line and config.img_size == 32


# ------------------------------------------------------------------------------ --init and export --format mae-dfer
def _train(args):
    from train.cli import main as train_main

    result = CliRunner().invoke(train_main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _checkpoint_model(run: Path) -> dict:
    from train.checkpoints import latest_checkpoint, read_checkpoint

    return read_checkpoint(latest_checkpoint(run))["model"]


def test_mae_export_in_the_reference_layout_and_init_from_it(tmp_path):
    from dfer_fixtures import MAE_FRAMES, make_mae_shards
    from sslfer_core.reference_names import MAE_DFER_FINETUNED

    shards = make_mae_shards(tmp_path / "shards")
    common = ["--shards", shards, "--preset", "tiny", "--frames", MAE_FRAMES, "--stride", "2", "--batch-size", "2",
              "--workers", "0", "--precision", "fp32", "--steps", "1", "--warmup-steps", "0", "--log-every", "1"]
    _train(["mae", "--out", tmp_path / "run", *common, "--lr", "1e-3", "--min-lr", "1e-4"])
    exported = tmp_path / "encoder.pth"
    _train(["export", tmp_path / "run", "-o", exported, "--format", "mae-dfer"])
    found = read_reference(exported)
    assert found.kind == "mae-dfer-pretrain" and found.args["num_heads"] == 4
    # what the reference's fine-tuning script loads: 'model' with 'encoder.' stripped, its VisionTransformer's names
    stripped = {k[len("encoder."):] for k in found.state}
    encoder_names = {translate(k, MAE_DFER_FINETUNED.reversed()) for k in
                     (f"encoder.{name}" for name in build_encoder(found)[0].state_dict())}
    assert stripped == (encoder_names - {"fc_norm.weight", "fc_norm.bias"}) | {"norm.weight", "norm.bias"}
    run_encoder = {k[len("encoder."):]: v for k, v in _checkpoint_model(tmp_path / "run").items()
                   if k.startswith("encoder.")}
    encoder, _, _ = build_encoder(found)
    assert all(torch.equal(encoder.state_dict()[k], run_encoder[k]) for k in run_encoder)

    # a new run starts from it: recorded with the file's sha256, weights as given (a negligible lr)
    result = _train(["mae", "--out", tmp_path / "init_run", *common, "--lr", "1e-12", "--min-lr", "0",
                     "--weight-decay", "0", "--init", exported])
    assert "mae-dfer-pretrain checkpoint" in result.output and "decoder starts from its initialisation" in result.output
    config = json.loads((tmp_path / "init_run" / "config.json").read_text())
    from sslfer_core.file_hash import file_sha256

    assert config["init"] == str(exported) and config["init_weights"]["sha256"] == file_sha256(exported)
    started = _checkpoint_model(tmp_path / "init_run")
    for key, value in run_encoder.items():
        torch.testing.assert_close(started[f"encoder.{key}"], value, rtol=0, atol=1e-6)


def test_mae_init_refuses_weights_of_another_geometry_in_one_line(files, tmp_path):
    from dfer_fixtures import MAE_FRAMES, make_mae_shards
    from train.cli import main as train_main

    shards = make_mae_shards(tmp_path / "shards")
    result = CliRunner().invoke(train_main, [str(a) for a in [
        "mae", "--shards", shards, "--out", tmp_path / "run", "--preset", "tiny", "--frames", MAE_FRAMES,
        "--batch-size", "2", "--workers", "0", "--steps", "1", "--min-lr", "0", "--init", files["pretrain"]]])
    assert result.exit_code == 1 and "does not fit --preset tiny --frames 4" in result.output
    assert "dim 128 (run: 96)" in result.output and "Traceback" not in result.output


def test_contrastive_init_from_the_ssl_fer_checkpoint(files, tmp_path):
    from train_fixtures import TINY_TRAIN, make_train_shards

    shards = make_train_shards(tmp_path / "shards", shards=1, videos=3, frames=20)
    result = _train(["--shards", shards, "--out", tmp_path / "run", *TINY_TRAIN, "--steps", "1", "--ckpt-every", "1",
                     "--lr", "1e-12", "--weight-decay", "0", "--init", files["ssl"]])
    assert "ssl-fer checkpoint" in result.output and "projection head starts from its initialisation" in result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["init_weights"]["kind"] == "ssl-fer"
    state, _ = resnet_state(read_reference(files["ssl"]))
    started = _checkpoint_model(tmp_path / "run")
    torch.testing.assert_close(started["backbone.conv1.weight"], state["conv1.weight"], rtol=0, atol=1e-6)
    from train.cli import main as train_main

    refused = CliRunner().invoke(train_main, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "x.pth"),
                                              "--format", "mae-dfer"])
    assert refused.exit_code == 1 and "writes an LGI-Former encoder; this is a contrastive run" in refused.output


def test_finetuning_a_video_encoder_starts_as_the_reference():
    """A fresh final LayerNorm (the reference's fc_norm) and a truncated-normal(0.02) x 0.001 head, zero bias;
    --keep-encoder-norm keeps the encoder's norm and PyTorch's default head."""
    from train.evaluation.dfer_finetune import DferFinetuneConfig, build_classifier
    from train.evaluation.video_backbones import load_video_encoder

    backbone = load_video_encoder("tiny", frames=4)
    with torch.no_grad():
        backbone.encoder.norm.weight.fill_(3.0)
    torch.manual_seed(0)
    net = build_classifier(backbone, 7, DferFinetuneConfig(drop_path=0.0), 80, 4)
    assert torch.equal(net.encoder.norm.weight, torch.ones(96)) and torch.equal(net.head.bias, torch.zeros(7))
    assert 0.5 * 2e-5 < float(net.head.weight.detach().std()) < 1.5 * 2e-5
    kept = build_classifier(backbone, 7, DferFinetuneConfig(drop_path=0.0, reference_start=False), 80, 4)
    assert torch.equal(kept.encoder.norm.weight, torch.full((96,), 3.0)) and float(kept.head.weight.detach().std()) > 1e-3
