import cv2
import numpy as np
import pytest

from face_clip_frames import clip_rows, dlib_models_or_skip, read_frames
from sslfer_core.face_alignment import interocular_distance
from sslfer_core.face_detection import FaceDetector, FaceTracker, as_gray_uint8, choose_face, shape_residual


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(dlib_models_or_skip())


@pytest.fixture(scope="module")
def sampled_frames(voxceleb_mini):
    """Two frames from every clip, 1.6 s apart (early in the clip to keep decoding cheap)."""
    frames = []
    for row in clip_rows(voxceleb_mini):
        last = int(row["frames"]) - 1
        frames += read_frames(voxceleb_mini / row["path"], [min(5, last), min(45, last)])
    return frames


@pytest.fixture(scope="module")
def consecutive(voxceleb_mini):
    row = clip_rows(voxceleb_mini)[0]
    return read_frames(voxceleb_mini / row["path"], range(25))


def _mean_error(a, b):
    return float(np.mean(np.hypot(*(np.asarray(a) - np.asarray(b)).T))) / interocular_distance(b)


def test_detects_landmarks_on_at_least_95_percent_of_real_frames(detector, sampled_frames):
    found = [detector.detect(frame) for frame in sampled_frames]
    hits = [face for face in found if face is not None]
    assert len(sampled_frames) >= 60
    assert len(hits) >= 0.95 * len(sampled_frames)
    for face in hits:
        assert face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
        assert face.detected
        l, t, r, b = face.box
        # The landmarks sit on the detected face: their centre lies inside the box.
        cx, cy = face.landmarks.mean(axis=0)
        assert l <= cx <= r and t <= cy <= b


def test_no_face_gives_none(detector, sampled_frames):
    assert detector.detect(np.zeros((256, 256, 3), np.uint8)) is None
    frame = sampled_frames[0].copy()
    face = detector.detect(frame)
    # Paint over the face (and a margin) with the frame's mean colour: a real frame with no face left.
    l, t, r, b = face.box
    pad = (r - l) // 2
    frame[max(t - pad, 0):b + pad, max(l - pad, 0):r + pad] = frame.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    assert detector.detect(frame) is None


def test_gray_and_rgba_inputs_are_converted(detector, sampled_frames):
    frame = sampled_frames[2]
    reference = detector.detect(frame)
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([frame, np.full(frame.shape[:2], 255, np.uint8)])
    for variant in (gray, gray[:, :, None], rgba):
        face = detector.detect(variant)
        assert face is not None
        assert _mean_error(face.landmarks, reference.landmarks) < 0.02


def test_unusable_inputs_raise_value_error(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        detector.detect(np.zeros((64, 64, 2), np.uint8))
    with pytest.raises(ValueError):
        as_gray_uint8(np.zeros((0, 0), np.uint8))


def test_upsampling_follows_the_expected_face_size():
    models = dlib_models_or_skip()
    assert FaceDetector(models, min_face_px=40).upsample == 1
    assert FaceDetector(models, min_face_px=20).upsample == 2
    large = FaceDetector(models, min_face_px=200)
    assert large.upsample == 0 and large.downscale < 1.0


def test_two_similar_faces_are_flagged_ambiguous(detector, sampled_frames):
    a, b = sampled_frames[0], sampled_frames[4]
    size = (256, 256)
    pair = np.hstack([cv2.resize(a, size), cv2.resize(b, size)])
    face = detector.detect(pair)
    assert face is not None and face.n_faces == 2 and face.ambiguous
    # Shrink one face to a quarter of the area: the larger one is chosen, without ambiguity.
    small = np.zeros((256, 256, 3), np.uint8)
    small[64:192, 64:192] = cv2.resize(b, (128, 128))
    pair = np.hstack([cv2.resize(a, size), small])
    face = FaceDetector(dlib_models_or_skip(), min_face_px=30).detect(pair)
    assert face is not None and not face.ambiguous
    assert face.landmarks[:, 0].mean() < 256


def test_choose_face_prefers_large_then_central():
    boxes = [(0, 0, 50, 50), (100, 100, 200, 200), (400, 400, 420, 420)]
    assert choose_face(boxes, (500, 500)) == (1, False)
    # Equal sizes: the central one wins, and the choice is ambiguous.
    assert choose_face([(0, 0, 100, 100), (200, 200, 300, 300)], (500, 500)) == (1, True)


def test_tracker_redetects_every_k_frames_and_follows_the_face(detector, consecutive):
    tracker = FaceTracker(detector, redetect_every=10)
    observations = [tracker.update(frame) for frame in consecutive]
    assert all(o is not None for o in observations)
    assert [i for i, o in enumerate(observations) if o.detected] == [0, 10, 20]
    for frame, tracked in zip(consecutive, observations):
        reference = detector.detect(frame)
        assert _mean_error(tracked.landmarks, reference.landmarks) < 0.05
        assert tracked.detected or 0.0 < tracked.score <= 1.0


def test_tracker_redetects_on_a_cut_and_returns_none_on_black(detector, consecutive, sampled_frames):
    tracker = FaceTracker(detector, redetect_every=50)
    for frame in consecutive[:3]:
        tracker.update(frame)
    other = sampled_frames[-1]  # another clip: the face is elsewhere and of another size
    after_cut = tracker.update(other)
    assert after_cut is not None and after_cut.detected
    assert _mean_error(after_cut.landmarks, detector.detect(other).landmarks) < 0.02
    assert tracker.update(np.zeros_like(other)) is None
    assert tracker.update(other).detected


def test_fit_quality_drops_for_a_distorted_shape(detector, consecutive):
    landmarks = detector.detect(consecutive[0]).landmarks
    tracker = FaceTracker(detector)
    assert tracker.fit_quality(landmarks, landmarks) > 0.3
    assert shape_residual(landmarks) < 0.18
    distorted = landmarks.copy()
    distorted[48:68] += (0.0, 0.8 * interocular_distance(landmarks))  # mouth torn off the face
    assert tracker.fit_quality(distorted, landmarks) == 0.0
    shifted = landmarks + 0.5 * interocular_distance(landmarks)
    assert tracker.fit_quality(shifted, landmarks) == 0.0


def test_cnn_fallback_finds_a_face_the_hog_detector_misses(consecutive):
    models = dlib_models_or_skip()
    frame = consecutive[0]
    h, w = frame.shape[:2]
    rotated = cv2.warpAffine(frame, cv2.getRotationMatrix2D((w / 2, h / 2), 45.0, 1.0), (w, h), borderMode=cv2.BORDER_REPLICATE)
    assert FaceDetector(models, min_face_px=80).detect(rotated) is None
    face = FaceDetector(models, min_face_px=80, use_cnn_fallback=True).detect(rotated)
    assert face is not None and face.detected
    l, t, r, b = face.box
    assert l < w / 2 < r and t < h / 2 + 20 < b  # the face is near the frame centre in this clip
