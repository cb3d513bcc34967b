"""A picture of a shard set (`sslfer-manifest inspect SET --sheet sheet.png`), without torch.

One PNG, top to bottom:
- faces: one row per sampled identity, a group per sampled frame: the stored face, its swaps (a grey tile
  with a cross where the swap failed) and its eye and mouth patches, where the set stores them;
- strips (video-profile sets): one row per sampled video, consecutive stored frames;
- charts: frames per identity (sorted, so a dominant identity stands out) and the reasons in failures.jsonl.

Tiles are the stored images resized to TILE pixels (INTER_AREA) and placed unresampled, so the sheet shows
what the shards hold, decoded as the trainer decodes them.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from data_manifest.inspect_shards import _failure_records
from data_manifest.manifest import FAILURES_NAME, check_relative_path, load_manifest, shard_paths
from sslfer_core.atomic_files import atomic_path
from sslfer_core.shard_format import ShardReader

TILE = 96  # side of every image tile, pixels
GAP = 3  # between the tiles of one sampled frame
GROUP_GAP = 14  # between sampled frames (groups) of one row
ROW_GAP = 6
MARGIN = 16
LABEL_WIDTH = 190  # the row labels' column
TITLE_HEIGHT = 58  # the sheet's title (two lines)
SECTION_HEIGHT = 40  # a section title plus the column titles under it
CHART_HEIGHT = 300
MAX_SWAPS_SHOWN = 2
MIN_WIDTH = 900  # so the charts keep room for their labels
DPI = 100
BACKGROUND = (255, 255, 255)
FAILED_SWAP = (200, 200, 200)


@dataclass
class VideoEntry:
    shard: Path
    index: int  # the video's number in its shard
    video_id: str
    identity: str
    rows: slice
    timestamps: np.ndarray


@dataclass
class SheetLayout:
    """Where everything sits, in pixels from the top left; `rows` x `groups` groups of `tiles_per_group` tiles."""
    width: int
    height: int
    identities: list[str]
    groups: int  # sampled frames per identity row
    tile_titles: list[str]  # one per tile of a group: "face", "swap 1", "eyes", "mouth"
    faces_top: int
    strip_videos: list[str] = field(default_factory=list)
    strip_frames: int = 0
    strips_top: int = 0
    charts_top: int = 0

    @property
    def tiles_per_group(self) -> int:
        return len(self.tile_titles)

    def tile_origin(self, row: int, group: int, tile: int) -> tuple[int, int]:
        """(x, y) of a face-grid tile's top left corner."""
        x = MARGIN + LABEL_WIDTH + group * (self.tiles_per_group * (TILE + GAP) - GAP + GROUP_GAP) + tile * (TILE + GAP)
        return x, self.faces_top + SECTION_HEIGHT + row * (TILE + ROW_GAP)

    def strip_origin(self, row: int, frame: int) -> tuple[int, int]:
        return MARGIN + LABEL_WIDTH + frame * (TILE + GAP), self.strips_top + SECTION_HEIGHT + row * (TILE + ROW_GAP)


def _grid_width(groups: int, tiles_per_group: int) -> int:
    return groups * (tiles_per_group * (TILE + GAP) - GAP) + max(groups - 1, 0) * GROUP_GAP


def plan_layout(identities: list[str], groups: int, tile_titles: list[str], strip_videos: list[str],
                strip_frames: int) -> SheetLayout:
    content = max(_grid_width(groups, len(tile_titles)),
                  strip_frames * (TILE + GAP) - GAP if strip_videos else 0)
    width = max(MIN_WIDTH, 2 * MARGIN + LABEL_WIDTH + content)
    faces_top = MARGIN + TITLE_HEIGHT
    y = faces_top + SECTION_HEIGHT + len(identities) * (TILE + ROW_GAP)
    strips_top = y
    if strip_videos:
        y += SECTION_HEIGHT + len(strip_videos) * (TILE + ROW_GAP)
    charts_top = y + ROW_GAP
    return SheetLayout(width=width, height=charts_top + CHART_HEIGHT + MARGIN, identities=identities, groups=groups,
                       tile_titles=tile_titles, faces_top=faces_top, strip_videos=strip_videos,
                       strip_frames=strip_frames, strips_top=strips_top, charts_top=charts_top)


def _catalogue(path: Path) -> tuple[list[VideoEntry], Path | None, list[Path]]:
    """Every video of a shard directory (with its failures file) or of one shard file."""
    path = Path(path)
    if path.is_dir():
        manifest = load_manifest(path)
        files = shard_paths(path, manifest)
        failures = path.joinpath(*check_relative_path(manifest.failures_file or FAILURES_NAME, "failures file").parts)
    else:
        files, failures = [path], None
    videos = []
    for shard in files:
        with ShardReader(shard) as reader:
            table = reader.videos
            for i in range(len(table)):
                rows = reader.video_rows(i)
                if rows.stop > rows.start:
                    videos.append(VideoEntry(shard, i, str(table.video_id[i]), str(table.identity[i]), rows,
                                             np.asarray(reader.timestamps[rows])))
    return videos, (failures if failures is not None and failures.is_file() else None), list(files)


def _tile(image: np.ndarray) -> np.ndarray:
    if image.shape[:2] == (TILE, TILE):
        return image
    shrink = image.shape[0] > TILE
    return cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _failed_tile() -> np.ndarray:
    tile = np.full((TILE, TILE, 3), FAILED_SWAP, np.uint8)
    cv2.line(tile, (8, 8), (TILE - 9, TILE - 9), (120, 120, 120), 2)
    cv2.line(tile, (8, TILE - 9), (TILE - 9, 8), (120, 120, 120), 2)
    return tile


def _group_tiles(reader: ShardReader, row: int, swaps_shown: int, patches: bool) -> list[np.ndarray]:
    tiles = [_tile(reader.read_images("face", [row])[0])]
    if swaps_shown:
        swaps = reader.read_images("swaps", [row])[0]
        ok = reader.read_array("swap_ok", [row])[0]
        tiles += [_tile(swaps[k]) if ok[k] else _failed_tile() for k in range(swaps_shown)]
    if patches:
        tiles += [_tile(reader.read_images("eyes", [row])[0]), _tile(reader.read_images("mouth", [row])[0])]
    return tiles


def failure_counts(failures: Path | None) -> Counter:
    """Bars of the failures chart: skipped videos by reason, and frames dropped from kept videos by reason."""
    counts: Counter = Counter()
    if failures is None:
        return counts
    for record in _failure_records(failures):
        if record.get("skipped"):
            counts[f"video skipped: {record.get('reason', '?')}"] += 1
        for reason, n in (record.get("dropped") or {}).items():
            if not record.get("skipped") and isinstance(n, int):
                counts[f"frames dropped: {reason}"] += n
    return counts


def write_sheet(path: Path, out: Path, *, identities: int = 8, samples: int = 4, clips: int = 6, strip: int = 8,
                seed: int = 0, progress=None) -> SheetLayout:
    """Draw the sheet of the shard set (or shard) at `path` into the PNG `out`; returns its layout.

    `identities` rows of `samples` frames each (seeded draws, shown in identity and row order); for a set
    prepared with the video profile, also `clips` videos as strips of `strip` consecutive frames.
    `progress()` is called once per image row drawn."""
    import matplotlib

    matplotlib.use("Agg")  # a file, never a window
    from matplotlib.figure import Figure

    videos, failures, files = _catalogue(path)
    if not videos:
        raise ValueError(f"{path}: the shard set holds no frames to draw")
    with ShardReader(files[0]) as first:
        header = first.header
    prep = header.prep_config or {}
    video_profile = prep.get("profile") == "video"
    rng = np.random.default_rng(seed)
    by_identity: dict[str, list[VideoEntry]] = defaultdict(list)
    for video in videos:
        by_identity[video.identity].append(video)
    names = sorted(by_identity)
    chosen = sorted(rng.choice(len(names), size=min(identities, len(names)), replace=False).tolist())
    chosen_names = [names[i] for i in chosen]
    swaps_shown = min(header.swaps_per_frame, MAX_SWAPS_SHOWN)
    patches = header.patch_size > 0
    titles = ["face"] + [f"swap {k + 1}" for k in range(swaps_shown)] + (["eyes", "mouth"] if patches else [])
    strip_videos: list[VideoEntry] = []
    if video_profile:
        picks = sorted(rng.choice(len(videos), size=min(clips, len(videos)), replace=False).tolist())
        strip_videos = [videos[i] for i in picks]
    strip = min(strip, max((v.rows.stop - v.rows.start for v in strip_videos), default=0))
    layout = plan_layout(chosen_names, samples, titles, [v.video_id for v in strip_videos], strip)

    figure = Figure(figsize=(layout.width / DPI, layout.height / DPI), dpi=DPI, facecolor="white")
    text = lambda x, y, s, **kw: figure.text(x / layout.width, 1 - y / layout.height, s, va="top", **kw)
    place = lambda image, x, y: figure.figimage(image, xo=x, yo=layout.height - y - image.shape[0], origin="upper")
    title = f"{Path(path).resolve().name}: {len(videos)} videos, {sum(v.rows.stop - v.rows.start for v in videos):,} " \
            f"frames, {len(names)} identities"
    text(MARGIN, MARGIN, title, fontsize=14, weight="bold")
    stored = [f"{header.image_size} px faces",
              f"{header.patch_size} px eye/mouth patches" if patches else "no patches",
              f"{header.swaps_per_frame} swap(s) per frame" if header.swaps_per_frame else "no swaps",
              f"descriptor {header.descriptor_kind}", f"prep fps {prep.get('fps', '?')}"]
    text(MARGIN, MARGIN + 24, ", ".join(stored) + (", video profile" if video_profile else ""), fontsize=10)

    readers: dict[Path, ShardReader] = {}
    reader_of = lambda shard: readers.setdefault(shard, ShardReader(shard))
    try:
        text(MARGIN, layout.faces_top, f"Sampled frames of {len(chosen_names)} of {len(names)} identities",
             fontsize=12, weight="bold")
        for group in range(samples):
            for t, name in enumerate(titles):
                x, _ = layout.tile_origin(0, group, t)
                text(x + TILE / 2, layout.faces_top + 20, name, fontsize=8, ha="center", color="0.35")
        for row, identity in enumerate(chosen_names):
            owned = by_identity[identity]
            frames = sum(v.rows.stop - v.rows.start for v in owned)
            _, y = layout.tile_origin(row, 0, 0)
            text(MARGIN, y + 4, identity, fontsize=10, weight="bold")
            text(MARGIN, y + 22, f"{len(owned)} video(s), {frames} frames", fontsize=8, color="0.35")
            picks = np.sort(rng.choice(frames, size=min(samples, frames), replace=False))
            starts = np.cumsum([0] + [v.rows.stop - v.rows.start for v in owned])
            for group, pick in enumerate(picks.tolist()):
                video = owned[int(np.searchsorted(starts, pick, side="right") - 1)]
                shard_row = video.rows.start + pick - int(starts[owned.index(video)])
                for t, tile in enumerate(_group_tiles(reader_of(video.shard), shard_row, swaps_shown, patches)):
                    place(tile, *layout.tile_origin(row, group, t))
            if progress:
                progress()
        if strip_videos:
            text(MARGIN, layout.strips_top, f"{strip} consecutive frames of {len(strip_videos)} of {len(videos)} videos",
                 fontsize=12, weight="bold")
            for row, video in enumerate(strip_videos):
                count = video.rows.stop - video.rows.start
                first = int(rng.integers(0, count - strip + 1))
                rows = list(range(video.rows.start + first, video.rows.start + first + strip))
                images = reader_of(video.shard).read_images("face", rows)
                _, y = layout.strip_origin(row, 0)
                step = np.diff(video.timestamps[first:first + strip])
                text(MARGIN, y + 4, video.video_id[-28:], fontsize=9, weight="bold")
                text(MARGIN, y + 22, f"{video.identity}, from {video.timestamps[first]:.2f} s", fontsize=8, color="0.35")
                if step.size:
                    text(MARGIN, y + 38, f"every {1000 * float(np.median(step)):.0f} ms", fontsize=8, color="0.35")
                for f, image in enumerate(images):
                    place(_tile(image), *layout.strip_origin(row, f))
                if progress:
                    progress()
    finally:
        for reader in readers.values():
            reader.close()
    _draw_charts(figure, layout, by_identity, failure_counts(failures), failures)
    with atomic_path(Path(out)) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, facecolor="white")
    return layout


def _draw_charts(figure, layout: SheetLayout, by_identity: dict, failures: Counter, failures_file: Path | None) -> None:
    from matplotlib.ticker import MaxNLocator

    top, height = layout.charts_top, CHART_HEIGHT
    box = lambda x0, x1: [x0 / layout.width, 1 - (top + height - 60) / layout.height,
                          (x1 - x0) / layout.width, (height - 100) / layout.height]
    split = MARGIN + int(0.55 * (layout.width - 2 * MARGIN))
    frames = sorted(((sum(v.rows.stop - v.rows.start for v in vs), name) for name, vs in by_identity.items()),
                    reverse=True)
    axes = figure.add_axes(box(MARGIN + 60, split - 30))
    counts = [n for n, _ in frames]
    axes.bar(range(len(counts)), counts, color="#4878a8", width=0.8)
    total = sum(counts)
    axes.set_title(f"frames per identity (largest: {100 * counts[0] / total:.0f} % of {total:,})", fontsize=10)
    axes.set_ylabel("frames", fontsize=9)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(frames) <= 24:
        axes.set_xticks(range(len(frames)), [name[-12:] for _, name in frames], rotation=45, ha="right", fontsize=7)
    else:
        axes.set_xticks([])
        axes.set_xlabel(f"{len(frames)} identities, largest first", fontsize=9)
    axes.tick_params(labelsize=7)
    axes = figure.add_axes(box(split + 170, layout.width - MARGIN - 10))
    if failures:
        labels, values = zip(*sorted(failures.items(), key=lambda item: -item[1]))
        axes.barh(range(len(values)), values, color="#c0504d")
        axes.set_yticks(range(len(values)), labels, fontsize=7)
        axes.invert_yaxis()
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=7)
    else:
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no failure records" if failures_file else f"no {FAILURES_NAME}", ha="center",
                  va="center", fontsize=10, color="0.35", transform=axes.transAxes)
    axes.set_title(f"reasons in {failures_file.name if failures_file else FAILURES_NAME}", fontsize=10)
