"""Streaming batches out of shards: every row is a stored frame of the video it claims, views obey the
time rules, batches mix videos, ranks/workers own disjoint videos, and skipping for resume is exact."""
import hashlib
import math

import numpy as np
import pytest
import torch

from sslfer_core.shard_format import ShardReader, decode_jpeg
from train.methods.contrastive.epoch_plan import PlanConfig, assign_videos
from train.methods.contrastive.shard_stream import ShardStream, make_loader
from train.shard_index import build_shard_index
from train_fixtures import make_train_shards

TOL = 1e-6


def _digest(image: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest()


def _catalogue(index):
    """digest of every stored face/swap -> (global video, frame, kind), decoded as the stream decodes."""
    out = {}
    for gid in range(index.num_videos):
        reader = ShardReader(index.paths[index.video_shard[gid]])
        first = int(index.video_first_row[gid])
        rows = slice(first, first + int(index.video_frames[gid]))
        faces = reader.read_images("face", rows)
        swaps = reader.read_images("swaps", rows) if reader.header.swaps_per_frame else None
        ok = reader.read_array("swap_ok", rows) if swaps is not None else None
        for f in range(len(faces)):
            out[_digest(faces[f])] = (gid, f, "face")
            if swaps is not None:
                for k in range(swaps.shape[1]):
                    out[_digest(swaps[f, k])] = (gid, f, "swap" if ok[f, k] else "bad-swap")
        reader.close()
    return out


def _rows(batch, catalogue):
    return [catalogue[_digest(img)] for img in batch["images"].numpy()]


@pytest.fixture(scope="module")
def shard_root(tmp_path_factory):
    return make_train_shards(tmp_path_factory.mktemp("stream"), shards=3, videos=4, frames=45)


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_rows_are_stored_frames_and_views_obey_time_rules(tmp_path, codec):
    root = make_train_shards(tmp_path, shards=2, videos=3, frames=45, codec=codec)
    index = build_shard_index(sorted(root.glob("*.h5")))
    catalogue = _catalogue(index)
    b = 6
    stream = ShardStream(index, PlanConfig(seed=1, batch_size=b, timeaug=True, hardneg=True, faceswap=True),
                         with_descriptors=True)
    stream.set_epoch(0)
    batches = list(stream)
    assert len(batches) == stream.steps == (6 * 45) // b
    anchors = set()
    for batch in batches:
        rows = _rows(batch, catalogue)
        vids = batch["video_ids"].numpy()
        assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (4 * b, 32, 32, 3)
        for r, (gid, frame, kind) in enumerate(rows):
            assert gid == vids[r] and kind != "bad-swap"
            reader_landmarks = batch["landmarks"][r]
            assert torch.isfinite(reader_landmarks).all()
        ts = index.timestamps
        for s in range(b):
            a, p, h, hp = (rows[v * b + s] for v in range(4))
            assert a[2] == "face" and h[2] == "face"
            assert 0.5 - TOL <= abs(ts[p[0]][p[1]] - ts[a[0]][a[1]]) <= 1.5 + TOL
            if batch["row_valid"][2 * b + s]:
                assert abs(ts[h[0]][h[1]] - ts[a[0]][a[1]]) >= 3 - TOL
                assert abs(ts[hp[0]][hp[1]] - ts[a[0]][a[1]]) >= 3 - TOL
            else:
                assert (h[0], h[1]) == (a[0], a[1])
            anchors.add((a[0], a[1]))
    assert len(anchors) == len(batches) * b  # no frame is an anchor twice in an epoch


def test_landmarks_and_descriptors_belong_to_the_row_frame(shard_root):
    index = build_shard_index(sorted(shard_root.glob("*.h5")))
    catalogue = _catalogue(index)
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=4, timeaug=True, faceswap=True), with_descriptors=True)
    stream.set_epoch(0)
    batch = next(iter(stream))
    for r, (gid, frame, _) in enumerate(_rows(batch, catalogue)):
        reader = ShardReader(index.paths[index.video_shard[gid]])
        row = int(index.video_first_row[gid]) + frame
        np.testing.assert_array_equal(batch["landmarks"][r].numpy(), reader.read_array("landmarks", [row])[0])
        np.testing.assert_array_equal(batch["descriptors"][r].numpy(),
                                      reader.read_array("descriptor", [row])[0].astype(np.float32))
        reader.close()


def test_jpeg_frames_decode_to_the_stored_bytes(tmp_path):
    root = make_train_shards(tmp_path, shards=1, videos=2, frames=20, codec="jpeg", swaps=0)
    index = build_shard_index(sorted(root.glob("*.h5")))
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=2))
    stream.set_epoch(0)
    batch = next(iter(stream))
    reader = ShardReader(index.paths[0])
    encoded = reader.read_array("face", slice(0, reader.num_frames))
    decoded = {_digest(decode_jpeg(buf)) for buf in encoded}
    assert all(_digest(img) in decoded for img in batch["images"].numpy())


def test_batches_mix_videos_from_several_shards(shard_root):
    index = build_shard_index(sorted(shard_root.glob("*.h5")))
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=8, timeaug=True))
    stream.set_epoch(0)
    for batch in stream:  # to the end of the epoch: every anchor from a different video, several shards
        anchors = batch["video_ids"][:8].numpy()
        assert len(set(anchors)) == 8
        assert len(set(index.video_shard[anchors])) >= 2


def test_a_long_clip_never_fills_batches_alone(tmp_path):
    root = make_train_shards(tmp_path / "a", shards=1, videos=5, frames=20)
    make_train_shards(tmp_path / "b", shards=1, videos=1, frames=300, seed=1)
    (tmp_path / "b" / "shard-00000.h5").rename(tmp_path / "long.h5")
    index = build_shard_index([root / "shard-00000.h5", tmp_path / "long.h5"])
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=4, timeaug=True))
    stream.set_epoch(0)
    batches = list(stream)
    assert len(batches) == (5 * 20 + 300) // 4
    assert all(len(set(b["video_ids"][:4].tolist())) == 4 for b in batches)


def test_ranks_and_workers_own_disjoint_videos_and_equal_step_counts(shard_root):
    index = build_shard_index(sorted(shard_root.glob("*.h5")))
    for units in (2, 4, 6):  # fewer units than shards: whole shards; more: single videos
        owned = assign_videos(index, units, seed=0, epoch=3)
        flat = np.concatenate(owned)
        assert sorted(flat.tolist()) == list(range(index.num_videos))
        assert all(len(o) for o in owned)
        if units <= len(index.paths):  # each shard is read by one unit only
            owner = {}
            for u, videos in enumerate(owned):
                for shard in index.video_shard[videos]:
                    assert owner.setdefault(int(shard), u) == u
    seen, counts = [], []
    for rank in range(2):
        stream = ShardStream(index, PlanConfig(seed=0, batch_size=5, timeaug=True), rank=rank, world_size=2)
        stream.set_epoch(0)
        batches = list(stream)
        counts.append(len(batches))
        seen.append({int(v) for b in batches for v in b["video_ids"]})
    assert counts[0] == counts[1] == (12 * 45) // 10
    assert not seen[0] & seen[1]


def test_worker_processes_deliver_batches_in_order_and_resume_skip_is_exact(shard_root):
    index = build_shard_index(sorted(shard_root.glob("*.h5")))
    config = PlanConfig(seed=2, batch_size=6, timeaug=True, hardneg=True, faceswap=True, pool_videos=3)
    stream = ShardStream(index, config, num_workers=2)
    stream.set_epoch(1)
    full = list(make_loader(stream, 2, pin_memory=False))
    assert [int(b["batch_index"]) for b in full] == list(range(stream.steps))
    skip = 3  # odd: DataLoader worker 0 must now serve what worker 1 served in the full epoch
    stream.set_epoch(1, skip_batches=skip)
    tail = list(make_loader(stream, 2, pin_memory=False))
    assert len(tail) == stream.steps - skip
    for a, b in zip(full[skip:], tail):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_epochs_draw_differently_and_repeat_for_the_same_epoch(shard_root):
    index = build_shard_index(sorted(shard_root.glob("*.h5")))
    catalogue = _catalogue(index)
    b = 4
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=b, timeaug=True))
    pairs = []  # per epoch: anchor (video, frame) -> its positive's (video, frame)
    for epoch in (0, 1, 0):
        stream.set_epoch(epoch)
        mapping = {}
        for batch in stream:
            rows = _rows(batch, catalogue)
            for anchor, positive in zip(rows[:b], rows[b:2 * b]):
                mapping[anchor[:2]] = positive[:2]
        pairs.append(mapping)
    assert pairs[0] == pairs[2]
    # Not only the video order: for the same anchors, the temporal positives are drawn afresh each epoch.
    common = pairs[0].keys() & pairs[1].keys()
    assert len(common) > 0.9 * len(pairs[0])
    same = sum(pairs[0][a] == pairs[1][a] for a in common)
    assert same < 0.5 * len(common), (same, len(common))


SWAP_P = 0.8  # the documented rate (README), written here rather than read from PlanConfig


def _within_binomial(hits: int, draws: int, p: float, sigmas: float = 4.0) -> bool:
    """hits/draws within `sigmas` binomial standard deviations of p (4 sigma: a 6e-5 false alarm rate)."""
    return abs(hits / draws - p) <= sigmas * math.sqrt(p * (1 - p) / draws)


def test_faceswap_uses_only_good_swaps_at_about_the_set_rate(tmp_path):
    root = make_train_shards(tmp_path / "ok", shards=1, videos=4, frames=50, swap_ok=True)
    index = build_shard_index(sorted(root.glob("*.h5")))
    catalogue = _catalogue(index)
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=4, timeaug=True, faceswap=True))
    kinds = []
    for epoch in range(8):  # 8 x 200 positives: sigma = sqrt(0.8 * 0.2 / 1600) = 0.01
        stream.set_epoch(epoch)
        kinds += [k for batch in stream for (_, _, k) in _rows(batch, catalogue)[4:]]
    assert _within_binomial(kinds.count("swap"), len(kinds), SWAP_P)

    bad = make_train_shards(tmp_path / "bad", shards=1, videos=4, frames=50, swap_ok=False)
    index = build_shard_index(sorted(bad.glob("*.h5")))
    catalogue = _catalogue(index)
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=4, timeaug=True, faceswap=True))
    batches = []
    for epoch in range(8):
        stream.set_epoch(epoch)
        batches += list(stream)
    assert all(k == "face" for b in batches for (_, _, k) in _rows(b, catalogue))
    assert _within_binomial(sum(int(b["fallbacks"][2]) for b in batches), 4 * len(batches), SWAP_P)


def test_cutmix_targets_are_anchors_of_other_identities(shard_root):
    index = build_shard_index(sorted(shard_root.glob("*.h5")))
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=6, timeaug=True, cutmix=True))
    stream.set_epoch(0)
    used = 0
    for batch in stream:
        target = batch["cutmix_target"]
        rows = (target >= 0).nonzero().squeeze(1)
        assert (rows >= 6).all() and (target[rows] < 6).all()  # positive rows take anchor images
        ident = index.video_identity[batch["video_ids"].numpy()]
        assert (ident[rows.numpy()] != ident[target[rows].numpy()]).all()
        used += len(rows)
    assert used > 0
