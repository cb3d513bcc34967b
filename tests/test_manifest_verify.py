"""verify_shards and `sslfer-manifest verify`: every kind of damage is named, exit codes are as documented."""
import io
import json

import h5py
import numpy as np
from click.testing import CliRunner

from data_manifest.cli import main
from data_manifest.manifest import MANIFEST_NAME
from data_manifest.verify import ERROR, WARNING, verify_shards
from manifest_fixtures import flip_byte, make_shard_set
from shard_fixtures import make_header, make_video
from sslfer_core.progress import Progress
from sslfer_core.shard_format import write_shard


def _errors(problems):
    return {p.file: p.reason for p in problems if p.severity == ERROR}


def test_intact_set_verifies_clean_in_both_modes(tmp_path):
    root = make_shard_set(tmp_path / "set")
    assert verify_shards(root) == []
    assert verify_shards(root, quick=True) == []
    result = CliRunner().invoke(main, ["verify", str(root)])
    assert result.exit_code == 0, result.output
    assert "OK: 2 shards, 14 frames" in result.output


def test_progress_reports_every_byte(tmp_path):
    root = make_shard_set(tmp_path / "set")
    seen = []
    verify_shards(root, progress=seen.append)
    assert sum(seen) == json.loads((root / MANIFEST_NAME).read_text())["totals"]["bytes"]


def test_truncated_flipped_and_missing_shards_are_each_named(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=3)
    data = (root / "shard-00000.h5").read_bytes()
    (root / "shard-00000.h5").write_bytes(data[: len(data) // 2])
    flip_byte(root / "shard-00001.h5")
    (root / "shard-00002.h5").unlink()
    errors = _errors(verify_shards(root))
    assert errors.keys() == {"shard-00000.h5", "shard-00001.h5", "shard-00002.h5"}
    assert "truncated" in errors["shard-00000.h5"]
    assert "sha256 mismatch" in errors["shard-00001.h5"]
    assert errors["shard-00002.h5"] == "missing file"
    result = CliRunner().invoke(main, ["verify", str(root)])
    assert result.exit_code == 1
    for name in ("shard-00000.h5", "shard-00001.h5", "shard-00002.h5"):
        assert name in result.output
    assert "Error: 3 of 3 shards failed verification" in result.output
    assert "Traceback" not in result.output


def test_quick_mode_skips_hashing_but_still_sees_size_and_header(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=2)
    flip_byte(root / "shard-00001.h5")  # same size, header intact: only a full check can see it
    path = root / "shard-00000.h5"
    path.write_bytes(b"\0" * path.stat().st_size)  # right size, not HDF5
    errors = _errors(verify_shards(root, quick=True))
    assert list(errors) == ["shard-00000.h5"] and "unreadable HDF5" in errors["shard-00000.h5"]


def test_newer_major_schema_is_refused_with_both_versions(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    with h5py.File(root / "shard-00000.h5", "r+") as h5:
        h5.attrs["schema_version"] = "3.0"
    # Record the new size so the check reaches the header rather than stopping at a size mismatch.
    obj = json.loads((root / MANIFEST_NAME).read_text())
    obj["shards"][0]["bytes"] = (root / "shard-00000.h5").stat().st_size
    (root / MANIFEST_NAME).write_text(json.dumps(obj))
    for quick in (True, False):
        reason = _errors(verify_shards(root, quick=quick))["shard-00000.h5"]
        assert "3.0" in reason and "1.x" in reason


def test_counts_that_disagree_with_the_manifest_are_errors(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    obj = json.loads((root / MANIFEST_NAME).read_text())
    obj["shards"][0]["frames"] += 1
    (root / MANIFEST_NAME).write_text(json.dumps(obj))
    assert "manifest says 2 / 8" in _errors(verify_shards(root, quick=True))["shard-00000.h5"]


def test_unlisted_shards_and_leftovers_are_warnings_only(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    header = make_header()
    write_shard(root / "extra" / "late.h5", header, [make_video(np.random.default_rng(9), header, 2)])
    (root / ".partial-shard-00009.h5.abc").write_bytes(b"half")
    (root / ".work").mkdir()  # sslfer-prep's work folder is not part of the shard set
    write_shard(root / ".work" / "scratch.h5", header, [make_video(np.random.default_rng(8), header, 2)])
    (root / ".work" / ".partial-x.npz.1").write_bytes(b"half")
    problems = verify_shards(root)
    assert {(p.file, p.severity) for p in problems} == {
        ("extra/late.h5", WARNING), (".partial-shard-00009.h5.abc", WARNING)}
    result = CliRunner().invoke(main, ["verify", str(root)])
    assert result.exit_code == 0
    assert "WARNING extra/late.h5: shard file is not listed" in result.output


def test_cli_errors_are_one_line_with_documented_exit_codes(tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["verify", str(empty)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "no manifest" in result.output
    result = runner.invoke(main, ["verify", str(tmp_path / "nope")])
    assert result.exit_code == 2
    root = make_shard_set(tmp_path / "set", shards=1)
    obj = json.loads((root / MANIFEST_NAME).read_text())
    obj["shards"][0]["file"] = "../set/shard-00000.h5"
    (root / MANIFEST_NAME).write_text(json.dumps(obj))
    result = runner.invoke(main, ["verify", str(root)])
    assert result.exit_code == 1 and "unsafe shard path" in result.output and "Traceback" not in result.output


def test_progress_is_quiet_unless_stderr_is_a_terminal():
    quiet = io.StringIO()  # StringIO.isatty() is False, like a log file or a pipe
    bar = Progress("verify", 10, stream=quiet)
    bar.advance(10)
    bar.close()
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    bar = Progress("verify", 10, stream=shown, enabled=True, min_interval=0)
    bar.advance(4)
    bar.advance(6)
    bar.close()
    assert "verify:" in shown.getvalue() and "| 4/10 [" in shown.getvalue() and "| 10/10 [" in shown.getvalue()
