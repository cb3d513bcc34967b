"""Clips from videos for dynamic FER: which frames, and reading them.

Training: `frames` frames `stride` apart from a random temporal window (a video shorter than the window gives
`frames` indices spread evenly over all of it). Test: `test_clips` clips over the strided frame list, the first
at its start and the last at its end (2 = start and end, as the reference), each scored and their softmax
averaged per video by the caller. Frames are resized to size x size as they are (the datasets ship face crops);
`align` (e.g. train.evaluation.alignment.FaceAligner) replaces each frame by its aligned face where one is found.
Frame folders are read with cv2.imread, video files decoded with cv2.VideoCapture.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from train.evaluation.video_datasets import VideoRecord, frame_files, quiet_ffmpeg


@dataclass(frozen=True)
class ClipSampling:
    frames: int = 16
    stride: int = 4  # the reference's sampling rate: 4 for DFEW and MAFW, 1 for FERV39k
    test_clips: int = 2


def train_clip_indices(num_frames: int, sampling: ClipSampling, rng: np.random.Generator) -> np.ndarray:
    span = (sampling.frames - 1) * sampling.stride + 1
    if num_frames < span:
        return np.round(np.linspace(0, num_frames - 1, sampling.frames)).astype(np.int64)
    start = int(rng.integers(0, num_frames - span + 1))
    return start + sampling.stride * np.arange(sampling.frames, dtype=np.int64)


def eval_clip_indices(num_frames: int, sampling: ClipSampling) -> list[np.ndarray]:
    """Clips evenly placed over the strided frames 0, s, 2s, ...: the first at the start, the last at the end."""
    strided = np.arange(0, num_frames, sampling.stride, dtype=np.int64)
    if len(strided) < sampling.frames:  # pad by repeating the last frame, as the reference
        strided = np.concatenate([strided, np.full(sampling.frames - len(strided), strided[-1])])
    last_start = len(strided) - sampling.frames
    if sampling.test_clips == 1:
        starts = [last_start // 2]
    else:
        starts = [int(round(k * last_start / (sampling.test_clips - 1))) for k in range(sampling.test_clips)]
    return [strided[s:s + sampling.frames] for s in starts]


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    shrinking = image.shape[0] > size or image.shape[1] > size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


class FrameSource:
    """Reads chosen frames of one video (frame folder or video file) as RGB uint8."""

    def __init__(self, record: VideoRecord) -> None:
        self.record = record
        self._files = frame_files(Path(record.source)) if record.kind == "frames" else None

    def read(self, indices: np.ndarray) -> list[np.ndarray] | None:
        """Frames at `indices` (repeats allowed), or None when any of them cannot be decoded."""
        wanted = sorted(set(int(i) for i in indices))
        got: dict[int, np.ndarray] = {}
        if self._files is not None:
            for i in wanted:
                if i >= len(self._files):
                    return None
                image = cv2.imread(str(self._files[i]), cv2.IMREAD_COLOR)
                if image is None:
                    return None
                got[i] = image
        else:
            quiet_ffmpeg()
            capture = cv2.VideoCapture(self.record.source)
            try:
                position, last = 0, None
                for i in wanted:
                    while position <= i:  # decode forward; seeking by frame is not exact for every codec
                        ok, frame = capture.read()
                        if not ok:
                            break
                        last, position = frame, position + 1
                    if last is None:
                        return None
                    # past the last decodable frame (a header can overstate the count): the last decoded one
                    got[i] = last
            finally:
                capture.release()
        return [cv2.cvtColor(got[int(i)], cv2.COLOR_BGR2RGB) for i in indices]


class VideoClips(Dataset):
    """Item = (clip uint8 (clips, T, S, S, 3), ok, label, position).

    train=True: one clip per video from a random window; the rng is seeded by (seed, epoch, position), so an
    epoch's clips are reproducible in any worker. train=False: `test_clips` clips per video.
    """

    def __init__(self, records: list[VideoRecord], labels: np.ndarray, size: int, sampling: ClipSampling, *,
                 train: bool, seed: int = 0, align: Callable[[np.ndarray], np.ndarray | None] | None = None) -> None:
        self.records, self.labels = records, labels
        self.size, self.sampling, self.train, self.seed = size, sampling, train, seed
        self.align = align
        self.epoch = 0
        self.unaligned_frames = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def clip_indices(self, position: int) -> list[np.ndarray]:
        record = self.records[position]
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, position))
            return [train_clip_indices(record.num_frames, self.sampling, rng)]
        return eval_clip_indices(record.num_frames, self.sampling)

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        if self.align is not None:
            aligned = self.align(frame)
            if aligned is not None:
                return _resize(aligned, self.size)
            self.unaligned_frames += 1
        return _resize(frame, self.size)

    def __getitem__(self, position: int):
        clips = self.clip_indices(position)
        shape = (len(clips), self.sampling.frames, self.size, self.size, 3)
        frames = FrameSource(self.records[position]).read(np.concatenate(clips))
        if frames is None:
            return torch.zeros(shape, dtype=torch.uint8), False, int(self.labels[position]), position
        array = np.stack([self._prepare(f) for f in frames]).reshape(shape)
        return torch.from_numpy(array), True, int(self.labels[position]), position
