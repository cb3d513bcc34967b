"""FaceSwap quality on the real voxceleb_mini clips, and the figure docs/img/swaps.png.

    .venv/bin/python benchmarks/make_swap_figure.py [--data DIR] [--swaps 240] [--out docs/img/swaps.png]

Aligned 128x128 crops of evenly spaced frames of every clip; random expression/donor pairs of
different identities (fixed seed). Each swap is checked: refused or not, pixels outside the mask
unchanged, face re-detected on the result, and the inner-face landmark error of that detection
against where the expression's landmarks were put (in inter-ocular distances). The figure shows the
first 16 swaps of that random sequence, not a selection.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_face_toolkit import REPO, aligned_crops  # noqa: E402

from sslfer_core.atomic_files import atomic_path  # noqa: E402
from sslfer_core.dlib_models import locate_dlib_models  # noqa: E402
from sslfer_core.face_alignment import INNER_FACE, interocular_distance, similarity_matrix, transform_points  # noqa: E402
from sslfer_core.face_detection import FaceDetector  # noqa: E402
from sslfer_core.face_swap import swap_face  # noqa: E402


def inner_face_error(detected: np.ndarray, expected: np.ndarray) -> float:
    return float(np.mean(np.hypot(*(detected[INNER_FACE] - expected[INNER_FACE]).T))) / interocular_distance(expected)


def figure(triplets: list[tuple[np.ndarray, np.ndarray, np.ndarray]], columns: int = 4) -> np.ndarray:
    size, gap, header = triplets[0][0].shape[0], 8, 22
    tile_w = 3 * size + gap
    rows = (len(triplets) + columns - 1) // columns
    canvas = np.full((header + rows * (size + gap), columns * tile_w, 3), 255, np.uint8)
    for c in range(columns):
        for k, label in enumerate(("expression", "donor", "swap")):
            cv2.putText(canvas, label, (c * tile_w + k * size + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for i, images in enumerate(triplets):
        top, left = header + (i // columns) * (size + gap), (i % columns) * tile_w
        canvas[top:top + size, left:left + 3 * size] = np.hstack(images)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "voxceleb_mini")
    parser.add_argument("--swaps", type=int, default=240)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "swaps.png")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    detector = FaceDetector(locate_dlib_models())
    crops = aligned_crops(args.data, detector, per_clip=8)
    identities = sorted({identity for identity, _, _ in crops})
    print(f"{len(crops)} aligned crops from {len(identities)} identities")

    rng = np.random.default_rng(0)
    refused, changed_outside, detected, errors, triplets = {}, 0, 0, [], []
    attempts = 0
    while attempts < args.swaps:
        i, j = rng.choice(len(crops), 2, replace=False)
        if crops[i][0] == crops[j][0]:
            continue
        attempts += 1
        expression, donor = crops[i][2], crops[j][2]
        result = swap_face(expression.image, expression.landmarks, donor.image, donor.landmarks, seed=attempts)
        if not result.ok:
            refused[result.reason] = refused.get(result.reason, 0) + 1
            continue
        outside = result.mask == 0
        changed_outside += int(np.count_nonzero(result.image[outside] != donor.image[outside]))
        if len(triplets) < 16:
            triplets.append((expression.image, donor.image, result.image))
        face = detector.detect(result.image)
        if face is None:
            continue
        detected += 1
        expected = transform_points(similarity_matrix(expression.landmarks[INNER_FACE], donor.landmarks[INNER_FACE]), expression.landmarks)
        errors.append(inner_face_error(face.landmarks, expected))

    # The detector's own repeatability on unmodified crops, for scale.
    baseline = []
    for _, _, crop in crops[::4]:
        face = detector.detect(crop.image)
        if face is not None:
            baseline.append(inner_face_error(face.landmarks, crop.landmarks))

    done = attempts - sum(refused.values())
    print(f"swaps attempted {attempts}, done {done}, refused {sum(refused.values())} {refused or ''}")
    print(f"re-detected as a face: {detected}/{done} = {100 * detected / max(done, 1):.1f} %")
    print(f"inner-face landmark error vs the placed expression: mean {np.mean(errors):.4f}, median {np.median(errors):.4f}, "
          f"90th pct {np.percentile(errors, 90):.4f}, max {np.max(errors):.4f} inter-ocular distances")
    print(f"detector repeatability on {len(baseline)} unmodified crops: mean {np.mean(baseline):.4f} inter-ocular distances")
    print(f"pixel values changed outside the masks: {changed_outside}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # An adaptive 256-colour palette keeps the PNG small enough for the repository.
    picture = Image.fromarray(figure(triplets)).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    with atomic_path(args.out) as tmp:
        picture.save(tmp, format="PNG", optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
