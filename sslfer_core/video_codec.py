"""H.264 streams of aligned-face frames for shards (PyAV's bundled libx264 and FFmpeg decoder).

A stream is a raw Annex-B H.264 byte string (no container): SPS/PPS in band, the first frame an IDR,
so every stream decodes on its own. Colour conversion is done here with OpenCV (BT.601 I420 both
ways), not by libswscale, so encoder and decoder agree whatever FFmpeg's defaults are.
Encoding uses one thread and fixed options. x264's AVX-512 routines read memory they do not set (the
same frames gave different bytes depending on what the process had encoded before), so on x86-64 Linux
the encoder gets the CPU's instruction sets up to AVX2; then the same frames give the same bytes.
"""
from __future__ import annotations

import functools
import platform
from fractions import Fraction

import cv2
import numpy as np

ENCODER = "libx264"
DECODER = "h264"
PRESET = "medium"
PIX_FMT = "yuv420p"
CRF_RANGE = (0, 51)
STREAM_TIME_BASE = Fraction(1, 25)  # only orders the frames: rows carry their own timestamps


# x264 CPU flag bits (x264.h) and the /proc/cpuinfo flags that allow them; AVX-512 is left out on purpose.
X264_CPU_FLAGS = (
    ("mmx", 1 << 0), ("sse", (1 << 1) | (1 << 2)), ("sse2", 1 << 3), ("abm", 1 << 4), ("pni", 1 << 5),
    ("ssse3", 1 << 6), ("sse4_1", 1 << 7), ("sse4_2", 1 << 8), ("avx", 1 << 9), ("fma", 1 << 12),
    ("bmi1", 1 << 13), ("bmi2", 1 << 14), ("avx2", 1 << 15),
)
X264_CACHELINE_64 = 1 << 18


@functools.lru_cache(maxsize=1)
def x264_params() -> str:
    """x264-params for the encoder: an explicit instruction-set mask without AVX-512 where it can be read."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            line = next((ln for ln in handle if ln.startswith("flags")), "")
    except OSError:
        return ""
    flags = set(line.partition(":")[2].split())
    if not flags:
        return ""
    mask = X264_CACHELINE_64
    for name, bits in X264_CPU_FLAGS:
        if name in flags:
            mask |= bits
    return f"asm={mask}"


class StreamCodecError(ValueError):
    """A stream cannot be encoded or decoded."""


def _av():
    try:
        import av
    except ImportError:
        raise StreamCodecError("the h264 codec needs PyAV: pip install av (or 'sslfer[video]')") from None
    return av


def encode_stream(images: np.ndarray, crf: int, *, preset: str = PRESET) -> bytes:
    """(N, H, W, 3) uint8 RGB frames -> one self-contained H.264 stream; H and W must be even."""
    av = _av()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise StreamCodecError(f"expected (N, H, W, 3) uint8 frames, N > 0, got {images.shape} {images.dtype}")
    n, h, w, _ = images.shape
    if h % 2 or w % 2:
        raise StreamCodecError(f"h264 frames need an even width and height (4:2:0 chroma), got {w}x{h}")
    ctx = av.CodecContext.create(ENCODER, "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, PIX_FMT
    ctx.time_base = STREAM_TIME_BASE
    ctx.framerate = 1 / STREAM_TIME_BASE
    ctx.thread_count = 1
    # One GOP per stream (g = N): a stream is the unit of random access; no scene-cut keyframes, so the
    # bytes do not depend on x264's cut detector.
    options = {"crf": str(int(crf)), "preset": preset, "g": str(max(n, 1)), "sc_threshold": "0", "threads": "1"}
    if x264_params():
        options["x264-params"] = x264_params()
    ctx.options = options
    out = bytearray()
    for i, image in enumerate(images):
        frame = _yuv_frame(av, cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2YUV_I420), w, h)
        frame.pts = i
        for packet in ctx.encode(frame):
            out += bytes(packet)
    for packet in ctx.encode(None):
        out += bytes(packet)
    return bytes(out)


def _yuv_frame(av, i420: np.ndarray, w: int, h: int):
    """A yuv420p VideoFrame whose every byte, row padding included, is set: libx264 reads some of the
    padding, and uninitialised padding made the output depend on what the process had encoded before."""
    frame = av.VideoFrame(w, h, PIX_FMT)
    planes = (i420[:h], i420[h: h + h // 4].reshape(h // 2, w // 2), i420[h + h // 4:].reshape(h // 2, w // 2))
    for plane, pixels in zip(frame.planes, planes):
        padded = np.zeros((pixels.shape[0], plane.line_size), np.uint8)
        padded[:, : pixels.shape[1]] = pixels
        plane.update(padded)
    return frame


def decode_stream(data, count: int, height: int, width: int) -> np.ndarray:
    """The `count` frames of a stream made by encode_stream, as (count, height, width, 3) uint8 RGB."""
    av = _av()
    buf = np.asarray(data, dtype=np.uint8).tobytes() if not isinstance(data, (bytes, bytearray)) else bytes(data)
    ctx = av.CodecContext.create(DECODER, "r")
    ctx.thread_count = 1  # loaders run one reader per worker process
    out = np.empty((count, height, width, 3), np.uint8)
    got = 0
    try:
        packets = ctx.parse(buf) + ctx.parse(None)
        frames = [f for p in packets for f in ctx.decode(p)] + list(ctx.decode(None))
    except av.error.FFmpegError as exc:
        raise StreamCodecError(f"corrupt h264 stream ({exc})") from None
    for frame in frames:
        if got >= count or frame.width != width or frame.height != height:
            raise StreamCodecError(f"h264 stream does not hold {count} frames of {width}x{height}")
        i420 = frame.to_ndarray(format=PIX_FMT)
        out[got] = cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420)
        got += 1
    if got != count:
        raise StreamCodecError(f"h264 stream holds {got} frames, expected {count}")
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays (inf when equal)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
