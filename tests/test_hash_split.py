"""On a machine that has not hashed the shards yet, the ranks split the hashing: every shard is read by
exactly one rank, once; a start killed halfway keeps the shards already hashed and the next start hashes
only the rest (train/shard_set.py _hash_split)."""
import os
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from data_manifest.manifest import load_manifest
from sslfer_core import hash_cache
from gloo_ranks import gloo_environment, spawn_ranks
from train.shard_set import ShardSetError, hash_assignment, open_shard_set
from train_fixtures import make_train_shards

WORLD = 2
SHARDS = 7


def _rank_main(rank, port, root, out_dir, stop_after):
    gloo_environment(rank, port, WORLD, local_world=WORLD)
    import train.shard_set as shard_set
    from train.distributed import init_distributed, shutdown

    real = shard_set.file_sha256
    calls = []

    def logged(path, *args, **kwargs):
        if stop_after is not None and len(calls) == stop_after:
            os._exit(3)  # killed before its next shard, as by a signal: nothing is cleaned up
        calls.append(path)
        with open(Path(out_dir) / f"rank{rank}.log", "a") as log:
            log.write(Path(path).name + "\n")
        return real(path, *args, **kwargs)

    shard_set.file_sha256 = logged
    ctx = init_distributed("cpu")
    try:
        shard_set.open_shard_set(Path(root), ctx=ctx)
    finally:
        shutdown(ctx)


def _hashed(out_dir: Path) -> list[list[str]]:
    logs = [out_dir / f"rank{r}.log" for r in range(WORLD)]
    return [p.read_text().split() if p.exists() else [] for p in logs]


def test_two_ranks_hash_each_shard_once_and_a_killed_start_resumes(tmp_path, monkeypatch):
    root = make_train_shards(tmp_path / "set", shards=SHARDS, videos=2, frames=12)
    manifest = load_manifest(root)
    names = sorted(e.file for e in manifest.shards)
    monkeypatch.setenv(hash_cache.HASH_CACHE_ENV, str(tmp_path / "new-machine.json"))  # nothing hashed here

    # First start: each rank is killed before its third shard (2 + 2 of 7 hashed and recorded).
    first = tmp_path / "first"
    first.mkdir()
    with pytest.raises(mp.ProcessExitedException):
        spawn_ranks(_rank_main, (str(root), str(first), 2), WORLD)
    done = _hashed(first)
    assert [len(d) for d in done] == [2, 2] and not set(done[0]) & set(done[1])
    recorded = {e.file for e in manifest.shards if hash_cache.cached_sha256(root / e.file) == e.sha256}
    assert recorded == set(done[0]) | set(done[1])

    # Second start: only the other three are hashed, each by one rank; then every shard is recorded.
    second = tmp_path / "second"
    second.mkdir()
    spawn_ranks(_rank_main, (str(root), str(second), None), WORLD)
    again = _hashed(second)
    assert sorted(again[0] + again[1]) == sorted(set(names) - recorded)
    assert all(again)  # both ranks took part
    assert sorted(done[0] + done[1] + again[0] + again[1]) == names  # every shard read once over both starts
    assert all(hash_cache.cached_sha256(root / e.file) == e.sha256 for e in manifest.shards)  # none left


def test_the_split_balances_bytes_and_covers_every_shard_once():
    sizes = [10, 70, 30, 30, 20, 50, 40]
    owned = hash_assignment(sizes, 3)
    assert sorted(p for share in owned for p in share) == list(range(len(sizes)))
    loads = [sum(sizes[p] for p in share) for share in owned]
    assert max(loads) - min(loads) <= max(sizes) and sum(loads) == sum(sizes)
    assert hash_assignment(sizes, 1) == [[1, 5, 6, 2, 3, 4, 0]]  # largest first


def test_a_mismatch_found_by_one_rank_is_one_error_line(tmp_path, monkeypatch):
    root = make_train_shards(tmp_path / "set", shards=3, videos=2, frames=12)
    monkeypatch.setenv(hash_cache.HASH_CACHE_ENV, str(tmp_path / "new-machine.json"))
    shard = root / "shard-00002.h5"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardSetError, match="shard shard-00002.h5 does not match its sha256"):
        open_shard_set(root)


def test_counts_that_disagree_with_the_manifest_stop_the_start_in_one_line(tmp_path):
    """The quick check stops at presence and size; the index's single open of each shard compares its
    counts with the manifest entry, also for a shard this machine has hashed (the record trusts bytes,
    not the manifest's other fields)."""
    import json

    root = make_train_shards(tmp_path / "set", shards=2, videos=2, frames=12)
    listed = json.loads((root / "manifest.json").read_text())
    listed["shards"][1]["frames"] += 1
    (root / "manifest.json").write_text(json.dumps(listed))
    with pytest.raises(ShardSetError, match=r"shard shard-00001.h5 fails verification \(holds 2 videos / 24 "
                                            r"frames but the manifest says 2 / 25\); see `sslfer-manifest verify"):
        open_shard_set(root)
