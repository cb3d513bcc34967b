"""Decode a clip (video file or frame folder) and keep the frames nearest a target rate, as RGB uint8."""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from preprocess.sources import VideoSource, list_frame_files

FALLBACK_FPS = 25.0  # used when a container states no usable frame rate (said in the run's summary)
# Containers such as Matroska and WebM round presentation times to whole milliseconds: a frame up to this
# much before an interval boundary counts as inside the next interval.
TIME_TOLERANCE_S = 1e-3
# FFmpeg would print its own complaints about broken files to stderr; they are recorded in failures.jsonl
# instead. Read by OpenCV when it first opens a video, so setting it here (before any capture) suffices.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


class UnreadableClip(Exception):
    """The clip cannot be opened or yields no frame at all."""


@dataclass
class SampledFrame:
    index: int  # source frame number
    timestamp: float  # seconds from the clip start
    image: np.ndarray  # (H, W, 3) uint8 RGB


@contextlib.contextmanager
def open_capture(path: str | os.PathLike):
    """cv2.VideoCapture of any path. OpenCV crashes (SIGSEGV) on a str path that holds bytes which are not
    UTF-8 (Python's surrogate escapes); such a file is opened through a symlink with an ASCII name in a
    private temporary folder."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        with tempfile.TemporaryDirectory(prefix="sslfer-clip-") as folder:
            link = os.path.join(folder, "clip" + "".join(c for c in Path(text).suffix if c.isascii()))
            os.symlink(os.path.abspath(text), link)
            capture = cv2.VideoCapture(link)
            try:
                yield capture
            finally:
                capture.release()
        return
    capture = cv2.VideoCapture(text)
    try:
        yield capture
    finally:
        capture.release()


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """OpenCV's decoded array (gray, BGR, BGRA, 8 or 16 bit) as 3-channel RGB uint8."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unsupported image shape {image.shape}")


def read_image_rgb(path: str | Path) -> np.ndarray | None:
    """RGB uint8 of an image file, or None when it cannot be decoded. Works for any path encoding."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    try:
        return to_rgb_uint8(image)
    except ValueError:
        return None


class TimeSampler:
    """Keeps the first frame of each 1/target_fps interval of presentation time, so a clip is sampled
    uniformly in time whatever its frame rate does (phone and screen recordings change it mid-clip).
    Every frame is kept when the target is above the clip's rate."""

    def __init__(self, target_fps: float):
        self.target_fps = float(target_fps)
        self._last: int | None = None

    def keep(self, seconds: float) -> bool:
        interval = math.floor((seconds + TIME_TOLERANCE_S) * self.target_fps)
        if self._last is not None and interval <= self._last:
            return False
        self._last = interval
        return True


def usable_fps(value: float) -> bool:
    return math.isfinite(value) and 1.0 <= value <= 1000.0


@dataclass
class ClipReader:
    """Iterate the sampled frames of one clip. After iteration, `unreadable_frames` lists frame numbers
    of a frame folder that could not be decoded (a video stops at its first undecodable frame)."""

    source: VideoSource
    target_fps: float
    source_fps: float = 0.0
    fps_note: str = ""
    frames_total: int = 0
    unreadable_frames: list[int] = field(default_factory=list)

    def frames(self) -> Iterator[SampledFrame]:
        if self.source.kind == "frames":
            yield from self._folder_frames()
        else:
            yield from self._video_frames()

    def _video_frames(self) -> Iterator[SampledFrame]:
        path = Path(self.source.path)
        if not path.exists():
            raise UnreadableClip("file not found")
        if not path.is_file():  # a FIFO or device would block OpenCV or never end
            raise UnreadableClip("not a regular file")
        if path.stat().st_size == 0:
            raise UnreadableClip("empty file (0 bytes)")
        with open_capture(path) as capture:
            if not capture.isOpened():
                raise UnreadableClip("OpenCV cannot open the video")
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            # A rate outside 1..1000 fps comes from a broken time base, which the presentation times
            # share: frames are then spaced at FALLBACK_FPS.
            timed = usable_fps(fps)
            if not timed:
                self.fps_note = (f"container states fps={fps!r}; assumed {FALLBACK_FPS} fps for the frame times "
                                 "and sampling")
                fps = FALLBACK_FPS
            self.source_fps = fps
            sampler = TimeSampler(self.target_fps)
            clock = PresentationClock(fps) if timed else None
            index = 0
            # grab() decodes every frame (needed for inter-frame codecs); retrieve() converts only kept ones.
            while capture.grab():
                seconds = clock.time(capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0) if clock else index / fps
                if sampler.keep(seconds):
                    ok, bgr = capture.retrieve()
                    if ok and bgr is not None:
                        yield SampledFrame(index, seconds, to_rgb_uint8(bgr))
                    else:
                        self.unreadable_frames.append(index)
                index += 1
            self.frames_total = index
            if clock is not None and clock.untimed:
                self.fps_note = (f"{clock.untimed} of {index} frames had no increasing presentation time; "
                                 f"each was placed 1/{fps:g} s after the frame before it")
            if index == 0:
                raise UnreadableClip("no decodable frame")

    def _folder_frames(self) -> Iterator[SampledFrame]:
        folder = Path(self.source.path)
        if not folder.is_dir():
            raise UnreadableClip("frame folder not found")
        files = list_frame_files(folder)
        self.source_fps = float(self.source.frames_fps or FALLBACK_FPS)
        self.frames_total = len(files)
        sampler = TimeSampler(self.target_fps)
        decoded = 0
        for index, file in enumerate(files):
            if not sampler.keep(index / self.source_fps):
                continue
            image = read_image_rgb(file)
            if image is None:
                self.unreadable_frames.append(index)
                continue
            decoded += 1
            yield SampledFrame(index, index / self.source_fps, image)
        if decoded == 0:
            raise UnreadableClip("no decodable frame image" if files else "folder holds no frame images")


class PresentationClock:
    """Frame times from the decoder's presentation times (seconds from the stream start). A frame whose
    time is missing, negative or not after the last good one (OpenCV reports 0 without a time) is placed
    1/fps after the frame before it, and counted in `untimed`; times never go backwards."""

    def __init__(self, fps: float):
        self.step = 1.0 / fps
        self.untimed = 0
        self._last: float | None = None  # time given to the previous frame
        self._last_good: float | None = None  # the last presentation time that was used as it is

    def time(self, seconds: float) -> float:
        if math.isfinite(seconds) and seconds >= 0 and (self._last_good is None or seconds > self._last_good):
            self._last_good = seconds
            placed = seconds if self._last is None else max(seconds, self._last)
        else:
            self.untimed += 1
            placed = 0.0 if self._last is None else self._last + self.step
        self._last = placed
        return placed


def probe_duration(source: VideoSource) -> tuple[float, float]:
    """(seconds, source fps) from container metadata or the frame count of a folder; (0, 0) when unknown."""
    if source.kind == "frames":
        fps = float(source.frames_fps or FALLBACK_FPS)
        try:
            return len(list_frame_files(source.path)) / fps, fps
        except OSError:
            return 0.0, fps
    if not os.path.isfile(source.path):
        return 0.0, 0.0
    with open_capture(source.path) as capture:
        if not capture.isOpened():
            return 0.0, 0.0
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        count = float(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
    fps = fps if usable_fps(fps) else FALLBACK_FPS
    return (count / fps if math.isfinite(count) and count > 0 else 0.0), fps
