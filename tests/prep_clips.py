"""Small synthetic clips for the sslfer-prep tests, written with cv2.VideoWriter (mp4v).

Faces come from the two public-domain portraits shipped with scikit-image and matplotlib (see
preprocess.demo_sample), centred in a 256 px frame; the frame drifts a few pixels per frame so the
tracker has something to follow. Mirrored portraits count as further identities.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from needs import dlib_models, missing

SIDE = 256


@functools.lru_cache(maxsize=1)
def portraits() -> dict[str, np.ndarray]:
    """identity -> 256x256 RGB with a ~100 px face in the middle (four identities: two photos, mirrored)."""
    from preprocess.demo_sample import load_portraits
    from sslfer_core.face_detection import FaceDetector

    found = load_portraits(FaceDetector(dlib_models()))
    out = {}
    for portrait in found:
        out[portrait.identity] = portrait.image
        out[portrait.identity + "m"] = np.ascontiguousarray(portrait.image[:, ::-1])
    return out


def moving_frames(image: np.ndarray, count: int, *, scale: float = 1.0, drift: float = 1.5) -> list[np.ndarray]:
    """`count` frames of `image` scaled about the centre and shifted along a small circle."""
    frames = []
    for i in range(count):
        angle = 2 * np.pi * i / max(count, 1)
        dx, dy = drift * 3 * np.cos(angle), drift * 3 * np.sin(angle)
        matrix = np.array([[scale, 0, (1 - scale) * SIDE / 2 + dx], [0, scale, (1 - scale) * SIDE / 2 + dy]])
        frames.append(cv2.warpAffine(image, matrix, (SIDE, SIDE), borderMode=cv2.BORDER_REFLECT))
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        missing("OpenCV cannot write mp4v video here")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def face_clip(path: Path, identity: str, count: int = 20, fps: float = 10.0, **kwargs) -> Path:
    return write_video(path, moving_frames(portraits()[identity], count, **kwargs), fps)


def no_face_clip(path: Path, count: int = 20, fps: float = 10.0) -> Path:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8), (31, 31), 0)
    return write_video(path, moving_frames(base, count), fps)


def two_face_clip(path: Path, first: str, second: str, count: int = 20, fps: float = 10.0) -> Path:
    """Two faces of the same size side by side: the main face is ambiguous."""
    left, right = moving_frames(portraits()[first], count), moving_frames(portraits()[second], count)
    return write_video(path, [np.hstack([a, b]) for a, b in zip(left, right)], fps)


def frame_folder(folder: Path, identity: str, count: int = 12, mode: str = "rgb") -> Path:
    """PNG frames named 1.png .. N.png; mode 'gray' writes 1-channel, 'rgba' 4-channel images."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(moving_frames(portraits()[identity], count), start=1):
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        if mode == "gray":
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
        elif mode == "rgba":
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
            image[..., 3] = 200
        else:
            image = bgr
        ok, data = cv2.imencode(".png", image)
        assert ok
        data.tofile(str(folder / f"{i}.png"))
    return folder


def good_clip_set(root: Path, clips_per_identity: int = 1, count: int = 20) -> Path:
    """One short talking-head clip per identity (four identities), in the `videos` layout <identity>/<clip>.mp4."""
    for identity in portraits():
        for c in range(clips_per_identity):
            face_clip(root / identity / f"clip{c}.mp4", identity, count=count, drift=1.0 + 0.5 * c)
    return root


def shard_contents(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """video id -> its stored arrays, over every shard listed in OUT's manifest."""
    from data_manifest.manifest import load_manifest, shard_paths
    from sslfer_core.shard_format import ShardReader

    videos = {}
    for path in shard_paths(out, load_manifest(out)):
        with ShardReader(path) as reader:
            for v, video_id in enumerate(reader.videos.video_id):
                rows = reader.video_rows(v)
                item = {name: reader.read_array(name, rows) for name in
                        ("landmarks", "timestamp", "frame_index", "det_score", "descriptor", "swap_ok")
                        if reader.has_field(name)}
                item["face"] = reader.read_images("face", rows)
                item["eyes"] = reader.read_images("eyes", rows)
                item["mouth"] = reader.read_images("mouth", rows)
                if reader.has_field("swaps"):
                    item["swaps"] = reader.read_images("swaps", rows)
                item["identity"] = reader.videos.identity[v]
                videos[video_id] = item
    return videos


def assert_same_contents(a: dict, b: dict, fields=None) -> None:
    assert sorted(a) == sorted(b)
    for video_id in a:
        for name in fields or a[video_id]:
            assert np.array_equal(a[video_id][name], b[video_id][name]), f"{video_id}: {name} differs"


def write_timed_video(path: Path, frames: list[np.ndarray], pts: list[int], time_base: int,
                      rate: float = 25.0) -> Path:
    """An mpeg4 mp4 written with PyAV whose frame i is presented at pts[i] / time_base seconds: variable
    frame rates, or a container rate (`rate`, with a matching time base) that the frames do not keep."""
    from fractions import Fraction

    try:
        import av
    except ImportError:
        missing("PyAV (the [test] extra) is needed to write clips with chosen presentation times")
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(rate).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, time_base)
        for image, t in zip(frames, pts):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, time_base)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# A phone-style variable-rate clip: 2 s at 25 fps, then 10 s at 5 fps (presentation times in ms).
VFR_PTS_MS = [40 * i for i in range(50)] + [2000 + 200 * i for i in range(50)]
