"""Run the preprocessing phases over the inputs with joblib, resuming whatever an earlier run finished.

Phase 1 (parallel per clip)   extract_task -> .work/videos/<key>.{npz,json}
pool + plan (main process)    .work/donor_pool.npz, .work/plan.json
Phase 2 (parallel per clip)   swap_task    -> .work/swaps/<key>.npz (skipped when --swaps 0)
Phase 3 (parallel per shard)  shard_task   -> OUT/<shard>.h5, then the clip's work arrays are deleted
finish (main process)         failures.jsonl, manifest.json, records folded into .work/records.jsonl
"""
from __future__ import annotations

import contextlib
import hashlib
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from preprocess.donor_pool import build_pool, load_pool, save_pool
from preprocess.failures import FAILURES_NAME, read_failures, write_failures
from preprocess.phase_tasks import extract_task, shard_task, swap_task
from preprocess.prep_config import PrepConfig, config_differences
from preprocess.shard_planner import plan_shards, shard_prefix
from preprocess.sources import VideoSource
from preprocess.space_estimate import estimate_space, shard_bytes_per_frame
from preprocess.work_files import WORK_DIR_NAME, WorkDir, load_npz, npz_problem
from preprocess.worker_models import single_thread_env, worker_init
from sslfer_core.byte_sizes import human_bytes
from sslfer_core.progress import PhaseProgress

DASK_HINT = "pip install 'sslfer[dask]'"


class PrepError(Exception):
    """A problem the user must fix; the CLI prints it as one line (exit 1)."""


class PrepUsageError(PrepError):
    """Options that cannot be used with this OUT (exit 2)."""


@dataclass
class RunOptions:
    out: Path
    jobs: int = 1
    part: tuple[int, int] | None = None
    backend: str = "loky"
    scheduler: str | None = None
    shard_size_mb: float = 256.0
    force: bool = False
    space_check: bool = True
    keep_work: bool = False
    limit: int | None = None


@dataclass
class RunSummary:
    inputs: int = 0
    selected: int = 0
    resumed: int = 0  # clips whose phase 1 was already done
    kept_videos: int = 0
    skipped_videos: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    frames_sampled: int = 0
    frames_kept: int = 0
    frames_new: int = 0  # stored by this invocation (not resumed)
    swaps_total: int = 0
    swaps_failed: int = 0
    shards_written: int = 0
    shards_total: int = 0
    shard_bytes: int = 0
    wall_seconds: float = 0.0
    phase_seconds: dict = field(default_factory=dict)
    descriptor: str = ""
    estimate: str = ""
    fps_notes: list = field(default_factory=list)  # (video id, what was assumed about its frame times)


def part_of(video_id: str, parts: int) -> int:
    """Which of `parts` slices a clip belongs to: a hash of its id, so adding inputs never moves a clip."""
    return int.from_bytes(hashlib.sha1(video_id.encode("utf-8")).digest()[:8], "big") % parts


def select_inputs(sources: list[VideoSource], part: tuple[int, int] | None, limit: int | None) -> list[VideoSource]:
    chosen = [s for s in sources if part is None or part_of(s.video_id, part[1]) == part[0]]
    return chosen[:limit] if limit is not None else chosen


# ----------------------------------------------------------------------------- OUT ownership

def clear_outputs(out: Path) -> None:
    """--force: remove what sslfer-prep writes into OUT (shards, manifest, failures, work folder), nothing else."""
    from data_manifest.manifest import MANIFEST_NAME

    shutil.rmtree(out / WORK_DIR_NAME, ignore_errors=True)
    for name in (MANIFEST_NAME, FAILURES_NAME):
        (out / name).unlink(missing_ok=True)
    for path in list(out.glob("shard-*.h5")) + list(out.glob("part*of*-shard-*.h5")):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(work: WorkDir):
    from sslfer_core.folder_lock import FolderLocked, folder_lock

    try:
        with folder_lock(work.lock_file, "sslfer-prep"):
            yield
    except FolderLocked as locked:
        raise PrepError(f"{work.out}: another sslfer-prep run is writing here ({locked.holder})") from None


def check_ownership(work: WorkDir, config: PrepConfig, part: tuple[int, int] | None) -> dict:
    """Refuse to resume into an OUT made with other content settings or another --part; returns the run
    description to save once the run starts."""
    from data_manifest.manifest import MANIFEST_NAME, ManifestError, load_manifest

    wanted = {"content": config.content_key(), "part": list(part) if part else None}
    previous = work.read_run()
    if previous is None and (work.out / MANIFEST_NAME).is_file():
        try:
            manifest = load_manifest(work.out)
        except ManifestError as exc:
            raise PrepUsageError(f"{work.out} holds an unreadable manifest ({exc}); use --force to overwrite") from None
        previous = {"content": {**config.content_key(), **manifest.prep_config}, "part": wanted["part"]}
    if previous is not None:
        differences = config_differences(previous.get("content", {}), wanted["content"])
        if previous.get("part") != wanted["part"]:
            differences.append(f"part: {previous.get('part')} -> {wanted['part']}")
        if differences:
            raise PrepUsageError(
                f"{work.out} was made with a different configuration ({'; '.join(differences)}); "
                "use another --out, or --force to overwrite it")
    return wanted


def adopt_finished_out(work: WorkDir) -> None:
    """An OUT whose .work/ was deleted after a finished run: rebuild the shard plan and the per-clip records
    from manifest.json, the shards and failures.jsonl, so that a rerun redoes nothing. The donor pool is then
    rebuilt from the shards' (decoded) faces when clips are added."""
    from data_manifest.manifest import MANIFEST_NAME, load_manifest, shard_paths
    from sslfer_core.shard_format import ShardReader

    if work.plan_file.is_file() or work.read_records() or not (work.out / MANIFEST_NAME).is_file():
        return
    manifest = load_manifest(work.out)
    lost = {r["video_id"]: r for r in read_failures(work.out)}
    records: dict[str, dict] = {}
    for path in shard_paths(work.out, manifest):
        with ShardReader(path) as reader:
            swap_ok = reader.read_array("swap_ok", slice(None)) if reader.has_field("swap_ok") else None
            table = reader.videos
            for v, video_id in enumerate(table.video_id):
                rows = reader.video_rows(v)
                count = rows.stop - rows.start
                record = {"video_id": video_id, "identity": table.identity[v], "path": table.source_path[v],
                          "skipped": False, "frames_kept": count, "frames_sampled": count,
                          "swaps_failed": int((~swap_ok[rows]).sum()) if swap_ok is not None else 0}
                dropped = lost.get(video_id, {}).get("dropped", {})
                record["frames_sampled"] += sum(dropped.values())
                records[video_id] = {**lost.get(video_id, {}), **record}
    records.update({vid: r for vid, r in lost.items() if r.get("skipped")})
    work.fold_records(records)
    work.write_plan([{"file": e.file, "video_ids": list(e.video_ids)} for e in manifest.shards])


# ----------------------------------------------------------------------------- parallel execution

@contextlib.contextmanager
def parallel_backend(options: RunOptions):
    import joblib

    if options.backend == "dask":
        try:
            from dask.distributed import Client
        except ImportError:
            raise PrepError(f"--backend dask needs dask.distributed: {DASK_HINT}") from None
        client = Client(options.scheduler) if options.scheduler else Client(processes=True, n_workers=options.jobs,
                                                                            threads_per_worker=1)
        try:
            with joblib.parallel_config(backend="dask"):
                yield
        finally:
            client.close()
    else:
        with joblib.parallel_config(backend="loky", inner_max_num_threads=1, initializer=worker_init):
            yield


def run_tasks(tasks: list, options: RunOptions, phase: str, on_done: Callable[[object], None]) -> None:
    """Run delayed tasks, calling on_done(result) in the main process as each finishes (any order)."""
    import joblib

    if not tasks:
        return
    jobs = 1 if options.backend != "dask" and len(tasks) == 1 else options.jobs
    results: Iterable = joblib.Parallel(n_jobs=jobs, return_as="generator_unordered", batch_size=1)(tasks)
    for result in results:
        on_done(result)


# ----------------------------------------------------------------------------- the run

def run_prep(sources: list[VideoSource], config: PrepConfig, options: RunOptions,
             echo: Callable[[str], None] = print) -> RunSummary:
    import joblib

    started = time.perf_counter()
    summary = RunSummary(inputs=len(sources), descriptor=config.descriptor)
    selected = select_inputs(sources, options.part, options.limit)
    summary.selected = len(selected)
    if not selected:
        where = f" in part {options.part[0]}/{options.part[1]}" if options.part else ""
        raise PrepError(f"no inputs to process{where} ({len(sources)} found in total)")
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    if options.force:
        clear_outputs(out)
    work = WorkDir(out)
    single_thread_env()
    with run_lock(work):
        run_description = check_ownership(work, config, options.part)
        work.create()
        work.remove_stale_temporaries()
        adopt_finished_out(work)

        records = _discard_damaged_work(work, echo)
        pending = [s for s in selected if s.video_id not in records]
        summary.resumed = len(selected) - len(pending)
        estimate = estimate_space(pending, config, out)
        summary.estimate = estimate.describe()
        echo(f"estimated output: {summary.estimate}")
        if options.space_check and not estimate.fits:
            raise PrepError(f"not enough free space in {out}: need about {human_bytes(estimate.needed_bytes)}, "
                            f"{human_bytes(estimate.free_bytes)} free (use --no-space-check to run anyway)")
        work.write_run(run_description)

        with parallel_backend(options):
            _timed(summary, "faces", lambda: _run_phase(
                "1/3 faces", "extract", [joblib.delayed(extract_task)(s, config, str(out)) for s in pending], options,
                lambda bar, r: bar.advance(frames=r["frames_kept"], skips=int(r["skipped"]))))
            records = work.read_records()
            plan = _pool_and_plan(work, records, selected, config, options, echo)
            unwritten = [s for s in plan if not (out / s["file"]).is_file()]
            if config.swaps > 0:
                todo = [records[v] for s in unwritten for v in s["video_ids"]
                        if "swaps_failed" not in records[v] or not work.swaps_path(v).is_file()]
                _timed(summary, "swaps", lambda: _run_phase(
                    "2/3 swaps", "swap", [joblib.delayed(swap_task)(r, config, str(out)) for r in todo], options,
                    lambda bar, r: bar.advance(frames=r["frames_kept"])))
                records = work.read_records()
            header = shard_header(config)
            tasks = [joblib.delayed(shard_task)(s, [records[v] for v in s["video_ids"]], header, str(out),
                                                options.keep_work) for s in unwritten]
            _timed(summary, "shards", lambda: _run_phase(
                "3/3 shards", "shard", tasks, options, lambda bar, r: bar.advance(frames=r["frames"]), unit="shards"))
            summary.shards_written = len(unwritten)

        _finish(work, plan, records, selected, summary, config.swaps, {s.video_id for s in pending})
    summary.wall_seconds = time.perf_counter() - started
    return summary


def _discard_damaged_work(work: WorkDir, echo) -> dict[str, dict]:
    """The phase-1 records, after damaged work files are removed (their clips redone alone, with a note)."""
    records = work.read_records()
    for note in work.damage_notes:
        echo(note)
    if work.pool_file.is_file():
        problem = npz_problem(work.pool_file)
        if problem:
            work.pool_file.unlink()
            echo(f"note: {work.pool_file.relative_to(work.out)} is damaged ({problem}); rebuilding the donor pool")
    written = {v for shard in work.read_plan() if (work.out / shard["file"]).is_file() for v in shard["video_ids"]}
    notes = work.discard_damaged(records, written)
    for note in notes:
        echo(note)
    return work.read_records() if notes else records


def _timed(summary: RunSummary, name: str, action: Callable[[], None]) -> None:
    tick = time.perf_counter()
    action()
    summary.phase_seconds[name] = time.perf_counter() - tick


def _run_phase(label: str, phase: str, tasks: list, options: RunOptions, advance, unit: str = "videos") -> None:
    bar = PhaseProgress(label, len(tasks), unit=unit)
    try:
        run_tasks(tasks, options, phase, lambda result: advance(bar, result))
    finally:
        bar.close()


def _pool_and_plan(work: WorkDir, records: dict[str, dict], selected: list[VideoSource], config: PrepConfig,
                   options: RunOptions, echo) -> list[dict]:
    """Donor pool (when K > 0) and shard plan from the phase-1 records; both saved before phase 2."""
    wanted = {s.video_id for s in selected}
    plan = work.read_plan()
    planned = {v for shard in plan for v in shard["video_ids"]}
    kept = [r for vid, r in records.items() if not r["skipped"] and (vid in wanted or vid in planned)]
    if config.swaps > 0 and kept and _update_pool(work, kept, config, plan) < 2:
        echo("warning: the donor pool holds fewer than 2 identities, so no swap can use another identity's "
             "head; those swaps are stored as failed (swap_ok false)")
    sizes = [(r["video_id"], int(r["frames_kept"] * shard_bytes_per_frame(config))) for r in kept
             if r["video_id"] in wanted]
    new_shards = plan_shards(plan, sizes, target_bytes=int(options.shard_size_mb * 1e6),
                             prefix=shard_prefix(options.part))
    if new_shards:
        plan = plan + new_shards
        work.write_plan(plan)
    return plan


def _update_pool(work: WorkDir, kept: list[dict], config: PrepConfig, plan: list[dict]) -> int:
    """Build or extend the donor pool; returns how many identities it holds."""
    existing = load_pool(work.pool_file) if work.pool_file.is_file() else None
    known = set(existing.identity.tolist()) if existing is not None else set()
    kept = [r for r in kept if r["identity"] not in known]
    if not kept:
        return len(known)  # a resumed run: the saved pool already covers every identity
    pool = build_pool(kept, _frames_loader(work, plan), config.pool_per_identity, config.size, existing)
    save_pool(work.pool_file, pool)
    return len(pool.identities())


def _frames_loader(work: WorkDir, plan: list[dict]) -> Callable[[str], dict]:
    """Faces and landmarks of a clip: from its work file, or (when .work was lost) from the shard holding it."""
    from sslfer_core.shard_format import ShardReader

    shard_of = {v: shard["file"] for shard in plan for v in shard["video_ids"]}

    def load(video_id: str) -> dict:
        path = work.frames_path(video_id)
        if path.is_file() or video_id not in shard_of:
            return load_npz(path)
        with ShardReader(work.out / shard_of[video_id]) as reader:
            rows = reader.video_rows(list(reader.videos.video_id).index(video_id))
            return {"faces": reader.read_images("face", rows), "landmarks": reader.read_array("landmarks", rows)}

    return load


def shard_header(config: PrepConfig):
    from sslfer_core.shard_format import ShardHeader

    return ShardHeader(
        image_size=config.size, patch_size=config.patch_size, swaps_per_frame=config.swaps,
        descriptor_kind=config.descriptor, descriptor_dim=config.descriptor_dim, codecs=config.codecs(),
        prep_config=config.prep_config(), dlib_model_sha256=dict(config.dlib_model_sha256),
        descriptor_weights_sha256=config.descriptor_weights_sha256,
    )


def _finish(work: WorkDir, plan: list[dict], records: dict[str, dict], selected: list[VideoSource],
            summary: RunSummary, swaps_per_frame: int, processed: set[str]) -> None:
    from data_manifest.manifest import MANIFEST_NAME, ManifestError, build_manifest, load_manifest, save_manifest

    out = work.out
    wanted = [records[s.video_id] for s in selected if s.video_id in records]
    skipped = write_failures(out, list(records.values()))
    files = [s["file"] for s in plan]
    summary.shards_total = len(files)
    if files:
        try:
            current = load_manifest(out) if (out / MANIFEST_NAME).is_file() else None
        except ManifestError:
            current = None
        unchanged = (current is not None and [e.file for e in current.shards] == files
                     and current.failures == skipped and summary.shards_written == 0)
        if not unchanged:
            save_manifest(out, build_manifest(out, [out / f for f in files], failures=skipped))
        summary.shard_bytes = sum((out / f).stat().st_size for f in files)
    work.fold_records(records)
    for record in wanted:
        if record.get("fps_note") and not record["skipped"]:
            summary.fps_notes.append((record["video_id"], record["fps_note"]))
        summary.frames_sampled += int(record.get("frames_sampled", 0))
        if record["skipped"]:
            summary.skipped_videos += 1
            summary.skip_reasons[record["reason"]] += 1
        else:
            summary.kept_videos += 1
            summary.frames_kept += int(record["frames_kept"])
            summary.frames_new += int(record["frames_kept"]) if record["video_id"] in processed else 0
            summary.swaps_failed += int(record.get("swaps_failed", 0))
    summary.swaps_total = summary.frames_kept * swaps_per_frame
