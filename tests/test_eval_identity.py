"""Identity 1-NN probe: gallery/probe split, nearest neighbour by cosine, CLI on a synthetic identity folder."""
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from eval_fixtures import pattern_image
from train.evaluation.cli import main
from train.evaluation.identity_probe import gallery_probe_split, identity_run, nearest_neighbour_labels


def test_split_skips_single_image_identities_and_keeps_one_of_each():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    gallery, probe, skipped = gallery_probe_split(labels, seed=0, gallery_fraction=0.5)
    assert skipped == [1]
    assert sorted(labels[gallery].tolist()) == [0, 0, 2] and sorted(labels[probe].tolist()) == [0, 0, 2]
    assert not set(gallery) & set(probe)
    assert np.array_equal(gallery, gallery_probe_split(labels, seed=0, gallery_fraction=0.5)[0])


def test_nearest_neighbour_uses_cosine_similarity():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0]])
    # [10, 1] is far from [1, 0] in Euclidean distance but nearly parallel to it.
    probes = np.array([[10.0, 1.0], [0.1, 0.3], [-1.0, -0.2]])
    assert nearest_neighbour_labels(gallery, np.array([7, 9]), probes).tolist() == [7, 9, 9]


def test_identity_run_hand_example():
    # Two images per identity, so gallery and probe get one each, whichever way the seed falls.
    # id0 ~ +x, id1 ~ +y; id2's two images point away from each other (cosine -0.385), so its probe is always
    # nearer to id0's or id1's gallery image (cosine ~0.1-0.2) than to its own: it is misread, the others are not.
    # accuracy = 2/3; F1: the identity that wrongly receives id2's probe has 2/(1+2) = 2/3, the other 1,
    # id2 0 -> macro F1 = (1 + 2/3 + 0) / 3 = 5/9.
    features = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [-1, 0.2], [0.2, -1]], dtype=float)
    labels = np.array([0, 0, 1, 1, 2, 2])
    for seed in range(4):
        result = identity_run(features, labels, seed=seed, gallery_fraction=0.5)
        assert result["counts"]["gallery"] == 3 and result["counts"]["probe"] == 3
        assert result["test"]["accuracy"] == pytest.approx(2 / 3)
        assert result["test"]["macro_f1"] == pytest.approx(5 / 9)


def test_identity_cli(tmp_path):
    rng = np.random.default_rng(0)
    for person, kind in (("ann", "horizontal"), ("bob", "vertical"), ("cid", "checker")):
        folder = tmp_path / "people" / person
        folder.mkdir(parents=True)
        for i in range(4):
            cv2.imwrite(str(folder / f"{i}.png"), pattern_image(kind, rng))
    solo = tmp_path / "people" / "dee"
    solo.mkdir()
    cv2.imwrite(str(solo / "0.png"), pattern_image("checker", rng))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["identity", "--backbone", "random", "--data", str(tmp_path / "people"),
                                       "--image-size", "32", "--out", str(out), "--no-cache", "--threads", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    run = json.loads((out / "results.json").read_text())["backbones"][0]["runs"][0]
    assert run["counts"] == {"identities_used": 3, "identities_skipped_single_image": 1, "gallery": 6, "probe": 6}
    assert run["test"]["accuracy"] >= 5 / 6  # each "person" has its own pattern
    assert "accuracy (%)" in result.output
