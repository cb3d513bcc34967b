"""Clip batches out of shards: every clip frame is the stored frame the plan names (rows and codec),
worker processes deliver the same batches in order, readers open only inside workers, and resuming
with skip_batches equals the uninterrupted epoch."""
import hashlib

import numpy as np
import pytest
import torch

from clip_fixtures import CLIP_VALID_STARTS, make_clip_shards, pixel_identity
from sslfer_core.shard_format import ShardReader, decode_jpeg
from train.methods.mae.clip_plan import ClipConfig, ClipConfigError
from train.methods.mae.clip_stream import ClipStream, make_clip_loader
from train.shard_index import build_shard_index


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_shard_index(make_clip_shards(tmp_path_factory.mktemp("clipstream")))


def _equal_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_clip_frames_are_the_planned_rows_of_their_video(index):
    stream = ClipStream(index, ClipConfig(clips_per_video=6), seed=3, batch_size=4)
    stream.set_epoch(2)
    batches = list(stream)
    assert len(batches) == len(stream) == stream.steps == (3 * 6) // 4
    tag_of = {i: int(name[1:]) for i, name in enumerate(index.video_names)}
    for number, batch in enumerate(batches):
        clips = batch["clips"]
        assert clips.dtype == torch.uint8 and clips.shape == (4, 16, 24, 24, 3)
        assert batch["video"].dtype == torch.int64 and int(batch["batch_index"]) == number
        for clip, video, start in zip(clips.numpy(), batch["video"].tolist(), batch["start"].tolist()):
            assert start in CLIP_VALID_STARTS[video]
            assert [pixel_identity(f) for f in clip] == [(tag_of[video], start + 4 * k) for k in range(16)]
            ts = index.timestamps[video][[pixel_identity(f)[1] for f in clip]]
            np.testing.assert_allclose(np.diff(ts), 0.16, atol=1e-9)


def test_jpeg_clips_are_the_reader_decoded_frames(tmp_path):
    index = build_shard_index(make_clip_shards(tmp_path, codec="jpeg", size=32))
    stream = ClipStream(index, ClipConfig(frames=4, stride_frames=2), seed=0, batch_size=2)
    stream.set_epoch(0)
    batch = next(iter(stream))
    for clip, video, start in zip(batch["clips"].numpy(), batch["video"].tolist(), batch["start"].tolist()):
        reader = ShardReader(index.paths[index.video_shard[video]])
        first = int(index.video_first_row[video]) + start
        encoded = reader.read_array("face", [first + 2 * k for k in range(4)])
        reader.close()
        for frame, buf in zip(clip, encoded):
            assert hashlib.sha1(frame.tobytes()).digest() == hashlib.sha1(decode_jpeg(buf).tobytes()).digest()


def test_workers_give_the_in_process_batches_and_open_no_reader_in_the_parent(index):
    cfg = ClipConfig(clips_per_video=5)
    reference = ClipStream(index, cfg, seed=1, batch_size=2)
    reference.set_epoch(0)
    expected = list(reference)
    stream = ClipStream(index, cfg, seed=1, batch_size=2)
    loader = make_clip_loader(stream, num_workers=2, pin_memory=False)
    stream.set_epoch(0)
    _equal_batches(list(loader), expected)
    assert [int(b["batch_index"]) for b in expected] == list(range(stream.steps))
    assert stream._readers_pid is None and not stream._readers  # every reader lived in a worker
    assert (stream.skipped_short, stream.skipped_timing) == (2, 1)
    skip = 3  # odd: DataLoader worker 0 must now serve what worker 1 served in the full epoch
    stream.set_epoch(0, skip_batches=skip)
    assert len(loader) == stream.steps - skip
    _equal_batches(list(loader), expected[skip:])


def test_resume_with_skip_batches_equals_the_uninterrupted_epoch(index):
    stream = ClipStream(index, ClipConfig(clips_per_video=4), seed=7, batch_size=3)
    stream.set_epoch(5)
    full = list(stream)
    for skip in (1, 2, len(full)):
        stream.set_epoch(5, skip_batches=skip)
        assert len(stream) == len(full) - skip
        _equal_batches(list(stream), full[skip:])
    stream.set_epoch(6)
    assert not torch.equal(next(iter(stream))["clips"], full[0]["clips"])


def test_reader_cache_is_bounded_and_ranks_split_the_clips(index):
    cfg = ClipConfig(clips_per_video=4)
    bounded = ClipStream(index, cfg, seed=0, batch_size=2, max_open_shards=1)
    bounded.set_epoch(0)
    free = ClipStream(index, cfg, seed=0, batch_size=2)
    free.set_epoch(0)
    _equal_batches(list(bounded), list(free))
    assert len(bounded._readers) == 1
    bounded.close()
    seen = []
    for rank in range(2):
        stream = ClipStream(index, ClipConfig(), seed=0, batch_size=1, rank=rank, world_size=2)
        stream.set_epoch(0)
        seen.append([int(b["video"][0]) for b in stream])
    assert len(seen[0]) == len(seen[1]) == 1 and not set(seen[0]) & set(seen[1])


def test_bad_requests_fail_when_the_stream_is_built(index):
    with pytest.raises(ClipConfigError, match="sslfer-prep --fps"):
        ClipStream(index, ClipConfig(stride_frames=None, stride_seconds=0.03), seed=0, batch_size=1)
    with pytest.raises(ClipConfigError, match="do not fill one global batch"):
        ClipStream(index, ClipConfig(), seed=0, batch_size=4)
