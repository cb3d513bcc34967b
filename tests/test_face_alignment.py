import cv2
import numpy as np
import pytest

from face_clip_frames import clip_rows, dlib_models_or_skip, read_frames
from sslfer_core.face_alignment import (
    EYES,
    MOUTH,
    RIGID_POINTS,
    TEMPLATE_EYE_LINE,
    TEMPLATE_IOD_FRACTION,
    AlignmentSmoother,
    align_face,
    align_with_matrix,
    alignment_matrix,
    eye_centres,
    interocular_distance,
    procrustes_mean_shape,
    similarity_matrix,
    template_landmarks,
    transform_points,
)
from sslfer_core.face_detection import FaceDetector
from sslfer_core.face_patches import eye_mouth_patches


@pytest.fixture(scope="module")
def faces(voxceleb_mini):
    """(frame, landmarks) for the first frame of six clips of different sizes."""
    detector = FaceDetector(dlib_models_or_skip())
    out = []
    for row in clip_rows(voxceleb_mini)[::6]:
        frame = read_frames(voxceleb_mini / row["path"], [3])[0]
        face = detector.detect(frame)
        assert face is not None
        out.append((frame, face.landmarks))
    return out


def _rotation(angle_deg, scale, shift):
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), shift[0]], [scale * np.sin(a), scale * np.cos(a), shift[1]]])


def test_similarity_fit_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (20, 2))
    truth = _rotation(17.0, 1.7, (-12.0, 30.0))
    assert np.allclose(similarity_matrix(src, transform_points(truth, src)), truth, atol=1e-9)
    with pytest.raises(ValueError):
        similarity_matrix(np.ones((5, 2)), src[:5])


def test_template_places_the_eyes_as_documented():
    size = 200
    left, right = eye_centres(template_landmarks(size))
    assert np.allclose(left, [size / 2 - TEMPLATE_IOD_FRACTION * size / 2, TEMPLATE_EYE_LINE * size], atol=0.05)  # MEAN_SHAPE has 3 decimals
    assert np.allclose(right, [size / 2 + TEMPLATE_IOD_FRACTION * size / 2, TEMPLATE_EYE_LINE * size], atol=0.05)  # MEAN_SHAPE has 3 decimals


def test_procrustes_mean_is_invariant_to_similarity_transforms():
    template = template_landmarks(128)
    moved = [transform_points(_rotation(a, s, (a, -a)), template) for a, s in ((0, 1.0), (20, 0.5), (-35, 2.5))]
    assert np.allclose(procrustes_mean_shape(np.stack(moved)), procrustes_mean_shape(template[None]), atol=1e-9)


def test_aligned_crop_keeps_the_whole_face_with_margin(faces):
    for frame, landmarks in faces:
        aligned = align_face(frame, landmarks, size=128)
        assert aligned.image.shape == (128, 128, 3) and aligned.image.dtype == np.uint8
        assert aligned.landmarks.shape == (68, 2) and aligned.landmarks.dtype == np.float32
        assert aligned.matrix.shape == (2, 3)
        # Rigid points land on the template; jaw and brows stay inside with room for forehead and hair.
        error = np.mean(np.hypot(*(aligned.landmarks[RIGID_POINTS] - template_landmarks(128)[RIGID_POINTS]).T))
        assert error < 0.1 * TEMPLATE_IOD_FRACTION * 128
        assert aligned.landmarks.min() > 0.05 * 128 and aligned.landmarks.max() < 0.95 * 128
        assert aligned.landmarks[17:27, 1].min() > 0.2 * 128  # brows well below the top edge
        # The crop's pixels are the source's pixels at the mapped landmark positions.
        x, y = landmarks[30]
        u, v = np.round(aligned.landmarks[30]).astype(int)
        assert np.abs(aligned.image[v, u].astype(int) - frame[int(round(y)), int(round(x))].astype(int)).max() < 40


def test_rotated_frame_aligns_to_the_same_crop(faces):
    frame, landmarks = faces[0]
    h, w = frame.shape[:2]
    rotation = cv2.getRotationMatrix2D((w / 2, h / 2), 20.0, 1.0)
    rotated = cv2.warpAffine(frame, rotation, (w, h), borderMode=cv2.BORDER_REPLICATE)
    straight = align_face(frame, landmarks)
    turned = align_face(rotated, transform_points(rotation, landmarks))
    assert np.allclose(straight.landmarks, turned.landmarks, atol=1e-3)
    centre = slice(32, 96)
    difference = np.abs(straight.image[centre, centre].astype(int) - turned.image[centre, centre].astype(int))
    assert difference.mean() < 6


def test_align_with_matrix_matches_align_face(faces):
    frame, landmarks = faces[1]
    direct = align_face(frame, landmarks, size=96)
    again = align_with_matrix(frame, landmarks, alignment_matrix(landmarks, 96), 96)
    assert np.array_equal(direct.image, again.image) and np.array_equal(direct.landmarks, again.landmarks)


def test_smoother_reduces_jitter_and_restarts_on_jumps(faces):
    _, landmarks = faces[0]
    base = alignment_matrix(landmarks)
    rng = np.random.default_rng(1)
    noisy = [base + np.hstack([np.zeros((2, 2)), rng.normal(0, 2.0, (2, 1))]) for _ in range(200)]
    smoother = AlignmentSmoother(alpha=0.3)
    smoothed = np.array([smoother.smooth(m)[:, 2] for m in noisy])
    raw = np.array([m[:, 2] for m in noisy])
    assert smoothed[20:].std(axis=0).max() < 0.6 * raw[20:].std(axis=0).min()
    assert np.allclose(AlignmentSmoother(alpha=1.0).smooth(noisy[3]), noisy[3])
    # A matrix for a face far away (a cut) is taken as is, not averaged with the old one.
    far = base.copy()
    far[:, 2] += 60.0
    assert np.allclose(smoother.smooth(far), far)
    smoother.reset()
    assert np.allclose(smoother.smooth(noisy[0]), noisy[0])


def test_eye_and_mouth_patches_cover_their_landmarks():
    size = 128
    landmarks = template_landmarks(size).astype(np.float32)
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 2] = 255  # blue everywhere
    for group, channel in ((EYES, 0), (MOUTH, 1)):
        (x0, y0), (x1, y1) = np.floor(landmarks[group].min(0)).astype(int), np.ceil(landmarks[group].max(0)).astype(int)
        image[y0:y1 + 1, x0:x1 + 1] = 0
        image[y0:y1 + 1, x0:x1 + 1, channel] = 255
    eyes, mouth = eye_mouth_patches(image, landmarks)
    assert eyes.shape == mouth.shape == (64, 64, 3) and eyes.dtype == np.uint8
    # The landmark box fills the patch width (up to the margin) and sits at its vertical centre.
    assert eyes[32, 8:56, 0].min() == 255 and eyes[32, 8:56, 2].max() == 0
    assert mouth[32, 12:52, 1].min() == 255 and mouth[32, 12:52, 2].max() == 0
    assert eyes[2, 32, 2] == 255 and mouth[2, 32, 2] == 255  # square padding shows the surroundings
    small_eyes, _ = eye_mouth_patches(image, landmarks, patch_size=32)
    assert small_eyes.shape == (32, 32, 3)
    with pytest.raises(ValueError):
        eye_mouth_patches(image[..., 0], landmarks)


def test_interocular_distance_of_the_template():
    assert interocular_distance(template_landmarks(100)) == pytest.approx(TEMPLATE_IOD_FRACTION * 100)
