"""Identity 1-nearest-neighbour probe on an LFW-style folder (one sub-folder per person).

Per identity with >= 2 images, a seeded split puts a fraction of its images in the gallery (at least one) and
the rest in the probe set (at least one); identities with a single image cannot be probed and are counted.
Each probe takes the identity of its most cosine-similar gallery image.
"""
from __future__ import annotations

import numpy as np

from sslfer_core import metrics


def gallery_probe_split(labels: np.ndarray, seed: int, gallery_fraction: float = 0.5):
    """(gallery indices, probe indices, identities skipped for having a single image)."""
    rng = np.random.default_rng(seed)
    gallery, probe, skipped = [], [], []
    for identity in np.unique(labels):
        members = np.flatnonzero(labels == identity)
        if len(members) < 2:
            skipped.append(int(identity))
            continue
        members = rng.permutation(members)
        n_gallery = min(max(int(round(gallery_fraction * len(members))), 1), len(members) - 1)
        gallery.append(members[:n_gallery])
        probe.append(members[n_gallery:])
    empty = np.zeros(0, dtype=np.int64)
    return (np.sort(np.concatenate(gallery)) if gallery else empty,
            np.sort(np.concatenate(probe)) if probe else empty, skipped)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_neighbour_labels(gallery_x: np.ndarray, gallery_y: np.ndarray, probe_x: np.ndarray,
                             chunk: int = 4096) -> np.ndarray:
    gallery = _unit_rows(gallery_x)
    predicted = np.empty(len(probe_x), dtype=np.int64)
    for start in range(0, len(probe_x), chunk):  # bounded memory for large probe sets
        similarity = _unit_rows(probe_x[start:start + chunk]) @ gallery.T
        predicted[start:start + chunk] = gallery_y[similarity.argmax(axis=1)]
    return predicted


def identity_run(features: np.ndarray, labels: np.ndarray, seed: int, gallery_fraction: float) -> dict:
    gallery, probe, skipped = gallery_probe_split(labels, seed, gallery_fraction)
    counts = {"identities_used": int(len(np.unique(labels[gallery]))) if len(gallery) else 0,
              "identities_skipped_single_image": len(skipped), "gallery": int(len(gallery)), "probe": int(len(probe))}
    if len(probe) == 0:
        return {"counts": counts, "test": None}
    predicted = nearest_neighbour_labels(features[gallery], labels[gallery], features[probe])
    truth = labels[probe]
    num_classes = int(labels.max()) + 1
    test = {"accuracy": metrics.accuracy(truth, predicted), "macro_f1": metrics.macro_f1(truth, predicted, num_classes),
            "count": int(len(probe))}
    return {"counts": counts, "test": test}
