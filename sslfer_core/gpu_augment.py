"""Batched SimCLR-style augmentation for aligned face crops, with per-sample random parameters and
no per-image Python loop; runs on whatever device the images are on (CPU included).

Pipeline (docs/method.md has the definitions and the reasons for each choice):
resize -> random crop (fixed size, or a random-resized box when crop_area is set) + horizontal flip
-> landmark-region mask -> colour jitter (random order)
-> grayscale -> Gaussian blur -> ImageNet normalisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision
# dlib 68-point indices; "right"/"left" are the subject's (36-41 appears on the image's left).
MASK_REGIONS = (("right_eye", tuple(range(36, 42))), ("left_eye", tuple(range(42, 48))),
                ("mouth", tuple(range(48, 68))))
INNER_FACE = slice(17, 68)  # brows, eyes, nose, mouth
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
MASK_FILLS = ("mean", "zero")


def valid_crop_area(area) -> bool:
    """A random-resized crop's area range: (lo, hi) with 0 < lo <= hi <= 1."""
    return len(area) == 2 and 0 < area[0] <= area[1] <= 1


@dataclass(frozen=True)
class AugmentConfig:
    resize: int = 128
    crop: int = 112
    flip_p: float = 0.5
    jitter: tuple = (0.4, 0.4, 0.4, 0.2)  # brightness, contrast, saturation, hue strengths
    jitter_p: float = 0.8
    blur_p: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)
    blur_kernel: int = 3
    gray_p: float = 0.2
    landmark_mask_p: float = 0.8
    normalize: bool = True
    mask_fill: str = "mean"  # "mean": the image's mean colour; "zero": black
    # None: a crop x crop window of the resized face. (lo, hi): SimCLR's random-resized crop, a box of
    # lo..hi of the resized face's area, aspect 3/4..4/3, resampled to crop x crop.
    crop_area: tuple | None = None

    def __post_init__(self):
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop}, resize={self.resize}")
        for name in ("flip_p", "jitter_p", "blur_p", "gray_p", "landmark_mask_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
            raise ValueError(f"jitter must be 4 non-negative strengths with hue <= 0.5, got {self.jitter}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd and positive, got {self.blur_kernel}")
        if not 0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"blur_sigma must be 0 < low <= high, got {self.blur_sigma}")
        if self.crop_area is not None and not valid_crop_area(self.crop_area):
            raise ValueError(f"crop_area must be (lo, hi) with 0 < lo <= hi <= 1, got {self.crop_area}")
        if self.mask_fill not in MASK_FILLS:
            raise ValueError(f"mask_fill must be one of {MASK_FILLS}, got {self.mask_fill!r}")


def _gray(x: Tensor) -> Tensor:
    """(N,3,H,W) -> (N,1,H,W) luma."""
    w = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor*x + (1-factor)*other per sample, clamped to [0, 1] as torchvision does."""
    f = factor.view(-1, 1, 1, 1)
    return (other + f * (x - other)).clamp_(0.0, 1.0)


def _adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * f.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _gray(x), f)


def _adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue by shift (fraction of a turn) per sample; S and V are kept."""
    r, g, b = x.unbind(dim=1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe).remainder(6.0),
                      torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = (hue / 6.0 + shift.view(-1, 1, 1)).remainder(1.0)
    # HSV -> RGB in closed form: channel with offset n is V - V*S*clamp(min(k, 4-k), 0, 1), k = (n + 6H) mod 6.
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = (offsets + 6.0 * hue[:, None]).remainder(6.0)
    return maxc[:, None] - delta[:, None] * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


_JITTER_FUNCS = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)


def _gaussian_blur(x: Tensor, sigma: Tensor, kernel: int) -> Tensor:
    """Separable blur with one kernel per sample (grouped conv), reflect padding as torchvision."""
    n, c, h, w = x.shape
    radius = kernel // 2
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    weights = torch.exp(-(t[None] ** 2) / (2.0 * sigma[:, None].to(x.dtype) ** 2))
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, k)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, weights.view(n * c, 1, 1, kernel), groups=n * c)
    y = F.conv2d(y, weights.view(n * c, 1, kernel, 1), groups=n * c)
    return y.view(n, c, h, w)


def _region_ellipses(landmarks: Tensor, region: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre (N,2), semi-axes (N,2) and validity (N,) of the axis-aligned ellipse through the corners of
    the chosen region's landmark box: the smallest such ellipse containing the whole box."""
    lows, highs = [], []
    for _, idx in MASK_REGIONS:
        pts = landmarks[:, list(idx)]
        lows.append(pts.amin(dim=1))
        highs.append(pts.amax(dim=1))
    pick = region.view(-1, 1, 1).expand(-1, 1, 2)
    low = torch.stack(lows, dim=1).gather(1, pick).squeeze(1)
    high = torch.stack(highs, dim=1).gather(1, pick).squeeze(1)
    valid = torch.isfinite(low).all(dim=1) & torch.isfinite(high).all(dim=1)
    centre = (low + high) / 2
    semi = ((high - low) / 2 * math.sqrt(2.0)).clamp(min=1.0)  # >= 1 px so a flat eye still masks
    return centre, semi, valid


class BatchAugment:
    """Random augmentation of a uint8 channels-last batch; see the module docstring for the order."""

    def __init__(self, config: AugmentConfig = AugmentConfig()):
        self.config = config

    def sample_params(self, n: int, device, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Every random draw for n samples. The same draws are made whatever the probabilities say, so a
        seeded generator gives the same stream whichever effects end up applied."""
        cfg = self.config
        draw_device = generator.device if generator is not None else torch.device(device)

        def uniform(*shape):
            return torch.rand(*shape, generator=generator, device=draw_device)

        def integers(high):
            return torch.randint(0, high, (n,), generator=generator, device=draw_device)

        def factor(strength):
            low = max(0.0, 1.0 - strength)
            return low + (1.0 + strength - low) * uniform(n)

        span = cfg.resize - cfg.crop + 1
        b, c, s, h = cfg.jitter
        lo, hi = cfg.blur_sigma
        params = {
            "crop_x": integers(span),
            "crop_y": integers(span),
            "mask": uniform(n) < cfg.landmark_mask_p,
            "mask_region": integers(len(MASK_REGIONS)),
            "flip": uniform(n) < cfg.flip_p,
            "jitter": uniform(n) < cfg.jitter_p,
            "brightness": factor(b),
            "contrast": factor(c),
            "saturation": factor(s),
            "hue": (2.0 * uniform(n) - 1.0) * h,
            "jitter_order": uniform(n, len(JITTER_OPS)).argsort(dim=1),
            "gray": uniform(n) < cfg.gray_p,
            "blur": uniform(n) < cfg.blur_p,
            "sigma": lo + (hi - lo) * uniform(n),
            # random-resized crop: area fraction, log aspect ratio, box position (drawn last, so the
            # draws above keep their values whether or not crop_area is set)
            "box_area": uniform(n),
            "box_log_aspect": uniform(n),
            "box_x": uniform(n),
            "box_y": uniform(n),
        }
        return {k: v.to(device) for k, v in params.items()}

    def __call__(self, images: Tensor, landmarks: Tensor | None,
                 generator: torch.Generator | None = None) -> Tensor:
        params = self.sample_params(images.shape[0], images.device, generator)
        return self.apply_params(images, landmarks, params)

    def apply_params(self, images: Tensor, landmarks: Tensor | None, params: dict[str, Tensor]) -> Tensor:
        """Deterministic part: the augmentation for given parameters (tests set them by hand)."""
        if images.dim() != 4 or images.shape[-1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"images must be (N, H, W, 3) uint8, got {tuple(images.shape)} {images.dtype}")
        if landmarks is not None and landmarks.shape != (images.shape[0], 68, 2):
            raise ValueError(f"landmarks must be ({images.shape[0]}, 68, 2), got {tuple(landmarks.shape)}")
        cfg = self.config
        x, lm = self._resize(images, landmarks)
        if cfg.crop_area is None:
            x, lm = self._crop_and_flip(x, lm, params["crop_x"], params["crop_y"], params["flip"])
        else:
            x, lm = self._resized_crop_and_flip(x, lm, params)
        if lm is not None:
            self._mask_(x, lm, params["mask"], params["mask_region"])
        self._jitter_(x, params)
        gray = params["gray"].nonzero().squeeze(1)
        if gray.numel():
            x[gray] = _gray(x[gray]).expand(-1, 3, -1, -1)
        blur = params["blur"].nonzero().squeeze(1)
        if blur.numel():
            x[blur] = _gaussian_blur(x[blur], params["sigma"][blur], cfg.blur_kernel)
        if cfg.normalize:
            x.sub_(torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1))
            x.div_(torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1))
        return x

    def _resize(self, images: Tensor, landmarks: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Channels-last result (uint8 untouched when already at size, else float 0..255)."""
        size = self.config.resize
        h, w = images.shape[1:3]
        if (h, w) == (size, size):
            return images, landmarks
        # Antialiasing only changes a shrink; enlarging with it gave the same pixels (to 5e-4 of 255) at 3x the
        # CPU time (92 -> 96 px, the small budget's face crop).
        x = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=size < max(h, w)).permute(0, 2, 3, 1)
        if landmarks is not None:
            # Pixel centres sit at integer coordinates: x' = (x + 0.5) * scale - 0.5.
            scale = torch.tensor([size / w, size / h], device=landmarks.device)
            landmarks = (landmarks.float() + 0.5) * scale - 0.5
        return x, landmarks

    def _crop_and_flip(self, x: Tensor, landmarks: Tensor | None, cx: Tensor, cy: Tensor,
                       flip: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-sample crop, mirrored for flipped samples, as one index_select on the channels-last batch
        (a separate whole-batch flip costs as much again on CPU); returns (N,3,c,c) float in [0,1]
        and the landmarks moved into the output's pixel frame."""
        n, size = x.shape[0], x.shape[1]
        c = self.config.crop
        steps = torch.arange(c, device=x.device)
        rows = cy[:, None] + steps
        cols = cx[:, None] + torch.where(flip[:, None], c - 1 - steps, steps)
        flat = (torch.arange(n, device=x.device)[:, None, None] * size + rows[:, :, None]) * size + cols[:, None, :]
        out = x.contiguous().view(-1, 3).index_select(0, flat.view(-1)).view(n, c, c, 3)
        out = out.permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        if landmarks is not None:
            lm = landmarks.to(x.device).float() - torch.stack([cx, cy], dim=1)[:, None].float()
            mirrored_x = torch.where(flip[:, None], c - 1 - lm[..., 0], lm[..., 0])
            landmarks = torch.stack([mirrored_x, lm[..., 1]], dim=-1)
        return out, landmarks

    def _resized_crop_and_flip(self, x: Tensor, landmarks: Tensor | None,
                               params: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Per-sample box of random area and aspect, resampled (bilinear) to crop x crop and mirrored for
        flipped samples, as one affine grid_sample; returns (N,3,c,c) float in [0,1] and the landmarks
        moved into the output's pixel frame."""
        n, size = x.shape[0], x.shape[1]
        c = self.config.crop
        lo, hi = self.config.crop_area
        area = (lo + (hi - lo) * params["box_area"].float()) * size * size
        aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * params["box_log_aspect"].float())
        w = (area * aspect).sqrt().clamp(max=size)
        h = (area / aspect).sqrt().clamp(max=size)
        left, top = params["box_x"].float() * (size - w), params["box_y"].float() * (size - h)
        # Normalised coordinates (align_corners=False): -1 and 1 are the outer pixel edges.
        centre = torch.stack([2 * (left + w / 2) / size - 1, 2 * (top + h / 2) / size - 1], dim=1)
        half = torch.stack([w / size, h / size], dim=1)
        sign = torch.where(params["flip"], -1.0, 1.0).to(half)
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 1, 1] = half[:, 0] * sign, half[:, 1]
        theta[:, :, 2] = centre
        grid = F.affine_grid(theta, [n, 3, c, c], align_corners=False)
        source = x.permute(0, 3, 1, 2).float().div(255.0)
        out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out.clamp_(0.0, 1.0).contiguous()
        if landmarks is not None:
            normalised = 2 * (landmarks.to(x.device).float() + 0.5) / size - 1
            u = (normalised - centre[:, None]) / (half * torch.stack([sign, torch.ones_like(sign)], 1))[:, None]
            landmarks = (u + 1) * c / 2 - 0.5
        return out, landmarks

    def _mask_(self, x: Tensor, landmarks: Tensor, mask: Tensor, region: Tensor) -> None:
        """Fill one region's ellipse per chosen sample, in place. The region is picked by the subject's
        landmark indices on landmarks already mirrored with the image, which equals masking before the flip."""
        centre, semi, valid = _region_ellipses(landmarks, region)
        rows = (mask & valid).nonzero().squeeze(1)
        if not rows.numel():
            return
        centre, semi, sub = centre[rows], semi[rows], x[rows]
        grid = torch.arange(x.shape[-1], dtype=x.dtype, device=x.device)
        dx = ((grid[None, None, :] - centre[:, 0, None, None]) / semi[:, 0, None, None]) ** 2
        dy = ((grid[None, :, None] - centre[:, 1, None, None]) / semi[:, 1, None, None]) ** 2
        inside = (dx + dy <= 1.0)[:, None]
        if self.config.mask_fill == "mean":
            fill = sub.mean(dim=(2, 3), keepdim=True)
        else:
            fill = torch.zeros((), dtype=x.dtype, device=x.device)
        x[rows] = torch.where(inside, fill, sub)

    def _jitter_(self, x: Tensor, params: dict[str, Tensor]) -> None:
        """The four colour ops in each sample's own random order, in place; each op runs once per
        jittered sample."""
        chosen = params["jitter"].nonzero().squeeze(1)
        if not chosen.numel():
            return
        y = x[chosen]
        factors = [params[name][chosen] for name in JITTER_OPS]
        order = params["jitter_order"][chosen]
        for position in range(len(JITTER_OPS)):
            for op, func in enumerate(_JITTER_FUNCS):
                rows = (order[:, position] == op).nonzero().squeeze(1)
                if rows.numel():
                    y[rows] = func(y[rows], factors[op][rows])
        x[chosen] = y


def cutmix_inner_face(target: Tensor, source: Tensor, source_landmarks: Tensor,
                      generator: torch.Generator | None = None) -> Tensor:
    """Paste each source's inner-face box (bounding box of landmarks 17-67, whole pixels covering it) onto
    the target at the same aligned location, without blending: the naive counterpart of FaceSwap.
    Rows with non-finite landmarks return the target unchanged. The operation is deterministic;
    generator is accepted only so the call matches BatchAugment's."""
    if target.shape != source.shape or target.dim() != 4 or target.shape[-1] != 3:
        raise ValueError(f"target and source must both be (N, H, W, 3), "
                         f"got {tuple(target.shape)}, {tuple(source.shape)}")
    if source_landmarks.shape != (target.shape[0], 68, 2):
        raise ValueError(f"source_landmarks must be ({target.shape[0]}, 68, 2), got {tuple(source_landmarks.shape)}")
    del generator
    n, h, w, _ = target.shape
    pts = source_landmarks[:, INNER_FACE].to(target.device).float()
    low, high = pts.amin(dim=1).floor(), pts.amax(dim=1).ceil()
    valid = torch.isfinite(low).all(dim=1) & torch.isfinite(high).all(dim=1)
    xs = torch.arange(w, device=target.device, dtype=torch.float32)
    ys = torch.arange(h, device=target.device, dtype=torch.float32)
    in_x = (xs[None] >= low[:, 0, None]) & (xs[None] <= high[:, 0, None])
    in_y = (ys[None] >= low[:, 1, None]) & (ys[None] <= high[:, 1, None])
    inside = in_y[:, :, None] & in_x[:, None, :] & valid[:, None, None]
    return torch.where(inside[..., None], source, target)
