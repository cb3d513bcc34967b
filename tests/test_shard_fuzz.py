"""Flipped bytes at many offsets of a small shard (bounded to a few seconds).

- A read checked against the shard's sha256 (what training and verify do) either returns the written
  data or raises ShardFormatError.
- An unchecked library read, `sslfer-manifest inspect` / `build` and one training-loader batch on the damaged file
  (as bit rot below the filesystem would leave it) never fail with anything but the project's one-line
  errors: ShardFormatError / ShardSetError, exit 1 with one "Error:" line.
- A corrupt JPEG in a training batch is counted and left out of the loss, and libjpeg prints nothing.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from data_manifest.cli import main as manifest_main
from data_manifest.manifest import build_manifest, load_manifest, save_manifest
from shard_fixtures import make_header, make_video
from sslfer_core.shard_format import IMAGE_FIELDS, ShardFormatError, ShardReader, write_shard
from train.methods.contrastive.epoch_plan import PlanConfig
from train.methods.contrastive.shard_stream import ShardStream, make_loader
from train.shard_index import build_shard_index
from train.shard_set import ShardSetError, open_shard_set

OFFSETS = 64  # spread over the whole file, plus every 32nd byte of the first 2 KiB (superblock, headers)


def _small_set(root, codec="jpeg"):
    rng = np.random.default_rng(3)
    header = make_header(size=32, patch=16, swaps=1, descriptor_dim=4, codec=codec)
    videos = [make_video(rng, header, 4, video_id=f"v{i}", identity=f"id{i}") for i in range(3)]
    root.mkdir()
    path = write_shard(root / "shard-00000.h5", header, videos)
    save_manifest(root, build_manifest(root, [path]))
    return path


def _everything(reader: ShardReader) -> dict:
    out = {name: reader.read_array(name, slice(None)) for name in reader.fields if name not in IMAGE_FIELDS}
    out.update({name: reader.read_images(name, slice(None)) for name in IMAGE_FIELDS if reader.has_field(name)})
    out["video_id"] = list(reader.videos.video_id)
    out["identity"] = list(reader.videos.identity)
    out["row_count"] = reader.videos.row_count.tolist()
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def _one_batch(path) -> None:
    index = build_shard_index([path])
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=4, faceswap=True), with_descriptors=True)
    stream.set_epoch(0)
    try:
        next(iter(stream))
    finally:
        stream.close()


@pytest.mark.parametrize("codec", ["jpeg", "raw"])
def test_flipped_bytes_give_the_written_data_or_a_shard_error(tmp_path, codec):
    pristine_path = _small_set(tmp_path / "pristine", codec)
    sha256 = load_manifest(pristine_path.parent).shards[0].sha256
    with ShardReader(pristine_path) as reader:
        written = _everything(reader)
    pristine = pristine_path.read_bytes()
    size = len(pristine)
    offsets = sorted(set(np.linspace(0, size - 1, OFFSETS).astype(int).tolist()) | set(range(0, min(2048, size), 32)))
    damaged = tmp_path / "damaged"
    shutil.copytree(pristine_path.parent, damaged)
    target = damaged / "shard-00000.h5"
    runner = CliRunner()
    outcomes = {"checked_refused": 0, "same": 0, "changed": 0, "error": 0, "inspect_error": 0,
                "batch_error": 0}
    for offset in offsets:
        data = bytearray(pristine)
        data[offset] ^= 0xA5
        target.write_bytes(bytes(data))
        # Checked against the manifest's sha256, as training reads: never the changed bytes.
        with pytest.raises(ShardFormatError, match="does not match the sha256"):
            ShardReader(target, sha256=sha256)
        outcomes["checked_refused"] += 1
        # Unchecked: the data, changed data, or ShardFormatError; no other exception type.
        try:
            with ShardReader(target) as reader:
                got = _everything(reader)
            outcomes["same" if _same(got, written) else "changed"] += 1
        except ShardFormatError as error:
            assert "\n" not in str(error) and str(target) in str(error), str(error)
            outcomes["error"] += 1
        result = runner.invoke(manifest_main, ["inspect", "--json", str(damaged)])
        assert result.exit_code in (0, 1), (offset, result.output, result.exception)
        if result.exit_code == 1:
            assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
            assert sum(line.startswith("Error:") for line in result.output.splitlines()) == 1, result.output
            outcomes["inspect_error"] += 1
        if offset % 8 == 0:  # some offsets only: build hashes the file, which costs more
            result = runner.invoke(manifest_main, ["build", "--force", str(damaged)])
            assert result.exit_code in (0, 1) and "Traceback" not in result.output, (offset, result.output)
            assert result.exit_code == 0 or isinstance(result.exception, SystemExit), (offset, result.exception)
        try:
            _one_batch(target)
        except (ShardFormatError, ShardSetError) as error:
            assert "\n" not in str(error), str(error)
            outcomes["batch_error"] += 1
    assert outcomes["checked_refused"] == len(offsets)
    # The checks are not idle: the layout checks and error mapping catch a good share of the damage.
    assert outcomes["error"] > len(offsets) // 10, outcomes
    assert outcomes["same"] + outcomes["changed"] + outcomes["error"] == len(offsets)


def test_training_start_refuses_any_flipped_byte_and_names_the_fix(tmp_path):
    path = _small_set(tmp_path / "set")
    pristine = path.read_bytes()
    for offset in np.linspace(0, len(pristine) - 1, 12).astype(int):
        data = bytearray(pristine)
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(ShardSetError, match="sslfer-manifest verify"):
            open_shard_set(path.parent)


def _corrupt_one_face_jpeg(path) -> int:
    """Damage the entropy-coded data of frame 1's face JPEG in place (same length); returns the row."""
    import h5py

    with h5py.File(path, "r+") as h5:
        faces = h5["frames/face"]
        buf = faces[1].copy()
        buf[len(buf) // 2: len(buf) // 2 + 40] ^= 0x5A
        faces[1] = buf
    return 1


def test_a_corrupt_jpeg_is_counted_and_skipped_silently(tmp_path, capfd):
    path = _small_set(tmp_path / "set")
    row = _corrupt_one_face_jpeg(path)
    index = build_shard_index([path])
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=3), with_descriptors=False)
    stream.set_epoch(0)
    batches = list(stream)
    stream.close()
    corrupt = sum(int(b["corrupt_images"]) for b in batches)
    captured = capfd.readouterr()
    assert "Corrupt JPEG data" not in captured.err  # libjpeg's own message is swallowed
    # Frame row 1 of video v0 is an anchor or a positive in at least one batch of the epoch.
    assert corrupt >= 1
    assert captured.err.count("corrupt image in video 'v0'") == 1, captured.err
    for batch in batches:
        images = batch["images"].numpy()
        dead = ~batch["row_valid"].numpy()
        # Both views of a sample holding the corrupt image leave the loss; nothing else does.
        assert (dead.sum() > 0) == (int(batch["corrupt_images"]) > 0) and dead.sum() % 2 == 0
        assert not np.any(images[dead])  # zeros
    with pytest.raises(ShardFormatError, match=r"shard-00000.h5.*field 'face'.*sslfer-manifest verify"):
        with ShardReader(path) as reader:
            reader.read_images("face", slice(row, row + 1))


def test_a_shard_breaking_inside_a_loader_worker_is_one_line_in_the_main_process(tmp_path):
    path = _small_set(tmp_path / "set")
    index = build_shard_index([path])
    path.write_bytes(path.read_bytes()[:4096])  # truncated after the index was built
    stream = ShardStream(index, PlanConfig(seed=0, batch_size=3), num_workers=1)
    stream.set_epoch(0)
    loader = make_loader(stream, 1, pin_memory=False)
    with pytest.raises(ShardSetError) as caught:
        next(iter(loader))
    message = str(caught.value)
    assert "\n" not in message and "shard-00000.h5" in message and "sslfer-manifest verify" in message, message
