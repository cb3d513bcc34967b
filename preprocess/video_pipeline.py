"""Phase 1 for one clip: sampled frames -> tracked landmarks -> aligned faces, patches, descriptors.

Everything here depends only on the clip and the content config, never on other clips, so a clip gives
the same result in a single run and in any --part of a split run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from preprocess import failures as why
from preprocess.prep_config import PrepConfig
from preprocess.sources import VideoSource
from preprocess.video_decode import ClipReader, UnreadableClip
from preprocess.worker_models import FaceModels

DESCRIPTOR_BATCH = 64
SMALL_FACE_PROBES = 2  # frames kept aside to tell "small face" from "no face" when a clip yields nothing


@dataclass
class VideoResult:
    record: dict  # JSON-able: see preprocess.failures for the fields
    arrays: dict[str, np.ndarray] | None  # None when the clip is skipped


def _base_record(source: VideoSource) -> dict:
    return {"video_id": source.video_id, "identity": source.identity, "path": source.source_path,
            "kind": source.kind, "skipped": False, "frames_sampled": 0, "frames_kept": 0}


def process_video(source: VideoSource, config: PrepConfig, models: FaceModels) -> VideoResult:
    from sslfer_core.alignment_track import StreamingTrackSmoother, params_matrix, similarity_params
    from sslfer_core.face_alignment import AlignmentSmoother, align_with_matrix, alignment_matrix
    from sslfer_core.face_patches import eye_mouth_patches
    from sslfer_core.face_detection import FaceTracker

    record = _base_record(source)
    reader = ClipReader(source, config.fps)
    tracker = FaceTracker(models.detector, redetect_every=config.redetect_every)
    # --smooth-sigma > 0: zero-phase smoothing, which holds up to 3 sigma frames until later ones are
    # known; otherwise the causal average of --smooth.
    track = StreamingTrackSmoother(config.smooth_sigma, config.size) if config.smooth_sigma > 0 else None
    smoother = AlignmentSmoother(config.smooth, size=config.size)
    drops = why.DropLog()
    probes: list[np.ndarray] = []
    kept = {name: [] for name in ("faces", "landmarks", "eyes", "mouth", "timestamps", "frame_index", "det_score")}

    def keep(sample: int, frame, observation, matrix: np.ndarray) -> None:
        try:
            aligned = align_with_matrix(frame.image, observation.landmarks, matrix, config.size)
            if config.patch_size:
                eyes, mouth = eye_mouth_patches(aligned.image, aligned.landmarks, config.patch_size)
        except ValueError:
            drops.add(sample, frame.index, why.BAD_LANDMARKS)
            return
        kept["faces"].append(aligned.image)
        kept["landmarks"].append(aligned.landmarks)
        if config.patch_size:
            kept["eyes"].append(eyes)
            kept["mouth"].append(mouth)
        kept["timestamps"].append(frame.timestamp)
        kept["frame_index"].append(frame.index)
        kept["det_score"].append(observation.score)

    def keep_ready(ready) -> None:
        for (sample_, frame_, observation_), params in ready:
            keep(sample_, frame_, observation_, params_matrix(params))

    sample = -1
    try:
        for sample, frame in enumerate(reader.frames()):
            reason = None
            observation = tracker.update(frame.image)
            if observation is None:
                reason = why.NO_FACE
                if len(probes) < SMALL_FACE_PROBES:
                    probes.append(frame.image)
            elif observation.ambiguous:
                reason = why.AMBIGUOUS
            elif _box_side(observation.box) < config.min_face_px:
                reason = why.SMALL_FACE
            else:
                try:
                    matrix = alignment_matrix(observation.landmarks, config.size)
                except ValueError:
                    reason = why.BAD_LANDMARKS
            if reason is not None:
                drops.add(sample, frame.index, reason)
                smoother.reset()  # do not blend across a gap
                if track is not None:
                    keep_ready(track.end_segment())
                continue
            if track is not None:
                keep_ready(track.push(similarity_params(matrix), (sample, frame, observation)))
            else:
                keep(sample, frame, observation, smoother.smooth(matrix))
        if track is not None:
            keep_ready(track.flush())
    except UnreadableClip as exc:
        record.update(skipped=True, reason=why.UNREADABLE, detail=str(exc))
        return VideoResult(record, None)

    for frame_number in reader.unreadable_frames:
        drops.add(-10, frame_number, why.UNREADABLE_FRAME)  # not adjacent to samples: own range each
    record.update(frames_sampled=sample + 1 + len(reader.unreadable_frames), frames_kept=len(kept["faces"]),
                  source_fps=reader.source_fps, source_frames=reader.frames_total)
    if reader.fps_note:
        record["fps_note"] = reader.fps_note
    if drops.total:
        record.update(dropped=dict(sorted(drops.counts.items())), ranges=drops.ranges)

    count = len(kept["faces"])
    if count < config.min_frames:
        if count == 0:
            reason = drops.dominant() or why.NO_FACE
            detail = f"no usable frame among {record['frames_sampled']} sampled"
            if reason == why.NO_FACE and _faces_below_minimum(probes, models, config.min_face_px):
                reason = why.SMALL_FACE
                detail += f"; a face smaller than --min-face-px {config.min_face_px} was found"
        else:
            reason = why.TOO_FEW_FRAMES
            detail = f"{count} usable frames < --min-frames {config.min_frames}"
        record.update(skipped=True, reason=reason, detail=detail)
        return VideoResult(record, None)

    arrays = {
        "faces": np.stack(kept["faces"]).astype(np.uint8),
        "landmarks": np.stack(kept["landmarks"]).astype(np.float32),
        "timestamps": np.asarray(kept["timestamps"], np.float64),
        "frame_index": np.asarray(kept["frame_index"], np.int32),
        "det_score": np.asarray(kept["det_score"], np.float32),
        "source_fps": np.asarray(reader.source_fps, np.float64),
    }
    if config.patch_size:
        arrays["eyes"] = np.stack(kept["eyes"]).astype(np.uint8)
        arrays["mouth"] = np.stack(kept["mouth"]).astype(np.uint8)
    if models.descriptor is not None:
        arrays["descriptors"] = describe_in_batches(models.descriptor, arrays["eyes"], arrays["mouth"],
                                                    arrays["landmarks"])
        arrays["has_descriptor"] = np.all(np.isfinite(arrays["descriptors"]), axis=1)
    return VideoResult(record, arrays)


def describe_in_batches(descriptor, eyes: np.ndarray, mouth: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    batches = [slice(i, i + DESCRIPTOR_BATCH) for i in range(0, len(eyes), DESCRIPTOR_BATCH)]
    parts = [descriptor.describe(eyes[b], mouth[b], landmarks[b]) for b in batches]
    return np.concatenate(parts).astype(np.float32)


def _box_side(box: tuple[int, int, int, int]) -> int:
    left, top, right, bottom = box
    return min(right - left, bottom - top)


def _faces_below_minimum(images: list[np.ndarray], models: FaceModels, min_face_px: int) -> bool:
    """True when a finer detector finds a face (smaller than the minimum) in a frame the run found none in."""
    detector = models.small_face_detector()
    for image in images:
        found = detector.detect(image)
        if found is not None:
            if _box_side(found.box) < min_face_px:
                return True
    return False
