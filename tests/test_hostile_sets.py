"""Shard sets handed over by another lab: duplicates, lying manifests, hostile numbers and sizes.

Every case ends in a one-line `Error: ...` (exit 1) or a correct report, never a traceback, and nothing
reads more than the file holds.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from data_manifest.cli import main
from data_manifest.manifest import MANIFEST_NAME, ManifestError, load_manifest
from data_manifest.verify import ERROR, verify_shards
from manifest_fixtures import make_shard_set
from sslfer_core.shard_format import ShardFormatError, ShardReader

REPO = Path(__file__).resolve().parents[1]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_refusal(result, *needles):
    """exit 1 with an `Error:` line that holds every needle, and no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, result.output
    for needle in needles:
        assert needle in error[0], error[0]
    return error[0]


def _edit_manifest(root, change):
    path = root / MANIFEST_NAME
    obj = json.loads(path.read_text())
    change(obj)
    path.write_text(json.dumps(obj))


# ----------------------------------------------------------------------------- duplicates

def test_the_same_shard_listed_as_x_and_dot_slash_x_is_refused(tmp_path):
    root = make_shard_set(tmp_path / "set")
    _edit_manifest(root, lambda m: m["shards"].append({**m["shards"][0], "file": "./" + m["shards"][0]["file"]}))
    for command in (("verify",), ("verify", "--quick"), ("inspect",)):
        _one_line_refusal(_invoke(*command, root), "shard-00000.h5", "listed twice")


def test_a_link_to_a_listed_shard_is_the_same_shard(tmp_path):
    root = make_shard_set(tmp_path / "set")
    os.symlink("shard-00000.h5", root / "alias.h5")
    os.link(root / "shard-00001.h5", root / "hard.h5")
    _edit_manifest(root, lambda m: m["shards"].extend([{**m["shards"][0], "file": "alias.h5"},
                                                       {**m["shards"][1], "file": "hard.h5"}]))
    problems = {p.file: p.reason for p in verify_shards(root, quick=True) if p.severity == ERROR}
    assert "same file as shard-00000.h5" in problems["alias.h5"]
    assert "same file as shard-00001.h5" in problems["hard.h5"]
    _one_line_refusal(_invoke("verify", root), "2 of 4 shards failed")


def test_a_copy_of_a_shard_under_another_name_is_found_by_its_video_ids(tmp_path):
    root = make_shard_set(tmp_path / "set")
    shutil.copyfile(root / "shard-00000.h5", root / "copy.h5")
    # The manifest claims other ids for the copy: verify reads the ids from the shard itself.
    _edit_manifest(root, lambda m: m["shards"].append(
        {**m["shards"][0], "file": "copy.h5", "video_ids": ["x0", "x1"]}))
    problems = {p.file: p.reason for p in verify_shards(root) if p.severity == ERROR}
    assert "video ids" in problems["copy.h5"] and "v0" in problems["copy.h5"]
    _one_line_refusal(_invoke("verify", root), "1 of 3 shards failed")


def test_build_refuses_a_folder_holding_two_copies_of_one_shard(tmp_path):
    root = make_shard_set(tmp_path / "set")
    shutil.copyfile(root / "shard-00000.h5", root / "shard-00000 (copy).h5")
    _one_line_refusal(_invoke("build", "--force", root), "shard-00000 (copy).h5", "shard-00000.h5", "v0")
    assert len(load_manifest(root).shards) == 2  # the old manifest is left as it was


def test_merge_reads_the_video_ids_from_the_shards_not_the_manifest(tmp_path):
    a = make_shard_set(tmp_path / "a", shards=1)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    _edit_manifest(b, lambda m: m["shards"][0].update(video_ids=["b0", "b1"]))
    _one_line_refusal(_invoke("merge", tmp_path / "out", a, b), "01-b", "video ids")
    assert not (tmp_path / "out").exists()


def test_merge_compares_the_shard_headers_not_the_manifest_claims(tmp_path):
    a = make_shard_set(tmp_path / "a", prefix="a", size=32)
    b = make_shard_set(tmp_path / "b", prefix="b", size=40, seed=1)

    def claim_32(m):
        m["image_size"] = 32
        m["prep_config"]["size"] = 32
    _edit_manifest(b, claim_32)
    _one_line_refusal(_invoke("merge", tmp_path / "out", a, b), "01-b", "shard-00000.h5", "image_size")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- numbers in manifest.json

HOSTILE_MANIFEST_VALUES = [
    ("bytes", "Infinity"), ("bytes", "NaN"), ("bytes", "-1"), ("bytes", "1e400"), ("bytes", "2.5"),
    ("bytes", '"123"'), ("bytes", "true"), ("bytes", str(2 ** 70)), ("frames", "-5"), ("videos", "null"),
    ("image_size", "Infinity"), ("failures", "-3"), ("part", "1e999"), ("sha256", "{}"),
    ("identities", "[" * 100000 + "]" * 100000), ("prep_config", '{"fps": NaN}'),
]


@pytest.mark.parametrize("key,value", HOSTILE_MANIFEST_VALUES,
                         ids=[k + "=" + v[:12] for k, v in HOSTILE_MANIFEST_VALUES])
def test_hostile_numbers_in_a_manifest_give_one_line(tmp_path, key, value):
    root = make_shard_set(tmp_path / "set")
    obj = json.loads((root / MANIFEST_NAME).read_text())
    holder = obj if key in ("image_size", "failures", "prep_config") else obj["shards"][0]
    holder[key] = "@@"
    (root / MANIFEST_NAME).write_text(json.dumps(obj).replace('"@@"', value))
    with pytest.raises(ManifestError):
        load_manifest(root)
    for command in ("verify", "inspect"):
        _one_line_refusal(_invoke(command, root), MANIFEST_NAME)
    _one_line_refusal(_invoke("merge", tmp_path / "out", root), MANIFEST_NAME)


# ----------------------------------------------------------------------------- failures.jsonl

@pytest.mark.parametrize("record", [
    {"video_id": "a", "skipped": False, "frames_sampled": 10, "frames_kept": None},
    {"video_id": "a", "skipped": False, "frames_sampled": -1000, "frames_kept": 3},
    {"video_id": "a", "skipped": True, "frames_sampled": -1000},
    {"video_id": "a", "skipped": False, "frames_sampled": 10, "frames_kept": 11},
    {"video_id": "a", "skipped": False, "frames_sampled": 10, "frames_kept": "3"},
    {"video_id": "a", "skipped": False, "frames_sampled": 1e400, "frames_kept": 3},
    {"video_id": "a", "skipped": True, "frames_sampled": True},
    {"video_id": "a", "skipped": True, "frames_sampled": 10 ** 30},
])
def test_failure_records_with_unusable_counts_are_counted_and_left_out(tmp_path, record):
    root = make_shard_set(tmp_path / "set", failures=[record, {"video_id": "b", "skipped": True, "frames_sampled": 6}])
    result = _invoke("inspect", root, "--json")
    assert result.exit_code == 0, result.output
    kept = json.loads(result.output)["kept"]
    assert kept["records_without_counts"] == 1
    assert kept["frames_attempted"] == 14 + 6 and kept["fraction"] == round(14 / 20, 4)
    text = _invoke("inspect", root)
    assert text.exit_code == 0 and "1 failure records without usable frame counts" in text.output


def test_a_deeply_nested_failure_record_is_one_line(tmp_path):
    root = make_shard_set(tmp_path / "set")
    (root / "failures.jsonl").write_text("[" * 100000 + "]" * 100000 + "\n")
    _one_line_refusal(_invoke("inspect", root), "failures.jsonl:1")


def test_a_failures_file_that_is_not_utf8_is_one_line_in_merge_build_and_inspect(tmp_path):
    root = make_shard_set(tmp_path / "set", failures=[{"video_id": "a", "skipped": True}])
    with open(root / "failures.jsonl", "ab") as handle:
        handle.write(b'{"video_id": "caf\xe9", "skipped": true}\n')
    for args in (("merge", tmp_path / "out", root), ("build", "--force", root), ("inspect", root)):
        _one_line_refusal(_invoke(*args), "failures.jsonl:2", "not UTF-8")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- sizes in the HDF5 file

def _shard_claiming_frames(path, claimed: int, source) -> None:
    """A small file with a valid header whose per-frame datasets declare `claimed` rows: HDF5 returns fill
    values for chunks that were never written, so the file stays a few KB."""
    with h5py.File(source, "r") as src, h5py.File(path, "w") as h5:
        for key, value in src.attrs.items():
            h5.attrs[key] = value
        h5.attrs["num_frames"] = claimed
        h5.attrs["num_videos"] = 1
        src.copy("videos", h5)
        del h5["videos/first_row"], h5["videos/row_count"]
        for name in ("video_id", "identity", "source_path", "status", "source_fps"):
            data = src["videos"][name][:1]
            del h5["videos"][name]
            h5["videos"].create_dataset(name, data=data, dtype=src["videos"][name].dtype)
        h5["videos/first_row"] = np.array([0], np.int64)
        h5["videos/row_count"] = np.array([claimed], np.int64)
        frames = h5.create_group("frames")
        for name, ds in src["frames"].items():
            frames.create_dataset(name, shape=(claimed,) + ds.shape[1:], dtype=ds.dtype,
                                  chunks=(1,) + ds.shape[1:])


def test_a_small_shard_claiming_2_to_the_36_frames_is_refused_before_reading(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1, swaps=0, descriptor_dim=0)
    fake = tmp_path / "fake" / "shard-00000.h5"
    fake.parent.mkdir()
    _shard_claiming_frames(fake, 1 << 36, root / "shard-00000.h5")
    assert fake.stat().st_size < 64 << 10
    with pytest.raises(ShardFormatError, match="more than the file"):
        ShardReader(fake)
    _one_line_refusal(_invoke("inspect", fake), "more than the file")
    _one_line_refusal(_invoke("build", fake.parent), "more than the file")


@pytest.mark.parametrize("attr,value", [
    ("prep_config", "[" * 100000 + "]" * 100000),
    ("prep_config", '{"fps": NaN}'),
    ("codecs", '{"face": {"name": "h264", "crf": 1e400}}'),
    ("image_size", float("inf")),
    ("descriptor_dim", 2.0 ** 80),
    ("num_frames", "many"),
    ("num_videos", np.arange(3)),
])
def test_hostile_header_attributes_give_one_line(tmp_path, attr, value):
    root = make_shard_set(tmp_path / "set", shards=1)
    with h5py.File(root / "shard-00000.h5", "r+") as h5:
        h5.attrs[attr] = value
    with pytest.raises(ShardFormatError):
        ShardReader(root / "shard-00000.h5")
    _one_line_refusal(_invoke("inspect", root / "shard-00000.h5"), "shard-00000.h5")
    _one_line_refusal(_invoke("build", "--force", root), "shard-00000.h5")
    _one_line_refusal(_invoke("verify", root), "1 of 1 shards failed")


def test_a_fifo_in_place_of_a_manifest_or_a_shard_is_refused_without_waiting(tmp_path):
    # A FIFO blocks its reader until someone writes: the tools must look before they open.
    a, b = make_shard_set(tmp_path / "a"), make_shard_set(tmp_path / "b", prefix="b")
    (a / MANIFEST_NAME).unlink()
    os.mkfifo(a / MANIFEST_NAME)
    (b / "shard-00001.h5").unlink()
    os.mkfifo(b / "shard-00001.h5")
    for args in (("verify", a), ("inspect", a), ("inspect", b), ("inspect", b / "shard-00001.h5"),
                 ("merge", tmp_path / "out", b)):
        run = subprocess.run([sys.executable, "-m", "data_manifest.cli", *map(str, args)], capture_output=True,
                             text=True, timeout=60, cwd=REPO)
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert "not a regular file" in run.stderr, run.stderr
    with pytest.raises(ShardFormatError, match="not a regular file"):
        ShardReader(b / "shard-00001.h5", sha256="0" * 64)


def test_a_shard_whose_source_fps_is_not_finite_is_refused(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    with h5py.File(root / "shard-00000.h5", "r+") as h5:
        h5["videos/source_fps"][0] = np.nan  # inspect --json would print NaN, which is not JSON
    with pytest.raises(ShardFormatError, match="source_fps"):
        ShardReader(root / "shard-00000.h5")
    _one_line_refusal(_invoke("inspect", root / "shard-00000.h5", "--json"), "source_fps")


def test_a_training_start_refuses_a_manifest_that_names_other_clips_than_the_shard_holds(tmp_path):
    from train.shard_set import ShardSetError, open_shard_set

    root = make_shard_set(tmp_path / "set")

    def rename(manifest):
        ids = manifest["shards"][0]["video_ids"]
        manifest["shards"][0]["video_ids"] = [ids[0] + "-elsewhere", *ids[1:]]
    _edit_manifest(root, rename)
    with pytest.raises(ShardSetError, match=r"shard-00000.h5: holds video ids .* but the manifest says .*-elsewhere"):
        open_shard_set(root)


def test_a_training_start_refuses_a_set_that_serves_a_clip_twice(tmp_path):
    from train.shard_set import ShardSetError, open_shard_set

    root = make_shard_set(tmp_path / "set")
    shutil.copyfile(root / "shard-00000.h5", root / "copy.h5")
    _edit_manifest(root, lambda m: m["shards"].append({**m["shards"][0], "file": "copy.h5"}))
    with pytest.raises(ShardSetError, match="copy.h5: it holds clips that shard-00000.h5 holds too"):
        open_shard_set(root)
