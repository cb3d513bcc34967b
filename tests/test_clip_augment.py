"""Per-clip augmentation: one crop per clip, the same on every frame (checked against hand crops), the
reference's multi-scale crop sizes and fixed offsets, bilinear resampling as torch's antialiased
interpolate, exact ImageNet normalisation, reproducible from the generator."""
import pytest
import torch
import torch.nn.functional as F

from sslfer_core.clip_augment import (
    ClipAugmentConfig, apply_clip_params, augment_clips, crop_pairs, fixed_offsets, sample_clip_params,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)


def _clips(b=3, t=4, h=40, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, h, w, 3), dtype=torch.uint8, generator=g)


def test_reference_crop_sizes_and_pairs_for_a_160_px_face():
    # int(160 * (1, .875, .75, .66)) = 160, 140, 120, 105; pairs whose scale indices differ by <= 1.
    assert crop_pairs(ClipAugmentConfig(size=160), 160, 160) == [
        (160, 160), (140, 160), (160, 140), (140, 140), (120, 140), (140, 120), (120, 120), (105, 120),
        (120, 105), (105, 105)]
    # Sides less than 3 px from the output size snap to it: int(0.875 * 128) = 112 -> 110, int(.66 * 100) = 66 -> 64.
    assert sorted({w for w, _ in crop_pairs(ClipAugmentConfig(size=110), 128, 128)}) == [84, 96, 110, 128]
    assert crop_pairs(ClipAugmentConfig(size=64, max_distort=0), 100, 100) == [(100, 100), (87, 87), (75, 75), (64, 64)]
    assert crop_pairs(ClipAugmentConfig(size=63, max_distort=0), 100, 100)[-1] == (66, 66)


def test_fixed_offsets_are_the_thirteen_quarter_grid_positions():
    q = (160 - 105) // 4  # 13
    expected = {(0, 0), (4 * q, 0), (0, 4 * q), (4 * q, 4 * q), (2 * q, 2 * q), (0, 2 * q), (4 * q, 2 * q),
                (2 * q, 4 * q), (2 * q, 0), (q, q), (3 * q, q), (q, 3 * q), (3 * q, 3 * q)}
    cfg = ClipAugmentConfig(size=160)
    assert set(fixed_offsets(cfg, 160, 160, 105, 105)) == expected
    five = fixed_offsets(ClipAugmentConfig(more_fix_crop=False), 160, 160, 105, 105)
    assert five == [(0, 0), (52, 0), (0, 52), (52, 52), (26, 26)]


def test_sampled_crops_use_only_reference_sizes_and_offsets_and_cover_them():
    cfg = ClipAugmentConfig(size=160)
    p = sample_clip_params(4000, 160, 160, cfg, generator=torch.Generator().manual_seed(1))
    boxes = set(zip(p["x"].tolist(), p["y"].tolist(), p["w"].tolist(), p["h"].tolist()))
    allowed = {(x, y, w, h) for w, h in crop_pairs(cfg, 160, 160) for x, y in fixed_offsets(cfg, 160, 160, w, h)}
    assert boxes <= allowed
    assert {(w, h) for _, _, w, h in boxes} == set(crop_pairs(cfg, 160, 160))
    assert {(x, y) for x, y, w, h in boxes if (w, h) == (105, 105)} == set(fixed_offsets(cfg, 160, 160, 105, 105))
    assert not p["flip"].any()  # the reference pretrains without flips
    free = sample_clip_params(2000, 50, 70, ClipAugmentConfig(size=32, fix_crop=False),
                              generator=torch.Generator().manual_seed(2))
    assert bool(((free["x"] >= 0) & (free["x"] + free["w"] <= 70) & (free["y"] >= 0)
                 & (free["y"] + free["h"] <= 50)).all())
    assert len(set(free["x"].tolist())) > 15  # offsets spread over the slack, not a fixed grid


def test_every_frame_gets_its_clips_crop_as_a_hand_crop():
    # 40 px frames, output 30: the 0.75 scale gives a 30 x 30 crop, which is copied pixel for pixel.
    clips = _clips(b=4, t=5)
    cfg = ClipAugmentConfig(size=30, scales=(0.75,))
    params = sample_clip_params(4, 40, 40, cfg, generator=torch.Generator().manual_seed(3))
    _, clip01 = apply_clip_params(clips, params, cfg)
    assert clip01.shape == (4, 3, 5, 30, 30)
    for b in range(4):
        x, y = int(params["x"][b]), int(params["y"][b])
        hand = clips[b, :, y:y + 30, x:x + 30].permute(3, 0, 1, 2).float() / 255.0  # (3, T, 30, 30)
        torch.testing.assert_close(clip01[b], hand, rtol=0, atol=1e-6)
    assert len({(int(params["x"][b]), int(params["y"][b])) for b in range(4)}) > 1


@pytest.mark.parametrize("size", [24, 50, 96])  # shrink (antialiased), mixed, enlarge
def test_resampling_equals_torch_antialiased_bilinear_per_frame(size):
    clips = _clips(b=3, t=3, h=48, w=56)
    cfg = ClipAugmentConfig(size=size, flip_p=0.5)
    params = sample_clip_params(3, 48, 56, cfg, generator=torch.Generator().manual_seed(4))
    params["flip"] = torch.tensor([True, False, True])
    _, clip01 = apply_clip_params(clips, params, cfg)
    for b in range(3):
        x, y, w, h = (int(params[k][b]) for k in "xywh")
        crop = clips[b, :, y:y + h, x:x + w].permute(0, 3, 1, 2).float() / 255.0  # (T, 3, h, w)
        ref = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if params["flip"][b]:
            ref = ref.flip(-1)
        torch.testing.assert_close(clip01[b].permute(1, 0, 2, 3), ref, rtol=0, atol=2e-5)


def test_identical_frames_stay_identical_and_normalisation_is_exact():
    frame = _clips(b=2, t=1, h=36, w=36)
    clips = frame.expand(-1, 6, -1, -1, -1).contiguous()
    x, clip01 = augment_clips(clips, ClipAugmentConfig(size=20, flip_p=0.5), torch.Generator().manual_seed(5))
    assert x.dtype == clip01.dtype == torch.float32 and x.shape == (2, 3, 6, 20, 20)
    assert torch.equal(clip01, clip01[:, :, :1].expand_as(clip01))
    assert float(clip01.min()) >= 0.0 and float(clip01.max()) <= 1.0
    torch.testing.assert_close(x, (clip01 - MEAN) / STD, rtol=0, atol=1e-6)


def test_same_generator_seed_same_output_and_autocast_keeps_float32():
    clips = _clips()
    cfg = ClipAugmentConfig(size=28, flip_p=0.5)
    a = augment_clips(clips, cfg, torch.Generator().manual_seed(6))
    b = augment_clips(clips, cfg, torch.Generator().manual_seed(6))
    c = augment_clips(clips, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = augment_clips(clips, cfg, torch.Generator().manual_seed(6))
    assert d[1].dtype == torch.float32 and torch.equal(d[1], a[1])


def test_flip_mirrors_the_crop():
    clips = _clips(b=2, t=2)
    cfg = ClipAugmentConfig(size=30, scales=(0.75,))
    params = sample_clip_params(2, 40, 40, cfg, generator=torch.Generator().manual_seed(8))
    _, plain = apply_clip_params(clips, {**params, "flip": torch.tensor([False, False])}, cfg)
    _, flipped = apply_clip_params(clips, {**params, "flip": torch.tensor([True, False])}, cfg)
    assert torch.equal(flipped[0], plain[0].flip(-1)) and torch.equal(flipped[1], plain[1])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\) uint8"):
        augment_clips(torch.zeros(2, 4, 8, 8, 3), ClipAugmentConfig(size=8))
    for kwargs in ({"size": 0}, {"scales": ()}, {"scales": (1.2,)}, {"flip_p": 2.0}, {"max_distort": -1}):
        with pytest.raises(ValueError):
            ClipAugmentConfig(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_runs_on_the_clips_device_and_matches_the_cpu():
    clips = _clips()
    cfg = ClipAugmentConfig(size=32, flip_p=0.5)
    params = sample_clip_params(3, 40, 40, cfg, generator=torch.Generator().manual_seed(9))
    cpu = apply_clip_params(clips, params, cfg)
    gpu = apply_clip_params(clips.cuda(), {k: v.cuda() for k, v in params.items()}, cfg)
    assert gpu[0].device.type == "cuda"
    torch.testing.assert_close(gpu[1].cpu(), cpu[1], rtol=0, atol=2e-3)  # TF32 matmuls allowed
    out = augment_clips(clips.cuda(), cfg, torch.Generator(device="cuda").manual_seed(0))
    assert out[0].device.type == "cuda"
