"""Start-up checks of the shard folder: manifest present and verified (quick by default, every byte with
--verify). Each failure is one ShardSetError line."""
from __future__ import annotations

import secrets
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from data_manifest.manifest import (
    MANIFEST_NAME, ManifestError, describe_repeat, find_shard_files, header_compat, load_manifest_and_digest,
    repeated_clips, shard_paths,
)
from data_manifest.verify import ERROR, manifest_disagreement, verify_shards, video_ids_disagreement
from sslfer_core import hash_cache
from sslfer_core.file_hash import file_sha256
from sslfer_core.progress import Progress
from sslfer_core.shard_format import ShardFormatError, unwrap_worker_message
from train import index_cache
from train.distributed import DistContext, gather_ints
from train.shard_index import ShardHook, ShardIndex, build_shard_index


class ShardSetError(ValueError):
    """The shard folder cannot be trained on; the message says why in one line (also when a DataLoader
    worker raised it: the main process then sees the worker's original line, not its traceback)."""

    def __init__(self, *args):
        super().__init__(*(unwrap_worker_message(a) for a in args))


def open_shard_set(root: Path, *, full_verify: bool = False,
                   warn: Callable[[str], None] = lambda text: None, ctx: DistContext | None = None,
                   keep_timestamps: bool = True, on_shard: ShardHook | None = None) -> tuple[ShardIndex, str]:
    """(index of the manifest's shards, sha256 of manifest.json). Every rank of `ctx` calls it together:
    the sha256 checks are split among the ranks of each machine (_hash_split). keep_timestamps and
    on_shard are passed on to build_shard_index. Once every shard matches the manifest, the index comes
    from the machine's index cache when it holds this manifest's (train/index_cache.py); otherwise it is
    read from the shards, checked against the manifest, and cached: the ranks of each machine share the
    reading (_read_shared). full_verify reads the shards in any case and rewrites the cache."""
    root = Path(root)
    ctx = ctx or DistContext()
    if not root.is_dir():
        raise ShardSetError(f"{root}: no such shard folder")
    if not (root / MANIFEST_NAME).is_file():
        if not find_shard_files(root):
            raise ShardSetError(f"{root}: no shards here (no {MANIFEST_NAME} and no *.h5 files); run sslfer-prep first")
        raise ShardSetError(f"{root}: shards but no {MANIFEST_NAME}; run `sslfer-manifest build {root}`")
    try:
        manifest, digest = load_manifest_and_digest(root)
        if not manifest.shards:
            raise ShardSetError(f"{root}: {MANIFEST_NAME} lists no shards")
        # Presence and size here; header and counts when the index opens each shard (one open per shard).
        problems = verify_shards(root, quick=True, manifest=manifest, open_files=False)
        paths = shard_paths(root, manifest, check_links=False)  # verify_shards refused links out of root
    except ManifestError as error:
        raise ShardSetError(str(error)) from None
    errors = [p for p in problems if p.severity == ERROR]
    for problem in problems:
        if problem.severity != ERROR:
            warn(f"warning: {problem.file}: {problem.reason}")
    if errors:
        first = errors[0]
        raise ShardSetError(f"{root}: {len(errors)} of {len(manifest.shards)} shards fail verification "
                            f"(first: {first.file}: {first.reason}); see `sslfer-manifest verify {root}`")
    if full_verify and ctx.local_rank == 0:
        index_cache.drop_set(digest)  # before the collectives below, so no rank of this job has written yet
    _hash_split(root, manifest, paths, ctx, full_verify, warn)
    index = None if full_verify else index_cache.load_index(digest, paths, keep_timestamps=keep_timestamps,
                                                               on_shard=on_shard, warn=warn)
    # Every rank of the job takes the same way, since the shared reading below meets in collectives.
    if not all(hit for hit, in gather_ints([int(index is not None)], ctx)):
        reading = _Reading(root, manifest, keep_timestamps, on_shard, ctx)
        index = _read_shared(reading, digest, paths, warn)
        if index is None:  # one rank per machine, or the shared reading did not complete: every rank reads all
            index = reading.read(paths, 0)
            _check_clips(root, manifest, index)
            if ctx.local_rank == 0:
                index_cache.save_index(digest, index, on_shard)
    index.sha256 = [entry.sha256 for entry in manifest.shards]
    return index, digest


class _Reading:
    """Reads the index of consecutive shards, checking each against the manifest."""

    def __init__(self, root: Path, manifest, keep_timestamps: bool, on_shard: ShardHook | None, ctx: DistContext):
        self.root, self.manifest, self.keep_timestamps, self.on_shard, self.ctx = (
            root, manifest, keep_timestamps, on_shard, ctx)
        self.compat = manifest.compat_config() if not manifest.mixed else None

    def check(self, shard: int, header, counts) -> None:
        entry, root = self.manifest.shards[shard], self.root
        # The reader has checked the header's schema and that the file links nowhere else; what is left
        # of the quick check is the comparison with the manifest.
        found = (len(counts), int(counts.sum()))
        if found != (entry.videos, entry.frames) or (self.compat is not None and header_compat(header) != self.compat):
            reason = manifest_disagreement(entry, header, found, self.manifest)
            raise ShardSetError(f"{root}: shard {entry.file} fails verification ({reason}); "
                                f"see `sslfer-manifest verify {root}`")

    def read(self, paths: list[Path], first: int) -> ShardIndex:
        """The index of `paths`, the manifest's shards first, first + 1, ...; on_shard sees them numbered
        from 0, as the shards of an index of their own."""
        # A first start at VoxCeleb2 scale spends most of a minute here (docs/training.md): rank 0 shows it.
        bar = Progress("indexing", len(paths), unit=" shards", enabled=None if self.ctx.is_main else False)

        def check_and_count(shard: int, path: Path, header, timestamps, counts) -> None:
            self.check(first + shard, header, counts)
            if self.on_shard is not None:
                self.on_shard(shard, path, header, timestamps, counts)
            bar.advance()

        try:
            return build_shard_index(paths, keep_timestamps=self.keep_timestamps, on_shard=check_and_count)
        except (ShardFormatError, ValueError) as error:
            raise ShardSetError(str(error).splitlines()[0]) from None
        finally:
            bar.close()


def _read_shared(reading: _Reading, digest: str, paths: list[Path], warn) -> ShardIndex | None:
    """The ranks of each machine read a consecutive share of the shards each and keep it in the index
    cache as a part; the machine's rank 0 merges the parts, checks the clips and writes the set; then
    every rank maps it (train/index_cache.py). None where that cannot be done (one rank per machine, a
    hook the cache cannot keep, a cache that cannot be written, a shard that fails its check): the
    caller then reads every shard on every rank, which names a failing shard on every rank alike."""
    ctx, on_shard = reading.ctx, reading.on_shard
    local_world = max(1, min(ctx.local_world_size, ctx.world_size))
    if local_world < 2 or len(paths) < 2 * local_world or not (
            on_shard is None or isinstance(on_shard, index_cache.CachedHook)):
        return None
    node, local_rank = ctx.rank // local_world, ctx.local_rank % local_world
    job = gather_ints([secrets.randbits(62)], ctx)[node * local_world][0]  # names this machine's parts
    bounds = np.linspace(0, len(paths), local_world + 1).round().astype(int).tolist()
    shares = [paths[bounds[r]:bounds[r + 1]] for r in range(local_world)]
    folder = index_cache.parts_folder(digest, f"{node}-{job:x}")
    folders = [folder / str(r) for r in range(local_world)]
    try:
        part = reading.read(shares[local_rank], bounds[local_rank])
        kept = index_cache.save_part(folders[local_rank], part, on_shard)
    except ShardSetError:
        kept = False
    # Over the whole job: a machine that returns here must not leave the others waiting in the gather below.
    if not all(flag for flag, in gather_ints([int(kept)], ctx)):
        if local_rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
        return None
    written = False
    if local_rank == 0:
        try:
            index = index_cache.merge_parts(folders, shares, reading.keep_timestamps, on_shard)
            if index is not None:
                _check_clips(reading.root, reading.manifest, index)
                written = index_cache.save_index(digest, index, on_shard)
        except (ShardSetError, ValueError):  # reading every shard next names it on every rank
            written = False
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if not gather_ints([int(written)], ctx)[node * local_world][0]:
        return None
    return index_cache.load_index(digest, paths, keep_timestamps=reading.keep_timestamps, on_shard=on_shard,
                                  warn=warn)


def _check_clips(root: Path, manifest, index: ShardIndex) -> None:
    """The video ids the shards hold are the manifest's, and each clip is in one shard only (a copy of a
    shard under another name would be trained on twice). Array comparisons; the per-shard lists are built
    only to name a problem."""
    claimed = [video_id for entry in manifest.shards for video_id in entry.video_ids]
    held = index.video_names
    same = len(claimed) == len(held) and (not claimed or np.array_equal(
        np.char.encode(np.asarray(claimed, dtype=str), "utf-8"), held))
    if same and len(np.unique(held)) == len(held):
        return
    per_shard = [[] for _ in manifest.shards]
    for video in range(index.num_videos):
        per_shard[int(index.video_shard[video])].append(index.video_name(video))
    reason = next(((entry.file, disagreement) for entry, ids in zip(manifest.shards, per_shard)
                   if (disagreement := video_ids_disagreement(entry, ids))), None)
    if reason is None:
        name, first, video_ids = repeated_clips([(e.file, ids) for e, ids in zip(manifest.shards, per_shard)])[0]
        reason = (name, describe_repeat("it", first, video_ids) + "; a set must hold each clip once")
    raise ShardSetError(f"{root}: a shard fails verification ({reason[0]}: {reason[1]}); "
                        f"see `sslfer-manifest verify {root}`")


def hash_assignment(sizes: list[int], ranks: int) -> list[list[int]]:
    """Positions in `sizes` that each of `ranks` ranks hashes: largest first onto the least loaded rank
    (ties to the lower rank), so the ranks finish together. Every rank computes the same split."""
    loads = [0] * ranks
    owned: list[list[int]] = [[] for _ in range(ranks)]
    for position in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(ranks), key=lambda r: (loads[r], r))
        owned[rank].append(position)
        loads[rank] += sizes[position]
    return owned


_MISMATCH, _UNREADABLE = 1, 2


def _hash_split(root: Path, manifest, paths: list[Path], ctx: DistContext, full: bool,
                warn: Callable[[str], None]) -> None:
    """A quick start still trains only on bytes whose sha256 matches the manifest: each shard is hashed
    once per machine (sslfer_core/hash_cache.py) and later starts only compare file metadata; `full`
    (--verify) hashes every shard again. The ranks of one machine split the shards to hash and go through
    them in rounds of one shard each: after every round they exchange (bytes hashed, shard found bad), so
    rank 0 draws the bar for the whole machine and every rank stops on the same error line. Each shard is
    recorded as soon as it matches, so an interrupted start resumes where it stopped. Every machine
    hashes its own view of the files (docs/training.md, "At VoxCeleb2 scale")."""
    entries = manifest.shards
    recorded = [None] * len(paths) if full else hash_cache.cached_sha256_many(paths)
    need = [int(full or digest != entry.sha256) for entry, digest in zip(entries, recorded)]
    need = [max(column) for column in zip(*gather_ints(need, ctx))]  # a shard any rank lacks is hashed
    todo = [i for i, flag in enumerate(need) if flag]
    if not todo:
        return
    local_world = max(1, min(ctx.local_world_size, ctx.world_size))
    node = ctx.rank // local_world
    share = hash_assignment([entries[i].bytes for i in todo], local_world)
    mine = [todo[p] for p in share[ctx.local_rank % local_world]]
    rounds = max(len(s) for s in share)
    total = sum(entries[i].bytes for i in todo)
    what = "verifying" if full else "hashing"
    split = f", split over {local_world} ranks" if local_world > 1 else ""
    warn(f"{what} {len(todo)} of {len(entries)} shards{'' if full else ' not yet verified on this machine'} "
         f"({total / 2**20:.0f} MiB{split}{'' if full else ', once'})")
    bar = Progress(what, total, unit=" MiB", scale=2 ** 20, enabled=None if ctx.is_main else False)
    try:
        for round_ in range(rounds):
            done = bad = kind = 0
            if round_ < len(mine):
                shard = mine[round_]
                path, entry = paths[shard], entries[shard]
                before = hash_cache.identity(path)
                try:
                    digest = file_sha256(path)
                except OSError:
                    bad, kind = shard + 1, _UNREADABLE
                else:
                    if digest == entry.sha256:
                        hash_cache.remember([(path, digest, before)])
                        done = entry.bytes
                    else:
                        bad, kind = shard + 1, _MISMATCH
            reports = gather_ints([done, bad, kind], ctx)
            bar.advance(sum(r[0] for rank, r in enumerate(reports) if rank // local_world == node))
            failed = [(r[1] - 1, r[2]) for r in reports if r[1]]
            if failed:
                shard, kind = min(failed)
                name = entries[shard].file
                if kind == _UNREADABLE:
                    raise ShardSetError(f"{paths[shard]}: cannot read; see `sslfer-manifest verify {root}`")
                raise ShardSetError(f"{root}: shard {name} does not match its sha256 in {MANIFEST_NAME} "
                                    f"(content changed or corrupt); see `sslfer-manifest verify {root}`")
    finally:
        bar.close()

