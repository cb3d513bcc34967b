"""BatchAugment: per-sample parameter statistics, and each effect checked on pixels."""
import math

import pytest
import torch
import torchvision.transforms.functional as TF

from sslfer_core.gpu_augment import (IMAGENET_MEAN, IMAGENET_STD, JITTER_OPS, MASK_REGIONS, AugmentConfig,
                                     BatchAugment, cutmix_inner_face)

FLAGS = ("flip", "jitter", "blur", "gray", "mask")


def face_landmarks(size: float) -> torch.Tensor:
    """A plausible 68-point layout in a size x size frame, regions well apart."""
    def ring(cx, cy, rx, ry, count):
        a = torch.linspace(0, 2 * math.pi, count + 1)[:-1]
        return torch.stack([cx + rx * torch.cos(a), cy + ry * torch.sin(a)], dim=1)
    jaw = torch.stack([torch.linspace(12, 100, 17), 95 - 20 * torch.cos(torch.linspace(0, math.pi, 17))], 1)
    brows = torch.stack([torch.cat([torch.linspace(25, 50, 5), torch.linspace(62, 87, 5)]), torch.full((10,), 32.0)], 1)
    nose = torch.stack([torch.cat([torch.full((4,), 56.0), torch.linspace(48, 64, 5)]),
                        torch.cat([torch.linspace(42, 60, 4), torch.full((5,), 64.0)])], 1)
    pts = torch.cat([jaw, brows, nose, ring(38, 44, 9, 3, 6), ring(74, 44, 9, 3, 6),
                     ring(56, 82, 15, 6, 12), ring(56, 82, 9, 3, 8)])
    return pts * (size / 112.0)


def random_images(n, size, seed=0):
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def plain_params(aug, n, **overrides):
    """Parameters with every random effect off and crop at the origin, then the given overrides."""
    params = aug.sample_params(n, "cpu", torch.Generator().manual_seed(123))
    for flag in FLAGS:
        params[flag] = torch.zeros(n, dtype=torch.bool)
    params["crop_x"] = torch.zeros(n, dtype=torch.long)
    params["crop_y"] = torch.zeros(n, dtype=torch.long)
    for key, value in overrides.items():
        params[key] = torch.as_tensor(value)
    return params


def as_float(images):
    return images.permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.parametrize("config", [AugmentConfig(), AugmentConfig(flip_p=0.1, jitter_p=0.3, blur_p=0.9,
                                                                   gray_p=0.7, landmark_mask_p=0.05)])
def test_parameter_frequencies_match_probabilities(config):
    n = 4000
    params = BatchAugment(config).sample_params(n, "cpu", torch.Generator().manual_seed(7))

    def within_binomial(hits, trials, p):
        return abs(hits / trials - p) <= 4 * math.sqrt(p * (1 - p) / trials) + 1e-12

    expected = {"flip": config.flip_p, "jitter": config.jitter_p, "blur": config.blur_p,
                "gray": config.gray_p, "mask": config.landmark_mask_p}
    for flag, p in expected.items():
        assert params[flag].dtype == torch.bool and params[flag].shape == (n,)
        assert within_binomial(int(params[flag].sum()), n, p), flag
    masked = params["mask_region"][params["mask"]]
    for region in range(len(MASK_REGIONS)):
        assert within_binomial(int((masked == region).sum()), len(masked), 1 / 3), MASK_REGIONS[region][0]
    b, c, s, h = config.jitter
    for name, low, high in (("brightness", 1 - b, 1 + b), ("contrast", 1 - c, 1 + c),
                            ("saturation", 1 - s, 1 + s), ("hue", -h, h)):
        assert params[name].min() >= low and params[name].max() <= high
        assert params[name].min() < low + 0.01 * (high - low) and params[name].max() > high - 0.01 * (high - low)
    assert params["sigma"].min() >= config.blur_sigma[0] and params["sigma"].max() <= config.blur_sigma[1]
    span = config.resize - config.crop
    assert set(params["crop_x"].tolist()) == set(range(span + 1)) == set(params["crop_y"].tolist())
    assert torch.equal(params["jitter_order"].sort(dim=1).values, torch.arange(4).expand(n, 4))
    # Every op shows up first in about a quarter of the rows: the order really is random.
    first = params["jitter_order"][:, 0]
    assert all(within_binomial(int((first == op).sum()), n, 0.25) for op in range(len(JITTER_OPS)))


def test_parameters_and_outputs_differ_per_sample_in_one_batch():
    aug = BatchAugment()
    n = 64
    params = aug.sample_params(n, "cpu", torch.Generator().manual_seed(1))
    assert len(set(params["brightness"].tolist())) == n and len(set(params["sigma"].tolist())) == n
    assert 0 < int(params["flip"].sum()) < n and len(set(params["crop_x"].tolist())) > 5
    image = random_images(1, 128)
    out = aug(image.expand(n, -1, -1, -1), face_landmarks(128).expand(n, -1, -1), torch.Generator().manual_seed(2))
    flat = out.flatten(1)
    distances = torch.cdist(flat, flat) + torch.eye(n) * 1e9
    assert distances.min() > 1.0


def test_seeded_generator_is_deterministic():
    aug = BatchAugment()
    images, landmarks = random_images(6, 128), face_landmarks(128).expand(6, -1, -1)
    first = aug(images, landmarks, torch.Generator().manual_seed(5))
    again = aug(images, landmarks, torch.Generator().manual_seed(5))
    other = aug(images, landmarks, torch.Generator().manual_seed(6))
    assert first.shape == (6, 3, 112, 112) and first.dtype == torch.float32
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_crop_then_normalise_without_other_effects():
    aug = BatchAugment()
    images = random_images(3, 128)
    params = plain_params(aug, 3, crop_x=[0, 16, 5], crop_y=[16, 0, 9])
    out = aug.apply_params(images, None, params)
    for i, (x, y) in enumerate([(0, 16), (16, 0), (5, 9)]):
        crop = as_float(images[i:i + 1, y:y + 112, x:x + 112])[0]
        expected = (crop - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
        torch.testing.assert_close(out[i], expected)


def test_flipped_sample_is_the_mirrored_image():
    aug = BatchAugment(AugmentConfig(normalize=False))
    images = random_images(4, 128)
    offsets = dict(crop_x=[0, 3, 16, 9], crop_y=[2, 0, 11, 16])
    plain = aug.apply_params(images, None, plain_params(aug, 4, **offsets))
    flipped = aug.apply_params(images, None, plain_params(aug, 4, flip=[True, False, True, True], **offsets))
    assert torch.equal(flipped[[0, 2, 3]], plain[[0, 2, 3]].flip(-1))
    assert torch.equal(flipped[1], plain[1])


def masked_pixels(aug, images, landmarks, region, **overrides):
    n = images.shape[0]
    before = aug.apply_params(images, landmarks, plain_params(aug, n, **overrides))
    after = aug.apply_params(images, landmarks, plain_params(aug, n, mask=[True] * n, mask_region=[region] * n,
                                                               **overrides))
    return before, after, (before != after).any(dim=1)


@pytest.mark.parametrize("region", range(len(MASK_REGIONS)))
def test_mask_fills_an_ellipse_covering_the_region_with_the_mean_colour(region):
    aug = BatchAugment(AugmentConfig(resize=112, crop=112, normalize=False))
    images, landmarks = random_images(2, 112, seed=region), face_landmarks(112).expand(2, -1, -1)
    before, after, changed = masked_pixels(aug, images, landmarks, region)
    idx = list(MASK_REGIONS[region][1])
    pts = landmarks[0, idx]
    for i in range(2):
        fill = before[i].mean(dim=(1, 2))
        assert torch.allclose(after[i][:, changed[i]], fill[:, None].expand(-1, int(changed[i].sum())), atol=1e-6)
        # Every landmark pixel of the region is masked, and nothing far outside its box is.
        cols, rows = pts[:, 0].round().long(), pts[:, 1].round().long()
        assert changed[i][rows, cols].all()
        ys, xs = changed[i].nonzero(as_tuple=True)
        low, high = pts.min(dim=0).values, pts.max(dim=0).values
        centre, half = (low + high) / 2, (high - low) / 2 * math.sqrt(2) + 1
        assert ((xs - centre[0]).abs() <= half[0]).all() and ((ys - centre[1]).abs() <= half[1]).all()
        # The other regions' landmarks are untouched.
        for other, (_, other_idx) in enumerate(MASK_REGIONS):
            if other != region:
                q = landmarks[0, list(other_idx)].round().long()
                assert not changed[i][q[:, 1], q[:, 0]].any()


def test_mask_follows_resize_crop_and_flip():
    aug = BatchAugment(AugmentConfig(resize=128, crop=112, normalize=False, mask_fill="zero"))
    images, landmarks = random_images(1, 64, seed=3), face_landmarks(64)[None]
    offsets = dict(crop_x=[7], crop_y=[3])
    _, after, changed = masked_pixels(aug, images, landmarks, 2, **offsets)  # mouth
    expected = (landmarks[0, 48:68] + 0.5) * 2.0 - 0.5 - torch.tensor([7.0, 3.0])
    cols, rows = expected[:, 0].round().long(), expected[:, 1].round().long()
    assert changed[0][rows, cols].all() and (after[0][:, rows, cols] == 0).all()
    assert not changed[0][:40].any()  # the mouth mask stays in the lower face
    # Exactly the documented ellipse (through the corners of the landmarks' box) in output pixel coordinates.
    low, high = expected.min(dim=0).values, expected.max(dim=0).values
    centre, semi = (low + high) / 2, (high - low) / 2 * math.sqrt(2)
    grid = torch.arange(112.0)
    ellipse = ((grid[None, :] - centre[0]) / semi[0]) ** 2 + ((grid[:, None] - centre[1]) / semi[1]) ** 2 <= 1
    assert torch.equal(changed[0], ellipse)
    # Flipped: the same physical region is masked, mirrored with the image (masking "before" the flip).
    _, flipped, _ = masked_pixels(aug, images, landmarks, 0, flip=[True], **offsets)
    _, unflipped, _ = masked_pixels(aug, images, landmarks, 0, **offsets)
    assert torch.equal(flipped, unflipped.flip(-1))


def test_mask_needs_landmarks_and_skips_non_finite_ones():
    aug = BatchAugment(AugmentConfig(normalize=False))
    images = random_images(2, 128)
    landmarks = face_landmarks(128).expand(2, -1, -1).clone()
    landmarks[1, 40] = float("nan")  # right eye unknown for sample 1
    on = plain_params(aug, 2, mask=[True, True], mask_region=[0, 0])
    off = plain_params(aug, 2)
    assert torch.equal(aug.apply_params(images, None, on), aug.apply_params(images, None, off))
    masked = aug.apply_params(images, landmarks, on)
    plain = aug.apply_params(images, landmarks, off)
    assert not torch.equal(masked[0], plain[0]) and torch.equal(masked[1], plain[1])


def test_grayscale_rows_have_equal_channels():
    aug = BatchAugment(AugmentConfig(normalize=False))
    out = aug.apply_params(random_images(4, 128), None, plain_params(aug, 4, gray=[True, False, True, False]))
    for i, gray in enumerate([True, False, True, False]):
        same = torch.allclose(out[i, 0], out[i, 1]) and torch.allclose(out[i, 1], out[i, 2])
        assert same == gray


def test_jitter_matches_torchvision_ops_in_each_samples_order():
    aug = BatchAugment(AugmentConfig(resize=32, crop=32, normalize=False))
    images = random_images(4, 32, seed=9)
    torchvision_ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    params = plain_params(aug, 4, jitter=[True] * 4, brightness=[0.7, 1.3, 1.0, 0.9],
                          contrast=[1.4, 0.6, 1.1, 0.8], saturation=[0.6, 1.2, 1.4, 1.0],
                          hue=[0.2, -0.15, 0.05, -0.2],
                          jitter_order=[[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])
    out = aug.apply_params(images, None, params)
    for i in range(4):
        expected = as_float(images[i:i + 1])[0]
        for op in params["jitter_order"][i].tolist():
            expected = torchvision_ops[op](expected, float(params[JITTER_OPS[op]][i]))
        torch.testing.assert_close(out[i], expected, atol=2e-4, rtol=0)
    # A sample whose jitter flag is off keeps its colours whatever its factors say.
    params["jitter"] = torch.tensor([False, True, True, True])
    torch.testing.assert_close(aug.apply_params(images, None, params)[0], as_float(images[:1])[0])


def test_blur_matches_torchvision_with_a_sigma_per_sample():
    aug = BatchAugment(AugmentConfig(resize=40, crop=40, normalize=False))
    images = random_images(3, 40, seed=4)
    sigmas = [0.1, 0.8, 2.0]
    out = aug.apply_params(images, None, plain_params(aug, 3, blur=[True] * 3, sigma=sigmas))
    for i, sigma in enumerate(sigmas):
        expected = TF.gaussian_blur(as_float(images[i:i + 1])[0], [3, 3], [sigma, sigma])
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
    assert (out[2] - as_float(images[2:3])[0]).abs().mean() > 0.05  # sigma 2 visibly smooths noise


def test_bad_inputs_are_refused():
    aug = BatchAugment()
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.rand(2, 128, 128, 3), None)
    with pytest.raises(ValueError, match="68"):
        aug(random_images(2, 128), torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match="crop"):
        AugmentConfig(resize=100, crop=112)


def test_cutmix_pastes_the_inner_face_box_and_nothing_else():
    target, source = random_images(2, 112, seed=1), random_images(2, 112, seed=2)
    landmarks = face_landmarks(112).expand(2, -1, -1).clone()
    landmarks[1] += torch.tensor([5.3, -4.6])  # second source's face sits elsewhere
    landmarks[1, :17] = 0.0  # jaw points must not matter
    out = cutmix_inner_face(target, source, landmarks)
    for i in range(2):
        inner = landmarks[i, 17:]
        x0, y0 = inner.min(dim=0).values.floor().long().tolist()
        x1, y1 = inner.max(dim=0).values.ceil().long().tolist()
        inside = torch.zeros(112, 112, dtype=torch.bool)
        inside[y0:y1 + 1, x0:x1 + 1] = True
        assert torch.equal(out[i][inside], source[i][inside])
        assert torch.equal(out[i][~inside], target[i][~inside])
    nan_landmarks = landmarks.clone()
    nan_landmarks[0, 30] = float("nan")
    assert torch.equal(cutmix_inner_face(target, source, nan_landmarks)[0], target[0])


def test_resized_crop_of_the_whole_square_face_is_the_face_and_its_mirror():
    aug = BatchAugment(AugmentConfig(resize=40, crop=40, crop_area=(1.0, 1.0), normalize=False))
    images = random_images(2, 40, seed=5)
    params = plain_params(aug, 2, flip=[False, True], box_log_aspect=[0.5, 0.5])  # aspect exactly 1
    out = aug.apply_params(images, None, params)
    assert torch.allclose(out[0], as_float(images)[0], atol=1e-5)
    assert torch.allclose(out[1], as_float(images)[1].flip(-1), atol=1e-5)


def test_resized_crop_boxes_cover_the_asked_area_and_landmarks_follow_the_pixels():
    size, crop, n = 56, 48, 48
    aug = BatchAugment(AugmentConfig(resize=size, crop=crop, crop_area=(0.4, 0.9), normalize=False))
    points = torch.randint(10, 46, (n, 2), generator=torch.Generator().manual_seed(2))
    images = torch.zeros(n, size, size, 3, dtype=torch.uint8)
    images[torch.arange(n), points[:, 1], points[:, 0]] = 255  # one bright pixel per image
    landmarks = points[:, None].float().expand(n, 68, 2)
    params = plain_params(aug, n, flip=torch.arange(n) % 2 == 1)
    for key in ("box_area", "box_log_aspect", "box_x", "box_y"):
        params[key] = torch.rand(n, generator=torch.Generator().manual_seed(len(key)))
    out, moved = aug._resized_crop_and_flip(images, landmarks, params)
    assert out.shape == (n, 3, crop, crop)
    grid = torch.arange(crop, dtype=torch.float32)
    seen = 0
    for i in range(n):
        weight = out[i, 0]
        if weight.sum() < 0.05 or weight[0].any() or weight[-1].any() or weight[:, 0].any() or weight[:, -1].any():
            continue  # the dot fell outside the box or on its border
        centroid = torch.stack([(weight.sum(0) * grid).sum(), (weight.sum(1) * grid).sum()]) / weight.sum()
        assert torch.allclose(centroid, moved[i, 0], atol=0.3), (i, centroid, moved[i, 0])
        seen += 1
    assert seen >= n // 3
    # The landmark map's zoom gives each box's side: area within the asked fraction, aspect within 3/4..4/3.
    probe = torch.tensor([[0.0, 0.0], [10.0, 10.0]]).expand(n, 2, 2)
    _, mapped = aug._resized_crop_and_flip(images, torch.cat([probe, landmarks[:, 2:]], 1), params)
    zoom = (mapped[:, 1] - mapped[:, 0]).abs() / 10.0
    width, height = crop / zoom[:, 0], crop / zoom[:, 1]
    area = width * height / size ** 2
    assert area.min() >= 0.4 - 1e-3 and area.max() <= 0.9 + 1e-3 and area.max() - area.min() > 0.3
    assert (width / height).min() >= 0.75 - 1e-3 and (width / height).max() <= 4 / 3 + 1e-3


@pytest.mark.parametrize("bad", [(0.0, 1.0), (0.8, 0.5), (0.5, 1.2), (0.5,)])
def test_bad_crop_areas_are_refused(bad):
    with pytest.raises(ValueError, match="crop_area"):
        AugmentConfig(crop_area=bad)


@pytest.mark.parametrize("side, size", [(92, 96), (92, 64)])
def test_resize_matches_antialiased_bilinear_when_enlarging_and_shrinking(side, size):
    # Enlarging skips antialiasing (3x cheaper on CPU); it must still give the antialiased pixels.
    images = torch.randint(0, 256, (4, side, side, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    resized, _ = BatchAugment(AugmentConfig(resize=size, crop=48))._resize(images, None)
    expected = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear",
                                               align_corners=False, antialias=True).permute(0, 2, 3, 1)
    torch.testing.assert_close(resized, expected, atol=1e-3, rtol=0)
