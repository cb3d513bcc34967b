import matplotlib.image
import pytest
import torch

from sslfer_core.lgi_former import preset
from sslfer_core.mae import mae_targets, split_prediction, tubelet_stats
from sslfer_core.mae_figure import ROW_TITLES, _full, _pixels, reconstruction_figure
from sslfer_core.tube_masking import tube_window_mask


def tiny_batch(b=2):
    cfg = preset("tiny")
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(b, 3, cfg.frames, cfg.img_size, cfg.img_size, generator=g)
    mask = tube_window_mask(b, cfg, generator=g, device="cpu")
    return cfg, clip, mask


def test_unnormalised_targets_give_back_the_pixels():
    cfg, clip, _ = tiny_batch()
    app, mot = mae_targets(clip, cfg)
    mean, std = tubelet_stats(clip, cfg)
    assert torch.allclose(_pixels(app, mean, std, cfg), clip[:, :, 0::2], atol=1e-5)
    diff = clip[:, :, 1::2] - clip[:, :, 0::2]
    assert torch.allclose(_pixels(mot, torch.zeros_like(mean), std, cfg), diff, atol=1e-5)


def test_masked_predictions_are_placed_on_the_masked_tokens():
    target = torch.zeros(1, 4, 2)
    mask = torch.tensor([[False, True, False, True]])
    pred = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
    assert _full(pred, target, mask)[0, :, 0].tolist() == [0.0, 1.0, 0.0, 2.0]


def test_figure_writes_a_png_with_six_rows_per_clip(tmp_path):
    cfg, clip, mask = tiny_batch(b=2)
    app, mot = mae_targets(clip, cfg)
    pred = torch.randn(2, int(mask[0].sum()), cfg.pred_dim)
    pred_app, pred_mot = split_prediction(pred, cfg)
    path = tmp_path / "recon.png"
    reconstruction_figure(path, clip, mask, pred_app, app, pred_mot, mot, cfg, frames=3)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] == pytest.approx((1.3 * len(ROW_TITLES) * 2 + 0.45) * 100, rel=0.05)
    assert image.shape[1] == pytest.approx((1.3 * 3 + 1.6) * 100, rel=0.05)
    assert float(image[..., :3].std()) > 0.05  # not a blank canvas
    with pytest.raises(ValueError, match="frames"):
        reconstruction_figure(path, clip, mask, pred_app, app, pred_mot, mot, cfg, frames=9)
