"""TimeAug / HardNeg frame draws: the offset rules hold on every draw, the weighting favours short offsets,
and draws are a pure function of (seed, epoch, video)."""
import numpy as np
import pytest

from train.methods.contrastive.temporal_sampler import (OffsetRules, draw_hardneg, draw_video, positive_candidates,
                                                        video_rng)

RULES = OffsetRules()
TOL = RULES.tolerance  # the only slack: 1 microsecond of float error on stored timestamps


def _videos():
    """Regular 5 and 25 fps clips, a clip with random gaps, and short clips that force fallbacks."""
    rng = np.random.default_rng(123)
    jittered = np.cumsum(rng.uniform(0.05, 0.9, 60))
    return [np.arange(40) / 5.0, np.arange(150) / 25.0, jittered, np.arange(12) / 5.0, np.array([0.0, 0.3])]


def _check_rules(ts, d):
    dt = np.abs(ts[d.positive] - ts[d.anchor])
    ok = ~d.timeaug_fallback
    assert np.all(dt[ok] >= RULES.positive_min - TOL) and np.all(dt[ok] <= RULES.positive_max + TOL)
    assert np.all(d.positive[d.timeaug_fallback] == d.anchor[d.timeaug_fallback])
    hn = d.hardneg >= 0
    assert np.array_equal(hn, ~d.hardneg_fallback)
    assert np.all(np.abs(ts[d.hardneg[hn]] - ts[d.anchor[hn]]) >= RULES.hardneg_min - TOL)
    assert np.all(np.abs(ts[d.hardneg_positive[hn]] - ts[d.anchor[hn]]) >= RULES.hardneg_min - TOL)
    pair = np.abs(ts[d.hardneg_positive[hn]] - ts[d.hardneg[hn]])
    assert np.all(pair >= RULES.positive_min - TOL) and np.all(pair <= RULES.positive_max + TOL)


def test_offset_rules_hold_over_10k_draws():
    drawn = hardnegs = 0
    epoch = 0
    while drawn < 10_000:
        for gid, ts in enumerate(_videos()):
            d = draw_video(ts, video_rng(7, epoch, gid), timeaug=True, hardneg=True)
            assert sorted(d.anchor) == list(range(len(ts)))  # every frame an anchor once
            _check_rules(ts, d)
            drawn += len(d)
            hardnegs += int((d.hardneg >= 0).sum())
        epoch += 1
    assert hardnegs > 5_000  # the rules were exercised, not just fallen back from


def test_candidates_are_exactly_the_frames_in_the_window():
    ts = np.cumsum(np.random.default_rng(5).uniform(0.05, 0.7, 80))
    index, weight = positive_candidates(ts)
    for i in range(len(ts)):
        expected = {j for j in range(len(ts)) if 0.5 - TOL <= abs(ts[j] - ts[i]) <= 1.5 + TOL}
        got = set(index[i][index[i] >= 0].tolist())
        assert got == expected
        for j, w in zip(index[i], weight[i]):
            if j >= 0:
                assert w == pytest.approx(1.0 / abs(ts[j] - ts[i]))


def test_weighting_favours_short_offsets():
    ts = np.arange(400) / 5.0  # offsets 0.6, 0.8, 1.0, 1.2, 1.4 s in both directions
    counts = {}
    for epoch in range(30):
        d = draw_video(ts, video_rng(0, epoch, 0), timeaug=True, hardneg=False)
        middle = (ts[d.anchor] > 2) & (ts[d.anchor] < ts[-1] - 2)  # all ten candidates present
        for off in np.round(np.abs(ts[d.positive] - ts[d.anchor])[middle], 1):
            counts[off] = counts.get(off, 0) + 1
    total = sum(counts.values())
    assert sorted(counts) == [0.6, 0.8, 1.0, 1.2, 1.4]
    norm = sum(1 / o for o in counts)
    for off, n in counts.items():  # p proportional to 1/offset, within 10 % relative
        assert n / total == pytest.approx((1 / off) / norm, rel=0.1)
    assert counts[0.6] > 2 * counts[1.4]


def test_draws_repeat_for_same_seed_and_epoch_and_differ_between_epochs():
    ts = np.arange(60) / 5.0
    a = draw_video(ts, video_rng(3, 1, 9), timeaug=True, hardneg=True)
    b = draw_video(ts, video_rng(3, 1, 9), timeaug=True, hardneg=True)
    c = draw_video(ts, video_rng(3, 2, 9), timeaug=True, hardneg=True)
    for field in ("anchor", "positive", "hardneg", "hardneg_positive"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.anchor, c.anchor)
    assert not np.array_equal(a.positive[np.argsort(a.anchor)], c.positive[np.argsort(c.anchor)])


def test_fallbacks_on_short_and_single_frame_videos():
    short = np.arange(15) / 5.0  # 2.8 s: no frame is 3 s from another
    d = draw_video(short, video_rng(0, 0, 0), timeaug=True, hardneg=True)
    assert d.hardneg_fallback.all() and (d.hardneg == -1).all()
    assert not d.timeaug_fallback.any()
    single = draw_video(np.array([1.0]), video_rng(0, 0, 1), timeaug=True, hardneg=True)
    assert single.timeaug_fallback.all() and single.positive[0] == single.anchor[0]


def test_simclr_positive_is_the_anchor_frame():
    ts = np.arange(50) / 5.0
    d = draw_video(ts, video_rng(0, 0, 0), timeaug=False, hardneg=True)
    assert np.array_equal(d.positive, d.anchor)
    hn = d.hardneg >= 0
    assert np.array_equal(d.hardneg_positive[hn], d.hardneg[hn])
    assert np.all(np.abs(ts[d.hardneg[hn]] - ts[d.anchor[hn]]) >= 3.0 - TOL)


def test_hardneg_found_when_almost_every_far_frame_is_unusable():
    # Far frames are isolated (no neighbour 0.5-1.5 s away) except one pair at 50-51 s: rejection sampling
    # mostly fails and the exact scan must still find the only usable pair.
    ts = np.concatenate([[0.0, 0.1], np.arange(10.0, 50.0, 2.0), [50.0, 51.0], np.arange(60.0, 200.0, 2.0)])
    anchors = np.zeros(200, dtype=np.int64)
    hn, pos = draw_hardneg(ts, anchors, positive_candidates(ts), np.random.default_rng(0))
    assert set(ts[hn].tolist()) <= {50.0, 51.0} and (hn >= 0).all()
    assert np.all(np.abs(ts[pos] - ts[hn]) == 1.0)
