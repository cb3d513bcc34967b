"""Small shard directories with manifests, for the data_manifest tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from data_manifest.manifest import build_manifest, save_manifest
from shard_fixtures import make_header, make_video
from sslfer_core.shard_format import write_shard


def make_shard_set(root: Path, *, seed: int = 0, prefix: str = "v", shards: int = 2, failures: list[dict] = (),
                   **header_kwargs) -> Path:
    """`shards` shards of two tiny videos each (ids f"{prefix}{n}"), failures.jsonl if given, and manifest.json."""
    rng = np.random.default_rng(seed)
    header = make_header(**header_kwargs)
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for s in range(shards):
        videos = [make_video(rng, header, 3 + v, video_id=f"{prefix}{2 * s + v}", identity=f"{prefix}id{v}")
                  for v in range(2)]
        files.append(write_shard(root / f"shard-{s:05d}.h5", header, videos))
    if failures:
        (root / "failures.jsonl").write_text("".join(json.dumps(f) + "\n" for f in failures))
    save_manifest(root, build_manifest(root, files))
    return root


def flip_byte(path: Path, offset_fraction: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0xFF
    path.write_bytes(bytes(data))
