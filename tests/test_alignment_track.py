"""Zero-phase smoothing of alignment transforms (sslfer_core/alignment_track.py)."""
import numpy as np
import pytest

from sslfer_core.alignment_track import (
    StreamingTrackSmoother, is_jump, params_matrix, similarity_params, smooth_track, window_radius,
)
from sslfer_core.face_alignment import alignment_matrix, template_landmarks

SIZE = 160


def base_params() -> np.ndarray:
    # A face of inter-ocular distance ~70 px in a 480 px frame, rotated a little.
    landmarks = template_landmarks(SIZE) * 1.7 + np.array([150.0, 120.0])
    angle = np.deg2rad(4.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return similarity_params(alignment_matrix(landmarks @ rot.T, SIZE))


def test_params_round_trip():
    p = base_params()
    np.testing.assert_allclose(similarity_params(params_matrix(p)), p)


def test_constant_and_linear_tracks_are_unchanged():
    p = base_params()
    constant = np.tile(p, (40, 1))
    np.testing.assert_allclose(smooth_track(constant, 2.0, SIZE), constant, rtol=0, atol=1e-12)
    # A steady pan: the straight-line fit keeps it, also at both ends (a plain average would lag there).
    ramp = constant.copy()
    ramp[:, 2] += 0.5 * np.arange(40)
    np.testing.assert_allclose(smooth_track(ramp, 2.0, SIZE), ramp, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(smooth_track(ramp, 0.0, SIZE), ramp)


def test_noisy_track_jitter_falls_as_the_gaussian_formula_says():
    rng = np.random.default_rng(0)
    n, sigma, noise = 20000, 2.0, 0.5
    track = np.tile(base_params(), (n, 1))
    track[:, 2] += rng.normal(0, noise, n)
    smoothed = smooth_track(track, sigma, SIZE)
    raw_jitter = np.std(np.diff(track[:, 2]))
    new_jitter = np.std(np.diff(smoothed[:, 2]))
    assert raw_jitter == pytest.approx(np.sqrt(2) * noise, rel=0.02)
    # Inside a segment the filter is the normalised Gaussian w over -R..R; the difference of filtered
    # white noise has variance noise^2 * sum((w[k] - w[k-1])^2), w padded with zeros.
    r = window_radius(sigma)
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w /= w.sum()
    expected = noise * np.sqrt(np.sum(np.diff(np.concatenate([[0.0], w, [0.0]])) ** 2))
    assert new_jitter == pytest.approx(expected, rel=0.05)
    assert new_jitter < 0.15 * raw_jitter


def test_a_jump_is_not_smeared():
    p = base_params()
    track = np.tile(p, (30, 1))
    # The face moves by 100 source px (> 0.5 inter-ocular distances) at frame 12: a cut.
    track[12:, 2] += 100 * p[0]
    assert is_jump(track[11], track[12], SIZE) and not is_jump(track[0], track[1], SIZE)
    smoothed = smooth_track(track, 3.0, SIZE)
    np.testing.assert_allclose(smoothed[:12], track[:12], atol=1e-9)
    np.testing.assert_allclose(smoothed[12:], track[12:], atol=1e-9)


def test_breaks_split_segments():
    p = base_params()
    track = np.tile(p, (20, 1))
    track[10:, 3] += 3.0  # small (not a jump), but the caller says frame 10 starts a new segment
    np.testing.assert_allclose(smooth_track(track, 2.0, SIZE, breaks=[10]), track, atol=1e-9)
    assert np.abs(smooth_track(track, 2.0, SIZE)[9, 3] - p[3]) > 0.5  # without the break it is blended


@pytest.mark.parametrize("sigma", [0.7, 2.0, 4.0])
def test_streaming_equals_offline(sigma):
    rng = np.random.default_rng(1)
    p = base_params()
    track = np.tile(p, (70, 1)) + rng.normal(0, [1e-3, 1e-3, 0.8, 0.8], (70, 4))
    track[40:, 2] += 100 * p[0]  # a jump
    breaks = [25, 26, 60]  # dropped frames before 25, 26 and 60
    expected = smooth_track(track, sigma, SIZE, breaks=breaks)
    smoother = StreamingTrackSmoother(sigma, SIZE)
    got = {}
    for i, params in enumerate(track):
        if i in breaks:
            got.update(smoother.end_segment())
        for payload, value in smoother.push(params, i):
            got[payload] = value
        assert len(smoother._params) <= 2 * smoother.radius + 2  # bounded look-ahead and history
    got.update(smoother.flush())
    assert sorted(got) == list(range(70))
    np.testing.assert_allclose(np.stack([got[i] for i in range(70)]), expected, rtol=0, atol=1e-12)


def test_streaming_returns_frames_after_radius():
    smoother = StreamingTrackSmoother(1.0, SIZE)
    p = base_params()
    out = [smoother.push(p, i) for i in range(6)]
    assert [len(o) for o in out] == [0, 0, 0, 1, 1, 1]  # R = 3 frames of look-ahead
    assert [payload for payload, _ in smoother.flush()] == [3, 4, 5]
    with pytest.raises(ValueError):
        StreamingTrackSmoother(0.0, SIZE)
