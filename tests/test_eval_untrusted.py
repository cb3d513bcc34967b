"""sslfer-eval against files another lab hands over and setups whose score would mean nothing (issue 32,
"Evaluation"): weights of a dtype the network cannot take, refusals that name the keys, metadata and
labels that do not parse, a last fine-tuning batch of one image, foreign saliency heads, damaged
results.json files, a PNG that declares a huge image, and splits that share images."""
import errno
import io
import json
import shutil
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from eval_fixtures import pattern_image, write_csv, write_pattern_folder
from sslfer_core.models import build_backbone
from train.evaluation.cli import main
from train.evaluation.datasets import load_dataset
from train.evaluation.images import MAX_IMAGE_PIXELS
from train.weights_file import write_weights
from cli_checks import one_error_line

FAST = ["--image-size", "32", "--max-iterations", "20", "--weight-decays", "0", "--workers", "0", "--threads", "1",
        "--no-cache"]


def _invoke(args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pattern_folder(tmp_path_factory.mktemp("patterns"), {"train": 4, "val": 2, "test": 2})


def _resnet_state() -> dict:
    torch.manual_seed(0)
    return {k: v for k, v in build_backbone("resnet18").state_dict().items()}


def _linear(data, *extra):
    return _invoke(["linear", "--data", data, *FAST, *extra])


# -- weights


def test_int8_weights_are_refused_naming_the_tensor(data, tmp_path):
    state = _resnet_state()
    state["conv1.weight"] = (state["conv1.weight"] * 100).to(torch.int8)
    path = write_weights(tmp_path / "q.safetensors", state, {"arch": "resnet18"})
    one_error_line(_linear(data, "--backbone", path), "weights do not fit torchvision resnet18",
                    "conv1.weight int8 (model: float32)")


def test_float16_weights_still_load(data, tmp_path):
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in _resnet_state().items()}
    result = _linear(data, "--backbone", write_weights(tmp_path / "h.safetensors", state, {"arch": "resnet18"}))
    assert result.exit_code == 0, result.output


def test_weights_that_do_not_fit_are_refused_naming_the_keys(data, tmp_path):
    state = _resnet_state()
    state["layer9.0.weight"] = state.pop("layer4.1.bn2.bias")
    state["fc_extra.weight"] = torch.zeros(3)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    line = one_error_line(_linear(data, "--backbone", write_weights(tmp_path / "w.safetensors", state, {})),
                           "1 missing (layer4.1.bn2.bias)", "2 unexpected (fc_extra.weight, layer9.0.weight)",
                           "layer1.0.conv1.weight (64, 64, 1, 1) (model: (64, 64, 3, 3))")
    assert len(line) < 600


@pytest.mark.parametrize("value", ["0", "-5", "abc", "inf", "99999"])
def test_a_recorded_input_size_that_is_no_size_is_refused(data, tmp_path, value):
    path = write_weights(tmp_path / "b.safetensors", _resnet_state(), {"arch": "resnet18", "input_size": value})
    args = ["linear", "--data", data, *[a for a in FAST if a not in ("--image-size", "32")], "--backbone", path]
    one_error_line(_invoke(args), f"input_size {value!r}", "give --image-size")
    assert _invoke([*args, "--image-size", "32"]).exit_code == 0  # the option replaces the metadata


# -- labels


def test_a_class_folder_named_like_a_broken_number_is_a_class(tmp_path):
    root = write_pattern_folder(tmp_path / "d", {"train": 2, "test": 1}, classes=("--1", "0", "-2", "²"))
    dataset = load_dataset(root)
    assert dataset.class_names == ["-2", "0", "--1", "²"]


def test_fer2013_codes_that_are_not_ascii_digits_are_bad_rows(tmp_path):
    pixels = " ".join(["128"] * 48 * 48)
    rows = [["3", pixels, "Training"], ["²", pixels, "Training"], ["٣", pixels, "PublicTest"], ["6", pixels, "PrivateTest"]]
    dataset = load_dataset(write_csv(tmp_path / "fer.csv", ["emotion", "pixels", "Usage"], rows))
    assert len(dataset.records) == 2
    assert dataset.problems.count("unknown label") == 2


def test_affectnet_expressions_and_values_that_are_not_finite_are_bad_rows(tmp_path):
    image = tmp_path / "Manually_Annotated_Images" / "1" / "a.png"
    image.parent.mkdir(parents=True)
    cv2.imwrite(str(image), pattern_image("checker", np.random.default_rng(0)))
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression", "valence",
              "arousal"]
    rows = [["1/a.png", "0", "0", "32", "32", "1", "0.5", "0.1"], ["1/a.png", "0", "0", "32", "32", "inf", "0", "0"],
            ["1/a.png", "0", "0", "32", "32", "nan", "0", "0"], ["1/a.png", "0", "0", "32", "32", "2", "inf", "0"],
            ["1/a.png", "inf", "0", "1e400", "32", "3", "0.2", "0.3"]]
    dataset = load_dataset(write_csv(tmp_path / "training.csv", header, rows), "affectnet-csv")
    assert len(dataset.records) == 2 and dataset.problems.count("bad row") == 3
    assert dataset.records[1].box is None  # an infinite face box is no box


def test_generic_csv_non_finite_valence_is_a_bad_row(tmp_path):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), pattern_image("checker", np.random.default_rng(0)))
    rows = [["a.png", "0.5", "0.1"], ["a.png", "inf", "0.1"], ["a.png", "0.2", "nan"]]
    dataset = load_dataset(write_csv(tmp_path / "l.csv", ["path", "valence", "arousal"], rows))
    assert len(dataset.records) == 1 and dataset.problems.count("bad row") == 2


# -- fine-tuning


def test_finetune_whose_last_batch_holds_one_image_trains(data, tmp_path):
    # 3 classes x 4 train images = 12 = 11 + 1: the last batch of 11 holds one image (layer4 is 1 x 1 at 32 px)
    result = _invoke(["finetune", "--backbone", "random", "--data", data, "--image-size", "32", "--epochs", "1",
                      "--batch-size", "11", "--workers", "0", "--threads", "1", "--head-dims", ""])
    assert result.exit_code == 0, result.output + repr(result.exception)


def test_finetune_batch_size_one_is_a_usage_error(data):
    one_error_line(_invoke(["finetune", "--backbone", "random", "--data", data, "--batch-size", "1"]),
                    "--batch-size", code=2)


# -- saliency heads


def _saliency(data, head, tmp_path):
    return _invoke(["saliency", "--backbone", "random", "--data", data, "--count", "2", "--image-size", "32",
                    "--head", head, "--out", tmp_path / "grid.png"])


def test_saliency_refuses_a_backbone_file_given_as_head(data, tmp_path):
    backbone = tmp_path / "backbone.pt"
    torch.save(_resnet_state(), backbone)
    one_error_line(_saliency(data, backbone, tmp_path), "not a linear head of `sslfer-eval linear --out`")
    path = write_weights(tmp_path / "backbone.safetensors", _resnet_state(), {})
    one_error_line(_saliency(data, path, tmp_path), str(path))


def test_saliency_refuses_a_head_of_another_width(data, tmp_path):
    head = {"weight": torch.zeros(3, 2048), "bias": torch.zeros(3), "mean": torch.zeros(2048), "std": torch.ones(2048),
            "class_names": ["checker", "horizontal", "vertical"]}
    torch.save(head, tmp_path / "head.pt")
    one_error_line(_saliency(data, tmp_path / "head.pt", tmp_path), "takes 2048-d features",
                    "gives 512-d")
    head["bias"] = torch.zeros(4)
    torch.save(head, tmp_path / "head.pt")
    one_error_line(_saliency(data, tmp_path / "head.pt", tmp_path), "inconsistent head")


# -- compare


def _results(tmp_path, entry):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"command": "linear", "backbones": [entry]}))
    return path


@pytest.mark.parametrize("entry, named", [
    ({"summary": {}}, "backbones[0] has no backbone.name"),
    ({"backbone": {"name": 3}, "summary": {}}, "backbones[0] has no backbone.name"),
    ({"backbone": {"name": "a"}, "summary": {"macro_f1": {"mean": "0.5", "std": 0, "n": 1}}},
     "backbones[0].summary.macro_f1.mean is '0.5', not a finite number"),
    ({"backbone": {"name": "a"}, "summary": {"accuracy": {"mean": 0.5, "std": 0, "n": "one"}}},
     "backbones[0].summary.accuracy.n is 'one'"),
    ({"backbone": {"name": "a"}, "summary": [1]}, "backbones[0].summary is not an object"),
    ("text", "backbones[0] is not an object"),
])
def test_compare_refuses_a_damaged_results_file_naming_the_key(tmp_path, entry, named):
    one_error_line(_invoke(["compare", _results(tmp_path, entry)]), named)
    one_error_line(_invoke(["dfer", "compare", _results(tmp_path, entry)]), named)


def test_compare_of_a_non_finite_mean_is_refused(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"command": "linear", "backbones": [{"backbone": {"name": "a"}, '
                    '"summary": {"macro_f1": {"mean": NaN, "std": 0, "n": 1}}}]}')
    one_error_line(_invoke(["compare", path]), "macro_f1.mean is nan")


# -- a PNG that declares a huge image


def _png_declaring(path, side: int) -> None:
    """A grey PNG of side x side zeros, compressed row by row (a few hundred KB, little memory)."""
    compressor, parts = zlib.compressobj(9), []
    row = b"\x00" * (side + 1)
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_a_png_over_the_pixel_limit_is_not_decoded_and_is_named(tmp_path):
    data = write_pattern_folder(tmp_path / "d", {"train": 4, "val": 2, "test": 2})
    side = 8200  # 67.2 M pixels, just over the limit of 8192^2
    assert side * side > MAX_IMAGE_PIXELS
    _png_declaring(data / "train" / "checker" / "huge.png", side)
    out = tmp_path / "out"
    result = _linear(data, "--backbone", "random", "--out", out)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "1 image too large (over 67,108,864 pixels; not decoded) (e.g. " in result.output
    assert "huge.png" in result.output and "corrupt image" not in result.output
    problems = json.loads((out / "results.json").read_text())["dataset"]["problems"]
    assert problems["image too large (over 67,108,864 pixels; not decoded)"]["count"] == 1


# -- splits that share images


def test_an_image_listed_in_train_and_test_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for kind in ("checker", "vertical"):
        for i in range(4):
            cv2.imwrite(str(tmp_path / f"{kind}{i}.png"), pattern_image(kind, rng))
            rows.append([f"{kind}{i}.png", kind, ("train", "train", "val", "test")[i]])
    rows.append(["checker0.png", "checker", "test"])  # also listed in test
    one_error_line(_linear(write_csv(tmp_path / "l.csv", ["path", "label", "split"], rows), "--backbone", "random"),
                    "1 image(s) are in both train and test of seed0", "checker0.png")


def test_test_images_identical_to_train_images_are_a_loud_warning(data, tmp_path):
    copy = tmp_path / "d"
    shutil.copytree(data, copy)
    for i in range(2):
        (copy / "test" / "vertical" / f"{i:03d}.png").write_bytes((copy / "train" / "vertical" / f"{i:03d}.png").read_bytes())
    out = tmp_path / "out"
    result = _linear(copy, "--backbone", "random", "--out", out)
    assert result.exit_code == 0, result.output
    assert "warning: 2 test image(s) of seed0 have the same content as a train image" in result.output
    run = json.loads((out / "results.json").read_text())["backbones"][0]["runs"][0]
    assert any("same content as a train image" in note for note in run["notes"])


# -- a full disk under the outputs


def test_a_full_disk_while_writing_results_is_one_line(data, tmp_path, monkeypatch):
    import train.evaluation.results

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train.evaluation.results, "write_json_atomic", full)
    out = tmp_path / "out"
    one_error_line(_linear(data, "--backbone", "random", "--out", out), f"could not write {out / 'results.json'}",
                    "(disk full (")


def test_a_full_disk_while_saving_a_linear_head_says_disk_full(data, tmp_path, monkeypatch):
    import sslfer_core.atomic_files

    class FullFile(io.FileIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sslfer_core.atomic_files, "open", lambda path, mode="r", *a, **k: io.BufferedWriter(
        FullFile(path, "wb")), raising=False)
    out = tmp_path / "out"
    line = one_error_line(_linear(data, "--backbone", "random", "--out", out), "seed0.pt", "(disk full (")
    assert "enforce fail" not in line


# -- features that are not finite


def test_non_finite_features_are_counted_and_left_out(data, tmp_path):
    state = _resnet_state()
    for key in ("layer4.1.bn2.weight", "layer4.1.bn2.bias"):  # finite weights whose sum overflows to inf
        state[key] = torch.full_like(state[key], 3e38)
    path = write_weights(tmp_path / "overflow.safetensors", state, {"arch": "resnet18"})
    out = tmp_path / "out"
    result = _linear(data, "--backbone", path, "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "non-finite features from overflow (left out)" in result.output
    assert "is empty (seed0) once the 24 image(s) without usable features are left out" in result.output


def test_a_video_listed_in_train_and_test_of_a_fold_is_refused():
    import click

    from train.evaluation.problems import ProblemLog
    from train.evaluation.video_datasets import VideoDataset, VideoRecord
    from train.evaluation.video_splits import plan_video

    records = [VideoRecord(source=f"clip{i}.mp4", split=split, label=i % 2, fold=1)
               for i, split in enumerate(["train", "train", "train", "val", "test", "test"])]
    records.append(VideoRecord(source="clip0.mp4", split="test", label=0, fold=1))  # also in test
    dataset = VideoDataset("list.csv", "video-csv", records, ["happy", "sad"], ProblemLog(), [])
    with pytest.raises(click.ClickException, match=r"1 video\(s\) are in both train and test of fold 1 \(e.g. clip0.mp4\)"):
        plan_video(dataset, 0, val_fraction=0.2, test_fraction=0.2)
    dataset.records.pop()
    assert len(plan_video(dataset, 0, val_fraction=0.2, test_fraction=0.2)) == 1
