"""A flipped byte in a shard stops sslfer-train before anything is written: a quick start hashes each shard
once per machine (sslfer_core/hash_cache.py), and --verify rehashes every byte even where this machine's
record says the file is unchanged (bit rot below the file system leaves size and times as they were)."""
import json

from click.testing import CliRunner

from data_manifest.manifest import MANIFEST_NAME
from manifest_fixtures import flip_byte
from sslfer_core import hash_cache
from train.cli import main
from train_fixtures import TINY_TRAIN, make_train_shards


def _one_sha256_error(result, shard: str) -> None:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and shard in error[0] and "sha256" in error[0], result.output


def test_a_flipped_byte_stops_a_quick_start_and_verify_even_when_the_record_says_unchanged(tmp_path):
    root = make_train_shards(tmp_path / "shards", shards=2, videos=2, frames=20)
    listed = {s["file"]: s["sha256"] for s in json.loads((root / MANIFEST_NAME).read_text())["shards"]}
    damaged = root / "shard-00001.h5"
    flip_byte(damaged, offset_fraction=0.6)  # inside the raw pixel data: size and header unchanged
    common = ["--shards", str(root), *TINY_TRAIN, "--steps", "1"]
    quick = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "quick")])
    _one_sha256_error(quick, "shard-00001.h5")
    assert not (tmp_path / "quick" / "config.json").exists()
    # This machine's record now claims the damaged bytes are the listed ones, as after rot that changed no
    # file time: the quick start trusts it, --verify does not.
    assert hash_cache.remember([(damaged, listed["shard-00001.h5"])])
    assert CliRunner().invoke(main, [*common, "--out", str(tmp_path / "trusted")]).exit_code == 0
    verified = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "verified"), "--verify"])
    _one_sha256_error(verified, "shard-00001.h5")
    assert not (tmp_path / "verified" / "config.json").exists()
