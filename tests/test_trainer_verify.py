"""sslfer-train --verify hashes every shard: a single flipped byte, which keeps the size and the header and so
passes the quick start-up check, stops the run before anything is written."""
from click.testing import CliRunner

from manifest_fixtures import flip_byte
from train.cli import main
from train_fixtures import TINY_TRAIN, make_train_shards


def test_verify_catches_a_flipped_byte_the_quick_check_cannot_see(tmp_path):
    root = make_train_shards(tmp_path / "shards", shards=2, videos=2, frames=20)
    flip_byte(root / "shard-00001.h5", offset_fraction=0.6)  # inside the raw pixel data
    common = ["--shards", str(root), *TINY_TRAIN, "--steps", "1"]
    verified = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "verified"), "--verify"])
    assert verified.exit_code == 1 and "Traceback" not in verified.output
    error = [line for line in verified.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "shard-00001.h5" in error[0] and "sha256" in error[0], verified.output
    assert not (tmp_path / "verified" / "config.json").exists()
    quick = CliRunner().invoke(main, [*common, "--out", str(tmp_path / "quick")])
    assert quick.exit_code == 0, quick.output  # same damage, no --verify: only sizes and headers are checked
