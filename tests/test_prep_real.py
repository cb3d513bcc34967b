"""sslfer-prep on a few real voxceleb_mini clips (skipped when the data is absent)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from preprocess.cli import main


def test_real_clips_keep_most_frames_and_record_the_descriptor_kind(voxceleb_mini, tmp_path):
    from data_manifest.manifest import load_manifest
    from sslfer_core.descriptors import resnet18_weights_path

    out = tmp_path / "out"
    args = ["voxceleb", str(voxceleb_mini), "--out", str(out), "--limit", "3", "--jobs", "1"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    expected_kind = "resnet18-imagenet" if resnet18_weights_path().is_file() else "landmark-geometry"
    assert manifest.descriptor_kind == expected_kind  # "auto" records what it resolved to
    assert manifest.swaps_per_frame == 1 and manifest.prep_config["fps"] == 5.0
    ids = [v for shard in manifest.shards for v in shard.video_ids]
    assert ids == ["id90001/dagan-driving/00001", "id90002/dinet-dinet_test19/00001", "id90003/dpe-d/00001"]
    stored = sum(shard.frames for shard in manifest.shards)
    lost = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    sampled = stored + sum(sum(r.get("dropped", {}).values()) for r in lost if not r["skipped"])
    assert not [r for r in lost if r["skipped"]]
    # 7.4 s + 10.9 s + 13.4 s of video at 5 fps
    assert abs(sampled - (37 + 55 + 67)) <= 3 and stored >= 0.95 * sampled
