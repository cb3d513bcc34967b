"""What a shard set (or one shard) holds: counts, config, per-identity and per-video totals, storage per field,
and the fraction of sampled frames that preprocessing kept."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np

from data_manifest.manifest import (
    FAILURES_NAME, MAX_COUNT, Manifest, ManifestError, check_relative_path, failure_file_lines, load_manifest,
    shard_paths,
)
from sslfer_core import strict_json
from sslfer_core.shard_format import VERIFY_HINT, ShardFormatError, ShardReader, read_backed

JPEG_SAMPLE_ROWS = 256  # JPEG payload sizes are estimated from this many evenly spaced rows per shard


def inspect_path(path: Path, progress=None) -> dict:
    """Report on a directory with a manifest.json, or on a single shard file. JSON-serialisable.

    `progress()` is called once per shard read.
    """
    path = Path(path)
    if path.is_dir():
        manifest = load_manifest(path)
        if not manifest.shards:
            raise ManifestError(f"{path}: the manifest lists no shards")
        files = [(e.file, p) for e, p in zip(manifest.shards, shard_paths(path, manifest))]
        report = _report(files, manifest, progress)
        report["kept"] = kept_frames(path, manifest, report["totals"]["frames"])
        return report
    return _report([(path.name, path)], None, progress)


def kept_frames(root: Path, manifest: Manifest, frames_in_shards: int) -> dict:
    """Frames kept (in the shards) against frames sampled by sslfer-prep, from failures.jsonl beside the
    manifest. Records of kept videos carry frames_sampled and frames_kept; a skipped video lost all of
    its frames_sampled. Without the file the number of sampled frames is unknown (None). A record whose
    counts are missing or unusable (not whole numbers from 0 up, or more kept than sampled) is counted in
    records_without_counts and adds nothing."""
    name = manifest.failures_file or FAILURES_NAME
    path = Path(root).joinpath(*check_relative_path(name, "failures file").parts)
    out = {"frames_kept": frames_in_shards, "frames_attempted": None, "fraction": None, "failures_file": None,
           "frames_dropped_in_kept_videos": 0, "frames_in_skipped_videos": 0, "videos_skipped": 0,
           "records_without_counts": 0, "videos_with_assumed_frame_times": 0}
    if not path.is_file():
        return out
    out["failures_file"] = name
    for record in _failure_records(path):
        skipped = record.get("skipped") is True
        if record.get("fps_note") and not skipped:  # sslfer-prep assumed its frame rate or frame times
            out["videos_with_assumed_frame_times"] += 1
        sampled = record.get("frames_sampled")
        kept = record.get("frames_kept", sampled)
        if skipped:
            out["videos_skipped"] += 1
        if not _count(sampled) or (not skipped and not (_count(kept) and kept <= sampled)):
            out["records_without_counts"] += 1
        elif skipped:
            out["frames_in_skipped_videos"] += sampled
        else:
            out["frames_dropped_in_kept_videos"] += sampled - kept
    attempted = frames_in_shards + out["frames_dropped_in_kept_videos"] + out["frames_in_skipped_videos"]
    out["frames_attempted"] = attempted
    out["fraction"] = round(frames_in_shards / attempted, 4) if attempted else None
    return out


def _count(value) -> bool:
    """True for a usable frame count: a JSON integer from 0 to MAX_COUNT (not a bool, float or string)."""
    return type(value) is int and 0 <= value <= MAX_COUNT


def _failure_records(path: Path) -> list[dict]:
    records = []
    for number, line in failure_file_lines(path):
        try:
            record = strict_json.loads(line, constants=True)
        except ValueError as exc:
            raise ManifestError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ManifestError(f"{path}:{number}: a failure record must be a JSON object")
        records.append(record)
    return records


def _report(files: list[tuple[str, Path]], manifest: Manifest | None, progress) -> dict:
    videos, fields, schema_versions, codecs, headers = [], {}, set(), {}, []
    file_bytes = 0
    for name, path in files:
        with ShardReader(path) as reader:
            header = reader.header
            videos.extend(_video_rows(name, reader))
            try:
                fields_of_shard = _field_storage(path, header, reader.num_frames)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ShardFormatError(f"{path}: cannot read its storage layout ({exc}); {VERIFY_HINT}") from None
        headers.append(header)
        schema_versions.add("{}.{}".format(*header.schema_version))
        for field_name, codec in header.codecs.items():
            codecs.setdefault(field_name, codec.to_json())
        for field_name, info in fields_of_shard.items():
            acc = fields.setdefault(field_name, {**info, "bytes": 0, "frames": 0})
            acc["bytes"] += info["bytes"]
            acc["frames"] += info["frames"]
            acc["estimated"] = acc["estimated"] or info["estimated"]
        file_bytes += path.stat().st_size
        if progress:
            progress()
    frames = sum(v["frames"] for v in videos)
    for info in fields.values():
        info["bytes_per_frame"] = round(info["bytes"] / max(info.pop("frames"), 1), 1)
    first = headers[0]
    config = {
        "image_size": first.image_size, "patch_size": first.patch_size, "swaps_per_frame": first.swaps_per_frame,
        "descriptor_kind": first.descriptor_kind, "descriptor_dim": first.descriptor_dim,
        "prep_config": first.prep_config,
    }
    report = {
        "source": "manifest" if manifest else "shard",
        "schema_versions": sorted(schema_versions),
        "config": config,
        "mixed": bool(manifest and manifest.mixed),
        "codecs": codecs,
        "totals": {
            "shards": len(files),
            "videos": len(videos),
            "frames": frames,
            "identities": len({v["identity"] for v in videos}),
            "bytes": file_bytes,
            "bytes_per_frame": round(file_bytes / max(frames, 1), 1),
            "duration_s": round(sum(v["duration_s"] for v in videos), 3),
            **_rates(videos),
        },
        "fields": fields,
        "identities": _per_identity(videos),
        "videos": videos,
    }
    if manifest:
        report["manifest"] = {
            "schema_version": manifest.schema_version, "tool_version": manifest.tool_version,
            "created": manifest.created, "parts": len(manifest.parts),
        }
        report["failures"] = {"count": manifest.failures, "file": manifest.failures_file}
    return report


def _video_rows(shard: str, reader: ShardReader) -> list[dict]:
    k = reader.header.swaps_per_frame
    swap_ok = reader.read_array("swap_ok", slice(None)) if reader.has_field("swap_ok") else None
    has_desc = reader.read_array("has_descriptor", slice(None)) if reader.has_field("has_descriptor") else None
    table = reader.videos
    out = []
    for i in range(len(table)):
        rows = reader.video_rows(i)
        ts = reader.timestamps[rows]
        n = rows.stop - rows.start
        out.append({
            "video_id": str(table.video_id[i]),
            "identity": str(table.identity[i]),
            "shard": shard,
            "status": str(table.status[i]),
            "source_fps": float(table.source_fps[i]),
            "frames": int(n),
            "duration_s": round(float(ts[-1] - ts[0]) if n else 0.0, 3),
            # Raw counts, so totals over identities are weighted by frames rather than averaged per video.
            "swaps_ok": int(swap_ok[rows].sum()) if swap_ok is not None else 0,
            "swaps_total": int(n * k) if swap_ok is not None else 0,
            "descriptors": int(has_desc[rows].sum()) if has_desc is not None else 0,
        })
        out[-1].update(_rates([out[-1]]))
    return out


def _rates(videos: list[dict]) -> dict:
    swaps_total = sum(v["swaps_total"] for v in videos)
    frames = sum(v["frames"] for v in videos)
    return {
        "swap_success_rate": round(sum(v["swaps_ok"] for v in videos) / swaps_total, 4) if swaps_total else None,
        "descriptor_coverage": round(sum(v["descriptors"] for v in videos) / frames, 4) if frames else None,
    }


def _per_identity(videos: list[dict]) -> dict:
    groups = defaultdict(list)
    for video in videos:
        groups[video["identity"]].append(video)
    return {
        identity: {
            "videos": len(vs),
            "frames": sum(v["frames"] for v in vs),
            "duration_s": round(sum(v["duration_s"] for v in vs), 3),
            **_rates(vs),
        }
        for identity, vs in sorted(groups.items())
    }


def _field_storage(path: Path, header, num_frames: int) -> dict:
    """Bytes each per-frame dataset takes on disk; JPEG (variable-length) payloads are sampled."""
    out = {}
    with h5py.File(path, "r") as h5:
        for name, ds in h5["frames"].items():
            codec = header.codecs[name].name if name in header.codecs else None
            vlen = h5py.check_vlen_dtype(ds.dtype) is not None
            if vlen and ds.shape[0]:
                rows = np.unique(np.linspace(0, ds.shape[0] - 1, min(JPEG_SAMPLE_ROWS, ds.shape[0])).astype(int))
                sample = ds[rows]
                per_row = sum(int(buf.size) for buf in sample.reshape(-1)) / len(rows)
                nbytes, estimated = int(round(per_row * ds.shape[0])), len(rows) < ds.shape[0]
            else:
                nbytes, estimated = int(ds.id.get_storage_size()), False
            out[name] = {
                "dtype": "vlen uint8" if vlen else str(ds.dtype),
                "shape_per_frame": list(ds.shape[1:]) + ([] if not vlen else ["jpeg"]),
                "codec": codec,
                "compression": ds.compression,
                "chunk_frames": ds.chunks[0] if ds.chunks else None,
                "bytes": nbytes,
                "frames": num_frames,
                "estimated": estimated,
            }
        for name, group in (h5["streams"].items() if "streams" in h5 else ()):
            # Stream-coded image fields (one H.264 stream per chunk of rows): every stream is counted.
            data = group["data"]
            out[name] = {
                "dtype": "vlen uint8", "shape_per_frame": ["stream"],
                "codec": header.codecs[name].name if name in header.codecs else None,
                "compression": None, "chunk_frames": header.codecs[name].chunk_frames if name in header.codecs else None,
                "bytes": int(sum(int(buf.size) for buf in read_backed(data, path.stat().st_size, path)))
                + int(data.id.get_storage_size()),
                "frames": num_frames, "estimated": False,
            }
    return out


def format_report(report: dict, *, show_videos: bool = False) -> str:
    t = report["totals"]
    c = report["config"]
    lines = [
        f"shards {t['shards']}  videos {t['videos']}  frames {t['frames']}  identities {t['identities']}  "
        f"bytes {t['bytes']:,} ({t['bytes_per_frame']:,.0f} per frame)  duration {t['duration_s']:.1f} s",
        f"schema {', '.join(report['schema_versions'])}  image {c['image_size']} px  patch {c['patch_size']} px  "
        f"swaps K={c['swaps_per_frame']}  descriptor {c['descriptor_kind']} ({c['descriptor_dim']}-d)"
        + ("  MIXED CONFIG (see manifest parts)" if report["mixed"] else ""),
        f"prep config {c['prep_config']}",
        f"swap success {_pct(t['swap_success_rate'])}  descriptor coverage {_pct(t['descriptor_coverage'])}",
    ]
    if "failures" in report:
        f = report["failures"]
        lines.append(f"failures {f['count']}" + (f" (see {f['file']})" if f["file"] else ""))
    if "kept" in report:
        lines.append(_kept_line(report["kept"]))
    lines.append("fields:")
    for name, info in sorted(report["fields"].items()):
        codec = f" {info['codec']}" if info["codec"] else ""
        comp = f" {info['compression']}" if info["compression"] else ""
        approx = "~" if info["estimated"] else ""
        lines.append(f"  {name:15s} {info['dtype']:10s}{codec}{comp}  chunk {info['chunk_frames']}  "
                     f"{approx}{info['bytes_per_frame']:,.0f} B/frame")
    lines.append(f"{'identity':20s} {'videos':>6s} {'frames':>7s} {'seconds':>8s} {'swap ok':>8s} {'desc':>6s}")
    for identity, s in report["identities"].items():
        lines.append(f"{identity:20s} {s['videos']:6d} {s['frames']:7d} {s['duration_s']:8.1f} "
                     f"{_pct(s['swap_success_rate']):>8s} {_pct(s['descriptor_coverage']):>6s}")
    if show_videos:
        lines.append(f"{'video':28s} {'identity':14s} {'frames':>7s} {'seconds':>8s} {'swap ok':>8s} {'desc':>6s} status")
        for v in report["videos"]:
            lines.append(f"{v['video_id']:28s} {v['identity']:14s} {v['frames']:7d} {v['duration_s']:8.1f} "
                         f"{_pct(v['swap_success_rate']):>8s} {_pct(v['descriptor_coverage']):>6s} {v['status']}")
    return "\n".join(lines)


def _kept_line(kept: dict) -> str:
    if kept["frames_attempted"] is None:
        return f"kept frames {kept['frames_kept']:,} of an unknown number sampled (no {FAILURES_NAME})"
    line = (f"kept frames {kept['frames_kept']:,} of {kept['frames_attempted']:,} sampled ({_pct(kept['fraction'])}): "
            f"{kept['frames_dropped_in_kept_videos']:,} dropped from kept videos, "
            f"{kept['frames_in_skipped_videos']:,} in {kept['videos_skipped']} skipped videos")
    if kept["records_without_counts"]:
        line += f"; {kept['records_without_counts']} failure records without usable frame counts not included"
    assumed = kept["videos_with_assumed_frame_times"]
    if assumed:
        line += (f"\n{assumed} clip{'s' if assumed > 1 else ''} stored with assumed frame times "
                 f"(fps_note in {kept['failures_file']})")
    return line


def _pct(rate) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"
