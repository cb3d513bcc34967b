"""README promises about shard sets with no test elsewhere: merge refuses a different schema major version,
fps or descriptor kind, naming it; a manifest's failures_file may not leave the folder; merge and build run
with torch unimportable."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from data_manifest.cli import main
from data_manifest.manifest import MANIFEST_NAME, ManifestError, load_manifest
from manifest_fixtures import make_shard_set
from sslfer_core.shard_format import SCHEMA_VERSION

REPO = Path(__file__).resolve().parents[1]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _merge_refused(tmp_path, a, b, *fragments):
    result = _invoke("merge", tmp_path / "out", a, b)
    assert result.exit_code == 1 and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("changed, named", [
    ({"fps": 10.0}, "prep_config.fps: 00-a=5.0, 01-b=10.0"),
    ({"descriptor_kind": "resnet18-imagenet-patches"},
     'descriptor_kind: 00-a="landmark-geometry", 01-b="resnet18-imagenet-patches"'),
])
def test_merge_refuses_a_part_with_another_fps_or_descriptor_kind_and_names_it(tmp_path, changed, named):
    a = make_shard_set(tmp_path / "a", prefix="a", shards=1)
    _merge_refused(tmp_path, a, make_shard_set(tmp_path / "b", prefix="b", shards=1, **changed), named, "--allow-mixed")
    # the same two settings merge: the refusal came from the one difference
    assert _invoke("merge", tmp_path / "same", a, make_shard_set(tmp_path / "c", prefix="c", shards=1)).exit_code == 0


def test_merge_refuses_another_schema_major_version(tmp_path):
    a = make_shard_set(tmp_path / "a", prefix="a", shards=1)
    b = make_shard_set(tmp_path / "b", prefix="b", shards=1)
    obj = json.loads((b / MANIFEST_NAME).read_text())
    assert obj["shard_schema_version"] == "{}.{}".format(*SCHEMA_VERSION)
    for version, major in (("2.0", 2), ("0.9", 0)):  # a newer and an older lab
        (b / MANIFEST_NAME).write_text(json.dumps({**obj, "shard_schema_version": version}))
        # b's shards are still 1.x: merge compares each shard's header with its manifest first.
        _merge_refused(tmp_path, a, b, "part 01-b: shard shard-00000.h5: header disagrees with the manifest",
                       f"shard_schema_major: shard=1, manifest={major}")


@pytest.mark.parametrize("bad", ["../failures.jsonl", "/tmp/failures.jsonl", "sub/../../x.jsonl"])
def test_failures_file_may_not_leave_the_folder(tmp_path, bad):
    root = make_shard_set(tmp_path / "set", shards=1, failures=[{"video_id": "z", "skipped": True}])
    obj = json.loads((root / MANIFEST_NAME).read_text())
    assert obj["failures_file"] == "failures.jsonl"
    obj["failures_file"] = bad
    (root / MANIFEST_NAME).write_text(json.dumps(obj))
    with pytest.raises(ManifestError, match="unsafe failures file"):
        load_manifest(root)
    result = _invoke("inspect", root)
    assert result.exit_code == 1 and "unsafe failures file" in result.output and "Traceback" not in result.output


_WITHOUT_TORCH = """
import sys
for name in ("torch", "torchvision"):
    sys.modules[name] = None  # any import of them (or of a submodule) now raises ImportError
from data_manifest.cli import main
main(sys.argv[1:], standalone_mode=False)
"""


def test_merge_and_build_run_with_torch_unimportable(tmp_path):
    a = make_shard_set(tmp_path / "a", prefix="a", shards=1)
    b = make_shard_set(tmp_path / "b", prefix="b", shards=2)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(*args):
        done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run("merge", tmp_path / "out", a, b)
    merged = load_manifest(tmp_path / "out")
    assert len(merged.shards) == 3 and merged.totals()["videos"] == 6
    (b / MANIFEST_NAME).unlink()
    run("build", b)
    rebuilt = load_manifest(b)
    assert [entry.file for entry in rebuilt.shards] == ["shard-00000.h5", "shard-00001.h5"]
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.modules['torch'] = None; import torch"],
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 1 and "import of torch halted" in probe.stderr  # the blocking really blocks
