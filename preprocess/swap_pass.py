"""Phase 2 for one clip: K face swaps per kept frame, with donor heads of other identities from the pool.

Donor choice is a pure function of (seed, video id, frame number, k, attempt) and the pool: a 64-bit
BLAKE2b hash picks one of the other identities uniformly, then one of that identity's pool entries.
A refused swap (see sslfer_core.face_swap) is retried with the next attempt's donor, up to
`attempts` times; after that the swap's pixels are zeros and swap_ok is False.
"""
from __future__ import annotations

import hashlib

import numpy as np

from preprocess.donor_pool import DonorPool


class DonorIndex:
    def __init__(self, pool: DonorPool):
        self.pool = pool
        self.identities = pool.identities()
        identity = pool.identity.tolist()
        self.start = {name: identity.index(name) for name in self.identities}
        self.count = {name: identity.count(name) for name in self.identities}

    def choose(self, seed: int, video_id: str, frame: int, k: int, attempt: int, own_identity: str) -> int | None:
        """Pool row of the donor, or None when the pool holds no other identity."""
        others = len(self.identities) - (1 if own_identity in self.start else 0)
        if others <= 0:
            return None
        text = f"{seed}\x1f{video_id}\x1f{frame}\x1f{k}\x1f{attempt}".encode("utf-8")
        value = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
        pick = value % others
        if own_identity in self.start and pick >= self.identities.index(own_identity):
            pick += 1  # skip the clip's own identity
        name = self.identities[pick]
        return self.start[name] + (value // others) % self.count[name]


def swap_video(video_id: str, identity: str, faces: np.ndarray, landmarks: np.ndarray, frame_index: np.ndarray,
               index: DonorIndex, *, swaps: int, seed: int, attempts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(swaps (N,K,S,S,3) uint8, swap_ok (N,K) bool, donor rows (N,K) int32, -1 where none)."""
    from sslfer_core.face_swap import swap_face

    n, size = faces.shape[0], faces.shape[1]
    out = np.zeros((n, swaps, size, size, 3), np.uint8)
    ok = np.zeros((n, swaps), bool)
    donors = np.full((n, swaps), -1, np.int32)
    pool = index.pool
    for i in range(n):
        for k in range(swaps):
            for attempt in range(attempts):
                row = index.choose(seed, video_id, int(frame_index[i]), k, attempt, identity)
                if row is None:
                    break
                result = swap_face(faces[i], landmarks[i], pool.faces[row], pool.landmarks[row], seed=seed)
                if result.ok:
                    out[i, k], ok[i, k], donors[i, k] = result.image, True, row
                    break
    return out, ok, donors
