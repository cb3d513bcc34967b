"""`sslfer-manifest inspect --sheet`: the PNG's grid has the expected size and its tiles are the stored images."""
import dataclasses
import json

import cv2
import numpy as np
from click.testing import CliRunner

from data_manifest.cli import main
from data_manifest.manifest import build_manifest, save_manifest
from data_manifest.sheet import (CHART_HEIGHT, GAP, GROUP_GAP, LABEL_WIDTH, MARGIN, MIN_WIDTH, ROW_GAP, SECTION_HEIGHT,
                                 FAILED_SWAP, TILE, TITLE_HEIGHT, failure_counts, write_sheet)
from manifest_fixtures import make_shard_set
from shard_fixtures import make_header, make_video
from sslfer_core.shard_format import ShardReader, write_shard


def _png(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _stored(root, field):
    """identity -> the rows of `field` over all shards (images decoded)."""
    out = {}
    for shard in sorted(root.glob("shard-*.h5")):
        with ShardReader(shard) as reader:
            for i in range(len(reader.videos)):
                rows = reader.video_rows(i)
                values = reader.read_array(field, rows) if field == "swap_ok" else reader.read_images(field, rows)
                out.setdefault(str(reader.videos.identity[i]), []).extend(values)
    return out


def _tile_of(image):
    return cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA if image.shape[0] > TILE else cv2.INTER_LINEAR)


def test_contrastive_sheet_has_a_row_per_identity_and_face_swap_eyes_mouth_per_sample(tmp_path):
    # 2 shards x 2 videos, identities vid0 (3+3 frames) and vid1 (4+4 frames); 1 swap, 16 px patches, raw images.
    root = make_shard_set(tmp_path / "set", size=32, patch=16, swaps=1)
    out = tmp_path / "sheet.png"
    layout = write_sheet(root, out, identities=8, samples=3)
    assert layout.identities == ["vid0", "vid1"] and layout.tile_titles == ["face", "swap 1", "eyes", "mouth"]
    assert layout.strip_videos == []  # not a video-profile set
    sheet = _png(out)
    width = max(MIN_WIDTH, 2 * MARGIN + LABEL_WIDTH + 3 * (4 * TILE + 3 * GAP) + 2 * GROUP_GAP)
    height = MARGIN + TITLE_HEIGHT + SECTION_HEIGHT + 2 * (TILE + ROW_GAP) + ROW_GAP + CHART_HEIGHT + MARGIN
    assert sheet.shape == (height, width, 3)
    faces, eyes, mouths, swaps, swap_ok = (_stored(root, f) for f in ("face", "eyes", "mouth", "swaps", "swap_ok"))
    for row, identity in enumerate(layout.identities):
        candidates = [_tile_of(f) for f in faces[identity]]
        for group in range(3):
            x, y = layout.tile_origin(row, group, 0)
            face_tile = sheet[y:y + TILE, x:x + TILE]
            # The face tile is one of the identity's stored faces; its eyes and mouth tiles belong to the same row.
            matches = [i for i, c in enumerate(candidates) if np.array_equal(c, face_tile)]
            assert matches, (identity, group)
            x_eyes, _ = layout.tile_origin(row, group, 2)
            x_mouth, _ = layout.tile_origin(row, group, 3)
            assert np.array_equal(sheet[y:y + TILE, x_eyes:x_eyes + TILE], _tile_of(eyes[identity][matches[0]]))
            assert np.array_equal(sheet[y:y + TILE, x_mouth:x_mouth + TILE], _tile_of(mouths[identity][matches[0]]))
            x_swap, _ = layout.tile_origin(row, group, 1)
            swap_tile = sheet[y:y + TILE, x_swap:x_swap + TILE]
            if swap_ok[identity][matches[0]][0]:
                assert np.array_equal(swap_tile, _tile_of(swaps[identity][matches[0]][0]))
            else:  # a failed swap's pixels are zeros in the shard: the sheet shows the grey crossed tile
                assert np.array_equal(swap_tile[0, 0], FAILED_SWAP) and swap_tile.any()


def _video_profile_set(root, frames=10):
    header = make_header(size=32, patch=0, swaps=0, descriptor_dim=0)
    header = dataclasses.replace(header, prep_config={**header.prep_config, "profile": "video", "fps": 25.0})
    rng = np.random.default_rng(1)
    videos = []
    for v in range(3):
        video = make_video(rng, header, frames, video_id=f"clip{v}", identity=f"id{v % 2}", fps=25.0)
        videos.append(dataclasses.replace(video, eyes=None, mouth=None))
    root.mkdir()
    save_manifest(root, build_manifest(root, [write_shard(root / "shard-00000.h5", header, videos)]))
    return root, videos


def test_video_profile_sheet_adds_a_strip_of_consecutive_frames_per_sampled_video(tmp_path):
    root, videos = _video_profile_set(tmp_path / "set")
    out = tmp_path / "sheet.png"
    layout = write_sheet(root, out, identities=8, samples=2, clips=2, strip=5)
    assert layout.tile_titles == ["face"] and len(layout.identities) == 2
    assert len(layout.strip_videos) == 2 and layout.strip_frames == 5
    sheet = _png(out)
    grid_rows = 2 * (TILE + ROW_GAP) + SECTION_HEIGHT + 2 * (TILE + ROW_GAP)
    assert sheet.shape[0] == MARGIN + TITLE_HEIGHT + SECTION_HEIGHT + grid_rows + ROW_GAP + CHART_HEIGHT + MARGIN
    assert sheet.shape[1] == MIN_WIDTH  # 5 tiles fit in the minimum width
    by_id = {v.video_id: v for v in videos}
    for row, video_id in enumerate(layout.strip_videos):
        faces = [_tile_of(f) for f in by_id[video_id].faces]
        tiles = [sheet[y:y + TILE, x:x + TILE] for x, y in (layout.strip_origin(row, f) for f in range(5))]
        first = next(i for i, face in enumerate(faces) if np.array_equal(face, tiles[0]))
        for offset, tile in enumerate(tiles):  # consecutive stored frames, in order
            assert np.array_equal(tile, faces[first + offset])


def test_failure_chart_counts_skipped_videos_and_dropped_frames_by_reason(tmp_path):
    path = tmp_path / "failures.jsonl"
    records = [{"video_id": "a", "skipped": True, "reason": "no_face", "frames_sampled": 9},
               {"video_id": "b", "skipped": True, "reason": "no_face", "frames_sampled": 4},
               {"video_id": "c", "skipped": True, "reason": "too_short", "frames_sampled": 2},
               {"video_id": "d", "skipped": False, "reason": "dropped_frames", "dropped": {"no_face": 3, "small_face": 2}},
               {"video_id": "e", "skipped": False, "reason": "dropped_frames", "dropped": {"no_face": 1}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert failure_counts(path) == {"video skipped: no_face": 2, "video skipped: too_short": 1,
                                    "frames dropped: no_face": 4, "frames dropped: small_face": 2}
    assert failure_counts(None) == {}


def test_cli_writes_the_sheet_and_refuses_a_name_that_is_not_png(tmp_path):
    root = make_shard_set(tmp_path / "set", size=32, patch=16, swaps=1)
    result = CliRunner().invoke(main, ["inspect", str(root), "--sheet", str(tmp_path / "sheet.jpg")])
    assert result.exit_code == 2 and "name it *.png" in result.output
    assert not (tmp_path / "sheet.jpg").exists()
    result = CliRunner().invoke(main, ["inspect", str(root), "--sheet", str(tmp_path / "s.png"), "--sheet-samples", "2"])
    assert result.exit_code == 0, result.output
    assert f"sheet: {tmp_path / 's.png'}" in result.output
    assert _png(tmp_path / "s.png").shape[0] > 2 * TILE


def test_a_single_shard_file_gets_a_sheet_without_failures(tmp_path):
    root = make_shard_set(tmp_path / "set", size=32, patch=16, swaps=1)
    layout = write_sheet(root / "shard-00000.h5", tmp_path / "one.png", samples=2)
    assert layout.identities == ["vid0", "vid1"]
    assert _png(tmp_path / "one.png").shape == (layout.height, layout.width, 3)
