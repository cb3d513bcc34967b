"""Video dataset parsers on files written here in the reference's formats, bad rows, clip sampling and reading,
and validation plans that never overlap test."""
from pathlib import Path

import click
import cv2
import numpy as np
import pytest

from train.evaluation.video_clips import ClipSampling, VideoClips, eval_clip_indices, train_clip_indices
from train.evaluation.video_datasets import (BAD_ROW, EMOTIONS_7, MAFW_CLASSES, MISSING, TOO_SHORT, UNDECODABLE,
                                             UNKNOWN_LABEL, load_video_dataset, split_last_space)
from train.evaluation.video_splits import plan_video

FRAMES = 4  # frames per test video; the loaders get min_frames=FRAMES


def _frames_dir(path: Path, count: int = FRAMES, ext: str = "jpg", side: int = 8) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(count):  # frame i is a flat gray image of value 30 * i, so a read frame tells its index
        cv2.imwrite(str(path / f"{i + 1:05d}.{ext}"), np.full((side, side, 3), 30 * i, np.uint8))
    return path


def _mp4(path: Path, count: int = 6, side: int = 32) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (side, side))
    for i in range(count):
        writer.write(np.full((side, side, 3), 30 * i, np.uint8))
    writer.release()
    return path


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_split_on_the_last_space():
    assert split_last_space("/data/DFEW clip/00012 3") == ("/data/DFEW clip/00012", "3")
    assert split_last_space("/a/b/c 10\r\n") == ("/a/b/c", "10")
    assert split_last_space("no-label-here") is None and split_last_space("   ") is None


def test_dfew_folds_labels_and_the_val_file_that_is_test(tmp_path):
    clips = tmp_path / "Clip" / "jpg_256"
    for name in ("00001", "00002", "0000 3", "00004"):  # one path with a space
        _frames_dir(clips / name)
    root = tmp_path / "dfew" / "org"
    test_lines = [f"{clips / '00004'} 6"]
    _write(root / "split01" / "train.csv", [f"{clips / '00001'} 0", f"{clips / '00002'} 1", f"{clips / '0000 3'} 4"])
    _write(root / "split01" / "test.csv", test_lines)
    _write(root / "split01" / "val.csv", test_lines)  # the reference's val.csv is its test.csv
    _write(root / "split02" / "train.csv", [f"{clips / '00004'} 6", f"{clips / '00002'} 1", f"{clips / '0000 3'} 4"])
    _write(root / "split02" / "test.csv", [f"{clips / '00001'} 0"])
    dataset = load_video_dataset(root, "dfew", min_frames=FRAMES)
    assert dataset.class_names == list(EMOTIONS_7)
    assert dataset.folds == [1, 2]
    fold1 = [r for r in dataset.records if r.fold == 1]
    by_source = {Path(r.source).name: (r.split, dataset.class_names[r.label]) for r in fold1}
    assert by_source == {"00001": ("train", "Happy"), "00002": ("train", "Sad"), "0000 3": ("train", "Surprise"),
                         "00004": ("test", "Fear")}
    assert all(r.kind == "frames" and r.num_frames == FRAMES for r in dataset.records)
    assert any("val.csv lists exactly the test clips" in n for n in dataset.notes)
    plans = plan_video(dataset, seed=0, val_fraction=0.34, test_fraction=0.2)
    assert [p.fold for p in plans] == [1, 2]
    for plan in plans:
        assert len(plan.indices["val"]) >= 1 and len(plan.indices["test"]) == 1
        sources = {s: {dataset.records[i].source for i in plan.indices[s]} for s in plan.indices}
        assert not (sources["val"] & sources["test"]) and not (sources["train"] & sources["val"])
        assert any("validation carved from train" in n for n in plan.notes)


def test_dfew_official_split_file_counts_labels_from_one(tmp_path):
    clips = tmp_path / "Clip" / "jpg_256"
    _frames_dir(clips / "00007")
    _frames_dir(clips / "00012")
    path = _write(tmp_path / "set_1.csv", ["video_name,label", "7,1", "12,7"])
    dataset = load_video_dataset(path, "dfew", video_root=clips, min_frames=FRAMES)
    assert [(Path(r.source).name, dataset.class_names[r.label]) for r in dataset.records] == [
        ("00007", "Happy"), ("00012", "Fear")]


def test_ferv39k_label_indices_names_and_the_authors_paths_moved(tmp_path):
    base = tmp_path / "FERV39k" / "2_ClipsforFaceCrop"
    _frames_dir(base / "Interview" / "Happy" / "0118")
    _frames_dir(base / "Daily Life" / "Angry" / "0094")
    _frames_dir(base / "Social" / "Disgust" / "0005")
    old = "/mnt/data1/brain/AC/Dataset/FERV39k"
    folder = tmp_path / "ferv39k" / "all_scenes"
    _write(folder / "train.csv", [f"{old}/2_ClipsforFaceCrop/Interview/Happy/0118 0",
                                  f"{old}/2_ClipsforFaceCrop/Daily Life/Angry/0094 3"])
    _write(folder / "test.csv", [f"{old}/2_ClipsforFaceCrop/Social/Disgust/0005 Disgust"])  # a name works too
    dataset = load_video_dataset(folder, "ferv39k", path_prefix=(old, str(tmp_path / "FERV39k")), min_frames=FRAMES)
    got = [(r.split, dataset.class_names[r.label]) for r in dataset.records]
    assert got == [("train", "Happy"), ("train", "Angry"), ("test", "Disgust")]
    assert EMOTIONS_7.index("Disgust") == 5 and EMOTIONS_7.index("Angry") == 3


def test_mafw_eleven_classes_png_frames_and_an_unknown_label(tmp_path):
    frames = tmp_path / "frames"
    for name in ("00025", "00028", "00108"):
        _frames_dir(frames / name, ext="png")
    folder = tmp_path / "mafw" / "single" / "split03"
    _write(folder / "train.csv", [f"{frames / '00025'} 10", f"{frames / '00028'} 7"])
    _write(folder / "test.csv", [f"{frames / '00108'} 0", f"{frames / '00108'} 11"])
    dataset = load_video_dataset(tmp_path / "mafw" / "single", "mafw", min_frames=FRAMES)
    assert len(dataset.class_names) == 11 and dataset.class_names == list(MAFW_CLASSES)
    assert [dataset.class_names[r.label] for r in dataset.records] == ["disappointment", "contempt", "anger"]
    assert dataset.folds == [3]
    assert dataset.problems.count(UNKNOWN_LABEL) == 1


def test_bad_rows_are_counted_with_examples_not_raised(tmp_path):
    frames = tmp_path / "frames"
    _frames_dir(frames / "good")
    _frames_dir(frames / "short", count=FRAMES - 1)
    (frames / "empty").mkdir()
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all" * 10)
    folder = tmp_path / "set"
    _write(folder / "train.csv", [f"{frames / 'good'} 0", f"{frames / 'nowhere'} 1", f"{frames / 'also gone'} 1",
                                  f"{frames / 'short'} 2", f"{frames / 'empty'} 2", f"{tmp_path / 'broken.mp4'} 3",
                                  f"{frames / 'good'} 9", "just-one-token", ""])
    _write(folder / "test.csv", [f"{frames / 'good'} 4"])
    dataset = load_video_dataset(folder, "dfew", min_frames=FRAMES)
    problems = dataset.problems
    assert problems.count(MISSING) == 2 and problems.count(TOO_SHORT) == 1
    assert problems.count(UNDECODABLE) == 2  # the empty frame folder and the junk .mp4
    assert problems.count(UNKNOWN_LABEL) == 1 and problems.count(BAD_ROW) == 1
    examples = problems.as_dict()[MISSING]["examples"]
    assert examples == [str(frames / "nowhere"), str(frames / "also gone")]
    assert f"{frames / 'short'} ({FRAMES - 1} < {FRAMES})" in problems.as_dict()[TOO_SHORT]["examples"]
    assert len(dataset.records) == 2
    with pytest.raises(click.ClickException, match="no usable videos"):
        load_video_dataset(_write(tmp_path / "bad" / "test.csv", [f"{frames / 'nowhere'} 0"]), "dfew")


def test_fixed_label_set_refuses_other_classes(tmp_path):
    _frames_dir(tmp_path / "v")
    path = _write(tmp_path / "test.csv", [f"{tmp_path / 'v'} 0"])
    with pytest.raises(click.ClickException, match="fixed label set"):
        load_video_dataset(path, "mafw", classes=["a", "b"])


def _generic_csv(tmp_path, subjects):
    rows = ["path,label,subject"]
    for i, subject in enumerate(subjects):
        _frames_dir(tmp_path / f"clip{i}")
        rows.append(f"clip{i},{['happy', 'sad', 'angry'][i % 3]},{subject}")
    return _write(tmp_path / "videos.csv", rows)


def test_generic_csv_with_video_files_and_frame_folders(tmp_path):
    _mp4(tmp_path / "a.mp4")
    _frames_dir(tmp_path / "b")
    path = _write(tmp_path / "list.csv", ["path,label", "a.mp4,happy", "b,sad", "gone.mp4,sad"])
    dataset = load_video_dataset(path, min_frames=FRAMES)
    assert dataset.format == "video-csv" and dataset.class_names == ["happy", "sad"]
    assert [(r.kind, r.num_frames) for r in dataset.records] == [("video", 6), ("frames", FRAMES)]
    assert dataset.problems.count(MISSING) == 1


def test_validation_and_test_never_share_a_subject(tmp_path):
    subjects = [f"s{i // 3}" for i in range(30)]  # 10 subjects, 3 clips each
    dataset = load_video_dataset(_generic_csv(tmp_path, subjects), min_frames=FRAMES)
    for seed in range(5):
        (plan,) = plan_video(dataset, seed, val_fraction=0.2, test_fraction=0.2)
        of = {s: {dataset.records[i].subject for i in plan.indices[s]} for s in plan.indices}
        assert of["val"] and of["test"] and of["train"]
        assert not (of["val"] & of["test"]) and not (of["train"] & of["test"]) and not (of["train"] & of["val"])
        assert sum(len(v) for v in plan.indices.values()) == 30
        assert "subject-disjoint" in plan.notes[0] and "subject-disjoint" in plan.notes[1]


def test_without_subjects_validation_is_clip_disjoint_from_test(tmp_path):
    dataset = load_video_dataset(_generic_csv(tmp_path, [""] * 12), min_frames=FRAMES)
    (plan,) = plan_video(dataset, 0, val_fraction=0.25, test_fraction=0.25)
    assert not set(plan.indices["val"]) & set(plan.indices["test"])
    assert "clip-disjoint, stratified by class" in plan.notes[1]


def test_clip_indices_by_hand():
    sampling = ClipSampling(frames=4, stride=3, test_clips=2)
    # window span (4 - 1) * 3 + 1 = 10 frames; a 12-frame video has starts 0..2
    starts = {int(train_clip_indices(12, sampling, np.random.default_rng(s))[0]) for s in range(40)}
    assert starts == {0, 1, 2}
    assert train_clip_indices(12, sampling, np.random.default_rng(0)).tolist()[1:] == [
        train_clip_indices(12, sampling, np.random.default_rng(0))[0] + k for k in (3, 6, 9)]
    assert train_clip_indices(7, sampling, np.random.default_rng(0)).tolist() == [0, 2, 4, 6]  # shorter than the window
    # 100 frames, stride 4, 16 frames: strided 0, 4, ..., 96 (25 positions); clips start at 0 and at 25 - 16 = 9
    start, end = eval_clip_indices(100, ClipSampling(16, 4, 2))
    assert start.tolist() == list(range(0, 64, 4)) and end.tolist() == list(range(36, 100, 4))
    # 10 frames, stride 4: strided 0, 4, 8, padded with 8 -> both clips the same
    start, end = eval_clip_indices(10, ClipSampling(4, 4, 2))
    assert start.tolist() == end.tolist() == [0, 4, 8, 8]


def test_clips_read_the_chosen_frames_resized(tmp_path):
    _frames_dir(tmp_path / "v", count=8)
    path = _write(tmp_path / "test.csv", [f"{tmp_path / 'v'} 2"])
    dataset = load_video_dataset(path, "dfew", min_frames=4)
    clips = VideoClips(dataset.records, dataset.labels(), 16, ClipSampling(4, 2, 2), train=False)
    clip, ok, label, position = clips[0]
    assert ok and label == 2 and position == 0
    assert clip.shape == (2, 4, 16, 16, 3)
    # strided 0, 2, 4, 6 -> one clip of all four; both clips read frames 0, 2, 4, 6 = values 0, 60, 120, 180
    assert clip[:, :, 5, 5, 0].tolist() == [[0, 60, 120, 180]] * 2
    train = VideoClips(dataset.records, dataset.labels(), 8, ClipSampling(2, 3, 2), train=True, seed=1)
    first = train[0][0]
    assert first.shape == (1, 2, 8, 8, 3) and first[0, 1, 0, 0, 0] - first[0, 0, 0, 0, 0] == 90  # 3 frames apart
    assert np.array_equal(train[0][0], first)  # same seed and epoch -> same window


def test_clips_from_an_mp4(tmp_path):
    _mp4(tmp_path / "a.mp4", count=6)
    dataset = load_video_dataset(_write(tmp_path / "l.csv", ["path,label", "a.mp4,x"]), min_frames=4)
    clip, ok, _, _ = VideoClips(dataset.records, dataset.labels(), 16, ClipSampling(4, 1, 2), train=False)[0]
    assert ok and clip.shape == (2, 4, 16, 16, 3)
    means = clip[1, :, :, :, 0].float().mean(dim=(1, 2))  # end clip = frames 2..5, values ~ 60, 90, 120, 150
    assert np.allclose(means.numpy(), [60, 90, 120, 150], atol=6)


def test_align_hook_replaces_frames_where_a_face_is_found(tmp_path):
    _frames_dir(tmp_path / "v", count=4)
    dataset = load_video_dataset(_write(tmp_path / "test.csv", [f"{tmp_path / 'v'} 0"]), "dfew", min_frames=4)
    calls = []

    def align(frame):  # stands in for FaceAligner: "finds" a face in every other frame
        calls.append(frame.shape)
        return np.full((20, 20, 3), 7, np.uint8) if len(calls) % 2 else None

    clips = VideoClips(dataset.records, dataset.labels(), 16, ClipSampling(4, 1, 1), train=False, align=align)
    clip, ok, _, _ = clips[0]
    assert ok and clip.shape == (1, 4, 16, 16, 3) and len(calls) == 4
    assert clip[0, :, 0, 0, 0].tolist() == [7, 30, 7, 90]  # aligned frames 0 and 2, frames 1 and 3 as they are
    assert clips.unaligned_frames == 2
