"""`sslfer-manifest inspect`, `merge` and `build`, and the promise that none of it imports torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
from click.testing import CliRunner

from data_manifest.cli import main
from data_manifest.manifest import MANIFEST_NAME, load_manifest, shard_paths
from data_manifest.verify import verify_shards
from manifest_fixtures import make_shard_set
from preprocess.failures import write_failures
from sslfer_core.shard_format import ShardReader

REPO = Path(__file__).resolve().parents[1]


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_lists_every_subcommand_and_exit_codes():
    result = _invoke("--help")
    assert result.exit_code == 0
    for command in ("verify", "inspect", "merge", "build"):
        assert command in result.output
        sub = _invoke(command, "--help")
        assert sub.exit_code == 0 and "Exit codes" in sub.output


def test_inspect_json_reports_totals_per_identity_and_fields(tmp_path):
    root = make_shard_set(tmp_path / "set", swaps=2, failures=[{"video": "bad"}])
    result = _invoke("inspect", root, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["totals"]["videos"] == 4 and report["totals"]["frames"] == 14
    assert report["totals"]["identities"] == 2
    assert report["config"]["swaps_per_frame"] == 2 and report["config"]["image_size"] == 32
    assert report["failures"] == {"count": 1, "file": "failures.jsonl"}
    # Expected rates computed straight from the shards.
    ok = total = 0
    for path in shard_paths(root, load_manifest(root)):
        with ShardReader(path) as reader:
            swap_ok = reader.read_array("swap_ok", slice(None))
        ok, total = ok + int(swap_ok.sum()), total + swap_ok.size
    assert report["totals"]["swap_success_rate"] == round(ok / total, 4)
    assert report["totals"]["descriptor_coverage"] == 1.0
    ident = report["identities"]["vid1"]  # videos v1 and v3, 4 frames each at 5 fps
    assert ident["videos"] == 2 and ident["frames"] == 8 and ident["duration_s"] == 1.2
    assert {v["video_id"] for v in report["videos"]} == {"v0", "v1", "v2", "v3"}
    face = report["fields"]["face"]
    assert face["codec"] == "raw" and face["shape_per_frame"] == [32, 32, 3]
    stored = 0
    for path in shard_paths(root, load_manifest(root)):
        with h5py.File(path, "r") as h5:
            stored += h5["frames/face"].id.get_storage_size()
    # Raw storage is at least the pixels, plus the padding of each shard's last, partly filled chunk.
    assert face["bytes_per_frame"] == round(stored / 14, 1) and stored >= 14 * 32 * 32 * 3
    text = _invoke("inspect", root)
    assert text.exit_code == 0 and "videos 4" in text.output and "vid1" in text.output


def test_inspect_one_jpeg_shard_and_a_newer_major_version(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1, codec="jpeg:90")
    shard = root / "shard-00000.h5"
    report = json.loads(_invoke("inspect", shard, "--json").output)
    assert report["source"] == "shard" and report["codecs"]["face"] == {"name": "jpeg", "quality": 90}
    assert report["fields"]["face"]["dtype"] == "vlen uint8" and report["fields"]["face"]["bytes_per_frame"] > 0
    with h5py.File(shard, "r+") as h5:
        h5.attrs["schema_version"] = "2.0"
    result = _invoke("inspect", shard)
    assert result.exit_code == 1 and "2.0" in result.output and "1.x" in result.output
    assert result.output.count("\n") == 1


def test_inspect_reports_kept_fraction_from_prep_failures(tmp_path):
    root = make_shard_set(tmp_path / "set")  # 14 frames in the shards
    per_video = [  # as sslfer-prep records videos; only losses reach failures.jsonl
        {"video_id": "v0", "path": "a.mp4", "identity": "vid0", "skipped": False, "frames_sampled": 5,
         "frames_kept": 3, "dropped": {"no_face": 2}, "ranges": []},
        {"video_id": "v1", "path": "b.mp4", "identity": "vid1", "skipped": False, "frames_sampled": 4,
         "frames_kept": 4, "swaps_failed": 2},
        {"video_id": "v2", "path": "c.mp4", "identity": "vid0", "skipped": False, "frames_sampled": 3,
         "frames_kept": 3},
        {"video_id": "z1", "path": "d.mp4", "identity": "zid", "skipped": True, "reason": "too_few_frames",
         "detail": "", "frames_sampled": 6, "frames_kept": 2, "dropped": {"no_face": 4}, "ranges": []},
        {"video_id": "z2", "path": "e.mp4", "identity": "zid", "skipped": True, "reason": "unreadable",
         "detail": "", "frames_sampled": 0, "frames_kept": 0},
    ]
    write_failures(root, per_video)
    kept = json.loads(_invoke("inspect", root, "--json").output)["kept"]
    attempted = 14 + (5 - 3) + 6
    assert kept == {"frames_kept": 14, "frames_attempted": attempted, "fraction": round(14 / attempted, 4),
                    "failures_file": "failures.jsonl", "frames_dropped_in_kept_videos": 2,
                    "frames_in_skipped_videos": 6, "videos_skipped": 2, "records_without_counts": 0,
                    "videos_with_assumed_frame_times": 0}
    text = _invoke("inspect", root).output
    assert f"kept frames 14 of {attempted} sampled ({100 * 14 / attempted:.1f}%)" in text
    assert "2 dropped from kept videos, 6 in 2 skipped videos" in text
    (root / "failures.jsonl").write_text('{"video_id": "v0"}\nnot json\n')
    result = _invoke("inspect", root)
    assert result.exit_code == 1 and "failures.jsonl:2: not valid JSON" in result.output
    assert result.output.count("\n") == 1


def test_inspect_without_failures_file_does_not_guess_the_kept_fraction(tmp_path):
    root = make_shard_set(tmp_path / "set")
    kept = json.loads(_invoke("inspect", root, "--json").output)["kept"]
    assert kept["frames_kept"] == 14 and kept["frames_attempted"] is None and kept["fraction"] is None
    assert "kept frames 14 of an unknown number sampled" in _invoke("inspect", root).output
    shard = json.loads(_invoke("inspect", root / "shard-00000.h5", "--json").output)
    assert "kept" not in shard  # one shard has no run-wide failure log


def test_merge_compatible_parts(tmp_path):
    a = make_shard_set(tmp_path / "lab-a", prefix="a", failures=[{"video": "a9", "reason": "no face"}])
    b = make_shard_set(tmp_path / "lab b", prefix="b", shards=1, seed=1)
    out = tmp_path / "merged"
    result = _invoke("merge", out, a, b)
    assert result.exit_code == 0, result.output
    merged = load_manifest(out)
    assert [e.file for e in merged.shards] == [
        "00-lab-a/shard-00000.h5", "00-lab-a/shard-00001.h5", "01-lab_b/shard-00000.h5"]
    assert [e.part for e in merged.shards] == [0, 0, 1]
    assert merged.totals()["videos"] == 6 and merged.failures == 1 and not merged.mixed
    assert [p["label"] for p in merged.parts] == ["00-lab-a", "01-lab_b"]
    assert merged.parts[1]["totals"]["frames"] == 7
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failures == [{"video": "a9", "reason": "no face", "part": "00-lab-a"}]
    assert verify_shards(out) == []
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]


def test_merge_ignores_run_only_prep_keys(tmp_path):
    a = make_shard_set(tmp_path / "a", prefix="a", shards=1)
    b = make_shard_set(tmp_path / "b", prefix="b", shards=1, seed=1)
    obj = json.loads((b / MANIFEST_NAME).read_text())
    obj["prep_config"].update(seed=7, source="frames", jobs=16, part=[1, 2])  # part: a --part 1/2 run
    (b / MANIFEST_NAME).write_text(json.dumps(obj))
    result = _invoke("merge", tmp_path / "out", a, b)
    assert result.exit_code == 0, result.output
    assert not load_manifest(tmp_path / "out").mixed


def test_merge_with_hard_links_shares_the_bytes(tmp_path):
    a = make_shard_set(tmp_path / "a", prefix="a", shards=1)
    b = make_shard_set(tmp_path / "b", prefix="b", shards=1, seed=1)
    result = _invoke("merge", "--link", tmp_path / "out", a, b)
    assert result.exit_code == 0, result.output
    assert os.path.samefile(tmp_path / "out" / "00-a" / "shard-00000.h5", a / "shard-00000.h5")
    assert load_manifest(tmp_path / "out").failures_file is None and not (tmp_path / "out" / "failures.jsonl").exists()


def test_merge_refuses_different_settings_unless_allowed(tmp_path):
    a = make_shard_set(tmp_path / "a", prefix="a", shards=1)
    b = make_shard_set(tmp_path / "b", prefix="b", shards=1, size=48, swaps=2)
    result = _invoke("merge", tmp_path / "out", a, b)
    assert result.exit_code == 1
    assert "image_size: 00-a=32, 01-b=48" in result.output and "swaps_per_frame: 00-a=1, 01-b=2" in result.output
    assert "prep_config.size" in result.output and "--allow-mixed" in result.output
    assert not (tmp_path / "out").exists()
    result = _invoke("merge", "--allow-mixed", tmp_path / "out", a, b)
    assert result.exit_code == 0 and "MIXED" in result.output
    merged = load_manifest(tmp_path / "out")
    assert merged.mixed and merged.parts[1]["config"]["image_size"] == 48
    assert verify_shards(tmp_path / "out") == []  # each shard checked against its own part, not the first
    result = _invoke("merge", tmp_path / "again", tmp_path / "out")
    assert result.exit_code == 1 and "mixed" in result.output


def test_merge_refuses_duplicate_video_ids_and_a_non_empty_output(tmp_path):
    a = make_shard_set(tmp_path / "a", shards=1)
    b = make_shard_set(tmp_path / "b", shards=1, seed=1)  # same ids v0, v1
    result = _invoke("merge", tmp_path / "out", a, b)
    assert result.exit_code == 1 and "2 video id(s) occur in more than one part" in result.output
    assert "v0 in 00-a, 01-b" in result.output
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    result = _invoke("merge", taken, a)
    assert result.exit_code == 1 and "new or empty directory" in result.output


def test_merge_stops_on_a_corrupt_part_and_leaves_nothing(tmp_path):
    a = make_shard_set(tmp_path / "a", prefix="a", shards=1)
    b = make_shard_set(tmp_path / "b", prefix="b", shards=1, seed=1)
    path = b / "shard-00000.h5"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    result = _invoke("merge", tmp_path / "out", a, b)
    assert result.exit_code == 1 and "does not match its sha256" in result.output
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_build_writes_a_manifest_and_refuses_to_overwrite(tmp_path):
    root = make_shard_set(tmp_path / "set")
    before = load_manifest(root)
    result = _invoke("build", root)
    assert result.exit_code == 1 and "--force" in result.output
    (root / MANIFEST_NAME).unlink()
    result = _invoke("build", root)
    assert result.exit_code == 0 and "2 shards, 4 videos, 14 frames" in result.output
    assert load_manifest(root).shards == before.shards


def test_cli_does_not_import_torch(tmp_path):
    root = make_shard_set(tmp_path / "set", shards=1)
    code = (
        "import sys\n"
        "from data_manifest.cli import main\n"
        f"main(['verify', {str(root)!r}], standalone_mode=False)\n"
        f"main(['inspect', '--json', {str(root)!r}, '--sheet', {str(tmp_path / 'sheet.png')!r}], "
        "standalone_mode=False)\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
