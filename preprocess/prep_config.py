"""The options of a run that decide what the shards contain, and how they are compared between runs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sslfer_core.shard_format import IMAGE_FIELDS, ImageCodec

PATCH_SIZE = 64
PROFILES = ("contrastive", "video")
# --profile video: what video (MAE) pretraining needs; explicit options override fps, size, codec and
# smoothing. Aligned faces only: no swaps, no eye/mouth patches (patch_size 0), no descriptors. No
# temporal smoothing of the alignment: at 25 fps every smoothing measured leaves more motion of the
# eyes and nose in the crop than per-frame alignment (benchmarks/bench_jitter.py, docs/preprocessing.md).
VIDEO_PROFILE_DEFAULTS = {"fps": 25.0, "size": 160, "codec": "jpeg:90", "smooth": 1.0}
# Keys written into prep_config only when they differ from these values: older shard sets and work
# folders, made before the keys existed, keep matching (resume, merge).
OPTIONAL_PREP_KEYS = {"profile": "contrastive", "smooth_sigma": 0.0}


@dataclass(frozen=True)
class PrepConfig:
    source: str  # voxceleb, videos or frames
    fps: float = 5.0
    frames_fps: float = 25.0  # stated rate of frame folders
    size: int = 128
    patch_size: int = PATCH_SIZE
    min_frames: int = 5
    min_face_px: int = 80
    redetect_every: int = 10
    smooth: float = 0.6  # weight of the newest alignment (1.0 = no temporal smoothing)
    smooth_sigma: float = 0.0  # > 0: zero-phase smoothing over +-3 sigma kept frames instead of `smooth`
    profile: str = "contrastive"
    cnn_fallback: bool = False
    swaps: int = 1
    seed: int = 0
    pool_per_identity: int = 8
    swap_attempts: int = 3
    codec: str = "jpeg:90"
    descriptor: str = "landmark-geometry"  # the resolved kind, never "auto"
    descriptor_requested: str = "auto"
    descriptor_device: str | None = None  # for weighted descriptors: precision (bf16/fp16/fp32) follows the device
    descriptor_dim: int = 0
    descriptor_weights_sha256: str | None = None
    dlib_model_sha256: dict = field(default_factory=dict, hash=False, compare=True)
    model_dir: str | None = None  # where the dlib models were found; not content (their sha256 is)

    def image_codec(self) -> ImageCodec:
        return ImageCodec.parse(self.codec)

    def codecs(self) -> dict[str, ImageCodec]:
        codec = self.image_codec()
        return {name: codec for name in self.image_fields()}

    def image_fields(self) -> tuple[str, ...]:
        """The image fields the shards hold: absent fields (patch_size 0, K = 0) have no codec either."""
        if self.profile == "video":
            return tuple(name for name in IMAGE_FIELDS
                         if name == "face" or (name == "swaps" and self.swaps) or
                         (name in ("eyes", "mouth") and self.patch_size))
        return IMAGE_FIELDS

    def prep_config(self) -> dict:
        """Everything that affects content, for the shard header. "source" is a run-only key to the manifest."""
        values = asdict(self)
        for key in ("model_dir", "dlib_model_sha256", "descriptor_weights_sha256", "descriptor_dim"):
            values.pop(key)  # stored in their own header fields
        values.pop("descriptor_requested")  # "auto" and the kind it resolved to give the same content
        for key, default in OPTIONAL_PREP_KEYS.items():
            if values[key] == default:
                values.pop(key)
        return values

    def content_key(self) -> dict:
        """What a resumed run must match: the prep config plus model fingerprints."""
        return {**self.prep_config(), "dlib_model_sha256": dict(self.dlib_model_sha256),
                "descriptor_dim": self.descriptor_dim, "descriptor_weights_sha256": self.descriptor_weights_sha256}


def config_differences(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every differing key."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
