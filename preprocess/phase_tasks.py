"""The three kinds of worker task. Each writes its results atomically into OUT/.work or OUT and returns a
small JSON-able record, so the parent process never holds image arrays and a killed run loses at most
the tasks in flight."""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path

from preprocess import failures as why
from preprocess.donor_pool import load_pool
from preprocess.prep_config import PrepConfig
from preprocess.sources import VideoSource
from preprocess.swap_pass import DonorIndex, swap_video
from preprocess.video_pipeline import process_video
from preprocess.work_files import WorkDir, load_npz, save_npz
from preprocess.worker_models import ModelSpec, face_models, pin_threads

_pool_cache: dict[tuple, DonorIndex] = {}


def model_spec(config: PrepConfig) -> ModelSpec:
    return ModelSpec(config.model_dir, config.min_face_px, config.cnn_fallback, config.descriptor,
                     config.descriptor_device)


def extract_task(source: VideoSource, config: PrepConfig, out: str) -> dict:
    """Phase 1: decode, track, align, patches, descriptors; writes videos/<key>.npz then videos/<key>.json."""
    started_cpu, started = time.process_time(), time.perf_counter()
    work = WorkDir(out)
    try:
        result = process_video(source, config, face_models(model_spec(config)))
        record, arrays = result.record, result.arrays
    except Exception as exc:  # one broken clip must not stop the run; it is recorded and skipped
        record = {"video_id": source.video_id, "identity": source.identity, "path": source.source_path,
                  "kind": source.kind, "skipped": True, "reason": why.PROCESSING_ERROR,
                  "detail": f"{type(exc).__name__}: {exc}".strip(), "frames_sampled": 0, "frames_kept": 0,
                  "trace": traceback.format_exc(limit=3)}
        arrays = None
    if arrays is not None:
        save_npz(work.frames_path(source.video_id), arrays)
    record["cpu_s"] = {"extract": round(time.process_time() - started_cpu, 4)}
    record["wall_s"] = {"extract": round(time.perf_counter() - started, 4)}
    work.write_record(record)  # written last: its presence means phase 1 is done for this clip
    return record


def _donor_index(pool_file: Path) -> DonorIndex:
    stat = pool_file.stat()
    key = (str(pool_file), stat.st_mtime_ns, stat.st_size)
    index = _pool_cache.get(key)
    if index is None:
        _pool_cache.clear()
        index = _pool_cache[key] = DonorIndex(load_pool(pool_file))
    return index


def swap_task(record: dict, config: PrepConfig, out: str) -> dict:
    """Phase 2: K swaps per kept frame against the donor pool; writes swaps/<key>.npz, then updates the record."""
    pin_threads()
    started_cpu, started = time.process_time(), time.perf_counter()
    work = WorkDir(out)
    video_id = record["video_id"]
    frames = load_npz(work.frames_path(video_id))
    swaps, swap_ok, donors = swap_video(
        video_id, record["identity"], frames["faces"], frames["landmarks"], frames["frame_index"],
        _donor_index(work.pool_file), swaps=config.swaps, seed=config.seed, attempts=config.swap_attempts,
    )
    save_npz(work.swaps_path(video_id), {"swaps": swaps, "swap_ok": swap_ok, "donor_row": donors})
    record = dict(record)
    record["swaps_failed"] = int(swap_ok.size - swap_ok.sum())
    record.setdefault("cpu_s", {})["swap"] = round(time.process_time() - started_cpu, 4)
    record.setdefault("wall_s", {})["swap"] = round(time.perf_counter() - started, 4)
    work.write_record(record)
    return record


def shard_task(entry: dict, records: list[dict], header, out: str, keep_work: bool) -> dict:
    """Phase 3: write one shard from the work files of its videos (atomic), then drop those work files."""
    from sslfer_core.shard_format import ShardWriter, VideoFrames

    pin_threads()
    started_cpu, started = time.process_time(), time.perf_counter()
    work = WorkDir(out)
    path = Path(out) / entry["file"]
    frames_written = 0
    with ShardWriter(path, header) as writer:
        for record in records:
            video_id = record["video_id"]
            frames = load_npz(work.frames_path(video_id))
            swaps = load_npz(work.swaps_path(video_id)) if header.swaps_per_frame > 0 else {}
            writer.add_video(VideoFrames(
                video_id=video_id, identity=record["identity"], source_path=record["path"],
                source_fps=float(frames["source_fps"]), faces=frames["faces"], landmarks=frames["landmarks"],
                eyes=frames.get("eyes"), mouth=frames.get("mouth"), timestamps=frames["timestamps"],
                frame_index=frames["frame_index"], det_score=frames["det_score"],
                swaps=swaps.get("swaps"), swap_ok=swaps.get("swap_ok"),
                descriptors=frames.get("descriptors"), has_descriptor=frames.get("has_descriptor"),
            ))
            frames_written += len(frames["faces"])
    if not keep_work:
        for record in records:
            work.remove_video_arrays(record["video_id"])
    return {"file": entry["file"], "frames": frames_written, "bytes": os.path.getsize(path),
            "cpu_s": round(time.process_time() - started_cpu, 4), "wall_s": round(time.perf_counter() - started, 4)}
