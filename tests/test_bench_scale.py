"""benchmarks/bench_scale.py's generator writes what sslfer-prep would: shards that pass full verification,
with VoxCeleb2's frames per clip and clips per shard, timestamps at the profile's rate (1 % of the clips
missing one frame), and an index that equals the per-clip reference."""
import numpy as np
import pytest

from benchmark_scripts import loaded_script
from data_manifest.manifest import build_manifest, find_shard_files, save_manifest
from data_manifest.verify import verify_shards
from test_shard_index import assert_index_equal, reference_index
from train.shard_index import build_shard_index


@pytest.mark.parametrize("profile", ["video", "contrastive"])
def test_generated_sets_verify_and_keep_the_profile_ratios(tmp_path, profile):
    with loaded_script("bench_scale.py") as bench:
        info = bench.generate(tmp_path, profile, 1000, seed=1)
        p = bench.PROFILES[profile]
    paths = find_shard_files(tmp_path)
    assert len(paths) == info["shards"] == round(1000 / p["clips_per_shard"])
    save_manifest(tmp_path, build_manifest(tmp_path, paths, jobs=2))
    assert verify_shards(tmp_path, jobs=2) == []
    index = build_shard_index(paths)
    assert_index_equal(index, reference_index(paths))
    assert index.num_videos == 1000 and index.num_frames == info["frames"]
    assert abs(index.num_frames / 1000 - p["frames"]) < 0.05 * p["frames"]
    steps = np.diff(index.timestamps.values)[np.diff(np.repeat(np.arange(1000), index.video_frames)) == 0]
    period = 1 / p["fps"]
    assert np.isclose(steps, period).mean() > 0.97 and np.isclose(steps, 2 * period).sum() >= 1  # a few gaps
