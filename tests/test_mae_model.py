import numpy as np
import pytest
import torch
from torch import nn

from sslfer_core.gpu_augment import IMAGENET_MEAN, IMAGENET_STD
from sslfer_core.lgi_former import LGIFormerConfig, count_parameters, preset
from sslfer_core.losses import mae_loss, masked_mse
from sslfer_core.tube_masking import tube_window_mask
from sslfer_core.mae import (MAEModel, mae_targets, param_groups, patchify, split_prediction, tubelet_stats,
                                   unnormalise, unpatchify_frames)
from torch_threads import one_thread  # noqa: F401  (autouse)


def small_cfg(**changes):
    base = dict(frames=8, img_size=32, tubelet=2, patch=16, dim=32, depth=1, heads=4, region=(2, 1, 2),
                dec_dim=32, dec_depth=1, dec_heads=4)
    base.update(changes)
    return LGIFormerConfig(**base)


def test_full_pretraining_model_has_reference_parameter_count():
    with torch.device("meta"):
        model = MAEModel(preset("full"))
    assert count_parameters(model) == 92_760_192
    assert model.encoder_to_decoder.bias is None
    assert model.decoder_pred.out_features == 1536


def hand_targets(clip, tubelet, patch):
    """Explicit loops over tokens, channels and pixels; float64."""
    clip = clip.astype(np.float64)
    b_, c_, t_, h_, w_ = clip.shape
    appearance, motion = [], []
    for b in range(b_):
        app_b, mot_b = [], []
        for t in range(t_ // tubelet):
            for h in range(h_ // patch):
                for w in range(w_ // patch):
                    app = np.zeros((patch, patch, c_))
                    mot = np.zeros((tubelet - 1, patch, patch, c_))
                    for c in range(c_):
                        tube = clip[b, c, t * tubelet:(t + 1) * tubelet, h * patch:(h + 1) * patch,
                                    w * patch:(w + 1) * patch]
                        mean = tube.sum() / tube.size
                        std = np.sqrt(((tube - mean) ** 2).sum() / (tube.size - 1)) + 1e-6
                        normed = (tube - mean) / std
                        for i in range(patch):
                            for j in range(patch):
                                app[i, j, c] = normed[0, i, j]
                                for f in range(1, tubelet):
                                    mot[f - 1, i, j, c] = normed[f, i, j] - normed[0, i, j]
                    app_b.append(app.reshape(-1))
                    mot_b.append(mot.reshape(-1))
        appearance.append(app_b)
        motion.append(mot_b)
    return np.array(appearance), np.array(motion)


@pytest.mark.parametrize("tubelet", [2, 4])
def test_targets_equal_a_hand_computation(tubelet):
    cfg = small_cfg(tubelet=tubelet, patch=4, img_size=8, frames=8, region=(1, 1, 2))
    clip = torch.rand(2, 3, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    clip[0, :, :tubelet, :4, :4] = 0.25  # a flat tubelet: std 0, target 0
    appearance, motion = mae_targets(clip, cfg)
    want_app, want_mot = hand_targets(clip.numpy(), tubelet, 4)
    assert appearance.shape == (2, cfg.num_tokens, 3 * 16) and motion.shape == (2, cfg.num_tokens, (tubelet - 1) * 48)
    np.testing.assert_allclose(appearance.numpy(), want_app, atol=2e-5)
    np.testing.assert_allclose(motion.numpy(), want_mot, atol=2e-5)
    assert float(appearance[0, 0].abs().max()) == 0.0


def test_targets_use_the_tubelets_own_statistics_over_both_frames():
    cfg = small_cfg(patch=16, img_size=16, frames=2, region=(1, 1, 1))
    clip = torch.zeros(1, 3, 2, 16, 16)
    clip[:, :, 1] = 1.0  # frame 0 all 0, frame 1 all 1: mean 0.5, unbiased std sqrt(512 * 0.25 / 511)
    appearance, motion = mae_targets(clip, cfg)
    std = (128 / 511) ** 0.5 + 1e-6
    assert torch.allclose(appearance, torch.full_like(appearance, -0.5 / std))
    assert torch.allclose(motion, torch.full_like(motion, 1.0 / std))
    mean, s = tubelet_stats(clip, cfg)
    assert torch.allclose(mean, torch.full((1, 1, 3), 0.5)) and torch.allclose(s, torch.full((1, 1, 3), std))


def test_patchify_layout_and_unpatchify_frames():
    cfg = small_cfg()
    clip = torch.randn(2, 3, 8, 32, 32)
    tubes = patchify(clip, cfg)
    assert tubes.shape == (2, cfg.num_tokens, 2, 16, 16, 3)
    # token 5 = (t=1, h=0, w=1); value (frame 1, row 3, col 7, channel 2)
    assert tubes[1, 5, 1, 3, 7, 2] == clip[1, 2, 2 * 1 + 1, 0 * 16 + 3, 1 * 16 + 7]
    assert torch.equal(unpatchify_frames(tubes.flatten(2), cfg), clip)
    assert torch.equal(unpatchify_frames(tubes[:, :, 0].flatten(2), cfg), clip[:, :, 0::2])


def test_unnormalise_inverts_imagenet_normalisation():
    x = torch.zeros(1, 3, 1, 1, 1)
    assert unnormalise(x).flatten().tolist() == pytest.approx(list(IMAGENET_MEAN))
    one = torch.ones(1, 3, 1, 1, 1)
    expected = [m + s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert unnormalise(one).flatten().tolist() == pytest.approx(expected)


def loop_masked_mse(pred, target, mask):
    total, count = 0.0, 0
    for b in range(target.shape[0]):
        k = 0
        for n in range(target.shape[1]):
            if mask[b, n]:
                for d in range(target.shape[2]):
                    total += (float(pred[b, k, d]) - float(target[b, n, d])) ** 2
                    count += 1
                k += 1
    return total / count


def test_masked_mse_equals_loop_reference_and_is_zero_on_exact_prediction():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, [1, 4, 5, 9]] = True
    mask[1, [0, 2, 3, 7]] = True
    target = torch.randn(2, 10, 3, generator=g)
    pred = torch.randn(2, 4, 3, generator=g)
    assert masked_mse(pred, target, mask).item() == pytest.approx(loop_masked_mse(pred, target, mask), rel=1e-6)
    exact = target[mask].reshape(2, 4, 3)
    assert masked_mse(exact, target, mask).item() == 0.0
    # A full-size prediction counts only its masked rows.
    full = torch.randn(2, 10, 3, generator=g)
    full[mask] = target[mask]
    assert masked_mse(full, target, mask).item() == 0.0
    with pytest.raises(ValueError, match="masked rows"):
        masked_mse(torch.zeros(2, 3, 3), target, mask)


def test_mae_loss_weights_and_reference_equivalence():
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, :4] = True
    app, mot = torch.randn(2, 6, 5, generator=g), torch.randn(2, 6, 5, generator=g)
    pred = torch.randn(2, 4, 10, generator=g)
    loss, parts = mae_loss(pred, app, mot, mask)
    want_app = loop_masked_mse(pred[..., :5], app, mask)
    want_mot = loop_masked_mse(pred[..., 5:], mot, mask)
    assert parts["loss_appearance"].item() == pytest.approx(want_app, rel=1e-6)
    assert parts["loss_motion"].item() == pytest.approx(want_mot, rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * want_app + 0.5 * want_mot, rel=1e-6)
    # Equal widths at 0.5 / 0.5: the single MSE over all values the reference takes.
    assert loss.item() == pytest.approx(loop_masked_mse(pred, torch.cat([app, mot], -1), mask), rel=1e-6)
    weighted, _ = mae_loss(pred, app, mot, mask, w_app=0.2, w_mot=0.8)
    assert weighted.item() == pytest.approx(0.2 * want_app + 0.8 * want_mot, rel=1e-6)


def test_param_groups_exclude_rep_tokens_biases_and_norms_by_identity():
    model = MAEModel(small_cfg())
    wrapped = nn.Sequential(nn.Identity(), model)  # names now start with "1.", as "module." under DDP
    for net, prefix in ((model, ""), (wrapped, "1.")):
        decay, no_decay = param_groups(net, 0.05)
        assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
        names = {id(p): n for n, p in net.named_parameters()}
        skipped = {names[id(p)] for p in no_decay["params"]}
        decayed = {names[id(p)] for p in decay["params"]}
        assert prefix + "encoder.rep_tokens" in skipped
        assert prefix + "mask_token" in skipped
        assert prefix + "encoder.patch_embed.bias" in skipped
        assert prefix + "encoder.norm.weight" in skipped
        assert prefix + "encoder.blocks.0.local_attn.q_bias" in skipped
        assert prefix + "encoder.blocks.0.cross_norm_kv.weight" in skipped
        assert prefix + "decoder_norm.bias" in skipped
        assert decayed == {n for n, p in net.named_parameters()
                           if p.dim() >= 2 and not n.endswith(("rep_tokens", "mask_token"))}
        assert prefix + "encoder.patch_embed.weight" in decayed and prefix + "decoder_pred.weight" in decayed
        assert len(decayed) + len(skipped) == len(list(net.parameters()))


def test_tiny_pretraining_forward_backward_shapes():
    cfg = preset("tiny")
    model = MAEModel(cfg)
    mask = tube_window_mask(2, cfg, generator=torch.Generator().manual_seed(0), device="cpu")
    clip_01 = torch.rand(2, 3, cfg.frames, cfg.img_size, cfg.img_size)
    x = (clip_01 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    assert torch.allclose(unnormalise(x), clip_01, atol=1e-6)
    pred = model(x, mask)
    assert pred.shape == (2, 720, cfg.pred_dim) == (2, 720, 2 * 3 * 8 * 8)
    app, mot = mae_targets(clip_01, cfg)
    loss, parts = mae_loss(pred, app, mot, mask)
    loss.backward()
    assert set(parts) == {"loss_appearance", "loss_motion"}
    # Every parameter gets a gradient, so DDP needs no find_unused_parameters.
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert split_prediction(pred, cfg)[1].shape == (2, 720, cfg.motion_dim)


def test_decoder_predicts_masked_tokens_in_raster_order():
    torch.manual_seed(0)
    cfg = small_cfg()
    model = MAEModel(cfg).eval()
    model.decoder_blocks = nn.ModuleList()  # each output then depends on its own position only
    mask = tube_window_mask(2, cfg, 0.5, generator=torch.Generator().manual_seed(3), device="cpu")
    latent = torch.randn(2, int((~mask[0]).sum()), cfg.dim)
    pred = model.forward_decoder(latent, mask)
    for b in range(2):
        for k, n in enumerate(mask[b].nonzero().flatten().tolist()):
            expected = model.decoder_pred(model.decoder_norm(model.mask_token[0, 0] + model.decoder_pos_embed[n]))
            assert torch.allclose(pred[b, k], expected, atol=1e-6)


def test_visible_tokens_meet_their_own_decoder_positions():
    torch.manual_seed(0)
    cfg = small_cfg()
    model = MAEModel(cfg).eval()
    mask = tube_window_mask(1, cfg, 0.5, generator=torch.Generator().manual_seed(5), device="cpu")
    latent = torch.randn(1, int((~mask[0]).sum()), cfg.dim)
    captured = {}
    model.decoder_blocks = nn.ModuleList([nn.Identity()])
    model.decoder_blocks[0].register_forward_hook(lambda m, args, out: captured.setdefault("x", args[0]))
    model.forward_decoder(latent, mask)
    visible_idx = (~mask[0]).nonzero().flatten()
    expected = model.encoder_to_decoder(latent[0]) + model.decoder_pos_embed[visible_idx]
    assert torch.allclose(captured["x"][0, :len(visible_idx)], expected, atol=1e-6)


def test_bf16_autocast_keeps_the_residual_stream_and_loss_in_fp32():
    cfg = preset("tiny")
    model = MAEModel(cfg)
    mask = tube_window_mask(1, cfg, generator=torch.Generator().manual_seed(0), device="cpu")
    clip_01 = torch.rand(1, 3, cfg.frames, cfg.img_size, cfg.img_size)
    seen = []
    model.encoder.blocks[1].register_forward_hook(lambda m, args, out: seen.append((args[1].dtype, out[1].dtype)))
    app, mot = mae_targets(clip_01, cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = model(clip_01 * 4 - 2, mask)
        loss, _ = mae_loss(pred, app, mot, mask)
    assert pred.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert seen == [(torch.float32, torch.float32)]
    assert app.dtype == torch.float32


def test_tiny_model_fits_one_batch():
    torch.manual_seed(0)
    cfg = preset("tiny")
    model = MAEModel(cfg)
    g = torch.Generator().manual_seed(1)
    # Smooth clips with a moving gradient, so both targets have structure to learn.
    ramp = torch.linspace(0, 1, cfg.img_size)
    frames = torch.stack([torch.roll(ramp[None, :] * ramp[:, None], i, dims=1) for i in range(cfg.frames)])
    clip_01 = frames[None, None].expand(2, 3, -1, -1, -1) * torch.rand(2, 3, 1, 1, 1, generator=g)
    mask = tube_window_mask(2, cfg, generator=g, device="cpu")
    app, mot = mae_targets(clip_01, cfg)
    zero_loss, _ = mae_loss(torch.zeros(2, 720, cfg.pred_dim), app, mot, mask)
    optimiser = torch.optim.AdamW(param_groups(model, 0.05), lr=2e-3, betas=(0.9, 0.95))
    for _ in range(25):
        loss, _ = mae_loss(model(clip_01 * 4 - 2, mask), app, mot, mask)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * zero_loss.item()
