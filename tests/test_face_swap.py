import cv2
import numpy as np
import pytest

from face_clip_frames import dlib_models_or_skip, one_clip_per_identity, read_frames
from sslfer_core.face_alignment import INNER_FACE, align_face, interocular_distance, similarity_matrix, template_landmarks, transform_points
from sslfer_core.face_detection import FaceDetector
from sslfer_core.face_swap import feathered_hull_mask, swap_face


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(dlib_models_or_skip())


@pytest.fixture(scope="module")
def crops(voxceleb_mini, detector):
    """128x128 aligned faces of eight different identities."""
    out = []
    for row in one_clip_per_identity(voxceleb_mini)[::4][:8]:
        frame = read_frames(voxceleb_mini / row["path"], [10])[0]
        face = detector.detect(frame)
        assert face is not None
        out.append(align_face(frame, face.landmarks, 128))
    return out


def test_swaps_between_identities_keep_the_expression_geometry(crops, detector):
    errors, detected, pairs = [], 0, [(i, (i + step) % len(crops)) for step in (1, 3) for i in range(len(crops))]
    for i, j in pairs:
        expression, donor = crops[i], crops[j]
        result = swap_face(expression.image, expression.landmarks, donor.image, donor.landmarks)
        assert result.ok and result.reason == "ok"
        assert result.image.shape == donor.image.shape and result.image.dtype == np.uint8
        outside = result.mask == 0
        assert outside.any() and np.array_equal(result.image[outside], donor.image[outside])
        assert not np.array_equal(result.image, donor.image)
        face = detector.detect(result.image)
        if face is None:
            continue
        detected += 1
        # Where the expression's inner face should be after the Procrustes fit.
        expected = transform_points(similarity_matrix(expression.landmarks[INNER_FACE], donor.landmarks[INNER_FACE]), expression.landmarks)
        errors.append(np.mean(np.hypot(*(face.landmarks[INNER_FACE] - expected[INNER_FACE]).T)) / interocular_distance(expected))
    assert detected >= 0.9 * len(pairs)
    assert np.mean(errors) <= 0.06


def test_swap_is_deterministic(crops):
    a, b = crops[0], crops[1]
    first = swap_face(a.image, a.landmarks, b.image, b.landmarks, seed=3)
    again = swap_face(a.image.copy(), a.landmarks.copy(), b.image.copy(), b.landmarks.copy(), seed=3)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.mask, again.mask)


def test_mask_is_feathered_and_covers_both_inner_faces(crops):
    a, b = crops[2], crops[3]
    result = swap_face(a.image, a.landmarks, b.image, b.landmarks)
    mask = result.mask
    assert mask.dtype == np.float32 and mask.min() == 0.0 and mask.max() == 1.0
    # Along the eye line the mask rises from 0 to 1 over several pixels: a soft edge, not a step.
    row = mask[int(round(b.landmarks[36:48, 1].mean()))]
    first_one = int(np.argmax(row == 1.0))
    assert np.count_nonzero((row[:first_one] > 0) & (row[:first_one] < 1)) >= 4
    for x, y in np.round(b.landmarks[INNER_FACE]).astype(int):
        assert mask[y, x] == 1.0
    assert mask[0, 0] == 0.0 and mask[-1, -1] == 0.0


def test_colour_correction_saturates_instead_of_wrapping():
    # White face on black, pasted on a uniformly grey donor: the correction factor exceeds 1 near
    # the face edge, so white pixels ask for > 255. They must clip to 255, never wrap to dark values.
    size = 128
    landmarks = template_landmarks(size).astype(np.float32)
    expression = np.zeros((size, size, 3), np.uint8)
    expression[int(0.25 * size):int(0.8 * size), int(0.3 * size):int(0.7 * size)] = 255
    donor = np.full((size, size, 3), 200, np.uint8)
    result = swap_face(expression, landmarks, donor, landmarks)
    assert result.ok
    white = (expression[..., 0] == 255) & (result.mask > 0)
    assert white.any()
    assert result.image[white].min() >= 200
    assert (result.image[white] == 255).any()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda lm: lm + (500.0, 0.0), "out of frame"),
        (lambda lm: np.full_like(lm, 64.0), "too small"),
        (lambda lm: np.where(np.arange(68)[:, None] == 30, np.nan, lm), "not finite"),
        (lambda lm: np.concatenate([lm[:17], lm[17:][::-1]]), "degenerate fit"),
        (lambda lm: (lm - 64.0) * 0.3 + 64.0, "degenerate fit"),
    ],
)
def test_bad_inputs_refuse_without_an_image(crops, damage, reason):
    a, b = crops[4], crops[5]
    result = swap_face(a.image, damage(a.landmarks.astype(np.float64)), b.image, b.landmarks)
    assert not result.ok and result.image is None and result.mask is None
    assert reason in result.reason


def test_feathered_mask_is_exactly_zero_beyond_the_feather():
    landmarks = template_landmarks(128)
    feather = 9
    mask = feathered_hull_mask([landmarks], (128, 128), feather)
    hard = (feathered_hull_mask([landmarks], (128, 128), 1) > 0).astype(np.uint8)
    # Distance of every pixel to the unfeathered hulls.
    distance = cv2.distanceTransform(1 - hard, cv2.DIST_L2, 5)
    # Square kernels reach (1 + sqrt 2) / 2 * feather along the diagonals.
    assert (mask[distance > 1.21 * feather + 0.5] == 0).all()
    assert (mask[distance > 0.9 * feather] > 0).any()
    assert (mask[hard > 0] == 1.0).all()
    assert ((mask > 0) & (mask < 1))[distance > 0].any()
