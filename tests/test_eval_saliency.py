"""Grad-CAM: a toy network whose answer is known, the grid layout, and the CLI with and without a linear head."""
import cv2
import numpy as np
import torch
from click.testing import CliRunner
from torch import nn

from eval_fixtures import write_pattern_folder
from train.evaluation.cli import main
from train.evaluation.saliency import feature_norm_target, grad_cam, saliency_grid


class BrightnessNet(nn.Module):
    """layer4 = a 1x1 convolution summing the channels; the feature is its spatial mean.

    d(feature norm)/d(activation) is the same positive number everywhere, so Grad-CAM must equal the
    activation itself (normalised): bright where the image is bright.
    """

    def __init__(self):
        super().__init__()
        self.layer4 = nn.Conv2d(3, 1, kernel_size=1, bias=False)
        nn.init.constant_(self.layer4.weight, 1.0)

    def forward(self, x):
        return torch.relu(self.layer4(x)).mean(dim=(2, 3))


def test_grad_cam_highlights_the_bright_square():
    images = torch.zeros(1, 3, 16, 16)
    images[:, :, 2:6, 9:13] = 1.0
    cam = grad_cam(BrightnessNet(), images, feature_norm_target)
    assert cam.shape == (1, 16, 16)
    np.testing.assert_allclose(cam[0, 2:6, 9:13], 1.0, atol=1e-6)
    assert cam[0].sum() == cam[0, 2:6, 9:13].sum()  # zero outside the square


def test_grid_layout():
    images = np.zeros((3, 20, 20, 3), np.uint8)
    cams = np.ones((3, 20, 20), np.float32)
    grid = saliency_grid(images, cams, tile=30, columns=2, captions=["a", "b", "c"])
    # 2 rows of 30 px tiles with 4 px gaps; each cell is two tiles and a gap
    assert grid.shape == (2 * 34 + 4, 2 * (2 * 30 + 4 + 4) + 4, 3)
    assert grid[4 + 15, 4 + 15].tolist() == [0, 0, 0]  # first image tile (black input)
    # its overlay: JET at full activation is BGR (0, 0, 128); 45 % of it over black = (0, 0, 57.6)
    assert np.abs(grid[4 + 15, 4 + 30 + 4 + 15].astype(int) - [0, 0, 58]).max() <= 1


def test_saliency_cli_with_norm_and_with_linear_head(tmp_path):
    data = write_pattern_folder(tmp_path / "patterns", {"train": 6, "val": 2, "test": 2})
    png = tmp_path / "grid.png"
    runner = CliRunner()
    result = runner.invoke(main, ["saliency", "--backbone", "random", "--data", str(data), "--count", "4",
                                  "--columns", "2", "--tile", "40", "--image-size", "32", "--out", str(png)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    image = cv2.imread(str(png))
    assert image.shape == (2 * 44 + 4, 2 * (2 * 40 + 8) + 4, 3)

    out = tmp_path / "linear"
    result = runner.invoke(main, ["linear", "--backbone", "random", "--data", str(data), "--out", str(out),
                                  "--image-size", "32", "--no-cache", "--max-iterations", "20", "--threads", "1"])
    assert result.exit_code == 0, result.output
    head = out / "heads" / "random-resnet18" / "seed0.pt"
    result = runner.invoke(main, ["saliency", "--backbone", "random", "--data", str(data), "--count", "3",
                                  "--image-size", "32", "--head", str(head), "--target-class", "checker",
                                  "--out", str(png)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert cv2.imread(str(png)).shape[0] == 160 + 8
    result = runner.invoke(main, ["saliency", "--backbone", "random", "--data", str(data), "--head", str(head),
                                  "--target-class", "smile", "--image-size", "32", "--out", str(png)])
    assert result.exit_code == 1 and "not in checker, horizontal, vertical" in result.output


def _tiles(png, count, tile):
    """(image tiles, overlay tiles without the caption strip) of a one-row grid."""
    grid = cv2.imread(str(png))
    images, overlays = [], []
    for i in range(count):
        left = 4 + i * (2 * tile + 8)
        images.append(grid[4:4 + tile, left:left + tile])
        overlays.append(grid[4:4 + tile * 2 // 3, left + tile + 4:left + 2 * tile + 4])  # captions sit at the bottom
    return np.stack(images).astype(int), np.stack(overlays).astype(int)


def test_head_and_target_class_change_the_maps_not_the_images(tmp_path):
    data = write_pattern_folder(tmp_path / "patterns", {"train": 6, "val": 2, "test": 2})
    runner = CliRunner()
    result = runner.invoke(main, ["linear", "--backbone", "random", "--data", str(data), "--out", str(tmp_path / "lin"),
                                  "--image-size", "32", "--no-cache", "--max-iterations", "20", "--threads", "1"])
    assert result.exit_code == 0, result.output
    head = tmp_path / "lin" / "heads" / "random-resnet18" / "seed0.pt"
    common = ["saliency", "--backbone", "random", "--data", str(data), "--count", "3", "--columns", "3",
              "--tile", "48", "--image-size", "128"]  # layer4 is 4x4 here (1x1 at 32 px: a flat map)
    pictures = {}
    for name, extra in {"norm": [], "checker": ["--head", str(head), "--target-class", "checker"],
                        "vertical": ["--head", str(head), "--target-class", "vertical"]}.items():
        result = runner.invoke(main, [*common, *extra, "--out", str(tmp_path / f"{name}.png")])
        assert result.exit_code == 0, result.output + repr(result.exception)
        pictures[name] = _tiles(tmp_path / f"{name}.png", 3, 48)
    for name in ("checker", "vertical"):
        assert np.array_equal(pictures[name][0], pictures["norm"][0])  # the same images are shown
    # each of the 3 maps changes with the target: feature norm vs a class logit, and one class vs another
    for a, b in (("norm", "checker"), ("checker", "vertical")):
        differences = [np.abs(pictures[a][1][i] - pictures[b][1][i]).mean() for i in range(3)]
        assert min(differences) > 2.0, (a, b, differences)
