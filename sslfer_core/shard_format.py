"""HDF5 shard format v1: one file per shard, frames of a video contiguous and sorted by timestamp.

The layout is documented in docs/shard-format.md. Readers refuse files of another schema or of a newer
major version; nothing in a shard is pickled (strings are UTF-8, structured metadata is JSON).
"""
from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import cv2
import h5py
import numpy as np

from sslfer_core import __version__, strict_json
from sslfer_core.atomic_files import atomic_path

SCHEMA_NAME = "sslfer.shard"
SCHEMA_VERSION = (1, 1)  # 1.1 adds stream codecs (h264: streams/ group) and patch_size 0 (no eyes/mouth)
IMAGE_FIELDS = ("face", "eyes", "mouth", "swaps")
NUM_LANDMARKS = 68
# Chunking (measured in benchmarks/bench_shard_read.py, table in docs/shard-format.md): raw images are
# chunked by DEFAULT_CHUNK_FRAMES rows, fewer if a chunk would exceed HDF5's default 1 MiB chunk cache;
# small per-frame fields and JPEG heap references by SMALL_CHUNK_BYTES, so that opening a shard (which
# reads every timestamp) touches a few chunks instead of one per frame.
DEFAULT_CHUNK_FRAMES = 8
IMAGE_CHUNK_MAX_BYTES = 1 << 20
SMALL_CHUNK_BYTES = 16 << 10
VLEN_REFERENCE_BYTES = 16
# Scattered-row reads (ShardReader.read_array): a fixed-size field whose requested span is at most this
# many bytes is read in one slice, since each h5py call costs 12 us (uint8) to 100 us (bool) here.
SPAN_READ_BYTES = 256 << 10
# An HDF5 dataset may declare any shape, since chunks never written read back as fill values: a 16 KB file
# can claim 2^36 frames. A whole-dataset read is refused when the declared bytes exceed what the file can
# hold: its size for unfiltered data, MAX_FILTER_RATIO times that for filtered data (deflate, the
# strongest filter h5py offers, tops out near 1032:1).
MAX_FILTER_RATIO = 1100
# Header values beyond these are refused as damage: no prep option makes them.
MAX_IMAGE_SIDE = 4096
MAX_SWAPS = 64
MAX_DESCRIPTOR_DIM = 1 << 16


VERIFY_HINT = "run `sslfer-manifest verify` on its folder"
# torch's DataLoader re-raises a worker's exception as the same type with the worker's whole traceback
# as the message; the original one-line message is its last line, after "<TypeName>: ".
_WORKER_WRAPPED = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


def unwrap_worker_message(text: str) -> str:
    """The original one-line message of an exception re-raised from a DataLoader worker (else `text`)."""
    if not isinstance(text, str) or not _WORKER_WRAPPED.match(text):
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last, count=1)


# Stream codecs: frames of a video are stored as independent streams of at most STREAM_CHUNK_FRAMES
# rows (each one GOP, so a read decodes at most the streams it touches; sizes and decode speeds by
# chunk length in docs/preprocessing.md, "Video profile"). A reader keeps up to STREAM_CACHE_BYTES
# of decoded streams, so contiguous clip reads decode each stream once.
STREAM_CODECS = ("h264",)
IMAGE_CODECS = ("raw", "jpeg") + STREAM_CODECS
DEFAULT_CRF = 23
STREAM_CHUNK_FRAMES = 32
STREAM_CACHE_BYTES = 32 << 20
STREAMS_GROUP = "streams"


class ShardFormatError(ValueError):
    """The file is not a readable sslfer shard."""

    def __init__(self, *args):
        super().__init__(*(unwrap_worker_message(a) for a in args))


class ShardVersionError(ShardFormatError):
    """The shard was written by a newer, incompatible schema."""


@dataclass(frozen=True)
class ImageCodec:
    name: str = "raw"  # "raw", "jpeg" or "h264"
    quality: int = 90  # JPEG quality, or the h264 CRF; ignored for raw
    chunk_frames: int = STREAM_CHUNK_FRAMES  # h264 only: rows per stream

    def __post_init__(self):
        if self.name not in IMAGE_CODECS:
            raise ValueError(f"unknown image codec {self.name!r}; use {', '.join(map(repr, IMAGE_CODECS))}")
        if self.name == "h264":
            if not 0 <= self.quality <= 51:
                raise ValueError(f"h264 CRF must be in 0..51, got {self.quality}")
            if self.chunk_frames < 1:
                raise ValueError(f"h264 chunk_frames must be at least 1, got {self.chunk_frames}")
        elif not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {self.quality}")

    @property
    def is_stream(self) -> bool:
        return self.name in STREAM_CODECS

    def to_json(self) -> dict:
        if self.name == "h264":
            from sslfer_core.video_codec import PIX_FMT, PRESET

            return {"name": "h264", "crf": self.quality, "chunk_frames": self.chunk_frames, "preset": PRESET,
                    "pix_fmt": PIX_FMT}
        return {"name": self.name, "quality": self.quality} if self.name == "jpeg" else {"name": "raw"}

    @classmethod
    def from_json(cls, obj: Mapping) -> "ImageCodec":
        name = obj["name"]
        if name not in IMAGE_CODECS:
            # A codec added by a later minor version: refuse the shard in one line rather than misread it.
            raise ShardFormatError(f"images are stored with codec {name!r}, which sslfer {__version__} cannot "
                                   f"decode (it reads {', '.join(IMAGE_CODECS)}); upgrade sslfer")
        if name == "h264":
            return cls(name, int(obj["crf"]), int(obj.get("chunk_frames", STREAM_CHUNK_FRAMES)))
        return cls(name, int(obj.get("quality", 90)))

    @classmethod
    def parse(cls, text: str) -> "ImageCodec":
        """'raw', 'jpeg', 'jpeg:85', 'h264' (CRF 23) or 'h264:CRF'."""
        name, _, quality = text.partition(":")
        if not quality:
            return cls(name, DEFAULT_CRF) if name == "h264" else cls(name)
        if not quality.strip().lstrip("-").isdigit():
            raise ValueError(f"codec {text!r}: {quality!r} is not an integer")
        return cls(name, int(quality))


@dataclass
class ShardHeader:
    image_size: int
    patch_size: int
    swaps_per_frame: int
    descriptor_kind: str  # "none" when no descriptors are stored
    descriptor_dim: int
    codecs: dict[str, ImageCodec] = field(default_factory=lambda: {f: ImageCodec() for f in IMAGE_FIELDS})
    prep_config: dict = field(default_factory=dict)
    dlib_model_sha256: dict[str, str] = field(default_factory=dict)
    descriptor_weights_sha256: str | None = None
    tool_version: str = __version__
    schema_version: tuple[int, int] = SCHEMA_VERSION

    def attrs(self) -> dict[str, str | int]:
        return {
            "schema": SCHEMA_NAME,
            "schema_version": f"{self.schema_version[0]}.{self.schema_version[1]}",
            "tool_version": self.tool_version,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "swaps_per_frame": self.swaps_per_frame,
            "descriptor_kind": self.descriptor_kind,
            "descriptor_dim": self.descriptor_dim,
            "codecs": json.dumps({k: v.to_json() for k, v in self.codecs.items()}, sort_keys=True),
            "prep_config": json.dumps(self.prep_config, sort_keys=True),
            "dlib_model_sha256": json.dumps(self.dlib_model_sha256, sort_keys=True),
            "descriptor_weights_sha256": self.descriptor_weights_sha256 or "",
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping, source: str = "shard") -> "ShardHeader":
        schema = _as_str(attrs.get("schema", ""))
        if schema != SCHEMA_NAME:
            raise ShardFormatError(f"{source}: not an sslfer shard (schema attribute {schema!r})")
        version = parse_schema_version(_as_str(attrs.get("schema_version", "")), source)
        if version[0] != SCHEMA_VERSION[0]:
            raise ShardVersionError(
                f"{source}: shard schema version {version[0]}.{version[1]} is not readable by sslfer "
                f"{__version__}, which reads schema {SCHEMA_VERSION[0]}.x; upgrade sslfer"
                if version[0] > SCHEMA_VERSION[0]
                else f"{source}: shard schema version {version[0]}.{version[1]} is older than "
                f"{SCHEMA_VERSION[0]}.x and no longer supported; re-run sslfer-prep"
            )
        try:
            header = cls(
                image_size=int(attrs["image_size"]),
                patch_size=int(attrs["patch_size"]),
                swaps_per_frame=int(attrs["swaps_per_frame"]),
                descriptor_kind=_as_str(attrs["descriptor_kind"]),
                descriptor_dim=int(attrs["descriptor_dim"]),
                codecs={k: ImageCodec.from_json(v) for k, v in strict_json.loads(_as_str(attrs["codecs"])).items()},
                prep_config=strict_json.loads(_as_str(attrs["prep_config"])),
                dlib_model_sha256=strict_json.loads(_as_str(attrs["dlib_model_sha256"])),
                descriptor_weights_sha256=_as_str(attrs["descriptor_weights_sha256"]) or None,
                tool_version=_as_str(attrs["tool_version"]),
                schema_version=version,
            )
        except ShardFormatError as exc:
            raise ShardFormatError(f"{source}: {exc}") from None
        except (KeyError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise ShardFormatError(f"{source}: shard header is incomplete or malformed ({exc})") from None
        problem = header.implausible()
        if problem:
            raise ShardFormatError(f"{source}: shard header is malformed ({problem})")
        return header

    def implausible(self) -> str | None:
        """What in the header no writer of this schema makes (a damaged or hand-made file), or None."""
        limits = {"image_size": (1, MAX_IMAGE_SIDE), "patch_size": (0, MAX_IMAGE_SIDE),
                  "swaps_per_frame": (0, MAX_SWAPS), "descriptor_dim": (0, MAX_DESCRIPTOR_DIM)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not low <= value <= high:
                return f"{name} {value} is outside {low}..{high}"
        if set(self.codecs) - set(IMAGE_FIELDS):
            return f"codecs for unknown fields {sorted(set(self.codecs) - set(IMAGE_FIELDS))}"
        if not isinstance(self.prep_config, dict) or not isinstance(self.dlib_model_sha256, dict):
            return "prep_config and dlib_model_sha256 must be JSON objects"
        return None


def parse_schema_version(text: str, source: str = "shard") -> tuple[int, int]:
    try:
        major, minor = (int(p) for p in text.split("."))
    except ValueError:
        raise ShardFormatError(f"{source}: unreadable schema version {text!r}") from None
    return major, minor


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass
class VideoFrames:
    """All kept frames of one video, in timestamp order, as the writer takes them."""

    video_id: str
    identity: str
    source_path: str  # relative to the source root
    source_fps: float
    faces: np.ndarray  # (N,S,S,3) uint8 RGB
    landmarks: np.ndarray  # (N,68,2) float32, aligned-crop pixels
    eyes: np.ndarray | None  # (N,P,P,3) uint8 RGB; None when the header's patch_size is 0
    mouth: np.ndarray | None  # (N,P,P,3) uint8 RGB; None when the header's patch_size is 0
    timestamps: np.ndarray  # (N,) float64 seconds
    frame_index: np.ndarray  # (N,) int source frame numbers
    det_score: np.ndarray  # (N,) float32
    swaps: np.ndarray | None = None  # (N,K,S,S,3) uint8 RGB
    swap_ok: np.ndarray | None = None  # (N,K) bool; a failed swap's pixels are zeros and must not be used
    descriptors: np.ndarray | None = None  # (N,D) float, L2-normalised
    has_descriptor: np.ndarray | None = None  # (N,) bool
    status: str = "ok"

    def __len__(self) -> int:
        return int(self.faces.shape[0])


# ----------------------------------------------------------------------------- image codecs

def encode_jpeg(image_rgb: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.reshape(-1)


def decode_jpeg(buf: np.ndarray) -> np.ndarray:
    image = decode_jpeg_bgr(buf)
    if image is None:
        raise ShardFormatError("corrupt JPEG payload in shard")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_stderr_lock = threading.Lock()
_stderr_sink: dict[int, int] = {}  # pid -> fd of a temporary file that takes libjpeg's warnings


def decode_jpeg_bgr(buf: np.ndarray) -> np.ndarray | None:
    """BGR image of a JPEG buffer, or None when it is corrupt: undecodable, or decodable only with a libjpeg
    warning ("Corrupt JPEG data: ..."), which libjpeg prints to fd 2 and OpenCV does not report. The
    warning is captured instead of printed, and such an image is treated as corrupt, not used."""
    data = np.asarray(buf, dtype=np.uint8).reshape(-1)
    if data.size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    with _stderr_lock:
        sink = _stderr_sink.get(os.getpid())
        if sink is None:
            _stderr_sink.clear()  # a sink inherited through fork is shared with the parent: make our own
            sink = _stderr_sink[os.getpid()] = _new_sink()
        saved = os.dup(2)
        try:
            os.dup2(sink, 2)
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        warned = os.fstat(sink).st_size > 0
        if warned:
            os.ftruncate(sink, 0)
            os.lseek(sink, 0, os.SEEK_SET)
    return None if warned else image


def _new_sink() -> int:
    fd, name = tempfile.mkstemp(prefix="sslfer-jpeg-")
    os.unlink(name)
    return fd


# ----------------------------------------------------------------------------- writer

class ShardWriter:
    """Append whole videos to a new shard; the file appears under its final name only on close().

    Use as a context manager: an exception inside the block leaves no file behind.
    """

    def __init__(self, path: str | os.PathLike, header: ShardHeader, *, chunk_frames: int = DEFAULT_CHUNK_FRAMES):
        self.path = Path(path)
        self.header = header
        self.chunk_frames = max(1, int(chunk_frames))
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._h5 = h5py.File(self._tmp, "w")
        for key, value in header.attrs().items():
            self._h5.attrs[key] = value
        self._frames = self._h5.create_group("frames")
        self._videos: list[dict] = []
        self._num_rows = 0
        self._closed = False

    def chunk_rows(self, row_bytes: int, *, raw_image: bool) -> int:
        """Rows per HDF5 chunk for a per-frame dataset whose rows take `row_bytes` each."""
        row_bytes = max(1, int(row_bytes))
        if raw_image:
            return max(1, min(self.chunk_frames, IMAGE_CHUNK_MAX_BYTES // row_bytes))
        return max(1, SMALL_CHUNK_BYTES // row_bytes)

    # -- datasets are created on first append and grown per video
    def _append(self, name: str, data: np.ndarray, dtype, *, raw_image: bool = False) -> None:
        ds = self._frames.get(name)
        if ds is None:
            row_shape = data.shape[1:]
            rows = self.chunk_rows(int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize,
                                   raw_image=raw_image)
            ds = self._frames.create_dataset(
                name, shape=(0,) + row_shape, maxshape=(None,) + row_shape, dtype=dtype, chunks=(rows,) + row_shape,
            )
        start = ds.shape[0]
        ds.resize(start + data.shape[0], axis=0)
        ds[start:] = data

    def _append_images(self, name: str, images: np.ndarray) -> None:
        codec = self.header.codecs.get(name, ImageCodec())
        if codec.is_stream:
            self._append_streams(name, images, codec)
            return
        if codec.name == "raw":
            self._append(name, np.ascontiguousarray(images, dtype=np.uint8), np.uint8, raw_image=True)
            return
        lead_shape = images.shape[:-3]
        ds = self._frames.get(name)
        if ds is None:
            ds = self._frames.create_dataset(
                name, shape=(0,) + lead_shape[1:], maxshape=(None,) + lead_shape[1:],
                dtype=h5py.vlen_dtype(np.uint8),
                chunks=(self.chunk_rows(VLEN_REFERENCE_BYTES * int(np.prod(lead_shape[1:])), raw_image=False),)
                + lead_shape[1:],
            )
        start = ds.shape[0]
        ds.resize(start + lead_shape[0], axis=0)
        # Element-wise: h5py would read equal-length buffers in a block as one 2-D array.
        for idx in np.ndindex(*lead_shape):
            ds[(start + idx[0],) + idx[1:]] = encode_jpeg(images[idx], codec.quality)

    def _append_streams(self, name: str, images: np.ndarray, codec: ImageCodec) -> None:
        """One video's frames of an image field as streams of up to codec.chunk_frames rows each
        (streams/<name>/data, and first_row = the shard row of each stream's first frame)."""
        from sslfer_core.video_codec import StreamCodecError, encode_stream

        if images.ndim != 4:
            raise ValueError(f"{name}: the {codec.name} codec stores one image per row, got rows of shape "
                             f"{images.shape[1:]}; use raw or jpeg for this field")
        group = self._h5.require_group(STREAMS_GROUP).require_group(name)
        if "data" not in group:
            group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=h5py.vlen_dtype(np.uint8),
                                 chunks=(self.chunk_rows(VLEN_REFERENCE_BYTES, raw_image=False),))
            group.create_dataset("first_row", shape=(0,), maxshape=(None,), dtype=np.int64,
                                 chunks=(self.chunk_rows(8, raw_image=False),))
        data, first = group["data"], group["first_row"]
        starts = list(range(0, len(images), codec.chunk_frames))
        base = data.shape[0]
        data.resize(base + len(starts), axis=0)
        first.resize(base + len(starts), axis=0)
        for i, start in enumerate(starts):
            try:
                payload = encode_stream(images[start: start + codec.chunk_frames], codec.quality)
            except StreamCodecError as exc:
                raise ValueError(f"{name}: {exc}") from None
            data[base + i] = np.frombuffer(payload, np.uint8)
            first[base + i] = self._num_rows + start

    def add_video(self, video: VideoFrames) -> None:
        n = len(video)
        h = self.header
        s, p, k, d = h.image_size, h.patch_size, h.swaps_per_frame, h.descriptor_dim
        _check_shape("faces", video.faces, (n, s, s, 3))
        _check_shape("landmarks", video.landmarks, (n, NUM_LANDMARKS, 2))
        if p > 0:
            _check_shape("eyes", video.eyes, (n, p, p, 3))
            _check_shape("mouth", video.mouth, (n, p, p, 3))
        for name in ("timestamps", "frame_index", "det_score"):
            _check_shape(name, getattr(video, name), (n,))
        if n == 0:
            raise ValueError(f"video {video.video_id!r} has no frames; record it as a failure instead")
        if np.any(np.diff(video.timestamps) < 0):
            raise ValueError(f"video {video.video_id!r}: timestamps must be sorted")
        if not (math.isfinite(video.source_fps) and video.source_fps > 0):
            raise ValueError(f"video {video.video_id!r}: source_fps {video.source_fps!r} is not a positive number")
        video_row = len(self._videos)
        self._append_images("face", video.faces)
        self._append("landmarks", np.asarray(video.landmarks, np.float32), np.float32)
        if p > 0:
            self._append_images("eyes", video.eyes)
            self._append_images("mouth", video.mouth)
        if k > 0:
            _check_shape("swaps", video.swaps, (n, k, s, s, 3))
            _check_shape("swap_ok", video.swap_ok, (n, k))
            self._append_images("swaps", video.swaps)
            self._append("swap_ok", np.asarray(video.swap_ok, bool), bool)
        if d > 0:
            _check_shape("descriptors", video.descriptors, (n, d))
            has = np.ones(n, bool) if video.has_descriptor is None else np.asarray(video.has_descriptor, bool)
            self._append("descriptor", np.asarray(video.descriptors, np.float16), np.float16)
            self._append("has_descriptor", has, bool)
        self._append("video_row", np.full(n, video_row, np.int32), np.int32)
        self._append("timestamp", np.asarray(video.timestamps, np.float64), np.float64)
        self._append("frame_index", np.asarray(video.frame_index, np.int32), np.int32)
        self._append("det_score", np.asarray(video.det_score, np.float32), np.float32)
        self._videos.append(dict(
            video_id=video.video_id, identity=video.identity, source_path=video.source_path,
            source_fps=float(video.source_fps), first_row=self._num_rows, row_count=n, status=video.status,
        ))
        self._num_rows += n

    @property
    def num_frames(self) -> int:
        return self._num_rows

    def bytes_written(self) -> int:
        self._h5.flush()
        return self._tmp.stat().st_size

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._videos:
            self._h5.close()
            self._atomic.__exit__(ValueError, ValueError("empty shard"), None)
            raise ValueError(f"{self.path}: refusing to write a shard with no videos")
        group = self._h5.create_group("videos")
        str_dtype = h5py.string_dtype("utf-8")
        for name in ("video_id", "identity", "source_path", "status"):
            group.create_dataset(name, data=[v[name] for v in self._videos], dtype=str_dtype)
        group.create_dataset("source_fps", data=np.array([v["source_fps"] for v in self._videos], np.float64))
        group.create_dataset("first_row", data=np.array([v["first_row"] for v in self._videos], np.int64))
        group.create_dataset("row_count", data=np.array([v["row_count"] for v in self._videos], np.int64))
        self._h5.attrs["num_frames"] = self._num_rows
        self._h5.attrs["num_videos"] = len(self._videos)
        self._h5.close()
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._h5.close()
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _check_shape(name: str, array, shape: tuple) -> None:
    if array is None:
        raise ValueError(f"{name} is required by this shard's header but was not given")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}, expected {tuple(shape)}")


def write_shard(path: str | os.PathLike, header: ShardHeader, videos: Iterable[VideoFrames], **kwargs) -> Path:
    with ShardWriter(path, header, **kwargs) as writer:
        for video in videos:
            writer.add_video(video)
    return Path(path)


# ----------------------------------------------------------------------------- reader

@dataclass
class VideoTable:
    video_id: np.ndarray  # str
    identity: np.ndarray  # str
    source_path: np.ndarray  # str
    source_fps: np.ndarray
    first_row: np.ndarray
    row_count: np.ndarray
    status: np.ndarray  # str

    def __len__(self) -> int:
        return len(self.video_id)


class ShardReader:
    """Read one shard. The HDF5 handle is opened lazily and reopened after a fork, so a reader made in a
    parent process is safe to hand to DataLoader workers (each opens its own handle)."""

    def __init__(self, path: str | os.PathLike, *, sha256: str | None = None):
        """sha256: the digest the file is listed with (its manifest entry); when given, the file's bytes
        are checked against it before anything is read (once per machine, see sslfer_core/hash_cache.py)."""
        self.path = Path(path)
        check_regular_file(self.path)
        if sha256 is not None:
            check_sha256(self.path, sha256)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}  # frames/ datasets of the current handle
        self._streams = StreamCache()
        try:
            with h5py.File(self.path, "r") as h5:
                self.header = ShardHeader.from_attrs(h5.attrs, source=str(self.path))
                if "videos" not in h5 or "frames" not in h5:
                    raise ShardFormatError(f"{self.path}: shard is missing its frames or videos group")
                check_self_contained(h5, str(self.path))
                self.num_frames = int(h5.attrs.get("num_frames", 0))
                g = h5["videos"]
                size = os.stat(self.path).st_size

                def whole(dataset, text=False):
                    return read_backed(dataset, size, self.path, text=text)

                self.videos = VideoTable(
                    video_id=np.array(whole(g["video_id"], True), dtype=object),
                    identity=np.array(whole(g["identity"], True), dtype=object),
                    source_path=np.array(whole(g["source_path"], True), dtype=object),
                    source_fps=whole(g["source_fps"]),
                    first_row=whole(g["first_row"]),
                    row_count=whole(g["row_count"]),
                    status=np.array(whole(g["status"], True), dtype=object),
                )
                self.timestamps = whole(h5["frames/timestamp"])
                self.video_row = whole(h5["frames/video_row"])
                streams = h5.get(STREAMS_GROUP)
                stream_fields = set(streams.keys()) if streams is not None else set()
                self.fields = tuple(sorted(set(h5["frames"].keys()) | stream_fields))
                shapes = {}
                for name, dataset in h5["frames"].items():
                    check_backed(dataset, size, self.path)  # every later row read is then bounded too
                    shapes[name] = dataset.shape
                for name in stream_fields:
                    check_backed(streams[name]["data"], size, self.path)
                num_videos = int(h5.attrs.get("num_videos", -1))
        except ShardFormatError:
            raise
        except OSError as exc:
            raise ShardFormatError(f"{self.path}: cannot open as HDF5 ({exc}); {VERIFY_HINT}") from None
        except KeyError as exc:
            raise ShardFormatError(f"{self.path}: shard is missing a dataset ({exc}); {VERIFY_HINT}") from None
        except (ValueError, TypeError, IndexError, RuntimeError, UnicodeError, OverflowError,
                AttributeError) as exc:
            raise ShardFormatError(f"{self.path}: unreadable shard metadata ({type(exc).__name__}: {exc}); "
                                   f"{VERIFY_HINT}") from None
        try:
            problem = self._layout_problem(shapes, num_videos)
        except (ValueError, TypeError, IndexError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            raise ShardFormatError(f"{self.path}: damaged shard ({problem}); {VERIFY_HINT}")

    def _layout_problem(self, shapes: dict[str, tuple], num_videos: int) -> str | None:
        """What in the metadata contradicts the layout the writer makes, or None."""
        t, h, n = self.videos, self.header, self.num_frames
        lengths = {len(t.video_id), len(t.identity), len(t.source_path), len(t.source_fps), len(t.first_row),
                   len(t.row_count), len(t.status)}
        if lengths != {num_videos} or num_videos < 1:
            return f"video table lengths {sorted(lengths)} disagree with num_videos {num_videos}"
        if t.first_row.ndim != 1 or t.row_count.ndim != 1 or np.any(t.row_count < 1):
            return "a video has no frames"
        if t.source_fps.ndim != 1 or not np.all(np.isfinite(t.source_fps)) or np.any(t.source_fps <= 0):
            return "a video's source_fps is not a positive finite number"
        ends = np.cumsum(t.row_count)
        if ends[-1] != n or np.any(t.first_row != ends - t.row_count):
            return f"video rows do not tile the {n} frames"
        expected = {"face": (h.image_size, h.image_size, 3), "eyes": (h.patch_size, h.patch_size, 3),
                    "mouth": (h.patch_size, h.patch_size, 3), "landmarks": (NUM_LANDMARKS, 2),
                    "swaps": (h.swaps_per_frame, h.image_size, h.image_size, 3), "swap_ok": (h.swaps_per_frame,),
                    "descriptor": (h.descriptor_dim,)}
        for name, shape in shapes.items():
            if not shape or shape[0] != n:
                return f"field {name} has {shape[0] if shape else 0} rows, not {n}"
            want = expected.get(name)
            codec = h.codecs.get(name, ImageCodec()).name if name in IMAGE_FIELDS else "raw"
            if want is not None:
                want = want[:1] if name == "swaps" and codec != "raw" else (() if codec != "raw" else want)
                if tuple(shape[1:]) != want:
                    return f"field {name} has rows of shape {tuple(shape[1:])}, expected {want}"
        patches = ("eyes", "mouth") if h.patch_size else ()
        for name in ("face", "landmarks", *patches, "timestamp", "frame_index", "det_score"):
            if name not in self.fields:
                return f"field {name} is missing"
        if self.timestamps.ndim != 1 or not np.all(np.isfinite(self.timestamps)):
            return "timestamps are not finite"
        starts = np.zeros(n, bool)
        starts[t.first_row] = True
        if np.any((np.diff(self.timestamps) < 0) & ~starts[1:]):
            return "timestamps of a video are not sorted"
        return None

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            # A handle inherited through fork must not be used: open a fresh one in this process, and
            # forget the datasets of the old handle.
            self._datasets = {}
            self._streams = StreamCache()
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def _dataset(self, name: str) -> h5py.Dataset:
        # Looking a dataset up by name costs ~80 us per call; the objects are cached per handle.
        h5 = self._file()
        dataset = self._datasets.get(name)
        if dataset is None:
            if name not in self.fields:
                raise KeyError(f"{self.path}: shard has no field {name!r} (fields: {', '.join(self.fields)})")
            dataset = self._datasets[name] = h5["frames"][name]
        return dataset

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._datasets = {}
        self._streams = StreamCache()

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        state["_datasets"] = {}
        state["_streams"] = StreamCache()
        return state

    # -- queries
    def video_rows(self, video: int) -> slice:
        start = int(self.videos.first_row[video])
        return slice(start, start + int(self.videos.row_count[video]))

    def rows_between(self, video: int, t0: float, t1: float) -> slice:
        """Rows of `video` whose timestamp lies in [t0, t1): one contiguous slice."""
        rows = self.video_rows(video)
        ts = self.timestamps[rows]
        lo = int(np.searchsorted(ts, t0, side="left"))
        hi = int(np.searchsorted(ts, t1, side="left"))
        return slice(rows.start + lo, rows.start + max(lo, hi))

    def has_field(self, name: str) -> bool:
        return name in self.fields

    def read_array(self, name: str, rows) -> np.ndarray:
        """A field's rows, as numpy would index the whole array: `rows` is a slice or an integer sequence
        (any order, repeats and negative indices allowed). JPEG image fields come back encoded (use read_images);
        h264 fields, which have no per-row encoded form, come back decoded, as raw ones do."""
        codec = self.header.codecs.get(name)
        if codec is not None and codec.is_stream:
            return self._read_stream_images(name, rows)
        try:
            return _read_rows(self._dataset(name), rows)
        except (KeyError, IndexError, TypeError):
            raise
        except (OSError, ValueError, RuntimeError) as exc:
            raise ShardFormatError(f"{self.path}: cannot read field {name!r} ({exc}); {VERIFY_HINT}") from None

    def read_images(self, name: str, rows) -> np.ndarray:
        """Decoded uint8 RGB images of an image field ('face', 'eyes', 'mouth', 'swaps')."""
        if name not in IMAGE_FIELDS:
            raise KeyError(f"{name!r} is not an image field")
        codec = self.header.codecs.get(name, ImageCodec())
        if codec.is_stream:
            return self._read_stream_images(name, rows)
        data = self.read_array(name, rows)
        if self.header.codecs.get(name, ImageCodec()).name == "raw":
            return data
        lead_shape = data.shape
        try:
            return self._decode_all(name, data, lead_shape)
        except ShardFormatError as exc:
            raise ShardFormatError(f"{self.path}: field {name!r}: {exc}; {VERIFY_HINT}") from None

    def _decode_all(self, name: str, data: np.ndarray, lead_shape: tuple) -> np.ndarray:
        first = decode_jpeg(data.reshape(-1)[0]) if data.size else None
        if first is None:
            side = self.header.patch_size if name in ("eyes", "mouth") else self.header.image_size
            return np.zeros(lead_shape + (side, side, 3), np.uint8)
        out = np.empty(lead_shape + first.shape, np.uint8)
        flat_out = out.reshape((-1,) + first.shape)
        flat_out[0] = first
        for i, buf in enumerate(data.reshape(-1)[1:], start=1):
            image = decode_jpeg(buf)
            if image.shape != first.shape:
                raise ShardFormatError(f"JPEG of shape {image.shape} among images of shape {first.shape}")
            flat_out[i] = image
        return out


    def _read_stream_images(self, name: str, rows) -> np.ndarray:
        """Rows of a stream-coded field: decode each stream the rows touch (or take it from the cache)."""
        from sslfer_core.video_codec import StreamCodecError, decode_stream

        if name not in self.fields:
            raise KeyError(f"{self.path}: shard has no field {name!r} (fields: {', '.join(self.fields)})")
        side = self.header.patch_size if name in ("eyes", "mouth") else self.header.image_size
        h5 = self._file()
        data = self._streams.data.get(name)
        if data is None:  # looked up once per handle, as the frames/ datasets
            group = h5[STREAMS_GROUP][name]
            data = self._streams.data[name] = group["data"]
            self._streams.first_rows[name] = read_backed(group["first_row"], os.stat(self.path).st_size,
                                                         self.path)
        first_row = self._streams.first_rows[name]
        n = self.num_frames
        shape, flat = _row_indices(rows, n)
        out = np.empty((flat.size, side, side, 3), np.uint8)
        if flat.size == 0:
            return out.reshape(shape + (side, side, 3))
        stream_of = np.searchsorted(first_row, flat, side="right") - 1
        # Stream boundaries: a stream ends where the next starts, the last one at the end of the shard.
        ends = np.append(first_row[1:], n)
        for stream in np.unique(stream_of).tolist():
            frames = self._streams.get((name, stream))
            if frames is None:
                count = int(ends[stream] - first_row[stream])
                try:
                    frames = decode_stream(data[stream], count, side, side)
                except StreamCodecError as exc:
                    raise ShardFormatError(f"{self.path}: {name} stream {stream}: {exc}") from None
                self._streams.put((name, stream), frames)
            where = stream_of == stream
            out[where] = frames[flat[where] - first_row[stream]]
        return out.reshape(shape + (side, side, 3))


class StreamCache:
    """Decoded streams of one reader, least recently used dropped first beyond STREAM_CACHE_BYTES."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = STREAM_CACHE_BYTES if max_bytes is None else max_bytes
        self.first_rows: dict[str, np.ndarray] = {}
        self.data: dict[str, h5py.Dataset] = {}  # streams/<field>/data of the current handle
        self._frames: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, key: tuple) -> np.ndarray | None:
        frames = self._frames.get(key)
        if frames is not None:
            self._frames.move_to_end(key)
        return frames

    def put(self, key: tuple, frames: np.ndarray) -> None:
        self._frames[key] = frames
        self._bytes += frames.nbytes
        while self._bytes > self.max_bytes and len(self._frames) > 1:
            _, dropped = self._frames.popitem(last=False)
            self._bytes -= dropped.nbytes


def _row_indices(rows, n: int) -> tuple[tuple, np.ndarray]:
    """(shape of the result's leading axes, flat non-negative row numbers) of a slice or integer index."""
    if isinstance(rows, slice):
        flat = np.arange(*rows.indices(n), dtype=np.int64)
        return (flat.size,), flat
    rows = np.asarray(rows)
    if rows.size and rows.dtype.kind not in "iu":
        raise TypeError(f"row indices must be integers or a slice, got dtype {rows.dtype}")
    flat = rows.astype(np.int64).reshape(-1)
    if flat.size and (flat.min() < -n or flat.max() >= n):
        bad = int(flat.min()) if flat.min() < -n else int(flat.max())
        raise IndexError(f"row {bad} is out of range for a field of {n} rows")
    return rows.shape, np.where(flat < 0, flat + n, flat)


def check_regular_file(path: Path) -> None:
    """Refuse anything but a regular file before opening it: a FIFO would block the reader until someone
    writes to it, and a device never ends."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ShardFormatError(f"{path}: cannot open ({exc.strerror or exc}); {VERIFY_HINT}") from None
    if not stat.S_ISREG(mode):
        raise ShardFormatError(f"{path}: not a regular file; {VERIFY_HINT}")


def check_sha256(path: Path, sha256: str) -> None:
    """Refuse a file whose bytes do not hash to `sha256`; a file this machine has hashed since it last
    changed is not read again."""
    from sslfer_core import hash_cache

    if hash_cache.cached_sha256(path) == sha256:
        return
    try:
        digest = hash_cache.hash_and_remember(path)
    except OSError as exc:
        raise ShardFormatError(f"{path}: cannot read ({exc.strerror or exc}); {VERIFY_HINT}") from None
    if digest != sha256:
        raise ShardFormatError(f"{path}: content does not match the sha256 it is listed with (changed or "
                               f"corrupt); {VERIFY_HINT}")


def check_self_contained(h5: h5py.File, source: str) -> None:
    """Refuse a file whose content is not all inside it: external links, soft links, datasets with
    external storage (raw bytes in other files) and virtual datasets (mapped from other files). A
    sha256 of the .h5 file covers only its own bytes, so any of these would let verified content change."""
    problems: list[str] = []

    def visit(group: h5py.Group, prefix: str) -> None:
        for name in group:
            link = group.get(name, getlink=True)
            where = f"{prefix}{name}"
            if not isinstance(link, h5py.HardLink):
                problems.append(f"{where} is a {type(link).__name__}")
                continue
            item = group.get(name)
            if isinstance(item, h5py.Group):
                visit(item, where + "/")
            elif isinstance(item, h5py.Dataset):
                if item.external:
                    problems.append(f"{where} stores its data in another file ({item.external[0][0]!r})")
                elif item.is_virtual:
                    problems.append(f"{where} is a virtual dataset mapped from other files")

    visit(h5, "")
    if problems:
        raise ShardFormatError(f"{source}: refused: content outside the file ({'; '.join(problems[:3])}); "
                               "a shard must hold all of its data itself")


def _read_rows(dataset: h5py.Dataset, rows) -> np.ndarray:
    """dataset[rows] with numpy semantics (any order, repeats, negative indices, any index shape).

    h5py's fancy indexing of scattered rows is very slow for fixed-size rows such as raw images
    (docs/shard-format.md, "Row reads"): those are read as one slice per run of consecutive rows, or as
    one slice over the whole span when it is dense or small. Variable-length (JPEG) rows are the
    opposite: a slice each costs ~100 us, while h5py's point selection reads 16 scattered rows in ~250 us.
    """
    n = dataset.shape[0]
    row_shape = dataset.shape[1:]
    if isinstance(rows, slice):
        if rows.step in (None, 1):
            return dataset[rows]
        rows = np.arange(*rows.indices(n))  # h5py refuses negative steps
    rows = np.asarray(rows)
    if rows.size == 0:
        return np.empty(rows.shape + row_shape, dataset.dtype)
    if rows.dtype.kind not in "iu":
        raise TypeError(f"row indices must be integers or a slice, got dtype {rows.dtype}")
    flat = rows.astype(np.int64).reshape(-1)
    if flat.min() < -n or flat.max() >= n:
        bad = int(flat.min()) if flat.min() < -n else int(flat.max())
        raise IndexError(f"row {bad} is out of range for a field of {n} rows")
    flat = np.where(flat < 0, flat + n, flat)
    if flat.size == 1:
        row = int(flat[0])
        block = dataset[row: row + 1]
        return block[0] if rows.ndim == 0 else block.reshape(rows.shape + row_shape)
    unique, inverse = np.unique(flat, return_inverse=True)
    first, last = int(unique[0]), int(unique[-1])
    span = last - first + 1
    vlen = h5py.check_vlen_dtype(dataset.dtype) is not None
    row_bytes = dataset.dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
    if span <= 2 * unique.size or (not vlen and span * row_bytes <= SPAN_READ_BYTES):
        return dataset[first: last + 1][flat - first].reshape(rows.shape + row_shape)
    if vlen:
        block = dataset[unique]
    else:
        # One slice per run of consecutive rows.
        breaks = np.flatnonzero(np.diff(unique) != 1) + 1
        starts, stops = np.concatenate(([0], breaks)), np.concatenate((breaks, [unique.size]))
        block = np.empty((unique.size,) + row_shape, dataset.dtype)
        for start, stop in zip(starts.tolist(), stops.tolist()):
            block[start:stop] = dataset[int(unique[start]): int(unique[stop - 1]) + 1]
    if unique.size == flat.size and np.array_equal(unique, flat):
        return block.reshape(rows.shape + row_shape)
    return block[inverse.reshape(-1)].reshape(rows.shape + row_shape)


def read_backed(dataset: h5py.Dataset, file_bytes: int, source, *, text: bool = False) -> np.ndarray:
    """The whole dataset (UTF-8 strings when `text`), after checking that the file can hold what it
    declares; ShardFormatError otherwise, before anything is allocated."""
    check_backed(dataset, file_bytes, source)
    return dataset.asstr()[()] if text else dataset[()]


def check_backed(dataset: h5py.Dataset, file_bytes: int, source) -> None:
    """Refuse (ShardFormatError) a dataset whose declared shape needs more bytes than the file can hold."""
    vlen = dataset.dtype.kind == "O" or h5py.check_vlen_dtype(dataset.dtype) is not None
    item = max(dataset.dtype.itemsize, VLEN_REFERENCE_BYTES) if vlen else dataset.dtype.itemsize
    claimed = math.prod(dataset.shape or ()) * item  # Python ints: a hostile shape cannot overflow
    filtered = dataset.id.get_create_plist().get_nfilters() > 0
    if claimed > file_bytes * (MAX_FILTER_RATIO if filtered else 1):
        raise ShardFormatError(
            f"{source}: dataset {dataset.name} declares shape {dataset.shape} ({claimed:,} bytes), more than the "
            f"file's {file_bytes:,} bytes can hold; {VERIFY_HINT}")


def read_shard_header(path: str | os.PathLike) -> ShardHeader:
    check_regular_file(Path(path))
    try:
        with h5py.File(path, "r") as h5:
            header = ShardHeader.from_attrs(h5.attrs, source=str(path))
            check_self_contained(h5, str(path))
            return header
    except OSError as exc:
        raise ShardFormatError(f"{path}: cannot open as HDF5 ({exc})") from None
