"""Outputs that cannot be written, manifest values a tool cannot use, absurd numbers, empty lists and
corrupt caches give one line (exit 1, or 2 for usage) or a warning and correct behaviour; never a traceback."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from data_manifest.cli import main as manifest_main
from eval_fixtures import write_pattern_folder
from manifest_fixtures import make_shard_set
from preprocess.cli import main as prep_main
from train.evaluation.cli import main as eval_main
from train.shard_set import ShardSetError, open_shard_set

FAST = ["--image-size", "32", "--max-iterations", "5", "--weight-decays", "0", "--workers", "0", "--threads", "1"]


def _one_line(result, code, *fragments):
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path below a regular file: no folder can be made there (permission bits do not stop root)."""
    (tmp_path / "a-file").write_text("x")
    return tmp_path / "a-file" / "out"


def test_prep_refuses_an_unwritable_out_before_any_work(tmp_path, blocked):
    (tmp_path / "clips" / "id0").mkdir(parents=True)
    (tmp_path / "clips" / "id0" / "c.mp4").write_bytes(b"")
    result = CliRunner().invoke(prep_main, ["videos", str(tmp_path / "clips"), "--out", str(blocked), "--jobs", "1",
                                            "--descriptor", "landmark-geometry"])
    _one_line(result, 2, "--out", "cannot write to", "Not a directory")


def test_prep_refuses_absurd_counts():
    result = CliRunner().invoke(prep_main, ["videos", ".", "--out", "x", "--swaps", "100000"])
    _one_line(result, 2, "--swaps")
    result = CliRunner().invoke(prep_main, ["videos", ".", "--out", "x", "--jobs", "10000000"])
    _one_line(result, 2, "--jobs")


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    return write_pattern_folder(tmp_path_factory.mktemp("patterns"), {"train": 4, "val": 2, "test": 2})


def test_eval_refuses_unwritable_outputs(patterns, blocked, tmp_path):
    result = CliRunner().invoke(eval_main, ["linear", "--backbone", "random", "--data", str(patterns), *FAST,
                                            "--no-cache", "--out", str(blocked)])
    _one_line(result, 2, "--out", "cannot write to")
    result = CliRunner().invoke(eval_main, ["saliency", "--backbone", "random", "--data", str(patterns),
                                            "--out", str(blocked / "grid.png")])
    _one_line(result, 2, "--out", "cannot write to")
    result = CliRunner().invoke(eval_main, ["saliency", "--backbone", "random", "--data", str(patterns),
                                            "--out", str(tmp_path)])
    _one_line(result, 2, "is a directory")


@pytest.mark.parametrize("option,value", [("--weight-decays", "nan"), ("--weight-decays", "-1"),
                                          ("--weight-decays", ","), ("--ridge-alphas", "inf")])
def test_eval_refuses_grids_that_are_not_finite(patterns, option, value):
    args = ["linear", "--backbone", "random", "--data", str(patterns), "--no-cache", *FAST]
    args[args.index("--weight-decays") + 1] = "0" if option != "--weight-decays" else value
    if option == "--ridge-alphas":
        args += [option, value]
    _one_line(CliRunner().invoke(eval_main, args), 2, option)


def test_a_damaged_feature_cache_is_recomputed_with_a_warning(patterns, tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    args = ["linear", "--backbone", "random:3", "--data", str(patterns), *FAST, "--cache-dir", str(cache)]
    first = CliRunner().invoke(eval_main, args + ["--out", str(out / "a")])
    assert first.exit_code == 0, first.output
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    second = CliRunner().invoke(eval_main, args + ["--out", str(out / "b")])
    assert second.exit_code == 0, second.output
    assert "damaged feature cache" in second.output
    a, b = (json.loads((out / n / "results.json").read_text())["backbones"][0]["runs"][0]["test"] for n in "ab")
    assert a["confusion_matrix"] == b["confusion_matrix"]  # the recomputed features score the same


def _manifest_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield prefix + (key,)
            yield from _manifest_paths(value, prefix + (key,))
    elif isinstance(obj, list) and obj:
        yield prefix + (0,)
        yield from _manifest_paths(obj[0], prefix + (0,))


def test_every_manifest_value_a_tool_cannot_use_is_one_line(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    pristine = json.loads((root / "manifest.json").read_text())
    runner = CliRunner()
    checked = 0
    for where in _manifest_paths(pristine):
        for value in (None, -1, 10 ** 30, "x", []):
            manifest = copy.deepcopy(pristine)
            holder = manifest
            for key in where[:-1]:
                holder = holder[key]
            holder[where[-1]] = value
            (root / "manifest.json").write_text(json.dumps(manifest))
            for command in (["verify", "--quick", str(root)], ["inspect", str(root)]):
                result = runner.invoke(manifest_main, command)
                assert result.exit_code in (0, 1), (where, value, command, result.output)
                assert result.exception is None or isinstance(result.exception, SystemExit), (where, value, command)
            try:
                open_shard_set(root)
            except ShardSetError as error:
                assert "\n" not in str(error)
            checked += 1
    assert checked > 100


def test_an_empty_shard_list_is_not_verified(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"] = []
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "shard-00000.h5").unlink()
    _one_line(CliRunner().invoke(manifest_main, ["verify", str(root)]), 1, "lists no shards")
    _one_line(CliRunner().invoke(manifest_main, ["inspect", str(root)]), 1, "lists no shards")
    with pytest.raises(ShardSetError, match="lists no shards"):
        open_shard_set(root)
